"""The transcription pipeline: inputs -> speech chunks -> cross-file batches -> decoding -> timed segments.

A reader thread decodes the media (streamed, never whole in memory) and cuts it at pauses into chunks of
at most `vad.max_chunk_s`. The main thread pools chunks of many files (up to `pool_seconds` of
audio), sorts them by length and decodes them in batches within a memory budget (`batch_size` chunks,
`batch_seconds` of padded audio); with several devices, one thread per device takes the next batch from
the pool, each with its own copy of the model. Each output token is timed by CTC forced alignment against
the top CTC head, and a file's `Transcript` is yielded as soon as its last chunk is decoded.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .alignment import attention_align
from .audio import AudioError, stream_audio
from .checkpoints import check_device, load_model
from .decoding import DecodeOptions, decode_encoded, forced_align, with_hotword_spellings
from .features import SAMPLE_RATE, compute_features
from .hotwords import Hotword, restore_spelling
from .inputs import InputFile
from .model import EncoderOutput, FamaModel, length_groups
from .precision import precision_of
from .subtitles import Segment, Transcript, Word, compression_ratio
from .tokenizer import Tokenizer
from .vad import SpeechChunk, VadOptions, iter_speech_chunks

log = logging.getLogger(__name__)
FRAME_SECONDS = 0.04  # one encoder frame
BLOCK_SECONDS = 30.0  # audio read from ffmpeg at a time
SENTENCE_END = re.compile(r"[.!?…]$")


@dataclass
class TranscribeOptions:
    task: str = "transcribe"  # or "translate"
    language: str = "auto"  # transcribe: the spoken language or "auto"; translate: the target language
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    vad: VadOptions = field(default_factory=VadOptions)
    batch_size: int = 16  # most chunks decoded together
    batch_seconds: float = 480.0  # memory budget: padded audio seconds per batch
    pool_seconds: float = 900.0  # audio pooled (across files) and sorted by length before batching
    detect_seconds: float = 30.0  # speech used to detect the language: exactly the first this many seconds
    detect_source: bool = True  # translate: detect the spoken language too (recorded; the CLI warns if = target)
    readers: int = 2  # files decoded and VAD-split in parallel (hides ffmpeg start-up on many short files)
    split: bool = True  # False: each input is decoded whole, as one chunk, without VAD (pre-segmented test sets)


class TranscribeError(Exception):
    pass


@dataclass
class FileResult:
    item: InputFile
    transcript: Transcript | None = None
    error: str | None = None
    seconds: float = 0.0  # audio read


@dataclass
class RunProgress:
    """Where a `Pipeline.run` stands; given to its `progress` callback (every count only grows)."""

    files: int = 0  # inputs in the run
    files_read: int = 0  # inputs read to their end
    files_done: int = 0  # inputs finished (transcript or error)
    audio_read: float = 0.0  # seconds of audio read
    speech_found: float = 0.0  # seconds of speech (VAD chunks) found in it
    speech_done: float = 0.0  # seconds of speech decoded

    def speech_total(self) -> float | None:
        """Estimated seconds of speech in the whole run (None until a file has been read to its end)."""
        if self.files_read == self.files:
            return self.speech_found
        if not self.files_read:
            return None
        return max(self.speech_found, self.speech_found / self.files_read * self.files)


@dataclass
class _File:
    item: InputFile
    source: Any  # a path, "-", or a 16 kHz waveform (`mono_waveform`)
    lang_id: int | None
    language: str | None
    chunks: list[tuple[float, float]] = field(default_factory=list)
    results: dict[int, tuple[list[int], list[tuple[int, int]]]] = field(default_factory=dict)
    samples: int = 0
    read_done: bool = False
    finished: bool = False
    error: str | None = None
    detect_pending: bool = False  # its language is still to be detected
    detect_audio: list[torch.Tensor] = field(default_factory=list)  # its first `detect_seconds` of speech
    detect_scores: dict[str, float] = field(default_factory=dict)
    detected: str | None = None  # the spoken language found by detection


# ----------------------------------------------------------------------------------------------- decoding


def chunk_features(audios: list[torch.Tensor], model: FamaModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded features, computed one chunk at a time: batched fbank's temporaries are ~30x the audio."""
    feats = [compute_features([a], device=model.device)[0][0] for a in audios]
    lengths = torch.tensor([len(f) for f in feats], device=model.device)
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(model.dtype), lengths


def timing_source(model: FamaModel, transcript: bool = True) -> str:
    """What times the tokens: "top CTC" (forced alignment against the top CTC head), "intermediate CTC" (a
    transcript, when only that head exists: it reads the spoken words) or "cross-attention" (`alignment.py`)."""
    if model.auxiliary_decoder is not None:
        return "top CTC"
    if transcript and model.encoder.ctc_fc is not None and model.cfg.src_vocab_size == model.cfg.vocab_size:
        return "intermediate CTC"
    return "cross-attention"


