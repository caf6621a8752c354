"""The one manifest format: fairseq speech-to-text TSV, read by training and evaluation.

Header: ``id audio n_frames tgt_text speaker src_text src_lang tgt_lang`` (tab-separated, no quoting;
extra columns are kept). ``audio`` is ``path`` or ``path:offset:length`` with offset and length in samples
of the decoded 16 kHz audio; a relative path is relative to the manifest's folder.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .features import num_frames
from .outputs import atomic_write

COLUMNS = ("id", "audio", "n_frames", "tgt_text", "speaker", "src_text", "src_lang", "tgt_lang")
REQUIRED = COLUMNS[:4]  # fairseq's own ASR manifests may stop after `speaker`; the rest default to ""
SCORING = ("id", "audio", "tgt_text")  # what evaluation needs: n_frames only sizes training batches


def n_frames_for_samples(n: int) -> int:
    """Number of 10 ms fbank frames (25 ms window, no padding) in `n` samples of 16 kHz audio."""
    return num_frames(n)


def _split_audio(audio: str) -> tuple[str, int | None, int | None]:
    head, sep, tail = audio.rpartition(":")
    path, sep2, mid = head.rpartition(":")
    if sep and sep2 and path and mid.isdigit() and tail.isdigit():
        return path, int(mid), int(tail)
    return audio, None, None


@dataclass
class ManifestRow:
    id: str
    audio: str
    n_frames: int
    tgt_text: str
    speaker: str = ""
    src_text: str = ""
    src_lang: str = ""
    tgt_lang: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The file part of `audio`, without `:offset:length`."""
        return _split_audio(self.audio)[0]

    @property
    def offset(self) -> int | None:
        """First sample of the clip in the decoded 16 kHz audio, or None for the whole file."""
        return _split_audio(self.audio)[1]

    @property
    def length(self) -> int | None:
        """Number of samples of the clip, or None for the whole file."""
        return _split_audio(self.audio)[2]

    def audio_path(self, base: Path) -> Path:
        """The audio file, resolving a relative path against `base` (the manifest's folder)."""
        return Path(base) / self.path  # an absolute self.path wins over base


def read_manifest(path: str | Path, *, require_frames: bool = True) -> list[ManifestRow]:
    """Rows of a manifest (UTF-8, a byte-order mark allowed); raises ValueError naming the file and line of the
    first bad row, or the file and offset of the first byte that is not UTF-8.

    With `require_frames=False` (evaluation, SentencePiece training) the `n_frames` column may be left out of
    a hand-made manifest; its rows then have `n_frames` 0 (unknown)."""
    path = Path(path)
    try:
        return _read_rows(path, REQUIRED if require_frames else SCORING)
    except UnicodeDecodeError:
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the manifest as "
                             "UTF-8") from None
        raise


def _read_rows(path: Path, required: tuple[str, ...]) -> list[ManifestRow]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}:1: empty manifest, expected a header starting {' '.join(required)}")
        missing = [c for c in required if c not in header]
        if missing or len(set(header)) != len(header):
            what = f"missing column(s) {', '.join(missing)}" if missing else "duplicate column names"
            raise ValueError(f"{path}:1: {what} in header {header}")
        rows, seen = [], set()
        for fields in reader:
            line = reader.line_num
            if not fields:
                continue
            if len(fields) != len(header):
                raise ValueError(f"{path}:{line}: expected {len(header)} tab-separated fields, got {len(fields)}")
            values = dict(zip(header, fields))
            try:
                n_frames = int(values.get("n_frames", 0))
            except ValueError:
                raise ValueError(f"{path}:{line}: n_frames {values['n_frames']!r} is not an integer") from None
            if not values["id"] or values["id"] in seen:
                raise ValueError(f"{path}:{line}: {'duplicate' if values['id'] else 'empty'} id {values['id']!r}")
            if not values["audio"]:
                raise ValueError(f"{path}:{line}: empty audio field")
            seen.add(values["id"])
            known = {c: values.pop(c, "") for c in COLUMNS}
            rows.append(ManifestRow(**{**known, "n_frames": n_frames}, extra=values))
    return rows


def write_manifest(path: str | Path, rows: Iterable[ManifestRow], *, overwrite: bool = True) -> None:
    """Write rows atomically (the one atomic writer); without `overwrite` an existing file is an
    OutputExistsError, even one that appeared while the rows were prepared."""
    path = Path(path)
    rows = list(rows)
    extra_cols = list(dict.fromkeys(k for r in rows for k in r.extra))
    clash = [c for c in extra_cols if c in COLUMNS]
    if clash:
        raise ValueError(f"{path}: extra columns {clash} clash with the standard ones")
    lines = ["\t".join((*COLUMNS, *extra_cols))]
    for r in rows:
        fields = [r.id, r.audio, str(r.n_frames), r.tgt_text, r.speaker, r.src_text, r.src_lang, r.tgt_lang]
        fields += [r.extra.get(c, "") for c in extra_cols]
        if any(ch in v for v in fields for ch in "\t\r\n"):
            raise ValueError(f"{path}: row {r.id!r} has a tab or line break inside a field")
        lines.append("\t".join(fields))
    atomic_write(path, "\n".join(lines) + "\n", overwrite=overwrite)
