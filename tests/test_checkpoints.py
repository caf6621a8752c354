"""Checkpoint formats, refusal of unsafe or broken files, and the hub pull path against a local fake Hub."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fama_core.checkpoints import (
    CheckpointError,
    load_fairseq,
    load_fama_folder,
    load_hub_folder,
    load_model,
    safe_torch_load,
    save_model,
)

from conftest import ROOT, require_shared
from hub_server import FakeHub


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ref = require_shared("fixtures", "fbk_reference", "tiny")
    model, tok = load_fairseq(ref / "checkpoint.pt")
    folder = tmp_path_factory.mktemp("tiny") / "model"
    save_model(model, tok, folder)
    return ref, model, tok, folder


def fama(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fama_cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=120)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_runs_code_is_refused(tmp_path, tiny):
    ref, model, _, _ = tiny
    bad = tmp_path / "evil.pt"
    torch.save({"model": model.state_dict(), "cfg": None, "payload": RunsCode()}, bad)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused: refusing to load '(posix|os|nt)\.system'"):
        safe_torch_load(bad)
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(RunsCode()))
    with pytest.raises(CheckpointError, match="evil.pkl"):
        safe_torch_load(plain)


def test_truncated_checkpoint_is_refused(tmp_path, tiny):
    ref, _, _, folder = tiny
    data = (ref / "checkpoint.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable checkpoint"):
        load_fairseq(cut, spm=ref / "spm_unigram200_lid.model")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    w = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(w[: len(w) - 1000])
    with pytest.raises(CheckpointError, match="unreadable weights"):
        load_fama_folder(broken)


def test_wrong_shape_tensor_is_refused_before_loading(tmp_path, tiny):
    _, _, _, folder = tiny
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in folder.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    sd = load_file(bad / "model.safetensors")
    sd["decoder.layers.0.fc1.weight"] = sd["decoder.layers.0.fc1.weight"][:, :10].contiguous()
    del sd["encoder.ctc_fc.bias"]
    save_file(sd, bad / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_fama_folder(bad)
    msg = str(e.value)
    assert "missing: encoder.ctc_fc.bias (201,)" in msg
    assert "wrong shape: decoder.layers.0.fc1.weight (256, 10) != (256, 64)" in msg


def test_converted_folder_round_trip_fp16(tmp_path, tiny):
    ref, model, _, _ = tiny
    r = fama("convert", str(ref / "checkpoint.pt"), str(tmp_path / "m16"), "--dtype", "float16")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "m16" / "config.json").read_text())
    assert meta["format"] == "fama" and meta["model"]["d_model"] == 64 and meta["languages"] == ["en", "it"]
    assert sorted(p.name for p in (tmp_path / "m16").iterdir()) == [
        "config.json", "dict.txt", "model.safetensors", "tokenizer.model"]
    half = load_file(tmp_path / "m16" / "model.safetensors")
    assert half["decoder.output_projection.weight"].dtype == torch.float16
    loaded, tok = load_model(tmp_path / "m16", device="cpu", dtype="float32")
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=2e-3, rtol=1e-3), k
    assert tok.vocab_size == 201


def test_hub_style_upload_with_prefixed_keys(tmp_path, tiny):
    ref, model, tok, _ = tiny
    repo = tmp_path / "hf"
    repo.mkdir()
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    save_file(sd, repo / "model.safetensors")
    (repo / "config.json").write_text(json.dumps({"auto_map": {"AutoModelForSpeechSeq2Seq": "x.Y"},
                                                   "ctc_encoder_layer": 2, "decoder_attention_heads": 4}))
    (repo / "modeling_fama.py").write_text("raise SystemExit('remote code must never run')\n")
    tok.save(repo)
    loaded, _ = load_hub_folder(repo)
    assert loaded.cfg.ctc_encoder_layer == 2 and loaded.cfg.encoder_layers == 4 and loaded.cfg.vocab_size == 201
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    del sd["model.decoder.layer_norm.bias"]
    save_file(sd, repo / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"weights do not match the FAMA architecture; "
                                              r"missing: decoder.layer_norm.bias \(64,\)$"):
        load_hub_folder(repo)
    sd["model.extra.weight"] = torch.zeros(3, 2)
    save_file(sd, repo / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"hf: 1 tensor names match no FAMA parameter: model.extra.weight "
                                              r"\(1, e.g. model.extra.weight \(3, 2\)\); fama reads fairseq names"):
        load_hub_folder(repo)


def test_pull_from_hub_then_offline_then_unreachable(tmp_path, tiny):
    _, _, _, folder = tiny
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    with FakeHub("FBK-MT/fama-small", folder) as hub:
        r = fama("pull", "fama-small", "--json", env={**env, "HF_ENDPOINT": hub.url})
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["parameters"] == 640978 and info["languages"] == ["en", "it"]
        assert Path(info["path"]).is_relative_to(tmp_path / "hf" / "hub")
        assert any("/resolve/" in q and q.endswith("model.safetensors") for q in hub.requests)
    # The server is gone: offline mode and --local-files-only are served from the cache.
    r = fama("pull", "fama-small", "--json", env={**env, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == info["path"]
    r = fama("models", "--json", env=env)
    rows = {row["repo"]: row for row in json.loads(r.stdout)}
    assert rows["FBK-MT/fama-small"]["cached"] and rows["FBK-MT/fama-small"]["size_bytes"] > 2_000_000
    assert not rows["FBK-MT/fama-medium"]["cached"]
    # Neither cached nor reachable: one clear line, no traceback.
    r = fama("pull", "fama-medium", env={**env, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1
    assert "FBK-MT/fama-medium: not in the local cache and offline mode is on" in r.stderr
    assert "Traceback" not in r.stderr
    r = fama("pull", "fama-medium", env={**env, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "FBK-MT/fama-medium" in r.stderr


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_load_model_in_half_precision_runs_close_to_fp32(tiny, dtype):
    ref, model, _, folder = tiny
    half, _ = load_model(folder, device="cpu", dtype=dtype)
    assert half.dtype == {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    feats = torch.randn(2, 120, 80)
    lengths = torch.tensor([120, 90])
    with torch.no_grad():
        full = model.eval().ctc_logits(model.encode(feats, lengths), torch.tensor([4, 5]))
        low = half.ctc_logits(half.encode(feats.to(half.dtype), lengths), torch.tensor([4, 5]))
    assert torch.isfinite(low).all()
    assert float((low.float() - full).abs().max()) < 0.25 * float(full.abs().max())
    assert (low.float().argmax(-1) == full.argmax(-1)).float().mean() > 0.9
