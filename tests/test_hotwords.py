"""Hotwords: the context graph's bonus, the term lists, and the boost inside the joint CTC/attention beam."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fama_cli.main import app
from fama_core.hotwords import (
    ContextGraph,
    Hotword,
    case_variants,
    parse_hotwords,
    read_hotwords_file,
    restore_spelling,
    spellings,
)
from fama_core.tokenizer import Tokenizer

from conftest import ROOT

MODEL = ROOT / "tests" / "fixtures" / "tiny_trained"
TRENTO = ROOT / "tests" / "fixtures" / "hotwords" / "where_is_trento.wav"
BAG = MODEL / "clips" / "en_bag.wav"  # "Your bag is yellow."
COMMON = ["--model", str(MODEL), "--device", "cpu", "--dtype", "float32", "--quiet", "--lang", "en"]


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def walk(graph: ContextGraph, tokens: list[int]) -> list[float]:
    """The score change of each token, from the root."""
    state, out = 0, []
    for t in tokens:
        c = int(graph.column[t])
        out.append(float(graph.delta[state, c]))
        state = int(graph.next_state[state, c])
    return out


def test_graph_gives_a_bonus_per_token_takes_it_back_when_the_match_breaks_and_keeps_a_complete_term():
    g = ContextGraph([((5, 6, 7), 1.0), ((6, 8), 2.0)], vocab_size=20)
    # 5 6 7 complete: +1 +1 +1 on the way, +3 kept at the end; then an unrelated token costs nothing
    assert walk(g, [5, 6, 7, 9]) == [1.0, 1.0, 4.0, -3.0]
    # 5 6 then 9: both bonuses taken back
    assert walk(g, [5, 6, 9]) == [1.0, 1.0, -2.0]
    # 5 6 8: the match of (5 6 7) breaks at 8, but (6 8) matches its suffix: 6's bonus becomes the second
    # term's (2), 8 completes it (+2, and its 4 kept)
    assert walk(g, [5, 6, 8, 9]) == [1.0, 1.0, pytest.approx(2.0 - 2.0 + 2.0 + 4.0), -4.0]
    # the net of a complete term is its bonus, whatever follows it
    assert sum(walk(g, [5, 6, 7, 3])) == 3.0
    assert sum(walk(g, [5, 6, 9])) == 0.0


def test_a_term_inside_another_keeps_its_own_bonus():
    g = ContextGraph([((5, 6), 1.0), ((5, 6, 7, 8), 1.0)], vocab_size=20)
    # (5 6) completes (kept 2), (5 6 7 8) breaks at 9: only the longer term's partial bonus goes back
    assert sum(walk(g, [5, 6, 7, 9])) == 2.0
    assert sum(walk(g, [5, 6, 7, 8, 9])) == 2.0 + 4.0


def test_case_variants_and_spellings():
    assert case_variants("fbk") == ["fbk", "FBK", "Fbk"]
    assert case_variants("Bruno Kessler") == ["Bruno Kessler", "bruno kessler", "BRUNO KESSLER"]
    tok = Tokenizer.from_folder(MODEL)
    seqs = spellings("Trento", tok)
    marker = tok.piece_to_id("\u2581")
    assert tuple(tok.encode("Trento")) in seqs and tuple(tok.encode("trento")) in seqs
    # the same term continuing a word: without the word-start marker
    assert tuple(tok.encode("Trento"))[0] == marker and tuple(tok.encode("Trento"))[1:] in seqs
    assert all(tok.unk not in s for s in seqs)


def test_restore_spelling_writes_the_term_as_given():
    terms = [Hotword("Trento"), Hotword("Bruno Kessler"), Hotword("FBK")]
    words = ["Where", "is", "trento?", "bruno", "KESSLER,", "(fbk)", "trentino"]
    assert restore_spelling(words, terms) == ["Where", "is", "Trento?", "Bruno", "Kessler,", "(FBK)", "trentino"]


def test_term_lists(tmp_path):
    assert parse_hotwords(" FBK, Trento ,,Bruno   Kessler ") == [Hotword("FBK"), Hotword("Trento"),
                                                                 Hotword("Bruno Kessler")]
    f = tmp_path / "terms.txt"
    f.write_text("# names\nFBK\t3\n\nBentivogli\n", encoding="utf-8")
    assert read_hotwords_file(f, 2.0) == [Hotword("FBK", 3.0), Hotword("Bentivogli", 2.0)]


@pytest.mark.parametrize(("content", "message"), [
    (b"FBK\tabc\n", "{f}:1: weight 'abc' is not a number"),
    (b"FBK\n\tTrento\t2\n", "{f}:2: more than one TAB (expected term<TAB>weight)"),
    (b"FBK\n\t2\n", "{f}:2: a hotword cannot be empty"),
    (b"FBK\t-1\n", "{f}:1: hotword weight must be a number in (0, 20], not -1.0"),
    (b"FBK\tnan\n", "{f}:1: hotword weight must be a number in (0, 20], not nan"),
    (b"# only a comment\n\n", "{f}: no hotwords (one term per line, optionally term<TAB>weight)"),
    (b"Trento\xff\n", "{f}: not UTF-8 text"),
])
def test_bad_hotwords_file_exits_2_with_one_line_before_the_model_loads(tmp_path, content, message):
    f = tmp_path / "terms.txt"
    f.write_bytes(content)
    # a model that does not exist: the hotwords are checked first
    code, out, err = run("transcribe", TRENTO, "--model", tmp_path / "no-model", "--hotwords-file", f, "-o", "-",
                         "-f", "txt")
    assert code == 2 and out == ""
    assert err.strip() == "error: " + message.format(f=f)


def test_hotword_option_errors(tmp_path):
    missing = tmp_path / "missing.txt"
    code, _, err = run("transcribe", TRENTO, "--model", tmp_path / "m", "--hotwords-file", missing)
    assert (code, err.strip()) == (2, f"error: {missing}: no such file")
    code, _, err = run("translate", TRENTO, "--model", tmp_path / "m", "--hotwords", " , ")
    assert (code, err.strip()) == (2, "error: no hotword in ' , '")
    code, _, err = run("transcribe", TRENTO, "--model", tmp_path / "m", "--hotwords", "FBK", "--greedy")
    assert (code, err.strip()) == (2, "error: hotwords need the beam search, not greedy CTC")
    code, _, err = run("transcribe", TRENTO, "--model", tmp_path / "m", "--hotword-weight", "3")
    assert (code, err.strip()) == (2, "error: --hotword-weight goes with --hotwords or --hotwords-file")
    code, _, err = run("eval", tmp_path / "x.tsv", "--hotwords", "FBK", "--greedy")
    assert (code, err.strip()) == (2, "error: hotwords need the beam search, not --greedy")


def test_boost_turns_a_misheard_name_into_the_term_and_an_unspoken_term_stays_out(tmp_path):
    code, out, _ = run("transcribe", TRENTO, *COMMON, "-f", "txt", "-o", "-")
    assert (code, out) == (0, "Where is three che?\n")  # the demo model never saw the name
    terms = ["--hotwords", "Trento, Bentivogli", "--hotword-weight", "6"]
    code, out, _ = run("transcribe", TRENTO, *COMMON, *terms, "-f", "txt", "-o", "-")
    assert (code, out) == (0, "Where is Trento?\n")
    # neither term is spoken here: the CTC prefix score keeps them out
    code, out, _ = run("transcribe", BAG, *COMMON, *terms, "-f", "txt", "-o", "-")
    assert (code, out) == (0, "Your bag is yellow.\n")
    # the same terms from a file; the JSON says which terms were used
    f = tmp_path / "terms.txt"
    f.write_text("Trento\t6\nBentivogli\t6\n", encoding="utf-8")
    code, out, _ = run("transcribe", TRENTO, *COMMON, "--hotwords-file", f, "-f", "json", "-o", "-")
    doc = json.loads(out)
    assert code == 0 and doc["text"] == "Where is Trento?"
    assert doc["options"]["hotwords"] == [{"text": "Trento", "weight": 6.0}, {"text": "Bentivogli", "weight": 6.0}]
    assert "hotword_spellings" not in doc["options"]


def test_no_hotwords_leaves_the_search_unchanged():
    from fama_core.audio import load_audio
    from fama_core.checkpoints import load_model
    from fama_core.decoding import DecodeOptions, decode, with_hotword_spellings
    from fama_core.features import compute_features

    model, tok = load_model(MODEL, device="cpu", dtype="float32")
    feats, lengths = compute_features([torch.as_tensor(load_audio(BAG))])
    plain = decode(model, feats, lengths, tok.lang_tag_id("en"), DecodeOptions())[0][0]
    # a term that shares no token with the utterance's path changes no score
    opts = with_hotword_spellings(DecodeOptions(hotwords=(Hotword("Bentivogli", 1.0),)), tok)
    boosted = decode(model, feats, lengths, tok.lang_tag_id("en"), opts)[0][0]
    assert boosted.tokens == plain.tokens
    assert tok.decode(plain.tokens) == "Your bag is yellow."
