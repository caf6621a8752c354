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
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .audio import AudioError, stream_audio
from .checkpoints import load_model
from .decoding import DecodeOptions, decode_encoded, forced_align
from .features import SAMPLE_RATE, compute_features
from .inputs import InputFile
from .model import FamaModel
from .precision import precision_of
from .subtitles import Segment, Transcript, Word
from .tokenizer import Tokenizer
from .vad import VadOptions, iter_speech_chunks

FRAME_SECONDS = 0.04  # one encoder frame
BLOCK_SECONDS = 30.0  # audio read from ffmpeg at a time
_SENTENCE_END = re.compile(r"[.!?…]$")


@dataclass
class TranscribeOptions:
    task: str = "transcribe"  # or "translate"
    language: str = "auto"  # transcribe: the spoken language or "auto"; translate: the target language
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    vad: VadOptions = field(default_factory=VadOptions)
    batch_size: int = 16  # most chunks decoded together
    batch_seconds: float = 480.0  # memory budget: padded audio seconds per batch
    pool_seconds: float = 900.0  # audio pooled (across files) and sorted by length before batching
    detect_seconds: float = 30.0  # speech used to detect the language
    readers: int = 2  # files decoded and VAD-split in parallel (hides ffmpeg start-up on many short files)


class TranscribeError(Exception):
    pass


@dataclass
class FileResult:
    item: InputFile
    transcript: Transcript | None = None
    error: str | None = None
    seconds: float = 0.0  # audio read


@dataclass
class _File:
    item: InputFile
    source: Any  # a path, "-", or a 1-D 16 kHz waveform
    lang_id: int | None
    language: str | None
    chunks: list[tuple[float, float]] = field(default_factory=list)
    results: dict[int, tuple[list[int], list[tuple[int, int]]]] = field(default_factory=dict)
    samples: int = 0
    read_done: bool = False
    finished: bool = False
    error: str | None = None
    detect_scores: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- decoding


