"""`fama train`, `fama average` and `fama data spm` on bad input: one line and the right exit code, before any
work is done where that is possible; a reproducible SentencePiece model; one checkpoint per training state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import TINY
from test_train_data import make_corpus
from typer.testing import CliRunner

from fama_cli.main import app
from fama_core.manifest import read_manifest, write_manifest

runner = CliRunner()


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    return make_corpus(tmp_path_factory.mktemp("train_cli"), n=8, vocab_size=36)


def train_args(corpus: dict, save_dir: Path, *extra: str, model: dict | None = None) -> list[str]:
    config = save_dir.parent / f"{save_dir.name}-model.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(TINY if model is None else model))
    return ["train", "--save-dir", str(save_dir), "--train-subset", str(corpus["asr"]), "--spm", str(corpus["spm"]),
            "--model-config", str(config), "--max-tokens", "3000", "--update-freq", "1", "--lr-scheduler", "fixed",
            "--lr", "1e-3", "--save-interval-updates", "0", "--save-interval", "0", *extra]


def error_lines(r) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.strip()]


def test_every_audio_file_missing_fails_with_one_line(corpus, tmp_path):
    rows = read_manifest(corpus["asr"])
    gone = tmp_path / "gone.tsv"
    write_manifest(gone, [r.__class__(**{**r.__dict__, "audio": f"missing/{r.id}.wav"}) for r in rows])
    r = runner.invoke(app, [*train_args(corpus, tmp_path / "run", "--max-update", "2"),
                            "--train-subset", str(gone)])
    assert r.exit_code == 1, r.output
    assert error_lines(r) == [f"error: no usable training utterances (8 skipped: 8 whose audio file is missing "
                              f"(e.g. {tmp_path / 'missing' / 'utt00.wav'}))"]
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


def test_every_audio_file_unreadable_stops_the_first_epoch(corpus, tmp_path):
    """Files that exist but cannot be decoded are found only when read: the first epoch that trains on nothing
    stops the run with one line, before any checkpoint claims a trained model."""
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wav file")
    rows = read_manifest(corpus["asr"])
    junk = tmp_path / "junk.tsv"
    write_manifest(junk, [r.__class__(**{**r.__dict__, "audio": "junk.wav"}) for r in rows])
    r = runner.invoke(app, [*train_args(corpus, tmp_path / "run", "--max-update", "4", "--quiet"),
                            "--train-subset", str(junk), "--save-interval-updates", "1"])
    assert r.exit_code == 1, r.output
    lines = error_lines(r)
    assert len(lines) == 1 and lines[0].startswith("error: epoch 1: no training audio could be read, e.g. utt"), lines
    assert "junk.wav" in lines[0] and not list((tmp_path / "run").glob("checkpoint*.pt"))


def test_d_model_alone_sets_the_decoder_width(corpus, tmp_path):
    """FAMA's decoder is as wide as its encoder (the top CTC head adds the decoder's language embedding to the
    encoder output): --d-model alone sets both; a config asking for two widths is refused before training."""
    model = {k: v for k, v in TINY.items() if k != "decoder_dim"}
    r = runner.invoke(app, [*train_args(corpus, tmp_path / "run", "--max-update", "1", "--quiet", model=model),
                            "--d-model", "32", "--encoder-heads", "4", "--decoder-heads", "4"])
    assert r.exit_code == 0, r.output
    cfg = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)["model_config"]
    assert (cfg["d_model"], cfg["decoder_dim"]) == (32, 32)

    r = runner.invoke(app, [*train_args(corpus, tmp_path / "two", "--max-update", "1"), "--d-model", "32"])
    assert r.exit_code == 2, r.output
    assert error_lines(r) == ["error: bad options: model config: decoder_dim must equal d_model (the top CTC head "
                              "adds the decoder's language embedding to the encoder output)"]
    r = runner.invoke(app, [*train_args(corpus, tmp_path / "odd", "--max-update", "1", model=model),
                            "--d-model", "30", "--encoder-heads", "4"])
    assert r.exit_code == 2, r.output
    assert error_lines(r) == ["error: bad options: model config: d_model must be divisible by encoder_heads"]
    r = runner.invoke(app, [*train_args(corpus, tmp_path / "ctc", "--max-update", "1"), "--ctc-encoder-layer", "4"])
    assert r.exit_code == 2 and "training needs 1 <= ctc_encoder_layer (4) <= encoder_layers (3)" in r.stderr
    assert not any((tmp_path / name).exists() for name in ("two", "odd", "ctc"))


def test_unknown_preset_lists_the_presets(corpus, tmp_path):
    r = runner.invoke(app, [*train_args(corpus, tmp_path / "run"), "--preset", "smal"])
    assert r.exit_code == 2
    assert error_lines(r) == ["error: no preset 'smal' for stage 1; known presets: medium, small"]
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"model": "large", "max_update": 1}))
    r = runner.invoke(app, [*train_args(corpus, tmp_path / "run"), "--preset", str(recipe)])
    assert r.exit_code == 2
    assert error_lines(r) == ["error: bad options: unknown model preset 'large'; choose one of small, medium"]


def test_resume_needs_a_run_to_resume(corpus, tmp_path):
    (tmp_path / "empty").mkdir()
    for folder, why in ((tmp_path / "empty", "no checkpoint_last.pt in it"), (tmp_path / "typo", "no such folder")):
        r = runner.invoke(app, [*train_args(corpus, folder, "--max-update", "1"), "--resume"])
        assert r.exit_code == 2, r.output
        assert error_lines(r) == [f"error: bad options: nothing to resume in {folder} ({why})"]
    assert list((tmp_path / "empty").iterdir()) == [] and not (tmp_path / "typo").exists()


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc': expected an integer >= 1 (torchrun sets it)"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0': expected an integer >= 1 (torchrun sets it)"),
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5 is not below WORLD_SIZE=2"),
])
def test_bad_torchrun_environment_is_a_usage_error(corpus, tmp_path, monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = runner.invoke(app, train_args(corpus, tmp_path / "run", "--max-update", "1"))
    assert r.exit_code == 2 and error_lines(r) == [f"error: bad options: {message}"], r.output


def test_threads(corpus, tmp_path):
    r = runner.invoke(app, [*train_args(corpus, tmp_path / "run"), "--threads", "0"])
    assert r.exit_code == 2 and "--threads" in r.stderr
    r = runner.invoke(app, [*train_args(corpus, tmp_path / "run", "--max-update", "1", "--quiet"),
                            "--threads", "2"])
    assert r.exit_code == 0 and torch.get_num_threads() == 2, r.output


def test_readable_start_line_and_one_checkpoint_per_state(corpus, tmp_path):
    """8 utterances (112-134 frames) in batches of <= 400 frames make a 3-batch epoch: a save interval of 3
    updates falls on each epoch's end, and the epoch-end checkpoint must not be written a second time."""
    r = runner.invoke(app, [*train_args(corpus, tmp_path / "run", "--max-epoch", "2", "--log-interval", "100"),
                            "--save-interval-updates", "3", "--save-interval", "1", "--max-tokens", "400"])
    assert r.exit_code == 0, r.output
    start = r.stdout.splitlines()[0]
    assert start.startswith("training ") and " parameters on 8 utterances (0 skipped), 1 worker(s) on cpu" in start
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    epoch_ends = [x["update"] for x in log if x["event"] == "epoch_end"]
    saved = [(x["update"], x["epoch_end"]) for x in log if x["event"] == "checkpoint"]
    assert epoch_ends[0] % 3 == 0, epoch_ends  # the interval does fall on the epoch's end
    assert saved == [(u, True) for u in epoch_ends], (saved, epoch_ends)


