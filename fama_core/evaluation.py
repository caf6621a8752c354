"""Evaluate a model on a manifest: decode every row the way `transcribe` does, then score it (scoring.py).

Rows are read in manifest order into pools of about `pool_seconds` of audio (a file cut into many
`path:offset:length` rows is decoded from media once while its rows are being read), each pool is sorted by
length and decoded in transcription's own memory-bounded batches (`transcribe._batches` and
`transcribe.decode_chunks`), and the tokens become text as in a transcript (`transcribe.make_segments`).
Each row is decoded whole, without VAD cutting: test sets come already segmented.

ASR decodes a row with its spoken language's tag and scores it against `src_text` (or `tgt_text` when that is
in the spoken language); ST decodes with the target language's tag and scores against `tgt_text`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audio import AudioError, load_audio
from .checkpoints import load_model
from .decoding import DecodeOptions
from .features import SAMPLE_RATE
from .manifest import ManifestRow, read_manifest
from .pipeline import TranscribeOptions, _batches, decode_chunks, make_segments
from .precision import precision_of
from .scoring import Report, score, score_files

_FILE_CACHE = 2  # whole decoded media files kept for their `path:offset:length` rows


class EvalError(ValueError):
    """A manifest, row, language or option that cannot be evaluated (the CLI's usage error)."""


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

    @property
    def rtf(self) -> float:
        """Real-time factor: decode wall time / audio duration (below 1 is faster than real time)."""
        return self.decode_seconds / self.audio_seconds if self.audio_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = super().to_dict()
        utterances = d.pop("utterances")
        d.update(model=self.model, options=self.options, audio_seconds=round(self.audio_seconds, 3),
                 decode_seconds=round(self.decode_seconds, 3), rtf=round(self.rtf, 5), skipped=self.skipped)
        d["utterances"] = utterances  # the long list last
        return d

    def summary(self) -> str:
        head = (f"model {self.model or '?'} · {self.task} · {len(self.utterances)} utterances · "
                f"{self.audio_seconds / 60:.1f} min audio in {self.decode_seconds:.1f} s · RTF {self.rtf:.3f}")
        if self.skipped:
            head += f" · {self.skipped} rows of other directions or transcriptions skipped"
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


def _clip(row: ManifestRow, base: Path, cache: OrderedDict) -> np.ndarray:
    path = row.audio_path(base)
    if path not in cache:
        try:
            cache[path] = load_audio(path)
        except (AudioError, OSError) as e:
            raise EvalError(f"row {row.id!r}: cannot read audio: {e}") from None
        while len(cache) > _FILE_CACHE:
            cache.popitem(last=False)
    cache.move_to_end(path)
    wave = cache[path]
    if row.offset is not None:
        if row.offset + row.length > len(wave):
            raise EvalError(f"row {row.id!r}: samples {row.offset}..{row.offset + row.length} are past the end "
                            f"of {path} ({len(wave)} samples at 16 kHz)")
        wave = wave[row.offset:row.offset + row.length]
    if len(wave) == 0:
        raise EvalError(f"row {row.id!r}: no audio samples")
    return wave


def decode_manifest(model: Any, tokenizer: Any, items: list[_Item], base: Path, options: EvalOptions,
                    progress: Callable[[float], None] | None = None) -> tuple[list[str], list[float], float]:
    """Hypothesis text and audio seconds of each item, and the decode wall time."""
    o = options
    lang_ids = {lang: tokenizer.lang_tag_id(lang) for lang in {it.lang for it in items}}
    texts: list[str] = [""] * len(items)
    seconds = [0.0] * len(items)
    wall = 0.0
    cache: OrderedDict = OrderedDict()
    pool: list[tuple[int, torch.Tensor]] = []
    pooled = 0

    def flush() -> None:
        nonlocal wall
        lengths = [len(a) for _, a in pool]
        order = sorted(range(len(pool)), key=lambda j: -lengths[j])
        for batch in _batches(order, lengths, o.batch_size, int(o.batch_seconds * SAMPLE_RATE)):
            start = time.perf_counter()
            results = decode_chunks(model, [pool[j][1] for j in batch],
                                    [lang_ids[items[pool[j][0]].lang] for j in batch], o.decode)
            wall += time.perf_counter() - start
            for j, result in zip(batch, results):
                n = pool[j][0]
                segments = make_segments(tokenizer, [(0.0, seconds[n])], [result])
                texts[n] = " ".join(s.text for s in segments)
            if progress:
                progress(sum(lengths[j] for j in batch) / SAMPLE_RATE)

    for n, it in enumerate(items):
        audio = torch.from_numpy(np.ascontiguousarray(_clip(it.row, base, cache)))
        seconds[n] = len(audio) / SAMPLE_RATE
        pool.append((n, audio))
        pooled += len(audio)
        if pooled >= o.pool_seconds * SAMPLE_RATE:
            flush()
            pool, pooled = [], 0
    if pool:
        flush()
    return texts, seconds, wall


def _version() -> str:
    try:
        return version("fama")
    except PackageNotFoundError:
        return "unknown"


def evaluate(manifest: str | Path | Sequence[ManifestRow], model: Any = "fama-small", task: str | None = None,
             to: str | None = None, *, options: EvalOptions | None = None, device: str | None = None,
             dtype: str | None = None, batch_size: int | None = None, base: str | Path | None = None,
             model_name: str | None = None, progress: Callable[[float], None] | None = None,
             **decode_kwargs: Any) -> EvalReport:
    """Decode every row of a manifest and score it: WER/CER/raw WER (task "asr") or BLEU/chrF ("st").

    `manifest` is a path or rows (relative audio paths resolve against `base`, default the manifest's folder
    or the working directory); `model` a name/path for `load_model` or a `(model, tokenizer)` pair; `task`,
    `to` and `batch_size` override `options`; extra keyword arguments set `DecodeOptions` fields
    (beam_size=1, greedy=True, ...). Groups: per spoken language (ASR) or per "src-tgt" direction (ST);
    utterances worst first, each with its `seconds` of audio. Raises EvalError for unusable input.
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
            rows = read_manifest(manifest)
        except (OSError, UnicodeDecodeError) as e:
            raise EvalError(f"cannot read manifest {manifest}: {e}") from None
        except ValueError as e:
            raise EvalError(str(e)) from None
        base = Path(manifest).parent if base is None else Path(base)
    else:
        rows, base = list(manifest), Path(base or ".")
    items, skipped = plan(rows, o)
    if isinstance(model, (str, Path)):
        model_name = model_name or str(model)
        model, tokenizer = load_model(model, device=device, dtype=dtype)
    else:
        model, tokenizer = model
    for lang in sorted({it.lang for it in items}):
        try:
            tokenizer.lang_tag_id(lang)
        except ValueError as e:
            raise EvalError(str(e)) from None
    texts, seconds, wall = decode_manifest(model, tokenizer, items, base, o, progress)
    report = score([it.row.id for it in items], texts, [it.ref for it in items], o.task,
                   [it.label for it in items], o.normalize)
    by_id = {it.row.id: (it, s) for it, s in zip(items, seconds)}
    for u in report.utterances:
        it, s = by_id[u["id"]]
        u.update(audio=it.row.audio, seconds=round(s, 3))
    info = {**dataclasses.asdict(o), "device": str(model.device), "dtype": precision_of(model),
            "fama_version": _version()}
    return EvalReport(report.task, report.overall, report.groups, report.utterances, model=model_name or "",
                      options=info, audio_seconds=sum(seconds), decode_seconds=wall, skipped=skipped)


def evaluate_files(hyp: str | Path, ref: str | Path, task: str = "asr", lang: str | None = None,
                   normalize: bool = True, ref_column: str | None = None) -> Report:
    """Score existing outputs against references, matched by id (formats: `scoring.read_texts`)."""
    return score_files(hyp, ref, task=task, lang=lang, normalize=normalize, ref_column=ref_column)


def write_report(report: Report, path: str | Path) -> None:
    """Write `report.to_json()` atomically: a temporary file in the same folder, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(report.to_json() + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
