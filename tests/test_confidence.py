"""Word confidence (decoder and CTC probabilities), segment scores, and the outputs that show them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from typer.testing import CliRunner

from fama_cli.main import app
from fama_core.pipeline import ChunkScores, chunk_scores
from fama_core.subtitles import Segment, Transcript, Word, compression_ratio, format_transcript

from conftest import ROOT

MODEL = ROOT / "tests" / "fixtures" / "tiny_trained"
BAG = MODEL / "clips" / "en_bag.wav"  # "Your bag is yellow."
COMMON = ["--model", str(MODEL), "--device", "cpu", "--dtype", "float32", "--quiet", "--lang", "en"]


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_chunk_scores_from_ctc_posteriors():
    blank = 3
    probs = torch.full((5, 4), 0.02)
    probs[:, blank] = 0.94
    probs[1, 0], probs[1, blank] = 0.9, 0.06  # token 0 on frame 1
    probs[3, 1], probs[4, 1], probs[3, blank], probs[4, blank] = 0.7, 0.5, 0.26, 0.46  # token 1 on frames 3-4
    got = chunk_scores(probs.log(), 5, [0, 1], [(1, 1), (3, 4)], blank, [-0.1, -0.2])
    assert got.logprobs == [-0.1, -0.2]
    assert [round(p, 4) for p in got.ctc] == [0.9, 0.6]
    assert math.isclose(got.no_speech, 0.94 * 0.06 * 0.94 * 0.26 * 0.46, rel_tol=1e-5)
    # frames past the chunk's length do not count; silence is no speech
    silent = chunk_scores(torch.full((4, 4), 1e-9).index_fill(1, torch.tensor([blank]), 1.0).log(), 3, [], [],
                          blank, None)
    assert silent == ChunkScores(None, [], silent.no_speech) and silent.no_speech > 0.99


def test_compression_ratio_is_high_for_repetition():
    assert compression_ratio("the the the the the the the the the the the the") > 2.0
    assert compression_ratio("Your bag is yellow.") < 1.0


def test_confidence_never_changes_text_and_subtitles():
    words = [Word(0.5, 0.9, "Your"), Word(1.0, 1.3, "bag.")]
    plain = Transcript([Segment(0.5, 1.3, "Your bag.", words)], "en", duration=2.0)
    scored_words = [Word(0.5, 0.9, "Your", 0.9, 0.8), Word(1.0, 1.3, "bag.", 0.4, 0.3)]
    scored = Transcript([Segment(0.5, 1.3, "Your bag.", scored_words, -0.5, 0.01, 0.6)], "en", duration=2.0)
    for fmt in ("txt", "srt", "vtt", "tsv"):
        assert format_transcript(scored, fmt) == format_transcript(plain, fmt)
    plain_json = json.loads(format_transcript(plain, "json"))
    scored_json = json.loads(format_transcript(scored, "json"))
    assert plain_json["segments"][0]["words"][0] == {"start": 0.5, "end": 0.9, "text": "Your"}
    assert scored_json["segments"][0]["words"][1] == {"start": 1.0, "end": 1.3, "text": "bag.", "probability": 0.4,
                                                     "ctc_probability": 0.3}
    seg = scored_json["segments"][0]
    assert (seg["avg_logprob"], seg["no_speech_prob"], seg["compression_ratio"]) == (-0.5, 0.01, 0.6)


def test_transcript_json_has_word_and_segment_confidence():
    code, out, _ = run("transcribe", BAG, *COMMON, "-f", "json", "-o", "-")
    assert code == 0
    doc = json.loads(out)
    assert doc["text"] == "Your bag is yellow."
    (seg,) = doc["segments"]
    assert [w["text"] for w in seg["words"]] == ["Your", "bag", "is", "yellow."]
    for w in seg["words"]:
        assert 0.0 <= w["probability"] <= 1.0 and 0.0 <= w["ctc_probability"] <= 1.0
    # a clip the model transcribes exactly: it is sure of every word
    assert min(w["probability"] for w in seg["words"]) > 0.5
    assert min(w["ctc_probability"] for w in seg["words"]) > 0.5
    assert -1.0 < seg["avg_logprob"] <= 0.0
    assert 0.0 <= seg["no_speech_prob"] < 0.01
    assert seg["compression_ratio"] == round(compression_ratio(seg["text"]), 4)


def _scored_transcript() -> Transcript:
    words = [Word(0.5, 0.9, "Your", 0.9), Word(1.0, 1.3, "bag", 0.3), Word(1.4, 2.0, "is", 0.8),
             Word(2.1, 2.6, "yellow.", 0.95)]
    return Transcript([Segment(0.5, 2.6, "Your bag is yellow.", words)], "en", duration=4.0)


def test_highlight_words_underlines_each_word_while_it_is_spoken():
    from fama_core.subtitles import SubtitleOptions

    srt = format_transcript(_scored_transcript(), "srt", SubtitleOptions(highlight_words=True))
    assert srt == (
        "1\n00:00:00,500 --> 00:00:00,900\n<u>Your</u> bag is yellow.\n\n"
        "2\n00:00:00,900 --> 00:00:01,000\nYour bag is yellow.\n\n"
        "3\n00:00:01,000 --> 00:00:01,300\nYour <u>bag</u> is yellow.\n\n"
        "4\n00:00:01,300 --> 00:00:01,400\nYour bag is yellow.\n\n"
        "5\n00:00:01,400 --> 00:00:02,000\nYour bag <u>is</u> yellow.\n\n"
        "6\n00:00:02,000 --> 00:00:02,100\nYour bag is yellow.\n\n"
        "7\n00:00:02,100 --> 00:00:02,600\nYour bag is <u>yellow.</u>\n\n")
    vtt = format_transcript(_scored_transcript(), "vtt", SubtitleOptions(highlight_words=True, mark_below=0.5))
    assert "00:00:01.000 --> 00:00:01.300\nYour <u><i>bag</i></u> is yellow.\n" in vtt
    assert "00:00:00.500 --> 00:00:00.900\n<u>Your</u> <i>bag</i> is yellow.\n" in vtt


def test_mark_below_puts_unsure_words_in_italics_and_ass_has_karaoke_tags():
    from fama_core.subtitles import SubtitleOptions

    opts = SubtitleOptions(mark_below=0.5, max_line_width=10)
    assert format_transcript(_scored_transcript(), "srt", opts) == \
        "1\n00:00:00,500 --> 00:00:02,600\nYour <i>bag</i>\nis yellow.\n\n"
    ass = format_transcript(_scored_transcript(), "ass", opts)
    # each word's \k is the centiseconds to the next word's start; they add up to the cue (2.1 s)
    assert ass.splitlines()[-1] == ("Dialogue: 0,0:00:00.50,0:00:02.60,Default,,0,0,0,,"
                                    "{\\k50}Your {\\k40}{\\i1}bag{\\i0}\\N{\\k70}is {\\k50}yellow.")


def test_cli_ass_highlight_and_mark_below(tmp_path):
    code, _, err = run("transcribe", BAG, *COMMON, "-f", "ass,srt", "-o", tmp_path, "--highlight-words",
                       "--mark-below", "0.5")
    assert code == 0, err
    import pysubs2

    ass = pysubs2.load(str(tmp_path / "en_bag.ass"))
    (event,) = ass.events
    assert event.plaintext == "Your bag is yellow." and event.text.count("\\k") == 4
    srt = pysubs2.load(str(tmp_path / "en_bag.srt"))
    assert [e.plaintext for e in srt.events if "\\u1" in e.text][-1] == "Your bag is yellow."
    assert sum("\\u1" in e.text for e in srt.events) == 4  # one event per word, underlined
    # -f all: the five formats of whisper's set, not ass
    code, _, _ = run("transcribe", BAG, *COMMON, "-f", "all", "-o", tmp_path / "all")
    assert code == 0 and sorted(p.suffix for p in (tmp_path / "all").iterdir()) == [".json", ".srt", ".tsv",
                                                                                   ".txt", ".vtt"]


def test_bad_mark_below_exits_2_before_the_model_loads(tmp_path):
    code, out, err = run("transcribe", BAG, "--model", tmp_path / "none", "--mark-below", "1.5")
    assert (code, err.strip()) == (2, "error: --mark-below must be between 0 and 1, not 1.5")


def test_scores_survive_the_json_results_of_ray_workers():
    from fama_core.pipeline import make_segments
    from fama_core.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(MODEL)
    ids = tok.encode("Your bag is yellow.")
    result = (ids, [(i, i) for i in range(len(ids))], ChunkScores([-0.1] * len(ids), [0.9] * len(ids), 0.001))
    local = make_segments(tok, [(0.0, 3.0)], [result])
    assert make_segments(tok, [(0.0, 3.0)], [tuple(json.loads(json.dumps(result)))]) == local
    assert local[0].words[0].ctc_probability == 0.9 and local[0].no_speech_prob == 0.001
    assert math.isclose(local[0].words[0].probability, math.exp(-0.1))