def test_spm_does_not_depend_on_the_hash_seed(corpus, tmp_path):
    """`fama data spm` in two processes with different PYTHONHASHSEED writes byte-identical files: the
    sentences (transcripts and translations) reach SentencePiece in manifest order."""
    rows = [r.__class__(**{**r.__dict__, "src_text": r.tgt_text, "tgt_text": f"{r.tgt_text} tradotto",
                           "src_lang": "en", "tgt_lang": "it"}) for r in read_manifest(corpus["asr"])]
    manifest = tmp_path / "st.tsv"
    write_manifest(manifest, rows)
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = tmp_path / f"spm{seed}"  # the model records no prefix (trained into memory, written by fama)
        subprocess.run([sys.executable, "-m", "fama_cli", "data", "spm", str(manifest), "-o", str(out),
                        "--vocab-size", "60", "--model-type", "bpe"], env=env, check=True, capture_output=True)
        outputs.append((out.with_suffix(".model").read_bytes(), out.with_suffix(".txt").read_bytes()))
    assert outputs[0] == outputs[1]


def test_average_never_replaces_the_run_or_an_existing_folder(corpus, tmp_path):
    """`fama average --dir runs/s1 -o runs/s1` leaves the run intact; an existing non-empty output is refused
    unless --overwrite, which replaces the model files only."""
    run = tmp_path / "runs" / "s1"
    r = runner.invoke(app, [*train_args(corpus, run, "--max-update", "2", "--quiet"), "--save-interval-updates", "1"])
    assert r.exit_code == 0, r.output
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    r = runner.invoke(app, ["average", "--dir", str(run), "--last", "2", "-o", str(run)])
    assert r.exit_code != 0 and len(error_lines(r)) == 1, r.output
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    r = runner.invoke(app, ["average", "--dir", str(run), "--last", "2", "-o", str(keep)])
    assert r.exit_code != 0 and sorted(p.name for p in keep.iterdir()) == ["notes.txt"], r.output
    r = runner.invoke(app, ["average", "--dir", str(run), "--last", "2", "-o", str(keep), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert (keep / "notes.txt").read_text() == "mine" and (keep / "model.safetensors").exists()
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
