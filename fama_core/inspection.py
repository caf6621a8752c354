"""`fama inspect MODEL`: what a model is, where its files came from, how its names were mapped, and whether it
passes the sanity check (`sanity.py`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .checkpoints import (
    BUNDLED,
    HF_ALIASES,
    WEIGHTS_FILE,
    CheckpointError,
    disk_dtypes,
    is_fama_folder,
    load_model,
    pull,
    read_checkpoint,
    read_hub_folder,
    weights_of,
)
from .pipeline import detection_method, timing_source
from .sanity import check_model

_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<rev>[0-9a-f]+)(/|$)")


def origin(path: Path) -> str:
    """Where a file came from: a Hugging Face cache snapshot (repo@revision), the package, or a local path."""
    m = _SNAPSHOT.search(str(path))
    if m:
        return f"hub {m['org']}/{m['name']}@{m['rev'][:12]}"
    if BUNDLED["fama-demo"] in Path(path).parents:
        return "ships with fama"
    return "local file"


def _location(name: str, local_files_only: bool | None) -> Path:
    path = BUNDLED.get(name, Path(name))
    if path.exists():
        return path
    if name in HF_ALIASES or re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return pull(name, local_files_only=local_files_only)
    raise CheckpointError(f"{name}: no such file or folder, and not a model alias or hub repo id")


def _layout(path: Path) -> tuple[str, list[Path], dict[str, Any], dict[str, int]]:
    """(format, files read, name mapping, dtypes on disk) of a model folder or checkpoint file."""
    if path.is_file():
        sd, _ = read_checkpoint(path)
        return "checkpoint file (.pt)", [path], {"layout": "fairseq names", "renamed": {}}, disk_dtypes(sd)
    if is_fama_folder(path):
        files = [path / f for f in ("config.json", WEIGHTS_FILE, "tokenizer.model", "dict.txt") if (path / f).exists()]
        return "fama model folder", files, {"layout": "fama's own names", "renamed": {}}, disk_dtypes(weights_of(path))
    hub = read_hub_folder(path)
    fmt = f"Hugging Face upload ({hub.mapping.layout} names)"
    return fmt, hub.files, {**hub.mapping.to_dict(), "lines": hub.mapping.describe()}, disk_dtypes(hub.weights)


def inspect_model(name: str, check: bool = True, local_files_only: bool | None = None) -> dict[str, Any]:
    """Everything `fama inspect` shows, as a JSON-ready dict; CheckpointError when the model cannot be read."""
    path = _location(name, local_files_only)
    fmt, files, mapping, dtypes = _layout(path)
    model, tok = load_model(path, device="cpu", dtype="float32", trainable=True)  # plain Linears: counted
    model.eval()
    cfg = model.cfg
    info: dict[str, Any] = {
        "name": name,
        "path": str(path),
        "format": fmt,
        "files": [{"file": f.name, "path": str(f), "from": origin(f)} for f in files],
        "dimensions": cfg.to_dict(),
        "parameters": model.num_parameters(),
        "vocabulary": tok.vocab_size,
        "tokenizer": [str(f) for f in tok.files],
        "languages": tok.languages,
        "ctc_heads": {"intermediate": cfg.ctc_encoder_layer or None, "top": cfg.top_ctc},
        "decoding": "joint CTC/attention beam search" if cfg.top_ctc else "attention-only beam search",
        "timing": timing_source(model),
        "language_detection": detection_method(model),
        "mapping": mapping,
        "dtype_on_disk": dtypes,
    }
    if check:
        info["sanity"] = check_model(model, tok).to_dict()
    return info