def _features(audios: list[torch.Tensor], model: FamaModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded features, computed one chunk at a time: batched fbank's temporaries are ~30x the audio."""
    feats = [compute_features([a], device=model.device)[0][0] for a in audios]
    lengths = torch.tensor([len(f) for f in feats], device=model.device)
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(model.dtype), lengths


@torch.no_grad()
def decode_chunks(model: FamaModel, audios: list[torch.Tensor], lang_ids: list[int],
                  options: DecodeOptions) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Tokens and their (first, last) encoder frames for a batch of 16 kHz waveforms."""
    feats, lengths = _features(audios, model)
    enc = model.encode(feats, lengths)
    langs = torch.tensor(lang_ids, device=model.device)
    tokens = [h[0].tokens if h else [] for h in decode_encoded(model, enc, langs, options, source_lengths=lengths)]
    log_probs = F.log_softmax(model.ctc_logits(enc, langs).float(), dim=-1)
    spans = forced_align(log_probs, enc.lengths, tokens, model.cfg.blank)
    return list(zip(tokens, spans))


@torch.no_grad()
def language_scores(model: FamaModel, tokenizer: Tokenizer, audios: list[torch.Tensor],
                    languages: list[str]) -> torch.Tensor:
    """[B, len(languages)]: log-likelihood, under the top CTC head conditioned on each language, of what the
    intermediate CTC head reads in the audio.

    The intermediate head is always trained on the spoken-language transcript; the top head, given a
    language, writes that language (transcript or translation). Only the spoken language makes the two
    agree. (The decoder's tag probability cannot tell: ASR+ST training puts both tags after any audio.)
    """
    if model.cfg.src_vocab_size != model.cfg.vocab_size:
        raise ValueError("language detection needs the intermediate and top CTC heads to share a dictionary")
    feats, lengths = _features(audios, model)
    enc = model.encode(feats, lengths, inter_ctc=True)
    best = enc.ctc_inter_logits.argmax(-1).cpu()
    blank = model.cfg.src_blank
    reads = []
    for row, n in zip(best, enc.lengths.tolist()):
        path = torch.unique_consecutive(row[:n])
        reads.append(path[path != blank])
    targets = torch.cat(reads).to(model.device)
    target_lengths = torch.tensor([len(r) for r in reads], device=model.device)
    scores = []
    for lang in languages:
        tag = torch.full((len(audios),), tokenizer.lang_tag_id(lang), device=model.device)
        log_probs = F.log_softmax(model.ctc_logits(enc, tag).float(), dim=-1).transpose(0, 1)
        nll = F.ctc_loss(log_probs, targets, enc.lengths, target_lengths, blank=model.cfg.blank, reduction="none")
        scores.append(-nll)
    return torch.stack(scores, dim=1).cpu()


MAX_PADDING = 1.3  # padded / real audio in a batch: a short chunk starts a new batch rather than be padded more


def _batches(order: list[int], lengths: list[int], batch_size: int, batch_samples: int,
             max_padding: float = MAX_PADDING) -> Iterator[list[int]]:
    """Consecutive groups of `order` (sorted by length) within `batch_size` items, `batch_samples` padded, and
    padded samples at most `max_padding` times the real ones."""
    batch: list[int] = []
    real = 0
    for i in order:
        longest = max([lengths[j] for j in batch] + [lengths[i]])
        padded = longest * (len(batch) + 1)
        if batch and (len(batch) >= batch_size or padded > batch_samples or padded > max_padding * (real + lengths[i])):
            yield batch
            batch, real = [], 0
        batch.append(i)
        real += lengths[i]
    if batch:
        yield batch


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
            raise ValueError(f"{name}: no such GPU ({gpus} visible)")
        devices += [f"cuda:{i}" for i in range(gpus)] if name == "cuda" else [name]
    return devices


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


# ----------------------------------------------------------------------------------------------- segments


def make_segments(tokenizer: Tokenizer, chunks: list[tuple[float, float]],
                  results: list[tuple[list[int], list[tuple[int, int]]]]) -> list[Segment]:
    """Timed words from tokens and their frames, split into segments at sentence ends, within each chunk."""
    specials = {tokenizer.bos, tokenizer.pad, tokenizer.eos, tokenizer.unk, tokenizer.blank}
    specials |= {tokenizer.lang_tag_id(lang) for lang in tokenizer.languages}
    segments = []
    for (c_start, c_end), (tokens, spans) in zip(chunks, results):
        groups: list[tuple[list[int], float, float]] = []  # word tokens, start, end
        for tok, (first, last) in zip(tokens, spans):
            if tok in specials:
                continue
            t0 = min(c_start + first * FRAME_SECONDS, c_end)
            t1 = min(c_start + (last + 1) * FRAME_SECONDS, c_end)
            if not groups or tokenizer.id_to_piece(tok).startswith("\u2581"):
                groups.append(([tok], t0, t1))
            else:
                ids, s, _ = groups[-1]
                groups[-1] = (ids + [tok], s, t1)
        words = [Word(s, e, text) for ids, s, e in groups if (text := tokenizer.decode(ids))]
        current: list[Word] = []
        for w in words:
            current.append(w)
            if _SENTENCE_END.search(w.text):
                segments.append(_segment(tokenizer, current))
                current = []
        if current:
            segments.append(_segment(tokenizer, current))
    return segments


def _segment(tokenizer: Tokenizer, words: list[Word]) -> Segment:
    return Segment(words[0].start, words[-1].end, " ".join(w.text for w in words), words)


# ----------------------------------------------------------------------------------------------- pipeline


def _waveform_blocks(source: Any, block_seconds: float) -> Iterator[np.ndarray]:
    if isinstance(source, (str, Path)):
        yield from stream_audio(str(source), block_seconds)
        return
    wave = np.asarray(source.cpu() if isinstance(source, torch.Tensor) else source, dtype=np.float32).reshape(-1)
    step = int(block_seconds * SAMPLE_RATE)
    for i in range(0, len(wave), step):
        yield wave[i:i + step]


def _reader(files: list[_File], next_file: Iterator[int], options: TranscribeOptions, out: queue.Queue,
            stop: threading.Event) -> None:
    """Thread: decode each file's media, cut it at pauses, and queue (file index, chunk) then (index, None)."""
    for i in next_file:
        f = files[i]
        if stop.is_set():
            return

        def counted(blocks: Iterable[np.ndarray], f: _File = f) -> Iterator[np.ndarray]:
            for b in blocks:
                f.samples += len(b)
                yield b

        try:
            for chunk in iter_speech_chunks(counted(_waveform_blocks(f.source, BLOCK_SECONDS)), options.vad):
                if stop.is_set():
                    return
                out.put((i, chunk))
            if f.samples == 0:
                raise AudioError("no audio samples (empty or zero-length stream)")
        except Exception as e:  # one bad file never stops the others
            reason = str(e) if isinstance(e, AudioError) else f"{type(e).__name__}: {e}"
            f.error = reason.removeprefix(f"{f.source}: ")
        out.put((i, None))
    out.put(None)


class Pipeline:
    """A loaded model with its options; `run` turns many inputs into transcripts."""

    def __init__(self, model: FamaModel, tokenizer: Tokenizer, options: TranscribeOptions | None = None,
                 model_name: str = "", devices: list[str] | None = None):
        """`devices`: decode on each of these with its own copy of `model` (default: `model`'s device only)."""
        self.model, self.tokenizer = model, tokenizer
        if devices and torch.device(devices[0]) != model.device:
            model.to(devices[0])
        self.replicas = [model] + [copy.deepcopy(model).to(d) for d in (devices or [])[1:]]
        self.options = options or TranscribeOptions()
        self.model_name = model_name
        o = self.options
        if o.task not in ("transcribe", "translate"):
            raise ValueError(f"unknown task {o.task!r}; choose transcribe or translate")
        if o.task == "translate" and o.language == "auto":
            raise ValueError("translation needs a target language")
        if o.language != "auto":
            tokenizer.lang_tag_id(o.language)  # raises for a language the model lacks
        elif model.cfg.src_vocab_size != model.cfg.vocab_size:
            raise ValueError("--lang auto needs a model whose two CTC heads share a dictionary; give the language")

    def run(self, items: list[InputFile], sources: list[Any] | None = None,
            progress: Callable[[float], None] | None = None) -> Iterator[FileResult]:
        """FileResults, each as soon as its file is done (not necessarily in input order).

        `sources` replaces the paths of `items` with waveforms (library use); `progress` gets the seconds
        of audio decoded after every batch.
        """
        o, tok = self.options, self.tokenizer
        fixed = None if o.language == "auto" else tok.lang_tag_id(o.language)
        files = [_File(it, it.path if sources is None else sources[i], fixed, None if fixed is None else o.language)
                 for i, it in enumerate(items)]
        chunks: queue.Queue = queue.Queue(maxsize=8)  # the reader stays at most a few chunks ahead
        stop = threading.Event()
        next_file = iter(range(len(files)))  # shared by the readers; next() on a range iterator is atomic
        readers = [threading.Thread(target=_reader, args=(files, next_file, o, chunks, stop), daemon=True)
                   for _ in range(max(1, min(o.readers, len(files))))]
        for reader in readers:
            reader.start()
        running = len(readers)
        pool: list[tuple[int, int, torch.Tensor]] = []  # file index, chunk index, audio
        pooled, reading = 0.0, True
        try:
            while reading or pool:
                while reading and pooled < o.pool_seconds:
                    msg = chunks.get()
                    if msg is None:
                        running -= 1
                        reading = running > 0
                        continue
                    i, chunk = msg
                    f = files[i]
                    if chunk is None:
                        f.read_done = True
                        if f.error or len(f.results) == len(f.chunks):
                            pool = [p for p in pool if p[0] != i]
                            yield self._finish(f)
                        continue
                    audio = torch.as_tensor(np.asarray(chunk.audio, dtype=np.float32)).reshape(-1)
                    pool.append((i, len(f.chunks), audio))
                    f.chunks.append((float(chunk.start), float(chunk.end)))
                    pooled += len(audio) / SAMPLE_RATE
                if pool:
                    yield from self._decode_pool(files, pool, progress)
                pool, pooled = [], 0.0
        finally:
            stop.set()
            while any(r.is_alive() for r in readers):  # unblock the readers so they can see `stop`
                try:
                    chunks.get(timeout=0.1)
                except queue.Empty:
                    pass

    def _map(self, fn: Callable[[FamaModel, list[int]], Any],
             batches: Iterable[list[int]]) -> Iterator[tuple[list[int], Any, Exception | None]]:
        """(batch, fn(replica, batch), None), or (batch, None, error), for each batch, as the replicas finish them."""
        if len(self.replicas) == 1:
            for b in batches:
                try:
                    yield b, fn(self.replicas[0], b), None
                except Exception as e:
                    yield b, None, e
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
        finally:  # stopped early: the workers finish their current batch and take no other
            while True:
                try:
                    todo.get_nowait()
                except queue.Empty:
                    break

    def _decode_pool(self, files: list[_File], pool: list[tuple[int, int, torch.Tensor]],
                     progress: Callable[[float], None] | None) -> Iterator[FileResult]:
        o = self.options
        self._detect_languages(files, pool)
        lengths = [len(p[2]) for p in pool]
        order = sorted(range(len(pool)), key=lambda j: -lengths[j])
        batches = [kept for batch in _batches(order, lengths, o.batch_size, int(o.batch_seconds * SAMPLE_RATE))
                   if (kept := [j for j in batch if files[pool[j][0]].error is None])]

        def decode(model: FamaModel, batch: list[int]) -> list:
            return self._decode_batch(model, [pool[j][2] for j in batch], [files[pool[j][0]].lang_id for j in batch])

        touched = set()
        for batch, results, error in self._map(decode, batches):
            if error is not None:
                for j in batch:
                    files[pool[j][0]].error = f"decoding failed: {type(error).__name__}: {error}"
                results = []
            for j, r in zip(batch, results):
                i, c, _ = pool[j]
                files[i].results[c] = r
            touched.update(pool[j][0] for j in batch)
            if progress:
                progress(sum(lengths[j] for j in batch) / SAMPLE_RATE)
        for i in sorted(touched | {p[0] for p in pool}):
            f = files[i]
            if f.read_done and not f.finished and (f.error or len(f.results) == len(f.chunks)):
                yield self._finish(f)

    def _decode_batch(self, model: FamaModel, audios: list[torch.Tensor], lang_ids: list[int]) -> list:
        try:
            return decode_chunks(model, audios, lang_ids, self.options.decode)
        except Exception as e:
            if not _is_oom(e) or len(audios) == 1:
                raise
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(audios) // 2
            first = self._decode_batch(model, audios[:half], lang_ids[:half])
            return first + self._decode_batch(model, audios[half:], lang_ids[half:])

    def _detect_languages(self, files: list[_File], pool: list[tuple[int, int, torch.Tensor]]) -> None:
        """Language of each auto file still undecided: `language_scores` summed over its first speech chunks."""
        languages = self.tokenizer.languages
        picks: list[tuple[int, torch.Tensor]] = []
        budget: dict[int, float] = {}
        for i, _, audio in sorted(pool, key=lambda p: (p[0], p[1])):
            f = files[i]
            if f.lang_id is None and f.error is None and budget.get(i, 0.0) < self.options.detect_seconds:
                picks.append((i, audio))
                budget[i] = budget.get(i, 0.0) + len(audio) / SAMPLE_RATE
        if not picks:
            return
        lengths = [len(a) for _, a in picks]
        order = sorted(range(len(picks)), key=lambda j: -lengths[j])
        batches = _batches(order, lengths, self.options.batch_size, int(self.options.batch_seconds * SAMPLE_RATE))

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
        for j in sorted(rows):  # summed in input order: the same totals however the batches were spread
            f = files[picks[j][0]]
            for lang, s in zip(languages, rows[j]):
                f.detect_scores[lang] = f.detect_scores.get(lang, 0.0) + s
        for i in budget:
            f = files[i]
            if f.error is None:
                f.language = max(f.detect_scores, key=f.detect_scores.get)
                f.lang_id = self.tokenizer.lang_tag_id(f.language)

    def _finish(self, f: _File) -> FileResult:
        f.finished = True
        seconds = f.samples / SAMPLE_RATE
        if f.error:
            return FileResult(f.item, error=f.error, seconds=seconds)
        o = self.options
        order = sorted(range(len(f.chunks)), key=lambda c: f.chunks[c][0])
        segments = make_segments(self.tokenizer, [f.chunks[c] for c in order], [f.results[c] for c in order])
        language = f.language or (o.language if o.language != "auto" else None)
        if o.task == "translate":
            source = next((lang for lang in self.tokenizer.languages if lang != o.language), None)
        else:
            source = language
        options = {"task": o.task, "language": o.language, **dataclasses.asdict(o.decode),
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
    devices = resolve_devices(device) if device is not None or isinstance(model, (str, Path)) else None
    if isinstance(model, (str, Path)):
        name = str(model)
        model, tokenizer = load_model(model, device=devices[0], dtype=dtype)
    else:
        model, tokenizer = model
        name = ""
    single = not isinstance(audio, (list, tuple))
    inputs = [audio] if single else list(audio)
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
    """Speech recognition of a media path, a 16 kHz mono waveform, or a list of them (-> a list).

    `model` is a name/path for `load_model` or a `(model, tokenizer)` pair; `language` is "en", "it" or
    "auto"; `device`: as `--device` ("cuda:0,cuda:1" decodes on both; default every GPU, else the CPU);
    extra keyword arguments set `DecodeOptions` fields (beam_size=1, greedy=True, ...).
    """
    return _run_library(audio, model, _options("transcribe", language, options, decode_kwargs), device, dtype)


def translate(audio: Any, model: Any = "fama-small", to: str = "en", *,
              options: TranscribeOptions | None = None, device: str | None = None, dtype: str | None = None,
              **decode_kwargs: Any) -> Transcript | list[Transcript]:
    """Speech translation into `to` (the source is the model's other language); see `transcribe`."""
    return _run_library(audio, model, _options("translate", to, options, decode_kwargs), device, dtype)
