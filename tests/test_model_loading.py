"""load_model on hostile or broken inputs (one line naming the file and the problem), fama's own training
checkpoints, the bundled demo alias, device errors (issue 11 item 7 and the loader debt; issue 13 items 8, 9)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fama_core.checkpoints import (
    BUNDLED,
    MODEL_FILES,
    CheckpointError,
    check_device,
    load_model,
    read_checkpoint,
    resolve_alias,
)
from fama_core.config import ModelConfig

from conftest import ROOT

DEMO = BUNDLED["fama-demo"]
CLIP = DEMO / "clips" / "en_cats.wav"


@pytest.fixture(scope="module")
def demo():
    return load_model("fama-demo", device="cpu", dtype="float32")


def fama(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fama_cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=180)


def copy_demo(dst: Path) -> Path:
    dst.mkdir()
    for f in MODEL_FILES:
        shutil.copyfile(DEMO / f, dst / f)
    return dst


def edit_config(folder: Path, fn) -> Path:
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(fn(meta)))
    return folder


def _no_model(m):
    return {k: v for k, v in m.items() if k != "model"}


def _set(key, value):
    return lambda m: {**m, "model": {**m["model"], key: value}}


def _int_tensor(folder: Path) -> None:
    sd = load_file(folder / "model.safetensors")
    sd["decoder.layer_norm.weight"] = sd["decoder.layer_norm.weight"].to(torch.int32)
    save_file(sd, folder / "model.safetensors")


BROKEN_FOLDERS = {
    "no_model": (lambda d: edit_config(d, _no_model), "config.json", 'no "model" entry (the model\'s dimensions)'),
    "string_number": (lambda d: edit_config(d, _set("d_model", "144")), "config.json",
                      "model config: d_model must be a positive integer, got '144'"),
    "zero_layers": (lambda d: edit_config(d, _set("encoder_layers", 0)), "config.json",
                    "model config: encoder_layers must be a positive integer, got 0"),
    "bool_heads": (lambda d: edit_config(d, _set("encoder_heads", True)), "config.json",
                   "model config: encoder_heads must be a positive integer, got True"),
    "model_list": (lambda d: edit_config(d, lambda m: {**m, "model": [1, 2]}), "config.json",
                   "model config must be a JSON object, got list"),
    "json_list": (lambda d: (d / "config.json").write_text("[1, 2]"), "config.json", "a JSON list, not an object"),
    "bad_json": (lambda d: (d / "config.json").write_text("{"), "config.json", "unreadable JSON"),
    "empty_tokenizer": (lambda d: (d / "tokenizer.model").write_bytes(b""), "tokenizer.model",
                        "not a readable SentencePiece model: empty file"),
    "junk_weights": (lambda d: (d / "model.safetensors").write_text('{"a": [1, 2]}'), "model.safetensors",
                     "unreadable weights (truncated or corrupted?)"),
    "int_tensor": (_int_tensor, "model.safetensors",
                   "tensor decoder.layer_norm.weight is not floating point, unlike the model's torch.float32"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FOLDERS))
def test_broken_model_folder_gives_one_line_naming_the_file(tmp_path, case):
    breaker, name, problem = BROKEN_FOLDERS[case]
    folder = copy_demo(tmp_path / case)
    breaker(folder)
    with pytest.raises(CheckpointError) as e:
        load_model(folder, device="cpu")
    msg = str(e.value)
    assert msg.startswith(f"{folder / name}: ") and problem in msg and "\n" not in msg, msg


def _pt_cases(tmp: Path, demo) -> dict[str, tuple[Path, str]]:
    model, tok = demo
    hub_list = tmp / "hub_list"
    hub_list.mkdir()
    shutil.copyfile(DEMO / "tokenizer.model", hub_list / "tokenizer.model")
    torch.save([torch.zeros(2)], hub_list / "pytorch_model.bin")
    hub_values = tmp / "hub_values"
    hub_values.mkdir()
    shutil.copyfile(DEMO / "tokenizer.model", hub_values / "tokenizer.model")
    torch.save({"model": {"a": 1, "b": "x"}}, hub_values / "pytorch_model.bin")
    (tmp / "junk.pt").write_bytes(b"\x80\x02junk" * 20)
    torch.save([torch.zeros(2)], tmp / "list.pt")
    torch.save({"fama_train": 1, "model": {"w": "x"}, "model_config": model.cfg.to_dict()}, tmp / "values.pt")
    torch.save({"fama_train": 1, "model": model.state_dict(), "model_config": {"d_model": 0}}, tmp / "cfg.pt")
    return {
        "bin_list": (hub_list / "pytorch_model.bin", "the weights are not a dict of named tensors but of type list"),
        "bin_values": (hub_values / "pytorch_model.bin", "the weights entry 'a' is not a tensor but of type int"),
        "junk_pt": (tmp / "junk.pt", "not a PyTorch checkpoint (neither a torch.save archive nor a readable pickle"),
        "list_pt": (tmp / "list.pt", "neither a fairseq checkpoint nor a fama training checkpoint"),
        "values_pt": (tmp / "values.pt", "the 'model' entry 'w' is not a tensor but of type str"),
        "config_pt": (tmp / "cfg.pt", "model config: d_model must be a positive integer, got 0"),
    }


def test_broken_weights_files_give_one_line_naming_the_file(tmp_path, demo):
    for case, (path, problem) in _pt_cases(tmp_path, demo).items():
        target = path.parent if path.suffix == ".bin" else path
        with pytest.raises(CheckpointError) as e:
            load_model(target, device="cpu")
        msg = str(e.value)
        assert msg.startswith(f"{path}: ") and problem in msg and "\n" not in msg, (case, msg)


def test_cli_reports_a_broken_model_in_one_line(tmp_path):
    folder = edit_config(copy_demo(tmp_path / "m"), _set("d_model", "144"))
    r = fama("transcribe", str(CLIP), "-m", str(folder), "-o", str(tmp_path / "out"), "--txt", "-q")
    assert r.returncode == 1
    assert r.stderr == (f"error: cannot load model {folder}: {folder / 'config.json'}: model config: d_model must be "
                        "a positive integer, got '144'\n")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- fama training checkpoints


def test_load_model_reads_fama_training_checkpoints(tmp_path, demo):
    from fama_core.training.checkpointing import rng_state

    model, tok = demo
    run = tmp_path / "run"
    run.mkdir()
    tok.save(run)
    opt = torch.optim.Adam(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: the weights do not move, but the optimizer state fills with tensors
    model.zero_grad(set_to_none=True)
    # the entries Trainer.save writes, including optimizer and RNG state
    torch.save({"fama_train": 1, "model": model.state_dict(), "model_config": model.cfg.to_dict() | {"extra": {}},
                "optimizer": opt.state_dict(), "progress": {"updates": 7, "epoch": 1, "batch": 3},
                "rng": rng_state(), "options": "{}"}, run / "checkpoint_7.pt")
    sd, cfg = read_checkpoint(run / "checkpoint_7.pt")
    assert cfg == model.cfg and sorted(sd) == sorted(model.state_dict())
    loaded, ltok = load_model(run / "checkpoint_7.pt", device="cpu", dtype="bfloat16")
    assert ltok.vocab_size == tok.vocab_size and not loaded.training and loaded.dtype == torch.bfloat16
    for k, v in model.state_dict().items():
        assert torch.equal(v.to(loaded.state_dict()[k].dtype), loaded.state_dict()[k]), k


def test_model_config_from_dict_accepts_old_empty_extra_only():
    cfg = ModelConfig.from_dict(json.loads((DEMO / "config.json").read_text())["model"])
    assert cfg.d_model == 144 and "extra" not in cfg.to_dict()
    with pytest.raises(ValueError, match="unknown model config keys: extra"):
        ModelConfig.from_dict({**cfg.to_dict(), "extra": {"a": 1}})
    with pytest.raises(ValueError, match="decoder_dim must equal d_model"):
        ModelConfig.from_dict({**cfg.to_dict(), "d_model": 32, "encoder_heads": 4})


# ------------------------------------------------------------------------------------- aliases and devices


def test_demo_alias_loads_offline_and_is_listed(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = fama("pull", "fama-demo", "--json", env=env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info.pop("sanity")["passed"]
    assert info == {"name": "fama-demo", "path": str(DEMO), "parameters": 2618274, "languages": ["en", "it"]}
    r = fama("models", "--json", env=env)
    rows = {row["alias"]: row for row in json.loads(r.stdout)}
    assert rows["fama-demo"]["cached"] and rows["fama-demo"]["path"] == str(DEMO)
    assert rows["fama-demo"]["size_bytes"] == sum((DEMO / f).stat().st_size for f in MODEL_FILES)


def test_unknown_alias_lists_the_known_ones():
    with pytest.raises(CheckpointError) as e:
        resolve_alias("fama-smal")
    assert str(e.value) == ("unknown model alias 'fama-smal'; known: fama-demo, fama-small, fama-medium, "
                            "fama-small-asr, fama-medium-asr (or a Hugging Face repo id such as FBK-MT/fama-small)")
    r = fama("pull", "fama-smal")
    assert r.returncode == 1 and r.stderr == f"error: {e.value}\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_on_a_machine_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError) as e:
        load_model("fama-demo", device="cuda")
    if torch.version.cuda is None:
        assert str(e.value) == ("device 'cuda': CUDA is not available in this torch build (a CPU-only build, torch "
                                f"{torch.__version__}); use --device cpu or install a CUDA build of torch")
    else:
        assert str(e.value) == "device 'cuda': no CUDA GPU is visible to torch (driver or CUDA_VISIBLE_DEVICES?)"
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        check_device("gpu0")


def test_demo_clips_are_copied_but_never_replace_a_file(tmp_path):
    from fama_core.checkpoints import copy_demo_clips, demo_clips

    names = [p.name for p in demo_clips()]
    assert names == ["en_bag.wav", "en_cats.wav", "it_boy.wav", "it_bread.wav", "pause_en.wav"]
    copied, same = copy_demo_clips(tmp_path / "clips")
    assert [p.name for p in copied] == names and same == []
    copied, same = copy_demo_clips(tmp_path / "clips")
    assert copied == [] and [p.name for p in same] == names
    mine = tmp_path / "clips" / "en_bag.wav"
    mine.write_bytes(b"my own recording")
    (tmp_path / "clips" / "it_boy.wav").unlink()
    with pytest.raises(CheckpointError) as e:
        copy_demo_clips(tmp_path / "clips")
    assert str(e.value) == f"{mine}: exists and is not the demo clip; not replaced"
    assert mine.read_bytes() == b"my own recording" and (tmp_path / "clips" / "it_boy.wav").exists()
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == names  # no temporary files left
