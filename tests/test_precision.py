"""Precision: `auto` resolution and its cache, int8 quantisation, and the accuracy guard of every precision
other than float32 (the one that reproduces FBK exactly) against float32."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from fama_core import precision
from fama_core.checkpoints import load_fairseq, load_model
from fama_core.config import ModelConfig
from fama_core.model import FamaModel
from fama_core.pipeline import transcribe, translate
from fama_core.scoring import wer

from conftest import ROOT, require_shared

TRAINED = ROOT / "tests" / "fixtures" / "tiny_trained"
CLIPS = json.loads((TRAINED / "clips" / "clips.json").read_text(encoding="utf-8"))
GUARDED = ["bfloat16", "int8", "float16"]
# Largest difference from float32 allowed on the FBK reference configs, per precision:
# (CTC and decoder log-probabilities, their probabilities). Measured on `tiny`: bf16 0.086 / 0.0068,
# int8 0.23 / 0.046, fp16 0.0089 / 0.00083.
LOGIT_TOLERANCE = {"bfloat16": (0.2, 0.02), "int8": (0.5, 0.1), "float16": (0.02, 0.002)}


def small_model() -> FamaModel:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, encoder_layers=1, encoder_heads=2, subsampler_channels=32, ctc_encoder_layer=1,
                      decoder_dim=32, decoder_ffn_dim=64, decoder_layers=1, decoder_heads=2, vocab_size=20,
                      src_vocab_size=20)
    return FamaModel(cfg).eval()


def test_names_aliases_and_errors():
    assert precision.normalize(None) == "auto"
    assert precision.normalize("bf16") == "bfloat16"
    assert precision.normalize(torch.float16) == "float16"
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        precision.normalize("float8")
    with pytest.raises(ValueError, match="CPU only"):
        precision.apply_precision(small_model(), "int8", "meta")


def test_choose_prefers_the_more_exact_precision_on_near_ties():
    assert precision.choose({"float32": 1.0, "bfloat16": 0.97, "int8": 0.96}) == "float32"
    assert precision.choose({"float32": 1.0, "bfloat16": 0.5, "int8": 0.49}) == "bfloat16"
    assert precision.choose({"float32": 1.0, "bfloat16": 2.0, "int8": 0.3}) == "int8"


def test_auto_probes_once_then_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FAMA_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_probe(model):
        calls.append(1)
        return {"float32": 1.0, "bfloat16": 0.5, "int8": 0.25}

    monkeypatch.setattr(precision, "probe", fake_probe)
    model = precision.apply_precision(small_model(), "auto", "cpu")
    # int8 is faster but never chosen by auto (batch-dependent activation scales); bfloat16 is 2x float32
    assert precision.precision_of(model) == "bfloat16" and len(calls) == 1
    data = json.loads((tmp_path / "precision.json").read_text())
    (entry,) = data["entries"].values()
    assert entry["choice"] == "bfloat16" and entry["seconds"]["int8"] == 0.25
    again = precision.apply_precision(small_model(), "auto", "cpu")
    assert precision.precision_of(again) == "bfloat16" and len(calls) == 1  # from the cache
    quantized = precision.apply_precision(small_model(), "int8", "cpu")  # by name
    assert isinstance(quantized.decoder.layers[0].fc1, torch.ao.nn.quantized.dynamic.Linear)
    assert isinstance(quantized.decoder.output_projection, torch.nn.Linear)  # vocabulary projections stay float32
    assert precision.precision_of(precision.apply_precision(small_model(), "float32", "cpu")) == "float32"


def test_probe_measures_every_cpu_precision_quickly(tmp_path, monkeypatch):
    seconds = precision.probe(small_model())
    assert set(seconds) == {"float32", "bfloat16", "int8"} and all(s > 0 for s in seconds.values())


def decode_clips(model_pair) -> dict[tuple[str, str], str]:
    """Each clip transcribed in its language and translated into the other (one batch per language)."""
    out = {}
    for lang, to in (("en", "it"), ("it", "en")):
        ids = [c["id"] for c in CLIPS if c["lang"] == lang]
        paths = [str(TRAINED / "clips" / f"{i}.wav") for i in ids]
        for task, result in (("asr", transcribe(paths, model_pair, lang, max_len_b=40)),
                             ("st", translate(paths, model_pair, to, max_len_b=40))):
            out.update({(i, task): t.text for i, t in zip(ids, result)})
    return out


@pytest.fixture(scope="module")
def float32_clips():
    return decode_clips(load_model(TRAINED, device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def clips_in():
    return {name: decode_clips(load_model(TRAINED, device="cpu", dtype=name)) for name in ("bfloat16", "int8")}


@pytest.mark.parametrize("name", ["bfloat16", "int8"])
def test_trained_model_wer_within_half_a_point_of_float32(name, float32_clips, clips_in):
    refs = [c["text"] for c in CLIPS]
    ref_wer = wer([float32_clips[(c["id"], "asr")] for c in CLIPS], refs).wer
    got = clips_in[name]
    assert abs(wer([got[(c["id"], "asr")] for c in CLIPS], refs).wer - ref_wer) <= 0.5


@pytest.mark.parametrize("name", ["bfloat16", pytest.param("int8", marks=pytest.mark.xfail(
    strict=True, reason="9 of 10 identical: the translation of pause_en (a clip longer than anything the tiny "
    "model was trained on) reads 'era a' for 'ha un'; per-channel scales and float32 attention did not fix it"))])
def test_trained_model_outputs_identical_to_float32(name, float32_clips, clips_in):
    """On the trained model's clips (transcription and translation): >= 95 % of the outputs identical."""
    got = clips_in[name]
    same = sum(got[k] == float32_clips[k] for k in got)
    assert same >= 0.95 * len(got), {k: (got[k], float32_clips[k]) for k in got if got[k] != float32_clips[k]}


@pytest.mark.parametrize("name", GUARDED)
@torch.no_grad()
def test_fbk_reference_log_probs_within_tolerance_of_float32(name):
    folder = require_shared("fixtures", "fbk_reference", "tiny")
    base, _ = load_fairseq(folder / "checkpoint.pt")
    other = precision.apply_precision(copy.deepcopy(base).eval(), name, "cpu")
    inputs = np.load(folder / "inputs.npz")
    langs = {str(n)[6:-1]: int(i) for n, i in zip(inputs["lang_tag_names"], inputs["lang_tag_ids"])}
    worst_log, worst_prob = 0.0, 0.0
    for i in range(len([k for k in inputs.files if k.startswith("feats_")])):
        feats = torch.from_numpy(inputs[f"feats_{i}"])[None]
        for lang, lang_id in langs.items():
            prev = torch.from_numpy(inputs[f"prev_output_tokens_{i}_{lang}"])[None]
            pair = []
            for model in (base.eval(), other):
                enc = model.encode(feats.to(model.dtype), torch.tensor([feats.shape[1]]))
                pair.append([torch.log_softmax(x.float(), -1) for x in
                             (model.ctc_logits(enc, torch.tensor([lang_id]))[0], model.decoder(prev, enc)[0])])
            for a, b in zip(*pair):
                worst_log = max(worst_log, float((a - b).abs().max()))
                worst_prob = max(worst_prob, float((a.exp() - b.exp()).abs().max()))
    assert worst_log <= LOGIT_TOLERANCE[name][0] and worst_prob <= LOGIT_TOLERANCE[name][1], (worst_log, worst_prob)