class ChunkScores(NamedTuple):
    """How sure the model is of a chunk's tokens (a tuple: results cross processes as JSON, see cluster.py)."""

    logprobs: list[float] | None  # the decoder's log-probability of each token (None: greedy CTC, no decoder)
    ctc: list[float] | None  # each token's mean CTC posterior over its aligned frames (None: timed by attention)
    no_speech: float | None  # CTC probability that the chunk holds no token at all (every frame blank)


def chunk_scores(log_probs: torch.Tensor, length: int, tokens: list[int], spans: list[tuple[int, int]],
                 blank: int, logprobs: list[float] | None) -> ChunkScores:
    """`ChunkScores` of one chunk from its CTC log-posteriors [T, V] and its aligned tokens."""
    frames = log_probs[:length]
    no_speech = float(frames[:, blank].double().sum().exp())
    if not tokens:
        return ChunkScores(logprobs, [], no_speech)
    post = frames[:, torch.tensor(tokens, device=frames.device)].exp().T.cpu()  # U x T
    ctc = [float(post[u, a:b + 1].mean()) for u, (a, b) in enumerate(spans)]
    return ChunkScores(logprobs, ctc, no_speech)


@torch.no_grad()
def decode_chunks(model: FamaModel, audios: list[torch.Tensor], lang_ids: list[int], options: DecodeOptions,
                  transcripts: list[bool] | None = None
                  ) -> list[tuple[list[int], list[tuple[int, int]], ChunkScores]]:
    """Tokens, their (first, last) encoder frames and their scores for a batch of 16 kHz waveforms.
    `transcripts`: whether each row is a transcript (in the spoken language) rather than a translation (default:
    all are); it decides which head may time a model without the top CTC head (`timing_source`). The CTC scores
    come from the head that timed the row (none when the cross-attention did)."""
    feats, lengths = chunk_features(audios, model)
    transcripts = transcripts if transcripts is not None else [True] * len(audios)
    sources = [timing_source(model, t) for t in transcripts]
    enc = model.encode(feats, lengths, inter_ctc="intermediate CTC" in sources)
    langs = torch.tensor(lang_ids, device=model.device)
    best = [h[0] if h else None for h in decode_encoded(model, enc, langs, options, source_lengths=lengths)]
    tokens = [h.tokens if h else [] for h in best]
    log_probs: torch.Tensor | None = None
    blank = model.cfg.blank
    if sources[0] == "top CTC":
        log_probs = F.log_softmax(model.ctc_logits(enc, langs).float(), dim=-1)
        spans = forced_align(log_probs, enc.lengths, tokens, blank)
    else:
        spans = attention_align(model, enc, [t if s == "cross-attention" else [] for t, s in zip(tokens, sources)],
                                langs)
        if "intermediate CTC" in sources:
            log_probs, blank = F.log_softmax(enc.ctc_inter_logits.float(), dim=-1), model.cfg.src_blank
            inter = forced_align(log_probs, enc.lengths, [t if s == "intermediate CTC" else []
                                                          for t, s in zip(tokens, sources)], blank)
            spans = [i if s == "intermediate CTC" else a for a, i, s in zip(spans, inter, sources)]
    out = []
    for b, (h, toks, sp) in enumerate(zip(best, tokens, spans)):
        # the decoder's scores: the language tag first, </s> last
        logprobs = h.token_logprobs[1:1 + len(toks)] if h is not None and h.token_logprobs else None
        if log_probs is None or sources[b] == "cross-attention":
            scores = ChunkScores(logprobs, None, None)
        else:
            scores = chunk_scores(log_probs[b], int(enc.lengths[b]), toks, sp, blank, logprobs)
        out.append((toks, sp, scores))
    return out


@torch.no_grad()
def language_scores(model: FamaModel, tokenizer: Tokenizer, audios: list[torch.Tensor],
                    languages: list[str]) -> torch.Tensor:
    """[B, len(languages)]: log-likelihood, under the top CTC head conditioned on each language, of what the
    intermediate CTC head reads in the audio (without a top CTC head: under the attention decoder,
    `_reading_scores`).

    The intermediate head is always trained on the spoken-language transcript; the top head, given a
    language, writes that language (transcript or translation). Only the spoken language makes the two
    agree. (The decoder's tag probability cannot tell: ASR+ST training puts both tags after any audio.)
    """
    method = detection_method(model)
    if method is None:
        raise ValueError("language detection needs the intermediate CTC head, which this model does not have")
    feats, lengths = chunk_features(audios, model)
    enc = model.encode(feats, lengths, inter_ctc=True)
    best = enc.ctc_inter_logits.argmax(-1).cpu()
    blank = model.cfg.src_blank
    reads = []
    for row, n in zip(best, enc.lengths.tolist()):
        path = torch.unique_consecutive(row[:n])
        reads.append(path[path != blank])
    if method == "decoder":
        return _reading_scores(model, tokenizer, reads, enc, languages)
    targets = torch.cat(reads).to(model.device)
    target_lengths = torch.tensor([len(r) for r in reads], device=model.device)
    scores = []
    for lang in languages:
        tag = torch.full((len(audios),), tokenizer.lang_tag_id(lang), device=model.device)
        log_probs = F.log_softmax(model.ctc_logits(enc, tag).float(), dim=-1).transpose(0, 1)
        nll = F.ctc_loss(log_probs, targets, enc.lengths, target_lengths, blank=model.cfg.blank, reduction="none")
        scores.append(-nll)
    return torch.stack(scores, dim=1).cpu()


