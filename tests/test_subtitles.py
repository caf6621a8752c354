"""Cue layout and the five writers (the atomic writer itself: test_outputs.py)."""

from __future__ import annotations

import json

import pysubs2
import pytest

from fama_core import subtitles
from fama_core.subtitles import (
    Segment,
    SubtitleOptions,
    Transcript,
    Word,
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
        cues = make_cues(t.segments)
        assert len(subs) == len(cues)
        for ev, c in zip(subs, cues):
            assert ev.start == round(c.start * 1000) and ev.end == round(c.end * 1000)
            assert ev.plaintext.split("\n") == [line.replace("-->", "->").replace("{", "(").replace("}", ")")
                                                for line in c.lines]
        if fmt == "vtt":
            assert text.startswith("WEBVTT")
    assert "Città -> perché (ok)." in format_transcript(t, "srt")


def test_empty_transcript_writes_empty_valid_files():
    t = transcript([])
    assert format_transcript(t, "txt") == ""
    assert format_transcript(t, "srt") == ""
    assert len(pysubs2.SSAFile.from_string(format_transcript(t, "vtt"), format_="vtt")) == 0
    assert format_transcript(t, "tsv") == "start\tend\ttext\n"
    assert json.loads(format_transcript(t, "json"))["segments"] == []


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
