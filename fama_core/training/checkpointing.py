"""Training checkpoints: what one holds (weights, optimiser, scaler, progress, every RNG), writing, keeping the
last K, reading back with `torch.load(weights_only=True)` (no code runs on load) and restoring a run from it."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fama_core.checkpoints import CheckpointError
from fama_core.outputs import atomic_path, publish_link

LAST = "checkpoint_last.pt"


def rng_state() -> dict[str, Any]:
    """Every RNG as tensors and lists, so `torch.load(weights_only=True)` can read it back."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                  "cached": cached},
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
    }


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(obj, tmp)


def numbered_checkpoints(folder: str | Path) -> list[Path]:
    """`checkpoint_<updates>.pt` files of a folder, oldest first."""
    found = []
    for p in Path(folder).glob("checkpoint_*.pt"):
        n = p.stem.split("_", 1)[1]
        if n.isdigit():
            found.append((int(n), p))
    return [p for _, p in sorted(found)]


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable training checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or "fama_train" not in ckpt:
        raise CheckpointError(f"{path}: not a fama training checkpoint")
    return ckpt


def write_checkpoint(save_dir: Path, model: Any, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     progress: dict[str, int], options: dict[str, Any], keep: int) -> Path:
    """`checkpoint_<updates>.pt` (and `checkpoint_last.pt` linked to it); older numbered ones beyond the last
    `keep` (0: all kept) are removed."""
    ckpt = {
        "fama_train": 1,
        "model": model.state_dict(),
        "model_config": model.cfg.to_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "progress": progress,
        "rng": rng_state(),
        "options": json.dumps(options),
    }
    path = save_dir / f"checkpoint_{progress['updates']}.pt"
    _atomic_save(ckpt, path)
    publish_link(path, save_dir / LAST, overwrite=True)  # the run's own pointer to its newest checkpoint
    if keep > 0:
        for old in numbered_checkpoints(save_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def restore(ckpt: dict[str, Any], model: Any, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler) -> tuple[int, int, int]:
    """Load a checkpoint's states into a run; returns its (updates, epoch, next batch) and resets every RNG."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    p = ckpt["progress"]
    return p["updates"], p["epoch"], p["batch"]
