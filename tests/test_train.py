"""Training end to end on synthetic speech: overfitting, exact resume, averaging, stage 2, the CLI."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_data import make_corpus
from typer.testing import CliRunner

from fama_cli.main import app
from fama_core.checkpoints import load_model
from fama_core.decoding import DecodeOptions, decode
from fama_core.manifest import read_manifest, write_manifest
from fama_core.training import DataOptions, Schedule, SpeechDataset, TrainOptions, average, train
from fama_core.training.trainer import load_training_checkpoint

TINY = dict(d_model=96, encoder_heads=4, encoder_layers=3, ffn_expansion=2, subsampler_channels=192, conv_kernel=15,
            ctc_encoder_layer=2, decoder_dim=96, decoder_ffn_dim=256, decoder_layers=2, decoder_heads=4)


@pytest.fixture(autouse=True)
def one_thread():
    # two OpenMP threads on a busy 2-core machine are many times slower than one
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    return make_corpus(tmp_path_factory.mktemp("train_corpus"), n=24, translations=True)


def tiny_options(corpus: dict, save_dir: Path, **kw) -> TrainOptions:
    base = dict(train=[str(corpus["asr"])], save_dir=str(save_dir), model_overrides=dict(TINY),
                spm=str(corpus["spm"]), dict_path=str(corpus["dict"]),
                schedule=Schedule("inverse_sqrt", lr=5e-3, warmup_updates=30),
                data=DataOptions(max_tokens=2000, spec_augment=False), log_interval=10,
                save_interval_updates=0, save_interval_epochs=0, weight_decay=0.0)
    base.update(kw)
    return TrainOptions(**base)


def greedy_texts(model, tok, manifest: Path, lang: str) -> tuple[list[str], list[str]]:
    ds = SpeechDataset([manifest], tok, DataOptions(max_tokens=10**6))
    b = ds.collate(np.arange(len(ds)))
    out = decode(model, b.features, b.lengths, tok.lang_tag_id(lang), DecodeOptions(beam_size=1, ctc_weight=0.0))
    return [tok.decode(h[0].tokens) for h in out], [ds.row(i).src_text for i in range(len(ds))]


def test_overfit_tiny_model_greedy_output_equals_transcripts(corpus, tmp_path):
    start = time.time()
    no_dropout = {**TINY, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}
    last = train(tiny_options(corpus, tmp_path / "run", max_update=160, model_overrides=no_dropout))
    seconds = time.time() - start
    average(folder=tmp_path / "run", last=1, output=tmp_path / "model")
    model, tok = load_model(tmp_path / "model", device="cpu", dtype="float32")
    hyps, refs = greedy_texts(model, tok, corpus["asr"], "en")
    assert hyps == refs
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] == "train"]
    assert losses[-1] < losses[0] / 4
    assert last.name == "checkpoint_last.pt"
    print(f"overfit: 160 updates in {seconds:.1f} s")  # about 15-35 s on 2 CPU cores


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_training_checkpoint(path)["model"]


def test_resume_equals_uninterrupted(corpus, tmp_path):
    # dropout, SpecAugment, accumulation and an epoch boundary inside the interrupted span: all must replay
    kw = dict(model_overrides={**TINY, "dropout": 0.1}, data=DataOptions(max_tokens=700, spec_augment=True),
              update_freq=2, stage=2, train=[str(corpus["manifest"])])
    full = train(tiny_options(corpus, tmp_path / "full", max_update=8, **kw))
    train(tiny_options(corpus, tmp_path / "cut", max_update=5, **kw))
    ckpt = load_training_checkpoint(tmp_path / "cut" / "checkpoint_last.pt")
    assert ckpt["progress"]["updates"] == 5 and ckpt["progress"]["batch"] > 0
    with pytest.raises(ValueError, match="--resume"):
        train(tiny_options(corpus, tmp_path / "cut", max_update=8, **kw))
    resumed = train(tiny_options(corpus, tmp_path / "cut", max_update=8, resume=True, **kw))
    a, b = _params(full), _params(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    log = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    epochs = {r["epoch"] for r in log if r["event"] == "train"}
    assert len(epochs) > 1 or any(r["event"] == "epoch_end" for r in log)


def test_keep_last_and_average_matches_mean(corpus, tmp_path):
    train(tiny_options(corpus, tmp_path / "run", max_update=4, save_interval_updates=1, keep_interval_updates=3))
    names = sorted(p.name for p in (tmp_path / "run").glob("checkpoint_*.pt"))
    assert names == ["checkpoint_2.pt", "checkpoint_3.pt", "checkpoint_4.pt", "checkpoint_last.pt"]
    folder = average(folder=tmp_path / "run", last=2, output=tmp_path / "avg")
    sds = [_params(tmp_path / "run" / f"checkpoint_{n}.pt") for n in (3, 4)]
    model, _ = load_model(folder, device="cpu", dtype="float32")
    got = model.state_dict()
    for k, v in sds[0].items():
        if v.is_floating_point():
            torch.testing.assert_close(got[k], (v + sds[1][k]) / 2, rtol=0, atol=1e-7)
        else:
            assert torch.equal(got[k], torch.div(v + sds[1][k], 2, rounding_mode="floor"))
    assert json.loads((folder / "config.json").read_text())["averaged_from"] == ["checkpoint_3.pt", "checkpoint_4.pt"]


def test_stage2_finetunes_from_average_and_validates(corpus, tmp_path, monkeypatch):
    train(tiny_options(corpus, tmp_path / "s1", max_update=3, save_interval_updates=1))
    average(folder=tmp_path / "s1", last=2, output=tmp_path / "s1avg")
    records = []
    opts = tiny_options(corpus, tmp_path / "s2", stage=2, train=[str(corpus["manifest"])], max_update=6,
                        finetune_from=str(tmp_path / "s1avg"),
                        spm=None, dict_path=None, schedule=Schedule("fixed", lr=1e-4), valid=[str(corpus["manifest"])],
                        validate_interval_updates=3, valid_max_utterances=6, log_interval=1, save_interval_updates=3)
    train(opts, on_log=records.append)
    valid = [r for r in records if r["event"] == "valid"]
    assert len(valid) == 2
    assert {"loss_asr", "loss_st", "wer_en", "bleu_en-it"} <= set(valid[0])
    # validation scores as `fama eval` does: the same numbers from the CLI on the model of update 6
    average([tmp_path / "s2" / "checkpoint_6.pt"], output=tmp_path / "at6")
    dev = tmp_path / "dev.tsv"
    base = Path(corpus["manifest"]).parent
    write_manifest(dev, [dataclasses.replace(r, audio=str(base / r.audio))
                         for r in read_manifest(corpus["manifest"])[:6]])
    for task, key in (("asr", "wer_en"), ("st", "bleu_en-it")):
        r = CliRunner().invoke(app, ["eval", str(dev), "--model", str(tmp_path / "at6"), "--task", task, "--json",
                                     "--beam-size", "1", "--ctc-weight", "0", "--device", "cpu",
                                         "--dtype", "float32"])  # validation runs the float32 model
        assert r.exit_code in (0, 1), r.output
        groups = json.loads(r.stdout)["groups"]
        assert groups[key.split("_", 1)[1]]["wer" if task == "asr" else "bleu"] == valid[1][key]
    st = sum(r["st_batches"] for r in records if r["event"] == "train")
    assert 0 < st < 6 * 1  # each update is one batch here; the ASR/ST draw gives both kinds
    start = load_model(tmp_path / "s1avg", device="cpu", dtype="float32")[0].state_dict()
    first = [r for r in records if r["event"] == "start"][0]
    assert first["parameters"] == sum(v.numel() for k, v in start.items() if "running" not in k
                                      and "num_batches" not in k)


def test_cli_manifest_spm_train_average(corpus, tmp_path):
    runner = CliRunner()
    audio = corpus["manifest"].parent / "audio"
    r = runner.invoke(app, ["data", "manifest", str(audio), str(tmp_path / "train.tsv"), "--lang", "en"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "spm", str(tmp_path / "train.tsv"), "-o", str(tmp_path / "spm"),
                            "--vocab-size", "60", "--langs", "en,it"])
    assert r.exit_code == 0, r.output
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    args = ["train", "--save-dir", str(tmp_path / "run"), "--data", str(tmp_path), "--train-subset", "train",
            "--spm", str(tmp_path / "spm.model"), "--model-config", str(tmp_path / "tiny.json"),
            "--max-update", "2", "--max-tokens", "3000", "--update-freq", "1", "--save-interval-updates", "1",
            "--lr-scheduler", "fixed", "--lr", "1e-3", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    records = [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]
    assert [x["update"] for x in records if x["event"] == "train"] == [2]  # log interval from the preset
    opts = json.loads((tmp_path / "run" / "train_options.json").read_text())
    assert opts["weight_decay"] == 0.001 and opts["clip_norm"] == 10.0 and opts["data"]["max_tokens"] == 3000
    r = runner.invoke(app, ["average", "--dir", str(tmp_path / "run"), "--last", "2", "-o", str(tmp_path / "avg")])
    assert r.exit_code == 0, r.output
    assert load_model(tmp_path / "avg", device="cpu")[0].cfg.d_model == 96
    r = runner.invoke(app, ["train", "--save-dir", str(tmp_path / "x"), "--train-subset", "nope.tsv"])
    assert r.exit_code == 2 and "not found" in r.output


def test_presets_reproduce_fbk_commands():
    from fama_core.training import load_preset

    small1, medium1 = TrainOptions.from_dict(load_preset("small", 1)), TrainOptions.from_dict(load_preset("medium", 1))
    small2, medium2 = TrainOptions.from_dict(load_preset("small", 2)), TrainOptions.from_dict(load_preset("medium", 2))
    assert (small1.schedule.name, small1.schedule.lr, small1.schedule.warmup_updates) == ("inverse_sqrt", 2e-3, 25000)
    assert (small1.data.max_tokens, small1.update_freq, small1.data.max_source_positions) == (10000, 2, 6000)
    s = medium1.schedule
    assert (s.name, s.lr, s.intermediate_lr, s.warmup_updates, s.intermediate_warmup_updates) == \
        ("piecewise_warmup", 2e-4, 2e-5, 50000, 25000)
    assert (medium1.data.max_tokens, medium1.update_freq, medium1.data.max_source_positions,
            medium1.data.max_target_positions) == (5500, 5, 3000, 512)
    assert (small2.schedule.name, small2.schedule.lr, small2.data.max_tokens, small2.update_freq) == \
        ("fixed", 1e-4, 10000, 2)
    assert (medium2.schedule.lr, medium2.data.max_tokens, medium2.update_freq, medium2.data.p_sampling_asr) == \
        (1e-5, 4500, 6, 0.5)
    for o in (small1, medium1, small2, medium2):
        assert (o.weight_decay, o.clip_norm, tuple(o.adam_betas), o.loss.label_smoothing) == (0.001, 10.0,
                                                                                            (0.9, 0.98), 0.1)
        assert (o.loss.ctc_weight, o.loss.primary_weight, o.loss.auxiliary_weight, o.loss.ignore_prefix_size) == \
            (1.0, 5.0, 2.0, 1)
        assert (o.save_interval_updates, o.keep_interval_updates, o.seed) == (1000, 25, 1)
    assert (small1.model, medium2.model) == ("small", "medium")


def test_a_new_model_starts_from_fbk_initialisation():
    """Attention projections as FBK's conformer (xavier, zero biases) and fairseq's MultiheadAttention
    (xavier with gain 1/sqrt(2) for q/k/v, zero output bias); embeddings and output projection N(0, 1/d)."""
    from fama_core.config import ModelConfig
    from fama_core.model import FamaModel

    torch.manual_seed(0)
    d = 256
    m = FamaModel(ModelConfig(d_model=d, decoder_dim=d, encoder_layers=2, decoder_layers=2, vocab_size=3000,
                              src_vocab_size=3000, encoder_heads=4, decoder_heads=4))
    xavier_std = (2 / (d + d)) ** 0.5
    att = m.encoder.conformer_layers[0].attention.attention
    for proj in (att.query_proj, att.key_proj, att.value_proj, att.pos_proj, att.out_proj):
        assert abs(proj.weight.std().item() / xavier_std - 1) < 0.02
        assert proj.bias is None or not proj.bias.any()
    for attn in (m.decoder.layers[0].self_attn, m.decoder.layers[0].encoder_attn):
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            assert abs(proj.weight.std().item() / (xavier_std * 2**-0.5) - 1) < 0.02
        assert abs(attn.out_proj.weight.std().item() / xavier_std - 1) < 0.02 and not attn.out_proj.bias.any()
    assert abs(m.decoder.embed_tokens.weight[4:].std().item() * d**0.5 - 1) < 0.02
    assert abs(m.decoder.output_projection.weight.std().item() * d**0.5 - 1) < 0.02
