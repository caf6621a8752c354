"""Cue layout, the five writers, and atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pysubs2
import pytest

from fama_core import subtitles
from fama_core.subtitles import (
    Segment,
    SubtitleOptions,
    Transcript,
    Word,
    atomic_write,
    format_transcript,
    make_cues,
    write_transcript,
)


def words_of(text: str, start: float = 0.0, step: float = 0.4, gap_after: dict | None = None) -> list[Word]:
    out, t = [], start
    for i, w in enumerate(text.split()):
        out.append(Word(t, t + step * 0.8, w))
        t += step + (gap_after or {}).get(i, 0.0)
    return out


def segment(text: str, **kw) -> Segment:
    words = words_of(text, **kw)
    return Segment(words[0].start, words[-1].end, text, words)


LONG = ("Questa è una frase piuttosto lunga, che serve a controllare che le righe dei sottotitoli non superino mai "
        "la larghezza massima. E poi continua ancora per un po' con altre parole, perché ne servono tante davvero.")


def test_cues_hold_line_limits_and_time_order():
    seg = segment(LONG, step=0.3)
    for width, count in [(42, 2), (20, 1), (30, 3)]:
        cues = make_cues([seg], SubtitleOptions(width, count, max_duration=7.0))
        assert " ".join(" ".join(c.lines) for c in cues) == LONG
        for c in cues:
            assert len(c.lines) <= count
            assert all(len(line) <= width for line in c.lines)
            assert c.end > c.start
            assert c.end - c.start <= 7.0 + 1e-9
        assert all(a.end <= b.start for a, b in zip(cues, cues[1:]))


def test_cue_breaks_at_pauses_and_prefers_clause_ends():
    seg = segment("one two three four five six", gap_after={2: 3.0})
    cues = make_cues([seg])
    assert [c.text for c in cues] == ["one two three", "four five six"]
    seg = segment("alpha beta gamma, delta epsilon zeta eta theta iota", step=0.2)
    cues = make_cues([seg], SubtitleOptions(max_line_width=24, max_line_count=1))
    assert cues[0].text == "alpha beta gamma,"


def test_balanced_two_lines():
    cues = make_cues([segment("aaa bbb ccc ddd eee fff ggg hhh iii jjj kkk")], SubtitleOptions(42, 2))
    assert len(cues) == 1 and len(cues[0].lines) == 2
    assert abs(len(cues[0].lines[0]) - len(cues[0].lines[1])) <= 4


def test_overlong_word_gets_its_own_line():
    cues = make_cues([segment("a " + "x" * 60 + " b")], SubtitleOptions(42, 2))
    assert any("x" * 60 in c.lines for c in cues)


def transcript(segments: list[Segment]) -> Transcript:
    return Transcript(segments, "it", "transcribe", "it", 30.0, "in.wav", "tiny", {"beam_size": 5})


def test_srt_vtt_parse_back():
    t = transcript([segment(LONG, step=0.25), segment("Città --> perché {ok}.", start=20.0)])
    for fmt in ("srt", "vtt"):
        text = format_transcript(t, fmt)
        subs = pysubs2.SSAFile.from_string(text, format_=fmt)
        cues = make_cues(t.segments, duration=t.duration)
        assert len(subs) == len(cues)
        for ev, c in zip(subs, cues):
            assert ev.start == round(c.start * 1000) and ev.end == round(c.end * 1000)
            assert ev.plaintext.split("\n") == [line.replace("-->", "->").replace("{", "(").replace("}", ")")
                                                for line in c.lines]
        if fmt == "vtt":
            assert text.startswith("WEBVTT")
    assert "Città -> perché (ok)." in format_transcript(t, "srt")


def test_empty_transcript_writes_empty_valid_files(tmp_path):
    t = transcript([])
    assert format_transcript(t, "txt") == ""
    assert format_transcript(t, "srt") == "1\n00:00:00,000 --> 00:00:00,000\n\n"
    assert format_transcript(t, "vtt") == "WEBVTT\n\n"
    assert format_transcript(t, "tsv") == "start\tend\ttext\n"
    assert json.loads(format_transcript(t, "json"))["segments"] == []
    for fmt in ("srt", "vtt"):
        written = write_transcript(t, tmp_path / "silence", [fmt])
        subs = pysubs2.load(str(written[0]))  # the format is recognised from the content, as editors do
        assert subs.format == fmt and all(ev.plaintext == "" and ev.end == 0 for ev in subs)


def test_txt_tsv_json():
    t = transcript([segment("Prima frase.", start=1.0), segment("Seconda\tfrase è qui.", start=5.0)])
    assert format_transcript(t, "txt") == "Prima frase.\nSeconda\tfrase è qui.\n"
    rows = format_transcript(t, "tsv").splitlines()
    assert rows[0] == "start\tend\ttext" and rows[1].startswith("1000\t") and rows[2].endswith("Seconda frase è qui.")
    raw = format_transcript(t, "json")
    assert "è" in raw  # non-ASCII kept as is
    d = json.loads(raw)
    assert d["language"] == "it" and d["task"] == "transcribe" and d["model"] == "tiny"
    assert d["options"] == {"beam_size": 5} and d["text"] == "Prima frase. Seconda\tfrase è qui."
    assert d["segments"][0]["words"][0] == {"start": 1.0, "end": 1.32, "text": "Prima"}


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown output format"):
        format_transcript(transcript([]), "docx")


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "out.srt"
    atomic_write(target, "old\n")
    real_fsync = os.fsync

    def crash(fd):
        raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    monkeypatch.setattr(subtitles.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, "new text that never lands\n")
    monkeypatch.setattr(subtitles.os, "fsync", real_fsync)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.srt"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)


def test_write_transcript_makes_all_texts_before_touching_files(tmp_path, monkeypatch):
    t = transcript([segment("Ciao.")])
    real = subtitles.format_transcript

    def failing(tr, fmt, options=None):
        if fmt == "json":
            raise RuntimeError("boom")
        return real(tr, fmt, options)

    monkeypatch.setattr(subtitles, "format_transcript", failing)
    with pytest.raises(RuntimeError):
        write_transcript(t, tmp_path / "x", ["srt", "txt", "json"])
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(subtitles, "format_transcript", real)
    paths = write_transcript(t, tmp_path / "x", ["srt", "txt", "json"])
    assert sorted(p.name for p in paths) == ["x.json", "x.srt", "x.txt"]


# ------------------------------------------------------------------------------------ subtitle shaping rules


W = Word


def seg(*words: Word) -> Segment:
    return Segment(words[0].start, words[-1].end, " ".join(w.text for w in words), list(words))


def timed(text: str, start: float, end: float) -> Segment:
    """A segment whose words share [start, end] evenly."""
    texts = text.split()
    step = (end - start) / len(texts)
    return seg(*[W(start + i * step, start + (i + 1) * step, x) for i, x in enumerate(texts)])


def shape(cues) -> list[tuple[float, float, str]]:
    return [(round(c.start, 6), round(c.end, 6), c.text) for c in cues]


@pytest.mark.parametrize("field, value", [
    ("max_duration", 0), ("max_duration", -5), ("max_duration", float("nan")), ("max_cps", 0), ("max_cps", -1),
    ("min_cue_seconds", -0.1), ("min_cue_seconds", 8.0), ("max_line_width", 0), ("max_line_count", 0),
    ("max_gap", -1),
])
def test_subtitle_options_are_validated(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        SubtitleOptions(**{field: value})


def test_short_cue_is_extended_into_the_following_pause():
    segments = [seg(W(1.0, 1.2, "My"), W(1.24, 1.44, "brother.")), timed("He went home.", 3.0, 4.0)]
    assert shape(make_cues(segments)) == [(1.0, 1.8, "My brother."), (3.0, 4.0, "He went home.")]
    # a shorter minimum: reading 11 characters at 20 per second still takes 0.55 s
    assert shape(make_cues(segments, SubtitleOptions(min_cue_seconds=0.5)))[0] == (1.0, 1.55, "My brother.")
    assert shape(make_cues(segments, SubtitleOptions(min_cue_seconds=0.3)))[0] == (1.0, 1.55, "My brother.")
    no_limits = SubtitleOptions(min_cue_seconds=0, max_cps=float("inf"))
    assert shape(make_cues(segments, no_limits))[0] == (1.0, 1.44, "My brother.")


def test_short_cue_never_overlaps_the_next_one():
    # one 12-character line: the two cannot share a cue, so the first ends where the next begins
    segments = [seg(W(1.0, 1.2, "My"), W(1.24, 1.44, "brother.")), timed("Go home.", 1.6, 2.2)]
    cues = make_cues(segments, SubtitleOptions(max_line_width=12, max_line_count=1))
    assert shape(cues) == [(1.0, 1.6, "My brother."), (1.6, 2.4, "Go home.")]


def test_short_cue_without_a_pause_joins_its_neighbour():
    segments = [seg(W(1.0, 1.2, "My"), W(1.24, 1.44, "brother.")), timed("He went home.", 1.5, 2.5)]
    assert shape(make_cues(segments)) == [(1.0, 2.5, "My brother. He went home.")]
    # on two lines, broken after the sentence
    assert shape(make_cues(segments, SubtitleOptions(max_line_width=20))) == [(1.0, 2.5, "My brother.\nHe went home.")]
    # when it cannot join the next cue, it joins the previous one
    segments = [timed("We went to the station", 1.0, 2.5), timed("at noon.", 2.55, 2.9),
                timed("Then we all went back home.", 3.0, 4.5)]
    assert shape(make_cues(segments, SubtitleOptions(max_line_width=32, max_line_count=1))) == [
        (1.0, 2.9, "We went to the station at noon."), (3.0, 4.5, "Then we all went back home.")]


def test_reading_speed_extends_the_cue_into_the_pause_after_it():
    fast = "word " * 8  # 39 characters: 1.95 s at 20 characters per second
    segments = [timed(fast, 1.0, 2.0), timed("Fine.", 5.0, 6.0)]
    assert shape(make_cues(segments)) == [(1.0, 2.95, fast.strip()), (5.0, 6.0, "Fine.")]
    assert shape(make_cues(segments, SubtitleOptions(max_cps=13)))[0] == (1.0, 4.0, fast.strip())
    # never past the end of the audio (then a lead-in of 0.45 s completes the 1.95 s)
    assert shape(make_cues(segments[:1], duration=2.5)) == [(0.55, 2.5, fast.strip())]


def test_reading_speed_takes_a_short_lead_in_when_the_pause_after_is_too_short():
    fast = "word " * 8
    segments = [timed("Ok.", 0.0, 0.3), timed(fast, 2.0, 3.0), timed("Fine.", 3.5, 4.5)]
    assert shape(make_cues(segments)) == [(0.0, 0.8, "Ok."), (1.55, 3.5, fast.strip()), (3.5, 4.5, "Fine.")]
    # the lead-in is at most LEAD_IN_SECONDS: here the timing does not allow 20 characters per second
    segments[2] = timed("Fine.", 3.2, 4.2)
    cues = make_cues(segments)
    assert shape(cues)[1] == (2.0 - subtitles.LEAD_IN_SECONDS, 3.2, fast.strip())
    assert cues[1].chars / (cues[1].end - cues[1].start) == pytest.approx(39 / 1.7)


def test_continuous_fast_speech_keeps_its_times():
    segments = [timed("one two three four five six seven eight nine ten", 0.0, 1.0),
                timed("eleven twelve thirteen fourteen fifteen", 1.0, 2.0), timed("Stop.", 2.0, 3.0)]
    assert shape(make_cues(segments)) == [(0.0, 1.0, "one two three four five\nsix seven eight nine ten"),
                                          (1.0, 2.0, "eleven twelve thirteen fourteen fifteen"), (2.0, 3.0, "Stop.")]


def test_max_cue_seconds_is_always_held():
    # forced alignment can stretch one word over a long pause: 9.84 s for one word
    cues = make_cues([seg(W(0.0, 0.3, "So"), W(0.3, 10.14, "then."))])
    assert shape(cues) == [(0.0, 0.3, "So"), (0.3, 7.3, "then.")]
    assert shape(make_cues([seg(W(0.0, 9.84, "Hmm."))], SubtitleOptions(max_duration=3)))[0] == (0.0, 3.0, "Hmm.")
    # reading speed and max_duration together: no cue holds more than max_cps * max_duration characters
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi"
    cues = make_cues([timed(text, 0.0, 1.6)], SubtitleOptions(max_duration=2.0))
    assert [c.chars for c in cues] == [39, 40, 2]
    assert all(c.end - c.start <= 2.0 for c in cues) and cues[0].end <= cues[1].start


def test_shaping_rules_hold_on_a_long_random_transcript():
    rng = np.random.default_rng(0)
    vocabulary = ["a", "the", "house,", "questo", "è", "molto", "bello.", "extraordinarily", "x" * 50, "ok", "no!"]
    for opts in [SubtitleOptions(), SubtitleOptions(max_duration=3, max_line_width=20), SubtitleOptions(
            max_duration=1.5, max_line_count=1, min_cue_seconds=1.0, max_cps=12)]:
        t, segments, all_words = 0.0, [], []
        for _ in range(60):
            words = []
            for _ in range(int(rng.integers(1, 15))):
                t += float(rng.choice([0.0, 0.05, 0.3, 2.0], p=[0.5, 0.3, 0.15, 0.05]))
                d = float(rng.choice([0.1, 0.3, 0.6, 9.0], p=[0.3, 0.5, 0.18, 0.02]))
                words.append(W(t, t + d, str(rng.choice(vocabulary))))
                t += d
            segments.append(seg(*words))
            all_words += [w.text for w in words]
        cues = make_cues(segments, opts, duration=t + 1.0)
        assert " ".join(" ".join(c.lines) for c in cues).split() == all_words
        for a, b in zip(cues, cues[1:]):
            assert a.end <= b.start
        for c in cues:
            assert 0 < c.end - c.start <= opts.max_duration + 1e-9 and c.end <= t + 1.0
            assert len(c.lines) <= opts.max_line_count
            assert all(len(line) <= opts.max_line_width or " " not in line for line in c.lines)


@pytest.mark.parametrize("text, width, lines", [
    ("I told him, and then we left the house together", 42, ["I told him,", "and then we left the house together"]),
    ("aaa bbb ccc ddd eee fff ggg hhh iii jjj kkk", 42, ["aaa bbb ccc ddd eee", "fff ggg hhh iii jjj kkk"]),
    # the comma would leave 52 characters on the second line: the balanced break instead
    ("Yes, I think that we should all go to the market tomorrow", 42,
     ["Yes, I think that we should", "all go to the market tomorrow"]),
    ("Short enough, for one line.", 42, ["Short enough, for one line."]),
    ("one two three. four five six, seven eight nine ten eleven twelve thirteen", 20,
     ["one two three.", "four five six,", "seven eight", "nine ten eleven", "twelve thirteen"]),
    ("a " + "x" * 50 + " b", 42, ["a", "x" * 50, "b"]),
])
def test_lines_break_at_punctuation_then_where_balanced(text, width, lines):
    assert subtitles.break_lines(text.split(), width) == lines


def test_json_holds_no_nan_or_infinity():
    t = transcript([segment("Ciao.")])
    t.options["language_scores"] = {"en": float("nan"), "it": float("-inf"), "fr": -1.5}

    def refuse(constant):
        raise ValueError(constant)

    d = json.loads(format_transcript(t, "json"), parse_constant=refuse)
    assert d["options"]["language_scores"] == {"en": None, "it": None, "fr": -1.5}
