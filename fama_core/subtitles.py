"""Transcripts and how they are written: segments -> subtitle cues -> txt/srt/vtt/tsv/json, atomically.

A `Transcript` holds `Segment`s (a sentence or so of one speech chunk) made of timed `Word`s. Cues are laid
out from the words, so they follow the speech: at most `max_line_count` lines of `max_line_width` characters,
at most `max_duration` seconds, and a pause longer than `max_gap` always starts a new cue.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pysubs2

from .outputs import write_all

FORMATS = ("txt", "srt", "vtt", "tsv", "json", "ass")
ALL_FORMATS = FORMATS[:5]  # what `-f all` writes (whisper's set); .ass only when asked for
_CLAUSE_END = re.compile(r"[.!?;:,…]$")


@dataclass
class Word:
    start: float
    end: float
    text: str
    probability: float | None = None  # mean decoder probability of the word's tokens
    ctc_probability: float | None = None  # mean CTC posterior of its tokens on the frames they are aligned to


@dataclass
class Segment:
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    avg_logprob: float | None = None  # mean decoder log-probability of the segment's tokens
    no_speech_prob: float | None = None  # CTC probability that its speech chunk holds no word (all frames blank)
    compression_ratio: float | None = None  # of the text, as whisper: high for repetitive text


# confidence fields, left out of the JSON when unknown (a transcript made without scores)
CONFIDENCE_FIELDS = ("probability", "ctc_probability", "avg_logprob", "no_speech_prob", "compression_ratio")


def compression_ratio(text: str) -> float:
    """UTF-8 bytes of `text` over its zlib-compressed bytes (whisper's measure of repetition)."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw))


def _scores(d: dict[str, Any]) -> dict[str, Any]:
    """`d` without its unknown confidence fields, the known ones rounded."""
    for key in CONFIDENCE_FIELDS:
        if key in d:
            if d[key] is None:
                del d[key]
            else:
                d[key] = round(d[key], 4)
    return d


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

    def warnings(self) -> list[str]:
        """What a reader must know about this transcript, one line each (`fama transcribe` prints them on
        stderr, `fama serve` sends them with JSON answers)."""
        if self.task == "translate" and self.source_language == self.language:
            return [f"the speech is already in {self.language} (detected); the output is a transcript, "
                    "not a translation"]
        return []

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["text"] = self.text
        for s in d["segments"]:
            s["start"], s["end"] = round(s["start"], 3), round(s["end"], 3)
            _scores(s)
            for w in s["words"]:
                w["start"], w["end"] = round(w["start"], 3), round(w["end"], 3)
                _scores(w)
        return d


@dataclass
class SubtitleOptions:
    """How transcripts become subtitle cues; every limit is checked here (ValueError)."""

    max_line_width: int = 42  # characters per line (Netflix guidance)
    max_line_count: int = 2
    max_duration: float = 7.0  # seconds per cue (--max-cue-seconds), always held
    max_gap: float = 1.5  # a pause this long ends the cue
    min_cue_seconds: float = 0.8  # a shorter cue is extended into the following pause (or merged with a neighbour)
    max_cps: float = 20.0  # reading speed: characters per second a cue may ask of the viewer, where timing allows
    highlight_words: bool = False  # SRT/VTT: one event per spoken word, that word underlined (whisper's style)
    mark_below: float | None = None  # SRT/VTT/ASS: words whose probability is below this are in italics

    def __post_init__(self) -> None:
        for name in ("max_line_width", "max_line_count"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")
        for name in ("max_duration", "max_cps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be greater than 0, not {getattr(self, name)!r}")
        if not self.max_gap >= 0:
            raise ValueError(f"max_gap must be at least 0, not {self.max_gap!r}")
        if self.mark_below is not None and not 0 <= self.mark_below <= 1:
            raise ValueError(f"mark_below must be between 0 and 1, not {self.mark_below!r}")
        if not 0 <= self.min_cue_seconds <= self.max_duration:
            raise ValueError(f"min_cue_seconds must be between 0 and max_duration ({self.max_duration}), "
                             f"not {self.min_cue_seconds!r}")


# a cue whose text cannot be read at max_cps by the end of the pause after it may appear this much before its speech
LEAD_IN_SECONDS = 0.5


@dataclass
class Cue:
    start: float
    end: float
    lines: list[str]
    words: list[Word] = field(default_factory=list)  # the words of `lines`, in order, with their times

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def chars(self) -> int:
        """Characters a viewer reads (a line break counts as the space it replaces)."""
        return len(" ".join(self.lines))


def layout_lines(words: list[str], width: int) -> list[str]:
    """Greedy line filling; a word longer than `width` gets a line of its own."""
    lines: list[str] = []
    for w in words:
        if lines and len(lines[-1]) + 1 + len(w) <= width:
            lines[-1] += " " + w
        else:
            lines.append(w)
    return lines


def break_lines(words: list[str], width: int) -> list[str]:
    """`words` in as few lines of at most `width` characters as they need, broken at natural points: after
    punctuation wherever that fits, then where the longest line is shortest (ties: shorter lines first)."""
    count = len(layout_lines(words, width))
    if count <= 1:
        return [" ".join(words)] if words else []
    n = len(words)
    ends = [0]  # ends[j]: characters of words[:j] joined by spaces, plus one
    for w in words:
        ends.append(ends[-1] + len(w) + 1)
    # best[j] for words[:j] in k lines: ((breaks not after punctuation, longest line, line lengths), breaks)
    best: dict[int, tuple[tuple[int, int, tuple[int, ...]], tuple[int, ...]]] = {0: ((0, 0, ()), ())}
    for _ in range(count):
        row: dict[int, tuple[tuple[int, int, tuple[int, ...]], tuple[int, ...]]] = {}
        for i, ((rough, longest, sizes), breaks) in best.items():
            for j in range(i + 1, n + 1):
                size = ends[j] - ends[i] - 1
                if size > width and j - i > 1:
                    break
                cost = (rough + (i > 0 and not _CLAUSE_END.search(words[i - 1])), max(longest, size), sizes + (size,))
                if j not in row or cost < row[j][0]:
                    row[j] = (cost, breaks + (j,))
        best = row
    cuts = (0,) + best[n][1]
    return [" ".join(words[a:b]) for a, b in zip(cuts, cuts[1:])]


def _fits(words: list[Word], opts: SubtitleOptions) -> bool:
    texts = [w.text for w in words]
    # (a cue needs time to be read: never more text than max_cps allows in max_duration)
    return (len(layout_lines(texts, opts.max_line_width)) <= opts.max_line_count
            and (len(words) == 1 or len(" ".join(texts)) <= opts.max_cps * opts.max_duration))


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


def _merge_short(groups: list[list[Word]], opts: SubtitleOptions) -> list[list[Word]]:
    """Join a group spoken in less than min_cue_seconds, with no pause after it long enough to extend it,
    to the next group (else the previous one) when the two fit one cue."""

    def joinable(a: list[Word], b: list[Word]) -> bool:
        return (b[0].start - a[-1].end <= opts.max_gap and b[-1].end - a[0].start <= opts.max_duration
                and _fits(a + b, opts))

    out: list[list[Word]] = []
    i = 0
    while i < len(groups):
        g = groups[i]
        nxt = groups[i + 1] if i + 1 < len(groups) else None
        room = (nxt[0].start if nxt else math.inf) - g[0].start
        if g[-1].end - g[0].start < opts.min_cue_seconds and room < opts.min_cue_seconds:
            if nxt is not None and joinable(g, nxt):
                groups[i + 1] = g + nxt
                i += 1
                continue
            if out and joinable(out[-1], g):
                out[-1] = out[-1] + g
                i += 1
                continue
        out.append(g)
        i += 1
    return out


def _stretch(cues: list[Cue], opts: SubtitleOptions, duration: float | None) -> None:
    """Give each cue at least min_cue_seconds and enough time to read it at max_cps: its end moves into the
    pause after it (never past the next cue, the end of the audio or max_duration), and when that is not
    enough for the reading speed, its start moves up to LEAD_IN_SECONDS into the pause before it."""
    for i, c in enumerate(cues):
        after = cues[i + 1].start if i + 1 < len(cues) else (duration if duration else math.inf)
        limit = min(max(after, c.end), c.start + opts.max_duration)
        reading = c.chars / opts.max_cps
        c.end = max(c.end, min(c.start + max(opts.min_cue_seconds, reading), limit))
        if c.end - c.start < reading:
            before = cues[i - 1].end if i else 0.0
            c.start = max(min(c.start, c.end - reading), before, c.start - LEAD_IN_SECONDS, c.end - opts.max_duration)


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


def make_cues(segments: list[Segment], options: SubtitleOptions | None = None,
              duration: float | None = None) -> list[Cue]:
    """Subtitle cues from timed segments (`duration`: of the audio, when known, the latest a cue may end).

    Line limits and max_duration are always held, times increase and never overlap; min_cue_seconds and
    max_cps are met where the pauses around a cue leave the time.
    """
    opts = options or SubtitleOptions()
    groups = []
    for seg in segments:
        groups += _cue_spans([w for w in (seg.words or _spread_words(seg)) if w.text.strip()], opts)
    cues: list[Cue] = []
    for group in _merge_short(groups, opts):
        start = max(group[0].start, cues[-1].end if cues else 0.0)
        end = min(max(group[-1].end, start + 0.001), start + opts.max_duration)
        cues.append(Cue(start, end, break_lines([w.text for w in group], opts.max_line_width), group))
    _stretch(cues, opts, duration)
    return cues


# ----------------------------------------------------------------------------------------------- writers


def _clean(text: str) -> str:
    # `-->` would end an SRT/VTT timing line; braces are ASS override tags to pysubs2
    return text.replace("-->", "->").replace("{", "(").replace("}", ")")


def _word_lines(cue: Cue) -> list[list[int]]:
    """The indices into `cue.words` of each of its lines."""
    out, n = [], 0
    for line in cue.lines:
        count = len(line.split(" ")) if cue.words else 0
        out.append(list(range(n, min(n + count, len(cue.words)))))
        n += count
    return out


def _text(cue: Cue, style: Callable[[int, str], str] | None = None) -> str:
    """The cue's text as an ASS event's (lines joined by \\N), each word passed through `style`."""
    if style is None or not cue.words:
        return "\\N".join(_clean(line) for line in cue.lines)
    return "\\N".join(" ".join(style(i, _clean(cue.words[i].text)) for i in line) for line in _word_lines(cue))


def _styled(cue: Cue, opts: SubtitleOptions, spoken: int = -1) -> Callable[[int, str], str]:
    """Word styles: below `mark_below` in italics, the word `spoken` underlined."""
    def style(i: int, text: str) -> str:
        p = cue.words[i].probability
        tags = ("i", "u") if i == spoken else ("i",)
        tags = tuple(t for t in tags if t == "u" or (opts.mark_below is not None and p is not None
                                                     and p < opts.mark_below))
        if not tags:
            return text
        return "{" + "".join(f"\\{t}1" for t in tags) + "}" + text + "{" + "".join(f"\\{t}0" for t in tags) + "}"
    return style


def _events(cue: Cue, opts: SubtitleOptions) -> list[tuple[float, float, str]]:
    """(start, end, text) of a cue's events: one, or with `highlight_words` the cue's time cut at each word's
    start and end, the word spoken underlined (the text between words plain)."""
    plain = _text(cue, _styled(cue, opts))
    if not (opts.highlight_words and cue.words):
        return [(cue.start, cue.end, plain)]
    out, t = [], cue.start
    for i, w in enumerate(cue.words):
        ws = min(max(w.start, t), cue.end)
        nxt = cue.words[i + 1].start if i + 1 < len(cue.words) else cue.end
        we = min(max(w.end, ws), max(nxt, ws), cue.end)
        if ws > t:
            out.append((t, ws, plain))
        if we > ws:
            out.append((ws, we, _text(cue, _styled(cue, opts, i))))
        t = max(t, we)
    if t < cue.end:
        out.append((t, cue.end, plain))
    return out


def _karaoke(cue: Cue, opts: SubtitleOptions) -> str:
    """ASS karaoke: each word with a `\\k` tag of the centiseconds from its start to the next word's (the
    time before the first word as an empty syllable); times are rounded cumulatively, so they sum to the cue."""
    mark = _styled(cue, opts)
    if not cue.words:
        return _text(cue, mark)
    start = round(cue.start * 100)
    marks = [round(min(max(w.start, cue.start), cue.end) * 100) for w in cue.words] + [round(cue.end * 100)]
    marks = [max(m, a) for m, a in zip(marks, [start] + marks)]  # never backwards
    lead = f"{{\\k{marks[0] - start}}}" if marks[0] > start else ""
    return lead + _text(cue, lambda i, x: f"{{\\k{marks[i + 1] - marks[i]}}}{mark(i, x)}")


def _subtitle_file(cues: list[Cue], opts: SubtitleOptions, fmt: str) -> pysubs2.SSAFile:
    subs = pysubs2.SSAFile()
    for c in cues:
        events = [(c.start, c.end, _karaoke(c, opts))] if fmt == "ass" else _events(c, opts)
        for start, end, text in events:
            subs.append(pysubs2.SSAEvent(start=round(start * 1000), end=round(end * 1000), text=text))
    return subs


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinite float (which JSON cannot hold) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# no speech: one empty, zero-length cue, the least that tools which detect the format (pysubs2, editors) read as
# SRT; a 0-byte file is not recognised; players and ffmpeg show and keep nothing of it
EMPTY_SRT = "1\n00:00:00,000 --> 00:00:00,000\n\n"


def format_transcript(transcript: Transcript, fmt: str, options: SubtitleOptions | None = None) -> str:
    """The text of `transcript` in one of FORMATS."""
    if fmt == "txt":
        return "".join(s.text + "\n" for s in transcript.segments)
    if fmt in ("srt", "vtt", "ass"):
        opts = options or SubtitleOptions()
        cues = make_cues(transcript.segments, opts, transcript.duration or None)
        if not cues and fmt != "ass":
            return "WEBVTT\n\n" if fmt == "vtt" else EMPTY_SRT
        return _subtitle_file(cues, opts, fmt).to_string(fmt)
    if fmt == "tsv":
        rows = [f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{s.text.replace(chr(9), ' ')}\n"
                for s in transcript.segments]
        return "start\tend\ttext\n" + "".join(rows)
    if fmt == "json":
        return json.dumps(_finite(transcript.to_dict()), ensure_ascii=False, indent=2, allow_nan=False) + "\n"
    raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")


def write_transcript(transcript: Transcript, stem: str | Path, formats: list[str],
                     options: SubtitleOptions | None = None, *, overwrite: bool = False) -> list[Path]:
    """Write `<stem>.<fmt>` for every format, as one set: all of them or, on any error, none.

    All texts are made before the first file is touched. Without `overwrite`, an existing output (even
    one that appeared during the run) raises `OutputExistsError` and nothing is written.
    """
    texts = {Path(f"{stem}.{fmt}"): format_transcript(transcript, fmt, options) for fmt in formats}
    return write_all(texts, overwrite=overwrite)
