"""Split long audio into chunks of speech (<= max_chunk_s) at pauses, block by block, in bounded memory.

Speech probabilities come from Silero VAD over 512-sample windows of 16 kHz audio: its weights are read
from the `silero-vad` wheel's own files and run by a plain-torch copy of its network (batched over windows,
LSTM state carried across blocks), so neither torchaudio, TorchScript warm-up nor a network is involved.
Without silero-vad, or with `backend="energy"`, a simple energy detector against an adaptive noise floor
stands in: fine for clean recordings, easily fooled by music or loud noise.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from .audio import check_finite

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000
WINDOW = 512  # 32 ms: the window Silero VAD is trained on at 16 kHz
CONTEXT = 64  # samples of the previous window Silero prepends to each window
MIN_BATCH, BATCH = 256, 2048  # windows per model call (8 s to 65 s): small calls cost thread-pool overhead


@dataclass
class VadOptions:
    threshold: float = 0.5  # speech starts at this probability (Silero's recommended default)
    neg_threshold: float | None = None  # and ends below this one; None: threshold - 0.15, Silero's hysteresis
    min_speech_ms: int = 250  # shorter blips (clicks, coughs) are dropped, as in Silero
    # a pause this long ends a speech region: breaths and short pauses between words stay inside one
    min_silence_ms: int = 500
    # audio kept around each region, for soft word onsets and trailing fricatives VAD scores low;
    # at most min_silence_ms / 2 so that padded regions never overlap
    speech_pad_ms: int = 200
    max_chunk_s: float = 30.0  # the longest input the model is meant to see
    # regions further apart than this are never merged: long non-speech stretches inside a chunk waste
    # compute and invite hallucinations
    max_merge_gap_s: float = 3.0
    backend: str = "silero"  # "silero" or "energy"

    def __post_init__(self) -> None:
        if self.backend not in ("silero", "energy"):
            raise ValueError(f"unknown VAD backend {self.backend!r}: use 'silero' or 'energy'")
        if self.min_silence_ms < 64 or 2 * self.speech_pad_ms > self.min_silence_ms:
            raise ValueError("need min_silence_ms >= 64 and speech_pad_ms <= min_silence_ms / 2")
        if self.max_chunk_s < 1.0:
            raise ValueError("max_chunk_s must be at least 1 second")


@dataclass
class SpeechChunk:
    start: float  # seconds in the source
    end: float
    audio: np.ndarray  # float32 16 kHz mono samples from start to end (pauses between merged regions included)


# --------------------------------------------------------------------------- speech probabilities


def _silero_data() -> Path | None:
    # located without importing the silero_vad package, whose import sets torch's thread count to 1
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def silero_available() -> bool:
    data = _silero_data()
    return data is not None and (data / "silero_vad.jit").is_file()


class _SileroNet(torch.nn.Module):
    """Silero VAD v5/v6 at 16 kHz in plain torch: STFT as a convolution, four convolutions, an LSTM cell run
    across windows, and a linear speech/non-speech output."""

    def __init__(self) -> None:
        super().__init__()
        conv = torch.nn.Conv1d
        self.stft = conv(1, 258, 256, stride=128, bias=False)  # 129 real + 129 imaginary bins
        self.convs = torch.nn.ModuleList(
            [conv(129, 128, 3, padding=1), conv(128, 64, 3, 2, 1), conv(64, 64, 3, 2, 1), conv(64, 128, 3, padding=1)]
        )
        self.lstm = torch.nn.LSTMCell(128, 128)
        self.out = torch.nn.Linear(128, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[windows, 64 + 512] context-prefixed windows -> [windows, 128] features, each window on its own."""
        spec = self.stft(torch.nn.functional.pad(x, (0, CONTEXT), mode="reflect")[:, None])
        x = (spec[:, :129].square() + spec[:, 129:].square()).sqrt()
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x[:, :, 0]


