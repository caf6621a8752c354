"""Checkpoint averaging as FBK's `scripts/average_checkpoints.py`: the mean of every state-dict entry.

Floating tensors are summed in float32 (half inputs promoted) and divided by the count; integer buffers
(BatchNorm's `num_batches_tracked`) are floor-divided. Inputs are fama training checkpoints or fairseq
checkpoints; the result is a fama model folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from fama_core.checkpoints import CheckpointError, build_model, check_output_folder, read_fairseq_checkpoint, save_model
from fama_core.config import ModelConfig
from fama_core.tokenizer import Tokenizer

from .trainer import LAST, load_training_checkpoint, numbered_checkpoints


def last_checkpoints(folder: str | Path, n: int, upper_bound: int | None = None) -> list[Path]:
    """The `n` most recent `checkpoint_<updates>.pt` of a folder (at most `upper_bound` updates), oldest first."""
    if n < 1:
        raise ValueError(f"the number of checkpoints to average must be at least 1, not {n}")
    found = [p for p in numbered_checkpoints(folder)
             if upper_bound is None or int(p.stem.split("_", 1)[1]) <= upper_bound]
    if len(found) < n:
        raise CheckpointError(f"{folder}: found {len(found)} numbered checkpoints but need {n}")
    return found[-n:]


def _read(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig | None, dict]:
    try:
        ckpt = load_training_checkpoint(path)
        return ckpt["model"], ModelConfig.from_dict(ckpt["model_config"]), {}
    except CheckpointError:
        sd, args = read_fairseq_checkpoint(path)
        return sd, None, args


def average_state_dicts(paths: Sequence[str | Path]) -> tuple[dict[str, torch.Tensor], ModelConfig | None, dict]:
    """(averaged state dict, model config of the first input (fama checkpoints), fairseq args (fairseq inputs))."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    keys, cfg, args = None, None, {}
    for i, p in enumerate(paths):
        sd, c, a = _read(Path(p))
        if keys is None:
            keys, cfg, args = list(sd), c, a
        elif list(sd) != keys:
            raise CheckpointError(f"{p}: its parameters differ from those of {paths[0]}")
        for k, v in sd.items():
            if i and v.shape != total[k].shape:
                raise CheckpointError(f"{p}: parameter {k} has shape {tuple(v.shape)}, but {tuple(total[k].shape)} "
                                      f"in {paths[0]}; average checkpoints of one model only")
            v = v.float() if v.dtype in (torch.float16, torch.bfloat16) else v
            total[k] = v.clone() if i == 0 else total[k].add_(v)
    n = len(paths)
    for k, v in total.items():
        if v.is_floating_point():
            v.div_(n)
        else:
            total[k] = torch.div(v, n, rounding_mode="floor")
    return total, cfg, args


def average(inputs: Sequence[str | Path] | None = None, folder: str | Path | None = None, last: int = 25,
            output: str | Path = "avg", spm: str | Path | None = None, upper_bound: int | None = None,
            overwrite: bool = False) -> Path:
    """Average `inputs` (or the `last` numbered checkpoints of `folder`) into a fama model folder `output`.

    `output` must be new or empty unless `overwrite` (which replaces only the model files in it); it may
    never be, or contain, one of the inputs (`save_model`'s rules)."""
    if not inputs:
        if folder is None:
            raise CheckpointError("give checkpoint files or a training folder")
        inputs = last_checkpoints(folder, last, upper_bound)
    paths = [Path(p) for p in inputs]
    bad = [p for p in paths if p.name == LAST]
    if bad:
        raise CheckpointError(f"{bad[0]} is a link to a numbered checkpoint; list numbered checkpoints only")
    check_output_folder(output, overwrite=overwrite, protect=paths)  # before the checkpoints are read
    sd, cfg, args = average_state_dicts(paths)
    if cfg is None:
        vocab, src_vocab = sd["decoder.embed_tokens.weight"].shape[0], sd["encoder.ctc_fc.weight"].shape[0]
        cfg = ModelConfig.from_fairseq_args(args, vocab, src_vocab)
        sd = {k: v for k, v in sd.items() if not k.endswith(("positional_encoding.pe", "_float_tensor", ".version"))}
    base = paths[0].parent
    if spm is not None:
        tok = Tokenizer(spm)
    elif (base / "tokenizer.model").exists():
        tok = Tokenizer.from_folder(base)
    else:
        raise CheckpointError(f"{base}: no tokenizer.model beside the checkpoints; pass the SentencePiece model")
    model = build_model(cfg, sd, f"average of {len(paths)} checkpoints")
    names = [p.name for p in paths]
    return save_model(model, tok, output, extra={"averaged_from": names}, overwrite=overwrite, protect=paths)
