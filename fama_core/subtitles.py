"""Transcripts and how they are written: segments -> subtitle cues -> txt/srt/vtt/tsv/json, atomically.

A `Transcript` holds `Segment`s (a sentence or so of one speech chunk) made of timed `Word`s. Cues are laid
out from the words, so they follow the speech: at most `max_line_count` lines of `max_line_width` characters,
at most `max_duration` seconds, and a pause longer than `max_gap` always starts a new cue.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pysubs2

from .outputs import write_all

FORMATS = ("txt", "srt", "vtt", "tsv", "json")
_CLAUSE_END = re.compile(r"[.!?;:,…]$")


@dataclass
class Word:
    start: float
    end: float
    text: str


@dataclass
class Segment:
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)


@dataclass
class Transcript:
    """What one input became: segments in time order, and where they came from."""

    segments: list[Segment]
    language: str  # language of the text
    task: str = "transcribe"  # or "translate"
    source_language: str | None = None
    duration: float = 0.0  # seconds of audio read
    source: str = ""
    model: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["text"] = self.text
        for s in d["segments"]:
            s["start"], s["end"] = round(s["start"], 3), round(s["end"], 3)
            for w in s["words"]:
                w["start"], w["end"] = round(w["start"], 3), round(w["end"], 3)
        return d


@dataclass
class SubtitleOptions:
    max_line_width: int = 42  # characters per line (Netflix guidance)
    max_line_count: int = 2
    max_duration: float = 7.0  # seconds per cue
    max_gap: float = 1.5  # a pause this long ends the cue
    min_cue_seconds: float = 0.8  # shortest cue on screen
    max_cps: float = 20.0  # reading speed: most characters per second

    def __post_init__(self) -> None:
        for name, label in (("max_line_width", "max line width"), ("max_line_count", "max line count")):
            if getattr(self, name) < 1:
                raise ValueError(f"{label} must be at least 1, not {getattr(self, name)}")
        for name, label in (("max_duration", "max cue seconds"), ("max_gap", "max gap"),
                            ("min_cue_seconds", "min cue seconds"), ("max_cps", "max cps")):
            if not getattr(self, name) > 0:  # NaN too
                raise ValueError(f"{label} must be positive, not {getattr(self, name)}")


@dataclass
class Cue:
    start: float
    end: float
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def layout_lines(words: list[str], width: int) -> list[str]:
    """Greedy line filling; a word longer than `width` gets a line of its own."""
    lines: list[str] = []
    for w in words:
        if lines and len(lines[-1]) + 1 + len(w) <= width:
            lines[-1] += " " + w
        else:
            lines.append(w)
    return lines


def balanced_lines(words: list[str], width: int) -> list[str]:
    """The same number of lines as greedy filling, but with the longest line as short as possible."""
    lines = layout_lines(words, width)
    total = sum(len(w) for w in words) + len(words) - 1
    for w in range(max(1, -(-total // max(1, len(lines)))), width):
        candidate = layout_lines(words, w)
        if len(candidate) == len(lines):
            return candidate
    return lines


def _fits(words: list[Word], opts: SubtitleOptions) -> bool:
    return len(layout_lines([w.text for w in words], opts.max_line_width)) <= opts.max_line_count


def _must_break(current: list[Word], w: Word, opts: SubtitleOptions) -> bool:
    return (not _fits(current + [w], opts) or w.end - current[0].start > opts.max_duration
            or w.start - current[-1].end > opts.max_gap)


def _cue_spans(words: list[Word], opts: SubtitleOptions) -> list[list[Word]]:
    """Split one segment's words into groups that each fit one cue."""
    groups: list[list[Word]] = []
    current: list[Word] = []
    for w in words:
        while current and _must_break(current, w, opts):
            # prefer to end the cue after a clause in its second half, carrying the rest over
            cut = len(current)
            if not _fits(current + [w], opts):
                ends = [i + 1 for i, x in enumerate(current) if _CLAUSE_END.search(x.text)]
                if ends and ends[-1] >= (len(current) + 1) // 2:
                    cut = ends[-1]
            groups.append(current[:cut])
            current = current[cut:]
        current.append(w)
    if current:
        groups.append(current)
    return groups


def _spread_words(segment: Segment) -> list[Word]:
    """Words with times spread by length over the segment, for segments that came without word times."""
    texts = segment.text.split()
    total = sum(len(t) + 1 for t in texts) or 1
    out, t = [], segment.start
    for text in texts:
        d = (segment.end - segment.start) * (len(text) + 1) / total
        out.append(Word(t, t + d, text))
        t += d
    return out


def make_cues(segments: list[Segment], options: SubtitleOptions | None = None) -> list[Cue]:
    """Subtitle cues from timed segments: line limits held, times increasing and never overlapping."""
    opts = options or SubtitleOptions()
    cues: list[Cue] = []
    for seg in segments:
        words = [w for w in (seg.words or _spread_words(seg)) if w.text.strip()]
        for group in _cue_spans(words, opts):
            lines = balanced_lines([w.text for w in group], opts.max_line_width)
            start, end = group[0].start, group[-1].end
            if cues:
                start = max(start, cues[-1].end)
            cues.append(Cue(start, max(end, start + 0.001), lines))
    return cues


# ----------------------------------------------------------------------------------------------- writers


def _clean(text: str) -> str:
    # `-->` would end an SRT/VTT timing line; braces are ASS override tags to pysubs2
    return text.replace("-->", "->").replace("{", "(").replace("}", ")")


def _subtitle_file(cues: list[Cue]) -> pysubs2.SSAFile:
    subs = pysubs2.SSAFile()
    for c in cues:
        text = "\\N".join(_clean(line) for line in c.lines)
        subs.append(pysubs2.SSAEvent(start=round(c.start * 1000), end=round(c.end * 1000), text=text))
    return subs


def format_transcript(transcript: Transcript, fmt: str, options: SubtitleOptions | None = None) -> str:
    """The text of `transcript` in one of FORMATS."""
    if fmt == "txt":
        return "".join(s.text + "\n" for s in transcript.segments)
    if fmt in ("srt", "vtt"):
        cues = make_cues(transcript.segments, options)
        if not cues:
            return "WEBVTT\n\n" if fmt == "vtt" else ""
        return _subtitle_file(cues).to_string(fmt)
    if fmt == "tsv":
        rows = [f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{s.text.replace(chr(9), ' ')}\n"
                for s in transcript.segments]
        return "start\tend\ttext\n" + "".join(rows)
    if fmt == "json":
        return json.dumps(transcript.to_dict(), ensure_ascii=False, indent=2) + "\n"
    raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")


def write_transcript(transcript: Transcript, stem: str | Path, formats: list[str],
                     options: SubtitleOptions | None = None, *, overwrite: bool = False) -> list[Path]:
    """Write `<stem>.<fmt>` for every format, as one set: all of them or, on any error, none.

    All texts are made before the first file is touched. Without `overwrite`, an existing output (even
    one that appeared during the run) raises `OutputExistsError` and nothing is written.
    """
    texts = {Path(f"{stem}.{fmt}"): format_transcript(transcript, fmt, options) for fmt in formats}
    return write_all(texts, overwrite=overwrite)