@cache
def _silero_net() -> _SileroNet:
    """The network with the weights of the wheel's TorchScript model, the one `silero_vad.load_silero_vad()`
    runs (the wheel's safetensors file holds different weights)."""
    data = _silero_data()
    if data is None:
        raise ImportError("silero-vad is not installed (pip install silero-vad)")
    names = {"stft.forward_basis_buffer": "stft.weight", "decoder.rnn": "lstm", "decoder.decoder.2": "out"}
    names.update({f"encoder.{i}.reparam_conv": f"convs.{i}" for i in range(4)})
    with warnings.catch_warnings():  # recent torch deprecates TorchScript; its loader still reads the file
        warnings.simplefilter("ignore", DeprecationWarning)
        packaged = torch.jit.load(str(data / "silero_vad.jit"), map_location="cpu").state_dict()
    weights = {}
    for key, value in packaged.items():
        key = key.removeprefix("_model.")
        old = next((old for old in names if key == old or key.startswith(old + ".")), None)
        if key.startswith("_model_8k.") or old is None:
            continue
        key = names[old] + key[len(old) :]
        weights[key] = value.reshape(1, -1) if key == "out.weight" else value
    net = _SileroNet()
    net.load_state_dict(weights)
    return net.eval().requires_grad_(False)


class _Silero:
    """Speech probability per 512-sample window; the LSTM state and the 64-sample context carry over.

    The convolutions run batched over all windows of a block in torch; the LSTM steps run in numpy: one
    tiny matrix product per 32 ms window, which torch would hand to its thread pool at a high price.
    """

    def __init__(self) -> None:
        self.net = _silero_net()
        lstm, out = self.net.lstm, self.net.out
        self.w_ih, self.bias = lstm.weight_ih.t(), lstm.bias_ih + lstm.bias_hh
        self.w_hh = lstm.weight_hh.t().numpy().copy()
        self.w_out, self.b_out = out.weight[0].numpy(), out.bias.item()
        self.h = self.c = np.zeros(128, dtype=np.float32)
        self.context = np.zeros(CONTEXT, dtype=np.float32)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        previous = np.concatenate([self.context[None], windows[:-1, -CONTEXT:]])
        self.context = windows[-1, -CONTEXT:].copy()
        with torch.inference_mode():  # (numpy's own thread pool would take the input product)
            feats = self.net.encode(torch.from_numpy(np.concatenate([previous, windows], axis=1)))
            gates = torch.addmm(self.bias, feats, self.w_ih).numpy()
        hidden = np.empty((len(gates), 128), dtype=np.float32)
        h, c = self.h, self.c
        for t in range(len(gates)):
            z = gates[t] + h @ self.w_hh  # input, forget, cell and output gates, PyTorch's order
            c = c * _sigmoid(z[128:256]) + np.tanh(z[256:384]) * _sigmoid(z[:128])
            h = np.tanh(c) * _sigmoid(z[384:])
            hidden[t] = h
        self.h, self.c = h, c
        return _sigmoid(np.maximum(hidden, 0) @ self.w_out + self.b_out)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-x) overflows float32 below x = -88 (loud or clipped input drives the gates there); the sigmoid
    # of -80 is already 2e-35, so clamping changes nothing else
    return 1 / (1 + np.exp(-np.maximum(x, np.float32(-80))))


class _Energy:
    """Window energy against a noise floor that follows the quietest recent windows."""

    def __init__(self) -> None:
        self.floor: float | None = None

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        db = 10 * np.log10(np.mean(windows.astype(np.float64) ** 2, axis=1) + 1e-10)
        probs = np.empty(len(db), dtype=np.float32)
        for i, level in enumerate(db):
            # the floor drops at once to quieter windows and creeps up 1 dB/s otherwise
            self.floor = level if self.floor is None else min(level, self.floor + 0.032)
            above = max(level - self.floor, 0.0) if level > -60 else 0.0
            probs[i] = 1 / (1 + math.exp(-(above - 12) / 2))
        return probs


@cache
def _note_fallback() -> None:
    """Once per process, through logging: one stderr line by default; silenced by raising the `fama_core`
    logger's level (what `-q` is for)."""
    log.warning("note: silero-vad is not installed: using the energy VAD fallback (pip install silero-vad)")


def _backend(options: VadOptions):
    if options.backend == "silero":
        if silero_available():
            return _Silero()
        _note_fallback()
    return _Energy()


