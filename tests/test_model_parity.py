"""Numerical parity with FBK's own code on every reference config in ../shared/fixtures/fbk_reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fama_core.checkpoints import load_fairseq, load_fama_folder, save_model
from fama_core.model import FamaModel

from conftest import fbk_reference_configs, require_shared

TOL = 1e-4


def reference(name: str) -> tuple:
    folder = require_shared("fixtures", "fbk_reference", name)
    return folder, np.load(folder / "inputs.npz"), np.load(folder / "outputs.npz")


def n_inputs(inputs) -> int:
    return len([k for k in inputs.files if k.startswith("feats_")])


def langs(inputs) -> dict[str, int]:
    return {str(n)[6:-1]: int(i) for n, i in zip(inputs["lang_tag_names"], inputs["lang_tag_ids"])}


@pytest.fixture(scope="module", params=fbk_reference_configs())
def case(request, tmp_path_factory):
    folder, inputs, outputs = reference(request.param)
    model, tok = load_fairseq(folder / "checkpoint.pt")
    converted = tmp_path_factory.mktemp(request.param) / "model"
    save_model(model, tok, converted)
    reloaded, _ = load_fama_folder(converted)
    return inputs, outputs, {"fairseq": model.eval(), "fama-folder": reloaded.eval()}


def check(actual: torch.Tensor, expected: np.ndarray, what: str) -> None:
    diff = float(np.abs(actual.detach().numpy() - expected).max())
    assert diff <= TOL, f"{what}: max abs diff {diff:.3g} > {TOL}"


@pytest.mark.parametrize("source", ["fairseq", "fama-folder"])
@torch.no_grad()
def test_single_utterance_outputs(case, source):
    inputs, outputs, models = case
    model: FamaModel = models[source]
    for i in range(n_inputs(inputs)):
        feats = torch.from_numpy(inputs[f"feats_{i}"])[None]
        enc = model.encode(feats, torch.tensor([feats.shape[1]]), return_states=True, inter_ctc=True)
        assert int(enc.lengths[0]) == int(outputs[f"in{i}_enc_out_length"])
        check(enc.out[0], outputs[f"in{i}_enc_out"], f"in{i} encoder output")
        check(torch.stack([s[0] for s in enc.states]), outputs[f"in{i}_enc_states"], f"in{i} encoder states")
        check(enc.ctc_inter_logits[0], outputs[f"in{i}_ctc_inter_logits"], f"in{i} intermediate CTC")
        for lang, lang_id in langs(inputs).items():
            check(model.ctc_logits(enc, torch.tensor([lang_id]))[0], outputs[f"in{i}_ctc_top_logits_{lang}"],
                  f"in{i} top CTC <{lang}>")
            prev = torch.from_numpy(inputs[f"prev_output_tokens_{i}_{lang}"])[None]
            logits = model.decoder(prev, enc)[0]
            check(logits, outputs[f"in{i}_dec_logits_{lang}"], f"in{i} decoder logits <{lang}>")
            check(torch.log_softmax(logits, -1), outputs[f"in{i}_dec_lprobs_{lang}"], f"in{i} decoder lprobs")


@torch.no_grad()
def test_layer0_submodules(case):
    inputs, outputs, models = case
    enc_model = models["fairseq"].encoder
    captured = {}
    layer = enc_model.conformer_layers[0]
    hooks = [getattr(layer, n).register_forward_hook(lambda m, a, o, n=n: captured.__setitem__(n, o))
             for n in ("first_feed_forward", "attention", "conv_module", "second_feed_forward")]
    hooks.append(enc_model.subsample.register_forward_hook(
        lambda m, a, o: captured.__setitem__("subsample", o[0] * enc_model.embed_scale)))
    try:
        for i in range(n_inputs(inputs)):
            feats = torch.from_numpy(inputs[f"feats_{i}"])[None]
            enc_model(feats, torch.tensor([feats.shape[1]]))
            check(captured["subsample"][0], outputs[f"in{i}_subsample_out"], f"in{i} subsampler")
            for n in ("first_feed_forward", "attention", "conv_module", "second_feed_forward"):
                check(captured[n][0], outputs[f"in{i}_layer0_{n}_out"], f"in{i} layer0 {n}")
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("source", ["fairseq", "fama-folder"])
@torch.no_grad()
def test_padded_batch_equals_reference_and_single(case, source):
    inputs, outputs, models = case
    model = models[source]
    feats = [torch.from_numpy(inputs[f"feats_{i}"]) for i in range(n_inputs(inputs))]
    lengths = torch.tensor([f.shape[0] for f in feats])
    assert lengths.tolist() == outputs["batch_src_lengths"].tolist()
    enc = model.encode(torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths, inter_ctc=True)
    prev = torch.from_numpy(outputs["batch_prev_output_tokens"])
    dec = model.decoder(prev, enc)
    ctc = model.ctc_logits(enc, prev[:, 1])
    check(ctc, outputs["batch_ctc_top_logits"], "batched top CTC (padded frames exactly 0)")
    assert bool((ctc[enc.padding_mask] == 0).all())
    for b, n in enumerate(outputs["batch_enc_out_lengths"].tolist()):
        check(enc.out[b, :n], outputs["batch_enc_out"][b, :n], f"batched encoder row {b}")
        check(enc.ctc_inter_logits[b, :n], outputs["batch_ctc_inter_logits"][b, :n], f"batched inter CTC row {b}")
        check(enc.out[b, :n], outputs[f"in{b}_enc_out"], f"batched row {b} vs single utterance")
        tokens = int((prev[b] != model.cfg.pad).sum())
        check(dec[b, :tokens], outputs["batch_dec_logits"][b, :tokens], f"batched decoder row {b}")


def test_incremental_decoder_matches_teacher_forcing(case):
    inputs, _, models = case
    model = models["fairseq"]
    with torch.no_grad():
        feats = torch.from_numpy(inputs["feats_0"])[None]
        enc = model.encode(feats, torch.tensor([feats.shape[1]]))
        lang, lang_id = next(iter(langs(inputs).items()))
        prev = torch.from_numpy(inputs[f"prev_output_tokens_0_{lang}"])[None]
        full = model.decoder(prev, enc)[0]
        cache = model.decoder.init_cache(enc)
        steps = torch.stack([model.decoder.step(prev[:, t], cache)[0] for t in range(prev.shape[1])])
    assert float((full - steps).abs().max()) < 1e-5


def test_inference_attention_equals_the_training_path(case):
    """On a CPU, inference shifts each utterance's positional scores through a strided view and attends with
    explicit products; training gathers the whole padded batch through one index and uses SDPA. Same encoder
    states and decoder logits on a padded batch (FBK's references check the first path above)."""
    inputs, outputs, models = case
    model = models["fairseq"].eval()
    feats = [torch.from_numpy(inputs[f"feats_{i}"]) for i in range(n_inputs(inputs))]
    lengths = torch.tensor([f.shape[0] for f in feats])
    batch = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    prev = torch.from_numpy(outputs["batch_prev_output_tokens"])
    results = []
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            enc = model.encode(batch, lengths)
            results.append((enc.out.detach(), model.decoder(prev, enc).detach(), enc.lengths))
    (inf_out, inf_dec, n), (train_out, train_dec, _) = results
    assert len(set(n.tolist())) > 1  # rows of different lengths
    for b, frames in enumerate(n.tolist()):
        torch.testing.assert_close(inf_out[b, :frames], train_out[b, :frames], rtol=1e-5, atol=1e-5)
        tokens = int((prev[b] != model.cfg.pad).sum())
        torch.testing.assert_close(inf_dec[b, :tokens], train_dec[b, :tokens], rtol=1e-5, atol=1e-4)