def detection_method(model: FamaModel) -> str | None:
    """How `language_scores` detects the spoken language: "ctc" (both CTC heads, sharing a dictionary),
    "decoder" (the intermediate CTC head's reading scored by the attention decoder: no top CTC head), or None (no
    intermediate CTC head: nothing reads the spoken words, so the language must be given)."""
    cfg = model.cfg
    if model.encoder.ctc_fc is None or cfg.src_vocab_size != cfg.vocab_size:
        return None
    return "ctc" if model.auxiliary_decoder is not None else "decoder"


def _reading_scores(model: FamaModel, tokenizer: Tokenizer, reads: list[torch.Tensor], enc: EncoderOutput,
                    languages: list[str]) -> torch.Tensor:
    """[B, len(languages)]: log-probability under the attention decoder, teacher-forced after each language tag,
    of each row's reading followed by `</s>` (the tag itself is forced, so not counted)."""
    B, n = len(reads), max((len(r) for r in reads), default=0)
    eos, pad = model.cfg.eos, model.cfg.pad
    prev = torch.full((B, n + 2), pad, dtype=torch.long)
    target = torch.full((B, n + 1), pad, dtype=torch.long)
    for b, r in enumerate(reads):
        prev[b, 0], prev[b, 2 : 2 + len(r)] = eos, r.cpu()
        target[b, : len(r)], target[b, len(r)] = r.cpu(), eos
    prev, target = prev.to(model.device), target.to(model.device)
    scores = []
    for lang in languages:
        prev[:, 1] = tokenizer.lang_tag_id(lang)
        lp = F.log_softmax(model.decoder(prev, enc)[:, 1:].float(), -1).gather(2, target.unsqueeze(-1))[..., 0]
        scores.append(lp.masked_fill(target == pad, 0.0).sum(1))
    return torch.stack(scores, dim=1).cpu()


MAX_PADDING = 1.3  # padded / real audio in a GPU batch: a short chunk starts a new batch rather than be padded more


def batch_padding(device: str | torch.device) -> float:
    """The most padded / real audio of a decoding batch on `device`: MAX_PADDING on a GPU, none on a CPU, where
    `FamaModel.encode` encodes rows of different lengths apart by itself and the decoder attends to each row's
    own frames, so that cutting a batch by length only left the decoder fewer rows per step (16 requests of
    2.8-6.2 s clips made a batch of 3 and one of 13)."""
    return MAX_PADDING if torch.device(device).type != "cpu" else math.inf


def _batches(order: list[int], lengths: list[int], options: TranscribeOptions,
             device: str | torch.device) -> Iterator[list[int]]:
    """Consecutive groups of `order` (sorted by length) within `options.batch_size` items and
    `options.batch_seconds` of padded audio, padded audio at most `batch_padding(device)` times the real one."""
    return length_groups(order, lengths, options.batch_size, int(options.batch_seconds * SAMPLE_RATE),
                         batch_padding(device))


