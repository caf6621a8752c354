"""Evaluate a model on a manifest: decode every row the way `transcribe` does, then score it (scoring.py).

Decoding goes through the transcription `Pipeline` (its cross-file, length-sorted, memory-bounded batches,
OOM halving and devices), one run per decoding language, with each row decoded whole as one chunk
(`TranscribeOptions.split=False`, no VAD cutting: test sets come already segmented). A file cut into many
`path:offset:length` rows is decoded from media once while its consecutive rows are read. A row whose audio
cannot be read or decoded fails alone: it is listed in the report's `failed` and left out of the scores.

ASR decodes a row with its spoken language's tag and scores it against `src_text` (or `tgt_text` when that is
in the spoken language); ST decodes with the target language's tag and scores against `tgt_text`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .audio import AudioError, load_audio
from .checkpoints import load_model
from .config import package_version
from .decoding import DecodeOptions
from .inputs import InputFile
from .manifest import ManifestRow, read_manifest
from .outputs import atomic_write
from .pipeline import Pipeline, RunProgress, TranscribeOptions, resolve_devices
from .precision import precision_of
from .scoring import Report, score, score_files

_FILE_CACHE = 2  # whole decoded media files kept for their `path:offset:length` rows


class EvalError(ValueError):
    """A manifest, row, language or option that cannot be evaluated (the CLI's usage error)."""


class NothingScored(Exception):
    """No row could be decoded: there is no score (a WER of 0.00 over nothing would read as perfect). `failed`
    lists the rows as `EvalReport.failed` does."""

    def __init__(self, failed: list[dict[str, str]]):
        super().__init__(f"no row could be decoded ({len(failed)} failed)")
        self.failed = failed


@dataclass
class EvalOptions:
    task: str = "asr"  # "asr" or "st"
    to: str | None = None  # ST target language; default: each row's tgt_lang (with `to`, other rows are skipped)
    language: str | None = None  # ASR: spoken language of rows without src_lang (default: their tgt_lang)
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    batch_size: int = TranscribeOptions.batch_size  # most utterances decoded together
    batch_seconds: float = TranscribeOptions.batch_seconds  # memory budget: padded audio seconds per batch
    pool_seconds: float = TranscribeOptions.pool_seconds  # audio read and sorted by length before batching
    normalize: bool = True  # WER/CER on normalised text (docs/evaluation.md); raw WER is always reported


@dataclass
class EvalReport(Report):
    """A scoring Report plus how it was made: model, options, audio and decode time."""

    model: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    audio_seconds: float = 0.0
    decode_seconds: float = 0.0  # wall time of feature extraction + decoding, audio reading excluded
    skipped: int = 0  # ST rows of other directions (see EvalOptions.to)
    failed: list[dict] = field(default_factory=list)  # rows that could not be read or decoded: id, audio, error

    @property
    def rtf(self) -> float:
        """Real-time factor: decode wall time / audio duration (below 1 is faster than real time)."""
        return self.decode_seconds / self.audio_seconds if self.audio_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = super().to_dict()
        utterances = d.pop("utterances")
        d.update(model=self.model, options=self.options, audio_seconds=round(self.audio_seconds, 3),
                 decode_seconds=round(self.decode_seconds, 3), rtf=round(self.rtf, 5), skipped=self.skipped,
                 failed=self.failed)
        d["utterances"] = utterances  # the long list last
        return d

    def summary(self) -> str:
        head = (f"model {self.model or '?'} · {self.task} · {len(self.utterances)} utterances · "
                f"{self.audio_seconds / 60:.1f} min audio in {self.decode_seconds:.1f} s · RTF {self.rtf:.3f}")
        if self.skipped:
            head += f" · {self.skipped} rows of other directions or transcriptions skipped"
        if self.failed:
            head += f" · {len(self.failed)} rows failed (not scored)"
        return head + "\n" + super().summary()


@dataclass
class _Item:
    row: ManifestRow
    lang: str  # the language tag decoded with: spoken language (ASR) or target (ST)
    label: str  # group: spoken language (ASR) or "src-tgt" (ST)
    ref: str


def plan(rows: Sequence[ManifestRow], options: EvalOptions) -> tuple[list[_Item], int]:
    """What to decode for each row, and how many rows an ST `to` leaves out; EvalError for unusable rows."""
    o = options
    if o.task not in ("asr", "st"):
        raise EvalError(f"task must be 'asr' or 'st', not {o.task!r}")
    if o.task == "asr" and o.to:
        raise EvalError("a target language (to) is for speech translation (task 'st')")
    if o.task == "st" and o.language:
        raise EvalError("language is the spoken language for ASR; for speech translation give the target (to)")
    items, skipped = [], 0
    for r in rows:
        if o.task == "asr":
            spoken = r.src_lang or o.language or r.tgt_lang
            if not spoken:
                raise EvalError(f"row {r.id!r}: no src_lang or tgt_lang; give the spoken language")
            if r.src_text:
                ref = r.src_text
            elif r.tgt_lang in ("", spoken):
                ref = r.tgt_text
            else:
                raise EvalError(f"row {r.id!r}: no src_text, and tgt_text is in {r.tgt_lang}, not the spoken "
                                f"{spoken}; is this a speech-translation manifest (task 'st')?")
            items.append(_Item(r, spoken, spoken, ref))
            continue
        target = o.to or r.tgt_lang
        if not target:
            raise EvalError(f"row {r.id!r}: no tgt_lang; give the target language")
        if (o.to and r.tgt_lang and r.tgt_lang != o.to) or r.src_lang == target:
            skipped += 1  # another direction, or a transcription row of a mixed manifest
            continue
        items.append(_Item(r, target, f"{r.src_lang or '?'}-{target}", r.tgt_text))
    if not items:
        why = f" ({skipped} rows are of other directions or transcriptions)" if skipped else ""
        raise EvalError(f"no rows to evaluate{why}")
    return items, skipped


class _Clips:
    """`path:offset:length` rows as waveforms, cutting each media file decoded once for its consecutive rows;
    shared by the pipeline's reader threads."""

    def __init__(self, keep: int = _FILE_CACHE) -> None:
        self.cache: OrderedDict[Path, np.ndarray] = OrderedDict()
        self.keep = keep
        self.lock = threading.Lock()

    def source(self, row: ManifestRow, base: Path) -> Any:
        """What the pipeline reads for a row: its path, or a function returning its clip."""
        path = row.audio_path(base)
        return path if row.offset is None else (lambda: self.clip(row, path))

    def clip(self, row: ManifestRow, path: Path) -> np.ndarray:
        with self.lock:
            if path not in self.cache:
                self.cache[path] = load_audio(path)
                while len(self.cache) > self.keep:
                    self.cache.popitem(last=False)
            self.cache.move_to_end(path)
            wave = self.cache[path]
        if row.offset + row.length > len(wave):
            raise AudioError(f"samples {row.offset}..{row.offset + row.length} are past the end of {path} "
                             f"({len(wave)} samples at 16 kHz)")
        return wave[row.offset:row.offset + row.length]


@dataclass
class Decoded:
    """What decoding gave each item: its text (None when it failed), audio seconds and error."""

    texts: list[str | None]
    seconds: list[float]
    errors: list[str | None]
    wall: float  # seconds the decoding took (audio reading overlaps it)


def decode_manifest(model: Any, tokenizer: Any, items: list[_Item], base: Path, options: EvalOptions,
                    progress: Callable[[float], None] | None = None, devices: list[str] | None = None) -> Decoded:
    """Decode each item whole (no VAD cutting) through the transcription `Pipeline`, one run per language.

    A row that cannot be read or decoded gets its error instead of a text; the others are decoded. `devices`:
    decode on each of these with its own copy of the model (default: the model's device).
    """
    o = options
    task = "transcribe" if o.task == "asr" else "translate"
    decoded = Decoded([None] * len(items), [0.0] * len(items), [None] * len(items), 0.0)
    clips = _Clips()
    start = time.perf_counter()
    for lang in dict.fromkeys(it.lang for it in items):  # manifest order: a file's clips stay together
        which = [n for n, it in enumerate(items) if it.lang == lang]
        topts = TranscribeOptions(task=task, language=lang, decode=o.decode, batch_size=o.batch_size,
                                  batch_seconds=o.batch_seconds, pool_seconds=o.pool_seconds, split=False,
                                  detect_source=False)
        inputs = [InputFile(items[n].row.audio) for n in which]
        position = {id(x): n for x, n in zip(inputs, which)}
        sources = [clips.source(items[n].row, base) for n in which]
        done = 0.0

        def advance(p: RunProgress) -> None:  # `progress` gets the seconds decoded since its last call
            nonlocal done
            if progress and p.speech_done > done:
                progress(p.speech_done - done)
            done = p.speech_done

        for r in Pipeline(model, tokenizer, topts, devices=devices).run(inputs, sources, advance):
            n = position[id(r.item)]
            decoded.seconds[n] = r.seconds
            if r.error:
                decoded.errors[n] = r.error
            else:
                decoded.texts[n] = " ".join(s.text for s in r.transcript.segments)
    decoded.wall = time.perf_counter() - start
    return decoded


def evaluate(manifest: str | Path | Sequence[ManifestRow], model: Any = "fama-small", task: str | None = None,
             to: str | None = None, *, options: EvalOptions | None = None, device: str | None = None,
             dtype: str | None = None, batch_size: int | None = None, base: str | Path | None = None,
             model_name: str | None = None, progress: Callable[[float], None] | None = None,
             **decode_kwargs: Any) -> EvalReport:
    """Decode every row of a manifest and score it: WER/CER/raw WER (task "asr") or BLEU/chrF ("st").

    `manifest` is a path or rows (relative audio paths resolve against `base`, default the manifest's folder
    or the working directory); `model` a name/path for `load_model` or a `(model, tokenizer)` pair; `task`,
    `to` and `batch_size` override `options`; `device` as transcription's ("cuda:0,cuda:1" decodes on both;
    default every GPU, else the CPU; with a pair, the model's own device); extra keyword arguments set
    `DecodeOptions` fields (beam_size=1, greedy=True, ...). Groups: per spoken language (ASR) or per "src-tgt"
    direction (ST); utterances worst first, each with its `seconds` of audio. A row whose audio cannot be read
    or decoded is left out of the scores and listed in `failed` (id, audio, error). Raises EvalError for
    unusable input, NothingScored when no row could be decoded.
    """
    o = dataclasses.replace(options or EvalOptions())
    if task is not None:
        o.task = task
    if to is not None:
        o.to = to
    if batch_size is not None:
        o.batch_size = batch_size
    if decode_kwargs:
        o.decode = dataclasses.replace(o.decode, **decode_kwargs)
    if o.batch_size < 1 or o.batch_seconds <= 0:
        raise EvalError("batch_size and batch_seconds must be positive")
    if isinstance(manifest, (str, Path)):
        try:
            rows = read_manifest(manifest, require_frames=False)
        except (OSError, UnicodeDecodeError) as e:
            raise EvalError(f"cannot read manifest {manifest}: {e}") from None
        except ValueError as e:
            raise EvalError(str(e)) from None
        base = Path(manifest).parent if base is None else Path(base)
    else:
        rows, base = list(manifest), Path(base or ".")
    items, skipped = plan(rows, o)
    try:
        devices = resolve_devices(device) if device is not None or isinstance(model, (str, Path)) else None
    except ValueError as e:
        raise EvalError(str(e)) from None
    if isinstance(model, (str, Path)):
        model_name = model_name or str(model)
        model, tokenizer = load_model(model, device=devices[0], dtype=dtype)
    else:
        model, tokenizer = model
    for lang in sorted({it.lang for it in items}):
        try:
            tokenizer.lang_tag_id(lang)
        except ValueError as e:
            raise EvalError(str(e)) from None
    decoded = decode_manifest(model, tokenizer, items, base, o, progress, devices)
    ok = [n for n, text in enumerate(decoded.texts) if text is not None]
    failed = [{"id": it.row.id, "audio": it.row.audio, "error": e} for it, e in zip(items, decoded.errors) if e]
    if not ok:
        raise NothingScored(failed)
    report = score([items[n].row.id for n in ok], [decoded.texts[n] for n in ok], [items[n].ref for n in ok],
                   o.task, [items[n].label for n in ok], o.normalize)
    by_id = {items[n].row.id: n for n in ok}
    for u in report.utterances:
        n = by_id[u["id"]]
        u.update(audio=items[n].row.audio, seconds=round(decoded.seconds[n], 3))
    info = {**dataclasses.asdict(o), "device": ",".join(devices) if devices else str(model.device),
            "dtype": precision_of(model), "fama_version": package_version()}
    return EvalReport(report.task, report.overall, report.groups, report.utterances, model=model_name or "",
                      options=info, audio_seconds=sum(decoded.seconds[n] for n in ok), decode_seconds=decoded.wall,
                      skipped=skipped, failed=failed)


def evaluate_files(hyp: str | Path, ref: str | Path, task: str = "asr", lang: str | None = None,
                   normalize: bool = True, ref_column: str | None = None) -> Report:
    """Score existing outputs against references, matched by id (formats: `scoring.read_texts`)."""
    return score_files(hyp, ref, task=task, lang=lang, normalize=normalize, ref_column=ref_column)


def write_report(report: Report, path: str | Path, *, overwrite: bool = False) -> None:
    """Write `report.to_json()` atomically (the one atomic writer); an existing file is replaced only with
    `overwrite` (else OutputExistsError)."""
    atomic_write(path, report.to_json() + "\n", overwrite=overwrite)
