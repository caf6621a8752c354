"""FBK's Hugging Face layouts (issue 25): fake repos built from the demo model and the tiny FBK fixture in each layout
(`fake_repos.py`), read as they are; models without CTC heads; the sanity check and `fama inspect`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_repos import make_repo
from safetensors.torch import load_file, save_file

from fama_core.audio import load_audio
from fama_core.checkpoints import BUNDLED, CheckpointError, demo_clips, load_fairseq, load_model, save_model
from fama_core.decoding import DecodeOptions
from fama_core.pipeline import Pipeline, TranscribeOptions, decode_chunks, language_scores, make_segments
from fama_core.sanity import check_model

from conftest import ROOT, require_shared

DEMO = BUNDLED["fama-demo"]


def fama(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fama_cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


@pytest.fixture(scope="module")
def clips():
    paths = [c for c in demo_clips() if c.stem in ("en_cats", "it_boy")]
    return [torch.from_numpy(load_audio(c)) for c in paths]


@pytest.fixture(scope="module")
def demo():
    return load_model("fama-demo", device="cpu", dtype="float32")


def _decoded(model, tok, clips, **options):
    ids = [tok.lang_tag_id("en"), tok.lang_tag_id("it")]
    return decode_chunks(model, clips, ids, DecodeOptions(**options))


@pytest.mark.parametrize("layout", [dict(), dict(names="fairseq", tokenizer="fairseq")],
                         ids=["speech2text", "fairseq-under-model."])
def test_same_weights_same_transcripts_and_times(tmp_path, demo, clips, layout):
    repo = make_repo(DEMO, tmp_path / "repo", **layout)
    model, tok = load_model(repo, device="cpu", dtype="float32")
    assert model.num_parameters() == demo[0].num_parameters()
    for (k, a), b in zip(demo[0].state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    assert tok.languages == ["en", "it"] and tok.vocab_size == 257
    assert _decoded(model, tok, clips) == _decoded(*demo, clips)


def test_tied_output_layer_takes_the_embeddings(tmp_path):
    model, tok = load_model(make_repo(DEMO, tmp_path / "repo", tied=True), device="cpu", dtype="float32",
                            trainable=True)
    assert torch.equal(model.decoder.output_projection.weight, model.decoder.embed_tokens.weight)
    # the demo model's output layer is not tied: tying it is a wrong mapping that only the sanity check sees
    report = check_model(model, tok)  # a model in training mode is checked without dropout
    assert not report.passed and "CTC and attention transcripts disagree" in report.problems[-1]


def test_fbk_fixture_in_speech2text_layout_loads_the_same_weights(tmp_path):
    ref = require_shared("fixtures", "fbk_reference", "tiny")
    model, tok = load_fairseq(ref / "checkpoint.pt")
    save_model(model, tok, tmp_path / "fama")
    loaded, tok2 = load_model(make_repo(tmp_path / "fama", tmp_path / "repo"), device="cpu", dtype="float32",
                              trainable=True)
    assert loaded.cfg == model.cfg and tok2.vocab_size == tok.vocab_size
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_without_top_ctc_attention_search_and_intermediate_ctc_timing(tmp_path, demo, clips, caplog):
    model, tok = load_model(make_repo(DEMO, tmp_path / "repo", top_ctc=False), device="cpu", dtype="float32")
    assert model.auxiliary_decoder is None and model.cfg.ctc_encoder_layer == 2
    # FBK's demo settings without CTC: the same search as the full model with CTC weight 0
    ours, full = _decoded(model, tok, clips), _decoded(*demo, clips, ctc_weight=0.0)
    assert [t for t, *_ in ours] == [t for t, *_ in full]
    with torch.no_grad():
        feats = [demo[0].encode(*_features(demo[0], [c]), inter_ctc=True) for c in clips]
    from fama_core.decoding import forced_align

    for (tokens, spans, *_), enc in zip(ours, feats):
        lp = torch.log_softmax(enc.ctc_inter_logits.float(), -1)
        assert spans == forced_align(lp, enc.lengths, [tokens], demo[0].cfg.src_blank)[0]
    with caplog.at_level(logging.WARNING, logger="fama_core"):
        Pipeline(model, tok, TranscribeOptions(language="en"))
    assert [r.getMessage() for r in caplog.records] == [
        "note: this model has no top CTC head: attention-only beam search (beam 5, no-repeat n-gram 5, as FBK's "
        "demo decodes); tokens timed by the intermediate CTC"]
    # language detection: the decoder scores the intermediate CTC's reading under each tag
    scores = language_scores(model, tok, clips, ["en", "it"])
    assert scores.argmax(1).tolist() == [0, 1]


def _features(model, audios):
    from fama_core.pipeline import chunk_features

    return chunk_features(audios, model)


def test_without_any_ctc_cross_attention_times_agree_with_ctc(tmp_path, demo):
    model, tok = load_model(make_repo(DEMO, tmp_path / "repo", top_ctc=False, inter_ctc=False), device="cpu",
                            dtype="float32")
    audios = [torch.from_numpy(load_audio(c)) for c in demo_clips()]
    ids = [tok.lang_tag_id("it" if c.stem.startswith("it") else "en") for c in demo_clips()]
    ours = decode_chunks(model, audios, ids, DecodeOptions())
    ctc = decode_chunks(demo[0], audios, ids, DecodeOptions(ctc_weight=0.0))
    starts = []
    for (tokens, spans, *_), (ref_tokens, ref_spans, *_), audio in zip(ours, ctc, audios):
        assert tokens == ref_tokens
        chunk = [(0.0, len(audio) / 16000)]
        a = [w for s in make_segments(tok, chunk, [(tokens, spans)]) for w in s.words]
        b = [w for s in make_segments(tok, chunk, [(ref_tokens, ref_spans)]) for w in s.words]
        assert [w.start for w in a] == sorted(w.start for w in a) and all(w.end > w.start for w in a)
        starts += [abs(x.start - y.start) for x, y in zip(a, b)]
    # measured: 28 words, median 0.08 s, 17 within 0.2 s of the CTC times (the first word of a clip is where the
    # two differ most: CTC puts it in the second of silence before the speech)
    assert len(starts) == 28 and np.median(starts) <= 0.1 and sum(s <= 0.2 for s in starts) >= 17


def test_without_any_ctc_cli_writes_timed_subtitles_and_refuses_auto(tmp_path):
    repo = make_repo(DEMO, tmp_path / "repo", top_ctc=False, inter_ctc=False)
    clip = next(c for c in demo_clips() if c.stem == "en_bag")
    r = fama("transcribe", str(clip), "--model", str(repo), "--lang", "en", "--srt", "-o", str(tmp_path / "out"),
             "--device", "cpu", "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    assert "note: this model has no top CTC head: attention-only beam search" in r.stderr
    srt = (tmp_path / "out" / "en_bag.srt").read_text()
    assert srt.startswith("1\n00:00:00,832 --> 00:00:01,882\nYour ") and srt.endswith(" is yellow.\n\n")
    r = fama("transcribe", str(clip), "--model", str(repo), "--device", "cpu", "-o", str(tmp_path / "out2"))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith(
        "--lang auto needs a model with the intermediate CTC head (sharing the decoder's dictionary), which this one "
        "lacks; give the language (--lang en, --lang it)")


def test_vocab_json_that_disagrees_is_one_line(tmp_path):
    def swap(vocab):
        return {k: (21 - i if i in (10, 11) else i) for k, i in vocab.items()}

    repo = make_repo(DEMO, tmp_path / "repo", vocab_edit=swap)
    r = fama("inspect", str(repo), "--no-check")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (f"error: {repo}/vocab.json does not match the SentencePiece model "
                        f"{repo}/sentencepiece.bpe.model: id 10 is 's' in vocab.json but 'i' in the spm model\n")
    repo2 = make_repo(DEMO, tmp_path / "repo2", vocab_edit=lambda v: {**v, "<extra>": len(v)})
    with pytest.raises(CheckpointError, match=r"vocab.json has 257 entries, the spm model 256 pieces"):
        load_model(repo2, device="cpu")


def test_names_that_match_nothing_are_one_line_and_no_model(tmp_path):
    repo = make_repo(DEMO, tmp_path / "repo", rename={r"\.layers\.(\d+)\.conv_module\.": r".blocks.\1.conv."})
    r = fama("transcribe", str(clips_dir() / "en_bag.wav"), "--model", str(repo), "--lang", "en", "-o",
             str(tmp_path / "out"), "--device", "cpu")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith(f"error: cannot load model {repo}: {repo}: 36 tensor names match no FAMA parameter: "
                               "model.encoder.blocks.N.conv.* "
                               "(36, e.g. model.encoder.blocks.0.conv.batchnorm.bias (144,)); fama reads fairseq names")
    assert lines[0].endswith("convert FBK's fairseq checkpoint instead: fama convert avg25.pt OUT --spm "
                             "spm_en_it_16000_lid.model (download links in fbk_works/FAMA.md of "
                             "github.com/hlt-mt/FBK-fairseq)")
    assert not (tmp_path / "out").exists()


def clips_dir() -> Path:
    return DEMO / "clips"


def test_config_json_that_disagrees_with_the_weights_is_one_line(tmp_path):
    repo = make_repo(DEMO, tmp_path / "repo", config_extra={"encoder_layers": 12})
    with pytest.raises(CheckpointError, match=r"^.*repo: config.json gives encoder_layers 12 but the weights have 3 "
                                              r"\(encoder_layers\): the file does not describe these weights$"):
        load_model(repo, device="cpu")


def test_sanity_check_passes_on_the_demo_model_and_fails_on_corrupted_copies(tmp_path, demo):
    report = check_model(*demo)
    assert report.passed and report.detected_right == 1.0 and report.disagreement < 35
    assert [c.detected for c in report.clips] == [c.language for c in report.clips]
    sd = load_file(DEMO / "model.safetensors")
    swapped = dict(sd)
    for k in [k for k in sd if k.startswith("encoder.conformer_layers.0.")]:
        other = k.replace("layers.0.", "layers.1.")
        swapped[k], swapped[other] = sd[other], sd[k]
    permuted = dict(sd)
    permuted["decoder.embed_tokens.weight"] = sd["decoder.embed_tokens.weight"][
        torch.randperm(257, generator=torch.Generator().manual_seed(0))]
    for name, weights in (("swapped", swapped), ("permuted", permuted)):
        folder = tmp_path / name
        folder.mkdir()
        for f in ("config.json", "tokenizer.model", "dict.txt"):
            (folder / f).write_bytes((DEMO / f).read_bytes())
        save_file(weights, folder / "model.safetensors")
        bad = check_model(*load_model(folder, device="cpu", dtype="float32"))
        assert not bad.passed, name
        assert any("CTC and attention transcripts disagree" in p for p in bad.problems), (name, bad.problems)


def test_inspect_reports_a_speech2text_repo(tmp_path):
    repo = make_repo(DEMO, tmp_path / "repo", top_ctc=False)
    r = fama("inspect", str(repo), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == "Hugging Face upload (speech2text names)"
    assert [(f["file"], f["from"]) for f in info["files"]] == [
        ("config.json", "local file"), ("model.safetensors", "local file"),
        ("sentencepiece.bpe.model", "local file"), ("vocab.json", "local file")]
    assert info["ctc_heads"] == {"intermediate": 2, "top": False}
    assert info["decoding"] == "attention-only beam search" and info["timing"] == "intermediate CTC"
    assert info["language_detection"] == "decoder" and info["languages"] == ["en", "it"]
    assert not info["mapping"]["tied_output"] and info["mapping"]["prefix"] == "model."
    assert info["mapping"]["renamed"] == {"output layer (lm_head)": 1, "subsampler (conv)": 4,
                                          "conformer blocks (layers)": 117}
    assert info["dtype_on_disk"] == {"F16": 176, "I64": 3} and info["vocabulary"] == 257
    assert info["parameters"] == 2580721 and info["sanity"]["passed"]
    r = fama("inspect", "fama-demo")
    assert r.returncode == 0 and "fama-demo: fama model folder" in r.stdout and "  passed" in r.stdout


def test_monotonic_path_follows_the_best_scores():
    from fama_core.alignment import monotonic_path

    score = np.full((3, 10), -1.0)
    score[0, 0:2] = score[1, 2:7] = score[2, 7:10] = 1.0
    assert monotonic_path(score) == [(0, 1), (2, 6), (7, 9)]
    score = np.zeros((3, 3))  # as many frames as rows: one frame each
    assert monotonic_path(score) == [(0, 0), (1, 1), (2, 2)]