def resolve_devices(spec: str | None) -> list[str]:
    """Devices named by `--device`: None = every visible GPU, else the CPU; "cuda" = every visible GPU;
    "cpu", "cuda:1" or a comma-separated list such as "cuda:0,cuda:2" = those. Raises ValueError."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec is None or not spec.strip():
        return [f"cuda:{i}" for i in range(gpus)] or ["cpu"]
    devices = []
    for name in (d.strip() for d in spec.split(",")):
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from None
        if device.type == "cuda" and (device.index or 0) >= gpus:
            check_device(name)  # says why: a CPU-only torch, no GPU visible, or fewer GPUs than asked for
            raise ValueError(f"{name}: no such GPU ({gpus} visible)")
        devices += [f"cuda:{i}" for i in range(gpus)] if name == "cuda" else [name]
    return devices


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


# ----------------------------------------------------------------------------------------------- segments


def make_segments(tokenizer: Tokenizer, chunks: list[tuple[float, float]],
                  results: list[tuple[list[int], list[tuple[int, int]]]],
                  hotwords: Sequence[Hotword] = ()) -> list[Segment]:
    """Timed words from tokens and their frames, split into segments at sentence ends, within each chunk;
    hotwords are spelled as given (`hotwords.restore_spelling`)."""
    specials = {tokenizer.bos, tokenizer.pad, tokenizer.eos, tokenizer.unk, tokenizer.blank}
    specials |= {tokenizer.lang_tag_id(lang) for lang in tokenizer.languages}
    segments = []
    for (c_start, c_end), result in zip(chunks, results):
        tokens, spans = result[0], result[1]
        scores = ChunkScores(*result[2]) if len(result) > 2 and result[2] is not None else None
        groups: list[tuple[list[int], float, float]] = []  # positions of the word's tokens, start, end
        for u, (tok, (first, last)) in enumerate(zip(tokens, spans)):
            if tok in specials:
                continue
            t0 = min(c_start + first * FRAME_SECONDS, c_end)
            t1 = min(c_start + (last + 1) * FRAME_SECONDS, c_end)
            if not groups or tokenizer.id_to_piece(tok).startswith("\u2581"):
                groups.append(([u], t0, t1))
            else:
                pos, s, _ = groups[-1]
                groups[-1] = (pos + [u], s, t1)
        words, positions = [], []
        for pos, s, e in groups:
            if text := tokenizer.decode(tokens[u] for u in pos):
                words.append(_word(s, e, text, pos, scores))
                positions.append(pos)
        if hotwords:
            for w, text in zip(words, restore_spelling([w.text for w in words], hotwords)):
                w.text = text
        first = 0
        for n, w in enumerate(words):
            if SENTENCE_END.search(w.text) or n == len(words) - 1:
                segments.append(_segment(words[first:n + 1], [u for p in positions[first:n + 1] for u in p], scores))
                first = n + 1
    return segments


def _word(start: float, end: float, text: str, pos: list[int], scores: ChunkScores | None) -> Word:
    """A word, with its confidence when the chunk has scores: the mean decoder probability of its tokens
    (as whisper's word probability) and their mean CTC posterior on their aligned frames."""
    if scores is None:
        return Word(start, end, text)
    probability = None if scores.logprobs is None else sum(math.exp(scores.logprobs[u]) for u in pos) / len(pos)
    ctc = None if scores.ctc is None else sum(scores.ctc[u] for u in pos) / len(pos)
    return Word(start, end, text, probability, ctc)


def _segment(words: list[Word], pos: list[int], scores: ChunkScores | None) -> Segment:
    text = " ".join(w.text for w in words)
    seg = Segment(words[0].start, words[-1].end, text, words, compression_ratio=compression_ratio(text))
    if scores is not None:
        if scores.logprobs is not None:
            seg.avg_logprob = sum(scores.logprobs[u] for u in pos) / len(pos)
        seg.no_speech_prob = scores.no_speech
    return seg


# ----------------------------------------------------------------------------------------------- pipeline


MAX_CHANNELS = 8  # 7.1 surround: more than this along an axis is frames, not channels


def mono_waveform(samples: Any) -> np.ndarray:
    """Samples (an array or tensor of 16 kHz audio) as 1-D float32; ValueError for a shape that is not audio.

    Besides 1-D mono, a multichannel array is accepted the way its readers return it, (frames, channels) from
    soundfile or (channels, frames) from torchaudio, and downmixed by the mean, as media files are. The
    channel axis is the one of at most MAX_CHANNELS entries; when both or neither are, the order is ambiguous.
    """
    wave = np.asarray(samples.detach().cpu() if isinstance(samples, torch.Tensor) else samples, dtype=np.float32)
    if wave.ndim == 1:
        return wave
    if wave.ndim == 2:
        if 1 in wave.shape:
            return wave.reshape(-1)
        few = [n <= MAX_CHANNELS for n in wave.shape]
        if few == [False, True]:
            return wave.mean(axis=1)
        if few == [True, False]:
            return wave.mean(axis=0)
    raise ValueError(f"a waveform of shape {tuple(wave.shape)}: give 1-D 16 kHz mono samples, or (frames, channels) "
                     f"or (channels, frames) with at most {MAX_CHANNELS} channels")


def _waveform_blocks(source: Any, block_seconds: float, processes: set | None = None) -> Iterator[np.ndarray]:
    if callable(source):  # read lazily, in the reader thread
        source = source()
    if isinstance(source, (str, Path)):
        yield from stream_audio(str(source), block_seconds, processes=processes)
        return
    try:
        wave = mono_waveform(source)
    except ValueError as e:
        raise AudioError(str(e)) from None
    step = int(block_seconds * SAMPLE_RATE)
    for i in range(0, len(wave), step):
        yield wave[i:i + step]


def _whole(blocks: Iterable[np.ndarray]) -> Iterator[SpeechChunk]:
    audio = np.concatenate([np.asarray(b, dtype=np.float32) for b in blocks] or [np.zeros(0, np.float32)])
    if len(audio):
        yield SpeechChunk(0.0, len(audio) / SAMPLE_RATE, audio)


def _reader(files: list[_File], next_file: Iterator[int], options: TranscribeOptions, out: queue.Queue,
            stop: threading.Event, processes: set) -> None:
    """Thread: decode each file's media, cut it at pauses, and queue (file index, chunk) then (index, None).

    It checks `stop` at every block and chunk; a read blocked in ffmpeg is ended by killing `processes`.
    """
    reading_thread()
    for i in next_file:
        f = files[i]
        if stop.is_set():
            return

        def counted(blocks: Iterable[np.ndarray], f: _File = f) -> Iterator[np.ndarray]:
            for b in blocks:
                if stop.is_set():
                    return
                f.samples += len(b)
                yield b

        try:
            blocks = counted(_waveform_blocks(f.source, BLOCK_SECONDS, processes))
            for chunk in iter_speech_chunks(blocks, options.vad) if options.split else _whole(blocks):
                if stop.is_set():
                    return
                out.put((i, chunk))
            if stop.is_set():
                return
            if f.samples == 0:
                raise AudioError("no audio samples (empty or zero-length stream)")
        except Exception as e:  # one bad file never stops the others
            if stop.is_set():
                return
            reason = str(e) if isinstance(e, AudioError) else f"{type(e).__name__}: {e}"
            f.error = reason.removeprefix(f"{f.source}: ")
        out.put((i, None))
    out.put(None)


def reading_thread() -> None:
    """Run this thread's torch work (VAD) on one thread. A thread that has run torch's OpenMP regions on several
    threads keeps its own team of them; once more threads are in teams than there are cores, libgomp stops
    spinning between regions, and the decoding thread's many small regions each wait to wake theirs: a
    2-core CPU decoded 40 % (batches) to 70 % (single clips) slower while a reader thread was alive."""
    torch.set_num_threads(1)


def compute_thread() -> ThreadPoolExecutor:
    """A one-thread executor to load a model in and then decode on, when the caller's own thread cannot decode
    (a server's, a Ray Data worker's): decoding on another thread than the one that loaded the model made single
    clips 70 % slower on a 2-core CPU (two threads with teams of their own: see `reading_thread`)."""
    return ThreadPoolExecutor(1, thread_name_prefix="fama-decode")


def _stop_readers(readers: list[threading.Thread], chunks: queue.Queue, processes: set, wait: float) -> None:
    """Unblock the readers so that they see `stop`: empty their queue, kill their ffmpeg; wait at most `wait` s."""
    deadline = time.monotonic() + wait
    while any(r.is_alive() for r in readers) and time.monotonic() < deadline:
        for proc in list(processes):
            try:
                proc.kill()
            except OSError:
                pass
        try:
            chunks.get(timeout=0.05)
        except queue.Empty:
            pass


def check_options(options: TranscribeOptions, model: FamaModel | None = None,
                  tokenizer: Tokenizer | None = None) -> None:
    """ValueError naming the option, for options that cannot work; with `model`, also for that model."""
    o, d = options, options.decode
    checks = [
        (o.task in ("transcribe", "translate"), f"unknown task {o.task!r}; choose transcribe or translate"),
        (o.task != "translate" or o.language != "auto", "translation needs a target language"),
        (d.beam_size >= 1, f"beam size must be at least 1, not {d.beam_size}"),
        (d.max_len_b >= 1, f"max tokens must be at least 1, not {d.max_len_b}"),
        (d.no_repeat_ngram_size >= 0, f"no-repeat n-gram size must be 0 (off) or more, not {d.no_repeat_ngram_size}"),
        (0.0 <= d.ctc_weight <= 1.0, f"CTC weight must be between 0 and 1, not {d.ctc_weight}"),
        (not (d.hotwords and d.greedy), "hotwords need the beam search, not greedy CTC"),
        (1.0 <= o.vad.max_chunk_s <= 120.0, f"max chunk seconds must be between 1 and 120, not {o.vad.max_chunk_s}"),
        (o.batch_size >= 1, f"batch size must be at least 1, not {o.batch_size}"),
        (o.batch_seconds > 0 and o.pool_seconds > 0, "batch_seconds and pool_seconds must be positive"),
        (o.detect_seconds > 0, f"detect_seconds must be positive, not {o.detect_seconds}"),
        (o.readers >= 1, f"readers must be at least 1, not {o.readers}"),
    ]
    if model is not None:
        checks.append((d.beam_size < model.cfg.vocab_size,
                       f"beam size {d.beam_size} must be smaller than the model's vocabulary "
                       f"({model.cfg.vocab_size} tokens)"))
        checks.append((o.language != "auto" or detection_method(model) is not None,
                       "--lang auto needs a model with the intermediate CTC head (sharing the decoder's dictionary), "
                       "which this one lacks; give the language (--lang en, --lang it)"))
        checks.append((not d.greedy or model.auxiliary_decoder is not None,
                       "greedy CTC decoding needs the top CTC head, which this model does not have"))
    if tokenizer is not None:
        checks.append((o.language == "auto" or o.language in tokenizer.languages,
                       f"language {o.language!r} is not one of the model's ({', '.join(tokenizer.languages)})"))
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


class Pipeline:
    """A loaded model with its options; `run` turns many inputs into transcripts."""

    def __init__(self, model: FamaModel, tokenizer: Tokenizer, options: TranscribeOptions | None = None,
                 model_name: str = "", devices: list[str] | None = None):
        """`devices`: decode on each of these with its own copy of `model` (default: `model`'s device only).

        Raises ValueError for options that cannot work with this model.
        """
        self.options = options or TranscribeOptions()
        check_options(self.options, model, tokenizer)
        self.options = dataclasses.replace(self.options, decode=with_hotword_spellings(self.options.decode, tokenizer))
        self.model, self.tokenizer = model, tokenizer
        if devices and torch.device(devices[0]) != model.device:
            model.to(devices[0])
        self.replicas = [model] + [copy.deepcopy(model).to(d) for d in (devices or [])[1:]]
        self.model_name = model_name
        o = self.options
        shared_heads = detection_method(model) is not None
        if model.auxiliary_decoder is None and o.decode.ctc_weight > 0 and not o.decode.greedy:
            log.warning(f"note: this model has no top CTC head: attention-only beam search (beam "
                              f"{o.decode.beam_size}, no-repeat n-gram {o.decode.no_repeat_ngram_size}, as FBK's demo "
                              f"decodes); tokens timed by the {timing_source(model, o.task == 'transcribe')}")
        # translation: the source language is detected too (when the model can), to say so when it is the target
        self.detect = o.language == "auto" or (o.task == "translate" and o.detect_source and shared_heads)

    def run(self, items: list[InputFile], sources: list[Any] | None = None,
            progress: Callable[[RunProgress], None] | None = None) -> Iterator[FileResult]:
        """FileResults, each as soon as its file is done (not necessarily in input order).

        `sources` replaces the paths of `items` with waveforms (library use), or with functions that return a
        waveform or path when the file's turn comes; `progress` gets a `RunProgress` whenever audio was read
        or decoded. Stopping early (closing the iterator, Ctrl-C) stops the readers and their ffmpeg processes.
        """
        o, tok = self.options, self.tokenizer
        fixed = None if o.language == "auto" else tok.lang_tag_id(o.language)
        files = [_File(it, it.path if sources is None else sources[i], fixed, None if fixed is None else o.language,
                       detect_pending=self.detect) for i, it in enumerate(items)]
        stats = RunProgress(files=len(files))
        chunks: queue.Queue = queue.Queue(maxsize=8)  # the reader stays at most a few chunks ahead
        stop, processes = threading.Event(), set()
        next_file = iter(range(len(files)))  # shared by the readers; next() on a range iterator is atomic
        readers = [threading.Thread(target=_reader, args=(files, next_file, o, chunks, stop, processes), daemon=True)
                   for _ in range(max(1, min(o.readers, len(files))))]
        for reader in readers:
            reader.start()

        active: set[int] = set()  # files being read: their `samples` still grow
        read_samples = 0  # of the files read to the end

        def report() -> None:
            if progress:
                stats.audio_read = (read_samples + sum(files[i].samples for i in active)) / SAMPLE_RATE
                progress(dataclasses.replace(stats))

        running = len(readers)
        pool: list[tuple[int, int, torch.Tensor]] = []  # file index, chunk index, audio
        reading = True
        try:
            while reading or pool:
                # chunks of files whose language is still undecided wait in the pool: read beyond them
                waiting = sum(len(p[2]) for p in pool if files[p[0]].lang_id is None) / SAMPLE_RATE
                pooled = sum(len(p[2]) for p in pool) / SAMPLE_RATE
                while reading and pooled < o.pool_seconds + waiting:
                    msg = chunks.get()
                    if msg is None:
                        running -= 1
                        reading = running > 0
                        continue
                    i, chunk = msg
                    f = files[i]
                    if chunk is None:
                        f.read_done = True
                        stats.files_read += 1
                        active.discard(i)
                        read_samples += f.samples
                        if f.error:
                            pool = [p for p in pool if p[0] != i]
                        if self._finished(f):
                            stats.files_done += 1
                            yield self._finish(f)
                        report()
                        continue
                    audio = torch.as_tensor(np.asarray(chunk.audio, dtype=np.float32)).reshape(-1)
                    active.add(i)
                    pool.append((i, len(f.chunks), audio))
                    f.chunks.append((float(chunk.start), float(chunk.end)))
                    self._keep_for_detection(f, audio)
                    pooled += len(audio) / SAMPLE_RATE
                    stats.speech_found += len(audio) / SAMPLE_RATE
                    report()
                if pool or any(f.detect_pending and f.read_done for f in files):
                    for result in self._decode_pool(files, pool, stats, report):
                        stats.files_done += 1
                        yield result
                        report()
                    pool = [p for p in pool if files[p[0]].lang_id is None and files[p[0]].error is None]
        finally:
            stop.set()
            _stop_readers(readers, chunks, processes, wait=1.0)

    def _keep_for_detection(self, f: _File, audio: torch.Tensor) -> None:
        """Keep exactly the first `detect_seconds` of the file's speech for language detection."""
        if not f.detect_pending:
            return
        room = int(self.options.detect_seconds * SAMPLE_RATE) - sum(len(a) for a in f.detect_audio)
        if room > 0:
            f.detect_audio.append(audio[:room])

    def _finished(self, f: _File) -> bool:
        if f.finished or not f.read_done:
            return False
        return bool(f.error) or (len(f.results) == len(f.chunks) and not f.detect_pending)

    def _map(self, fn: Callable[[FamaModel, list[int]], Any],
             batches: Iterable[list[int]]) -> Iterator[tuple[list[int], Any, Exception | None]]:
        """(batch, fn(replica, batch), None), or (batch, None, error), for each batch, as the replicas finish them."""
        if len(self.replicas) == 1:
            for b in batches:
                try:
                    result, error = fn(self.replicas[0], b), None
                except Exception as e:
                    result, error = None, e
                yield b, result, error
            return
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for b in batches:
            todo.put(b)
        done: queue.SimpleQueue = queue.SimpleQueue()

        def work(replica: FamaModel) -> None:
            while True:
                try:
                    b = todo.get_nowait()
                except queue.Empty:
                    break
                try:
                    done.put((b, fn(replica, b), None))
                except Exception as e:
                    done.put((b, None, e))
            done.put(None)

        workers = [threading.Thread(target=work, args=(r,), daemon=True) for r in self.replicas]
        for w in workers:
            w.start()
        running = len(workers)
        try:
            while running:
                msg = done.get()
                if msg is None:
                    running -= 1
                else:
                    yield msg
        finally:  # stopped early: the workers finish their current batch, take no other, and are joined
            while True:
                try:
                    todo.get_nowait()
                except queue.Empty:
                    break
            for w in workers:
                w.join()

    def _decode_pool(self, files: list[_File], pool: list[tuple[int, int, torch.Tensor]], stats: RunProgress,
                     report: Callable[[], None]) -> Iterator[FileResult]:
        """Detect the languages that can be decided, decode every pooled chunk whose language is known."""
        o = self.options
        self._detect_languages(files)
        ready = [p for p in pool if files[p[0]].lang_id is not None and files[p[0]].error is None]
        lengths = [len(p[2]) for p in ready]
        order = sorted(range(len(ready)), key=lambda j: -lengths[j])
        batches = list(_batches(order, lengths, o, self.model.device))

        def decode(model: FamaModel, batch: list[int]) -> list:
            return self._decode_batch(model, [ready[j][2] for j in batch], [files[ready[j][0]].lang_id for j in batch])

        for batch, results, error in self._map(decode, batches):
            if error is not None:
                for j in batch:
                    files[ready[j][0]].error = f"decoding failed: {type(error).__name__}: {error}"
                results = []
            for j, r in zip(batch, results):
                i, c, _ = ready[j]
                files[i].results[c] = r
            stats.speech_done += sum(lengths[j] for j in batch) / SAMPLE_RATE
            report()
        for f in files:
            if self._finished(f):
                yield self._finish(f)

    def _decode_batch(self, model: FamaModel, audios: list[torch.Tensor], lang_ids: list[int]) -> list:
        try:
            return decode_chunks(model, audios, lang_ids, self.options.decode,
                                 transcripts=[self.options.task == "transcribe"] * len(audios))
        except Exception as e:
            if not _is_oom(e) or len(audios) == 1:
                raise
        # out of memory: retried in halves here, outside the `except`, so that the failed attempt's tensors
        # (held by the exception's traceback) are freed first
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(audios) // 2
        first = self._decode_batch(model, audios[:half], lang_ids[:half])
        return first + self._decode_batch(model, audios[half:], lang_ids[half:])

    def _detect_languages(self, files: list[_File]) -> None:
        """Detect the language of every file whose first `detect_seconds` of speech (or whole speech) is in.

        Each file is scored on exactly that audio, in batches of its own chunks only, so that its scores do
        not depend on which other files happened to be read at the same time.
        """
        target = int(self.options.detect_seconds * SAMPLE_RATE)
        due = [i for i, f in enumerate(files) if f.detect_pending and f.error is None
               and (f.read_done or sum(len(a) for a in f.detect_audio) >= target)]
        for i in [i for i, f in enumerate(files) if f.detect_pending and f.error]:
            files[i].detect_pending = False
        if not due:
            return
        languages = self.tokenizer.languages
        picks = [(i, a) for i in due for a in files[i].detect_audio]
        batches = []
        for i in due:
            own = [j for j, (k, _) in enumerate(picks) if k == i]
            lengths = {j: len(picks[j][1]) for j in own}
            order = sorted(own, key=lambda j: (-lengths[j], j))
            batches += _batches(order, [lengths.get(j, 0) for j in range(len(picks))], self.options,
                                self.model.device)

        def score(model: FamaModel, batch: list[int]) -> torch.Tensor:
            return language_scores(model, self.tokenizer, [picks[j][1] for j in batch], languages)

        rows: dict[int, list[float]] = {}
        for batch, scores, error in self._map(score, batches):
            for k, j in enumerate(batch):
                if error is None:
                    rows[j] = scores[k].tolist()
                else:
                    f = files[picks[j][0]]
                    f.error = f.error or f"language detection failed: {type(error).__name__}: {error}"
        for j in sorted(rows):  # summed in chunk order: the same totals however the batches were spread
            f = files[picks[j][0]]
            for lang, s in zip(languages, rows[j]):
                f.detect_scores[lang] = f.detect_scores.get(lang, 0.0) + s
        for i in due:
            f = files[i]
            f.detect_pending, f.detect_audio = False, []
            if f.error is None and f.detect_scores:
                f.detected = max(f.detect_scores, key=f.detect_scores.get)
                if f.lang_id is None:
                    f.language, f.lang_id = f.detected, self.tokenizer.lang_tag_id(f.detected)
            elif f.error is None and f.lang_id is None and f.chunks:
                f.error = "language detection found nothing to score; give the language"

    def _finish(self, f: _File) -> FileResult:
        f.finished = True
        seconds = f.samples / SAMPLE_RATE
        if f.error:
            return FileResult(f.item, error=f.error, seconds=seconds)
        o = self.options
        order = sorted(range(len(f.chunks)), key=lambda c: f.chunks[c][0])
        segments = make_segments(self.tokenizer, [f.chunks[c] for c in order], [f.results[c] for c in order],
                                 o.decode.hotwords)
        language = f.language or (o.language if o.language != "auto" else None)
        if o.task == "translate":
            source = f.detected or next((lang for lang in self.tokenizer.languages if lang != o.language), None)
        else:
            source = language
        decode = {k: v for k, v in dataclasses.asdict(o.decode).items() if k != "hotword_spellings"}
        options = {"task": o.task, "language": o.language, **decode,
                   "vad": dataclasses.asdict(o.vad), "batch_size": o.batch_size,
                   "precision": precision_of(self.model)}
        if f.detect_scores:
            options["language_scores"] = {k: round(v, 4) for k, v in f.detect_scores.items()}
        transcript = Transcript(segments, language or "", o.task, source, seconds, f.item.name, self.model_name,
                                options)
        return FileResult(f.item, transcript, seconds=seconds)


# ----------------------------------------------------------------------------------------------- library API


def _run_library(audio: Any, model: Any, options: TranscribeOptions, device: str | None,
                 dtype: str | None) -> Transcript | list[Transcript]:
    single = not isinstance(audio, (list, tuple))
    inputs = [audio] if single else list(audio)
    for k, a in enumerate(inputs):  # a waveform of no audio shape is refused before the model loads
        if not isinstance(a, (str, Path)) and not callable(a):
            try:
                inputs[k] = mono_waveform(a)
            except ValueError as e:
                raise ValueError(f"<array {k}>: {e}") from None
    # a model loaded here goes on one device (the first GPU, else the CPU) unless `device` names more
    devices = resolve_devices(device) if device is not None else None
    if devices is None and isinstance(model, (str, Path)):
        devices = resolve_devices(None)[:1]
    if isinstance(model, (str, Path)):
        name = str(model)
        model, tokenizer = load_model(model, device=devices[0], dtype=dtype)
    else:
        model, tokenizer = model
        name = ""
    items = [InputFile(str(a) if isinstance(a, (str, Path)) else f"<array {k}>") for k, a in enumerate(inputs)]
    results = {id(r.item): r for r in Pipeline(model, tokenizer, options, name, devices).run(items, inputs)}
    out = []
    for it in items:
        r = results[id(it)]
        if r.error:
            raise TranscribeError(f"{it.name}: {r.error}")
        out.append(r.transcript)
    return out[0] if single else out


def _options(task: str, language: str, options: TranscribeOptions | None, decode_kwargs: dict) -> TranscribeOptions:
    o = dataclasses.replace(options or TranscribeOptions(), task=task, language=language)
    if decode_kwargs:
        o.decode = dataclasses.replace(o.decode, **decode_kwargs)
    return o


def transcribe(audio: Any, model: Any = "fama-small", language: str = "auto", *,
               options: TranscribeOptions | None = None, device: str | None = None, dtype: str | None = None,
               **decode_kwargs: Any) -> Transcript | list[Transcript]:
    """Speech recognition of a media path, a 16 kHz waveform, or a list of them (-> a list).

    A waveform is 1-D, or (frames, channels) as soundfile reads it, or (channels, frames) as torchaudio does
    (downmixed by the mean; `mono_waveform`); any other shape is a ValueError before the model loads.

    `model` is a name/path for `load_model` or a `(model, tokenizer)` pair; `language` is "en", "it" or
    "auto"; `device`: as `--device` ("cuda:0,cuda:1" decodes on both; default: a model named by `model` goes
    on the first GPU, else the CPU, and a given model stays where it is);
    extra keyword arguments set `DecodeOptions` fields (beam_size=1, greedy=True, ...).
    """
    return _run_library(audio, model, _options("transcribe", language, options, decode_kwargs), device, dtype)


def translate(audio: Any, model: Any = "fama-small", to: str = "en", *,
              options: TranscribeOptions | None = None, device: str | None = None, dtype: str | None = None,
              **decode_kwargs: Any) -> Transcript | list[Transcript]:
    """Speech translation into `to` (the source is the model's other language); see `transcribe`."""
    return _run_library(audio, model, _options("translate", to, options, decode_kwargs), device, dtype)