# --------------------------------------------------------------------------- regions -> chunks


class _Chunker:
    """Turns per-window speech probabilities into chunk boundaries (samples), as soon as they are final.

    Speech regions follow Silero's rules (hysteresis, min_silence, min_speech, padding). Regions are merged
    greedily into the open chunk while they fit in max_chunk_s and are at most max_merge_gap_s apart; a
    single region longer than a chunk is cut at the longest pause inside it (a hard cut, at the least
    speech-like window, only when it has no pause at all).
    """

    def __init__(self, o: VadOptions) -> None:
        ms = SAMPLE_RATE // 1000
        self.threshold = o.threshold
        self.neg_threshold = max(o.threshold - 0.15, 0.01) if o.neg_threshold is None else o.neg_threshold
        self.min_speech, self.min_silence, self.pad = o.min_speech_ms * ms, o.min_silence_ms * ms, o.speech_pad_ms * ms
        self.max_len, self.max_gap = int(o.max_chunk_s * SAMPLE_RATE), int(o.max_merge_gap_s * SAMPLE_RATE)
        self.region: int | None = None  # start of the open speech region
        self.pause: int | None = None  # start of the pause the open region is in, if any
        self.chunk: int | None = None  # start of the open chunk
        self.chunk_end: int | None = None  # end of its last closed region; None while it has none
        self.probs: list[float] = []
        self.probs_from = 0  # window index of probs[0]
        self.ready: list[tuple[int, int]] = []

    def keep_from(self, now: int) -> int:
        """First sample still needed: the open chunk's start, or room to pad a region starting now."""
        return self.chunk if self.chunk is not None else max(0, now - self.pad)

    def push(self, probs: np.ndarray, first_window: int) -> None:
        for i, p in enumerate(probs.tolist(), start=first_window):
            self.probs.append(p)
            cur = i * WINDOW
            if p >= self.threshold:
                self.pause = None
                if self.region is None:
                    self._open_region(cur)
            elif p < self.neg_threshold and self.region is not None:
                if self.pause is None:
                    self.pause = cur
                if cur - self.pause >= self.min_silence:
                    self._close_region(self.pause)
            self._check(cur + WINDOW)
        drop = self.keep_from((first_window + len(probs)) * WINDOW) // WINDOW - self.probs_from
        if drop > 0:
            del self.probs[:drop]
            self.probs_from += drop

    def finish(self, total: int) -> None:
        if self.region is not None:
            self._close_region(self.pause if self.pause is not None else total)
        if self.chunk is not None and self.chunk_end is not None:
            self._emit(self.chunk, self.chunk_end)
        self.ready = [(s, min(e, total)) for s, e in self.ready]

    def _open_region(self, start: int) -> None:
        self.region = start
        padded = max(0, start - self.pad)
        if self.chunk is not None and self.chunk_end is not None and padded - self.chunk_end > self.max_gap:
            self._emit(self.chunk, self.chunk_end)
        if self.chunk is None:
            self.chunk, self.chunk_end = padded, None

    def _close_region(self, end: int) -> None:
        # (end <= chunk start: the region was cut inside its final pause, nothing of it is left)
        if end - self.region > self.min_speech and end > self.chunk:
            self.chunk_end = end + self.pad
        elif self.chunk_end is None:  # a blip that opened the chunk: no chunk after all
            self.chunk = None
        self.region = self.pause = None

    def _check(self, now: int) -> None:
        if self.chunk is None:
            return
        if self.region is None:
            # final once no later region could join: too long, or too far away
            if now - self.chunk > self.max_len or now - self.pad - self.chunk_end > self.max_gap:
                self._emit(self.chunk, self.chunk_end)
            return
        if now - self.chunk <= self.max_len:
            return
        if self.chunk_end is not None:  # the open region does not fit after the closed ones
            self._emit(self.chunk, self.chunk_end)
            self.chunk = max(0, self.region - self.pad)
            if now - self.chunk <= self.max_len:
                return
        cut = self._cut(now)  # the open region alone is longer than a chunk
        self._emit(self.chunk, cut)
        self.chunk = cut

    def _cut(self, now: int) -> int:
        """Where to cut the open chunk, inside its open region: the middle of the longest pause (one in the
        chunk's second half if any), else the least speech-like window of the second half."""
        start, end = self.chunk, min(now, self.chunk + self.max_len)
        first = -(-max(start, self.region) // WINDOW)
        probs = np.array(self.probs[first - self.probs_from : end // WINDOW - self.probs_from])
        low = np.concatenate([[False], probs < self.neg_threshold, [False]])
        runs = np.flatnonzero(low[1:] != low[:-1]).reshape(-1, 2) + first  # [first, last) window of each pause
        cuts = [((a + b) * WINDOW // 2, b - a) for a, b in runs.tolist() if (a + b) * WINDOW // 2 <= end]
        late = [(c, n) for c, n in cuts if c >= start + self.max_len // 2]
        if late or cuts:
            return max(late or cuts, key=lambda cn: (cn[1], cn[0]))[0]
        tail = probs[len(probs) // 2 :][::-1]  # reversed: the latest of equally low windows
        return (first + len(probs) - 1 - int(np.argmin(tail))) * WINDOW + WINDOW // 2

    def _emit(self, start: int, end: int) -> None:
        self.ready.append((start, min(end, start + self.max_len)))
        self.chunk = self.chunk_end = None


# --------------------------------------------------------------------------- public API


def iter_speech_chunks(blocks: Iterable[np.ndarray], options: VadOptions | None = None) -> Iterator[SpeechChunk]:
    """Speech chunks of a 16 kHz mono stream given as consecutive blocks (e.g. `audio.stream_audio`).

    Chunks are yielded as soon as they are final, so memory stays bounded by about one chunk plus one block
    whatever the length of the stream. Silence-only input yields nothing.
    """
    options = options or VadOptions()
    model = _backend(options)
    chunker = _Chunker(options)
    buf = np.zeros(0, dtype=np.float32)
    buf_start = 0  # sample index of buf[0]
    done = 0  # samples already turned into window probabilities

    def emit() -> Iterator[SpeechChunk]:
        for start, end in chunker.ready:
            audio = buf[start - buf_start : end - buf_start].copy()
            yield SpeechChunk(start / SAMPLE_RATE, end / SAMPLE_RATE, audio)
        chunker.ready.clear()

    pending: list[np.ndarray] = []  # blocks not yet in buf, until there is enough for a model call
    waiting = 0  # samples in pending
    for block in blocks:
        pending.append(np.asarray(block, dtype=np.float32).reshape(-1))
        check_finite(pending[-1], offset=buf_start + len(buf) + waiting)
        waiting += len(pending[-1])
        if buf_start + len(buf) + waiting - done < MIN_BATCH * WINDOW:
            continue
        buf = np.concatenate([buf, *pending])
        pending, waiting = [], 0
        n = (buf_start + len(buf) - done) // WINDOW
        for k in range(0, n, BATCH):  # bounded batches: a caller may pass one huge block
            m = min(BATCH, n - k)
            windows = buf[done - buf_start : done - buf_start + m * WINDOW].reshape(m, WINDOW)
            chunker.push(model(windows), done // WINDOW)
            done += m * WINDOW
        yield from emit()
        keep = min(chunker.keep_from(done), done)
        if keep > buf_start:
            buf = buf[keep - buf_start :].copy()
            buf_start = keep
    buf = np.concatenate([buf, *pending])
    total = buf_start + len(buf)
    if total > done:  # what is left, the last partial window zero-padded as Silero does
        n = -(-(total - done) // WINDOW)
        tail = np.zeros(n * WINDOW, dtype=np.float32)
        tail[: total - done] = buf[done - buf_start :]
        chunker.push(model(tail.reshape(n, WINDOW)), done // WINDOW)
    chunker.finish(total)
    yield from emit()


def speech_chunks(audio: np.ndarray, options: VadOptions | None = None) -> list[SpeechChunk]:
    """All speech chunks of a whole 16 kHz mono array."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    step = 30 * SAMPLE_RATE
    return list(iter_speech_chunks((audio[i : i + step] for i in range(0, len(audio), step)), options))
