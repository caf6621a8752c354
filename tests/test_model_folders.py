"""Writing model folders never loses data: no folder is deleted or emptied, inputs are protected, modes follow
the umask (issue 11 items 1 and 14)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fama_core.checkpoints import MODEL_FILES, CheckpointError, load_model, save_model

from conftest import ROOT, require_shared

TINY = ROOT / "tests" / "fixtures" / "tiny_trained"


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY, device="cpu", dtype="float32")


def fama(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "fama_cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=180)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha1), to prove nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_new_folder_is_created_with_the_model_files_only(tmp_path, tiny):
    model, tok = tiny
    out = save_model(model, tok, tmp_path / "a" / "b")
    assert sorted(p.name for p in out.iterdir()) == sorted(MODEL_FILES)
    assert json.loads((out / "config.json").read_text())["model"]["d_model"] == 144


def test_existing_non_empty_folder_is_refused_and_untouched(tmp_path, tiny):
    model, tok = tiny
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("my notes\n")
    (keep / "sub").mkdir()
    (keep / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = snapshot(keep)
    with pytest.raises(CheckpointError) as e:
        save_model(model, tok, keep)
    assert str(e.value) == (f"{keep}: the folder exists and is not empty; choose a new folder, or pass --overwrite "
                            "to replace only its model files (config.json, model.safetensors, tokenizer.model, "
                            "dict.txt)")
    assert snapshot(keep) == before


def test_empty_existing_folder_is_used(tmp_path, tiny):
    model, tok = tiny
    (tmp_path / "empty").mkdir()
    save_model(model, tok, tmp_path / "empty")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == sorted(MODEL_FILES)


def test_overwrite_replaces_only_the_model_files(tmp_path, tiny):
    model, tok = tiny
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("my notes\n")
    (keep / "config.json").write_text("old\n")
    (keep / "model.safetensors").write_bytes(b"old")
    save_model(model, tok, keep, overwrite=True)
    assert (keep / "notes.txt").read_text() == "my notes\n"
    assert sorted(p.name for p in keep.iterdir()) == sorted([*MODEL_FILES, "notes.txt"])  # no temp files left
    again, _ = load_model(keep, device="cpu", dtype="float16")
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_output_equal_to_or_containing_an_input_is_refused(tmp_path, tiny):
    model, tok = tiny
    run = tmp_path / "runs" / "s1"
    run.mkdir(parents=True)
    ckpt = run / "checkpoint_5.pt"
    ckpt.write_bytes(b"weights")
    before = snapshot(tmp_path)
    for out, verb in ((run, "contains"), (tmp_path, "contains"), (ckpt, "is")):
        with pytest.raises(CheckpointError, match=f"the output folder {verb} the input {ckpt}"):
            save_model(model, tok, out, protect=[ckpt], overwrite=True)
    assert snapshot(tmp_path) == before


def test_a_file_is_not_a_model_folder(tmp_path, tiny):
    model, tok = tiny
    f = tmp_path / "model"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="model: exists and is not a folder"):
        save_model(model, tok, f, overwrite=True)
    assert f.read_text() == "x"


def test_model_folder_modes_follow_the_umask(tmp_path):
    code = ("import os, sys; from fama_core.checkpoints import load_model, save_model; m = load_model(sys.argv[1], "
            "device='cpu')\nfor u in (0o022, 0o027):\n os.umask(u); save_model(*m, f'{sys.argv[2]}/{u:o}/new/m')")
    subprocess.run([sys.executable, "-c", code, str(TINY), str(tmp_path)], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    for umask in (0o022, 0o027):
        new = tmp_path / f"{umask:o}" / "new"
        for d in (new, new / "m"):
            assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~umask, d
        assert sorted(f.name for f in (new / "m").iterdir()) == sorted(MODEL_FILES)
        for f in (new / "m").iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f


# ------------------------------------------------------------------------------------------ through the CLI


@pytest.fixture(scope="module")
def fairseq_ckpt():
    return require_shared("fixtures", "fbk_reference", "tiny", "checkpoint.pt")


def test_convert_into_non_empty_folder_exits_1_and_keeps_it(tmp_path, fairseq_ckpt):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "thesis.tex").write_text("years of work\n")
    before = snapshot(keep)
    r = fama("convert", str(fairseq_ckpt), str(keep))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "keep: the folder exists and is not empty" in r.stderr, r.stderr
    assert snapshot(keep) == before
    r = fama("convert", str(fairseq_ckpt), str(keep), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (keep / "thesis.tex").read_text() == "years of work\n"
    assert sorted(p.name for p in keep.iterdir()) == sorted([*MODEL_FILES, "thesis.tex"])


def test_convert_to_dot_refuses_and_leaves_the_working_folder_alone(tmp_path, fairseq_ckpt):
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.txt").write_text("b")
    before = snapshot(tmp_path)
    r = fama("convert", str(fairseq_ckpt), ".", cwd=tmp_path)
    assert r.returncode == 1 and ".: the folder exists and is not empty" in r.stderr, r.stderr
    assert snapshot(tmp_path) == before
    # the checkpoint itself in the working folder: refused even with --overwrite
    local = tmp_path / "model.pt"
    local.write_bytes(fairseq_ckpt.read_bytes())
    spm = fairseq_ckpt.parent / "spm_unigram200_lid.model"
    before = snapshot(tmp_path)
    r = fama("convert", "model.pt", ".", "--spm", str(spm), "--overwrite", cwd=tmp_path)
    assert r.returncode == 1 and "the output folder contains the input model.pt" in r.stderr, r.stderr
    assert snapshot(tmp_path) == before


def _training_run(folder: Path, model, tok) -> None:
    folder.mkdir(parents=True)
    tok.save(folder)
    for n in (10, 20):
        torch.save({"fama_train": 1, "model": model.state_dict(), "model_config": model.cfg.to_dict()},
                   folder / f"checkpoint_{n}.pt")


def test_average_into_its_own_run_or_dot_is_refused(tmp_path, tiny):
    model, tok = tiny
    _training_run(tmp_path / "runs" / "s1", model, tok)
    (tmp_path / "notes.md").write_text("n")
    before = snapshot(tmp_path)
    for out in ("runs/s1", "."):
        r = fama("average", "--dir", "runs/s1", "--last", "2", "-o", out, cwd=tmp_path)
        assert r.returncode == 1, r.stderr
        assert "the output folder contains the input" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert snapshot(tmp_path) == before
    r = fama("average", "--dir", "runs/s1", "--last", "2", "-o", "avg", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "avg").iterdir()) == sorted(MODEL_FILES)
