"""Loading and saving weights: fama's model folder, FBK's fairseq checkpoints, Hugging Face repos.

Every format is read into the same thing, a fairseq-named state dict plus a `ModelConfig`, and
checked against the model before any weight is copied. Nothing here executes code from a file:
pickles go through an allow-listed unpickler and remote modeling code is never downloaded.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import PRESETS, ModelConfig
from .model import FamaModel
from .precision import apply_precision
from .tokenizer import Tokenizer

FORMAT_NAME = "fama"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

HF_ALIASES = {
    "fama-small": "FBK-MT/fama-small",
    "fama-medium": "FBK-MT/fama-medium",
    "fama-small-asr": "FBK-MT/fama-small-asr",
    "fama-medium-asr": "FBK-MT/fama-medium-asr",
}
# Files worth fetching from a hub repo; *.py (remote modeling code) is never downloaded.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.pt", "*.model", "*.txt"]
# Buffers fairseq keeps in its state dict that fama recomputes.
IGNORED_KEYS = re.compile(r"(positional_encoding\.pe|embed_positions\._float_tensor|\.version)$")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and the reason."""


# --------------------------------------------------------------------------------------- safe unpickling


class _Opaque:
    """Stand-in for a class we accept in a pickle but never import (omegaconf, argparse): keeps its state."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _opaque(module: str, name: str) -> type:
    return type(name, (_Opaque,), {"__module__": "fama_core.checkpoints.stand_in", "origin": f"{module}.{name}"})


_STAND_INS = {
    (m, n): _opaque(m, n)
    for m, n in [
        ("argparse", "Namespace"),
        ("omegaconf.dictconfig", "DictConfig"),
        ("omegaconf.listconfig", "ListConfig"),
        ("omegaconf.nodes", "AnyNode"),
        ("omegaconf.nodes", "StringNode"),
        ("omegaconf.nodes", "IntegerNode"),
        ("omegaconf.nodes", "FloatNode"),
        ("omegaconf.nodes", "BooleanNode"),
        ("omegaconf.nodes", "EnumNode"),
        ("omegaconf.base", "ContainerMetadata"),
        ("omegaconf.base", "Metadata"),
        ("typing", "Any"),
    ]
}
_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("collections", "defaultdict"): __import__("collections").defaultdict,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "tuple"): tuple,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "bool"): bool,
    ("builtins", "str"): str,
    ("builtins", "slice"): slice,
    ("__builtin__", "long"): int,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("copyreg", "__newobj__"): None,  # resolved below: only ever builds allow-listed classes
}


def _newobj(cls: type, *args: Any) -> Any:
    if cls not in _STAND_INS.values() and cls not in (OrderedDict, dict, list, set):
        raise pickle.UnpicklingError(f"refusing to build {cls!r}")
    return cls.__new__(cls, *args)


_ALLOWED[("copyreg", "__newobj__")] = _newobj


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins"}.get(module, module) if name != "long" else module
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) in _STAND_INS:
            return _STAND_INS[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("numpy") and name in ("scalar", "dtype", "_reconstruct", "ndarray"):
            import numpy as np
            import numpy.core.multiarray  # noqa: F401  (numpy arrays of scalars in extra_state)

            return {"scalar": np.core.multiarray.scalar, "dtype": np.dtype,
                    "_reconstruct": np.core.multiarray._reconstruct, "ndarray": np.ndarray}[name]
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}': not an allowed type in a checkpoint")


class _restricted_pickle:  # a module-like namespace for torch.load(pickle_module=...)
    Unpickler = _RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(f: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(f, **kwargs).load()


def _plain(obj: Any) -> Any:
    """Turn omegaconf/argparse stand-ins into plain dicts, lists and values."""
    if isinstance(obj, _Opaque):
        state = getattr(obj, "state", None)
        origin = type(obj).origin
        if origin == "argparse.Namespace":
            return {k: _plain(v) for k, v in (state or {}).items()}
        if isinstance(state, dict) and "_content" in state:
            return _plain(state["_content"])
        if isinstance(state, dict) and "_val" in state:
            return _plain(state["_val"])
        if isinstance(state, tuple) and state and isinstance(state[-1], dict):
            return {k: _plain(v) for k, v in state[-1].items()}
        return None
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def safe_torch_load(path: str | Path) -> Any:
    """torch.load with an allow-listed unpickler: tensors and plain containers only, no code execution."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", pickle_module=_restricted_pickle, weights_only=False)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused: {e}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupted?): {first}") from None


# --------------------------------------------------------------------------------------- formats


def _clean_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not IGNORED_KEYS.search(k)}


def read_fairseq_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, model args) from an FBK fairseq `.pt`, without fairseq or omegaconf installed."""
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    args: dict[str, Any] | None = None
    cfg = _plain(ckpt.get("cfg"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        args = cfg["model"]
    elif ckpt.get("args") is not None:
        args = _plain(ckpt["args"])
    if not args:
        raise CheckpointError(f"{path}: the checkpoint has neither 'cfg.model' nor 'args'")
    sd = ckpt["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: 'model' is not a state dict of tensors")
    return _clean_state_dict(sd), args


def strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept fairseq names wrapped in any prefix (`model.`, `fama.model.`, ...)."""
    anchor = re.compile(r"(^|\.)(encoder|decoder|auxiliary_decoder)\.")
    prefixes = set()
    for k in sd:
        m = anchor.search(k)
        if m:
            prefixes.add(k[: m.start(2)])
    if len(prefixes) == 1:
        p = prefixes.pop()
        return {k[len(p):] if k.startswith(p) else k: v for k, v in sd.items()}
    return sd


def config_from_state_dict(sd: dict[str, torch.Tensor], hints: dict[str, Any] | None = None) -> ModelConfig:
    """Model dimensions read off the tensor shapes; the intermediate-CTC layer comes from hints or the preset."""
    hints = hints or {}
    try:
        d_model = sd["encoder.ctc_fc.weight"].shape[1]
        n_enc = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.conformer_layers."))
        n_dec = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("decoder.layers."))
        heads = sd["encoder.conformer_layers.0.attention.attention.u_bias"].shape[0]
        convs = sorted(k for k in sd if re.match(r"encoder\.subsample\.conv_layers\.\d+\.weight$", k))
        dec_dim = sd["decoder.embed_tokens.weight"].shape[1]
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"cannot infer the architecture from the weights: missing {e}") from None
    preset = next((p for p in PRESETS.values() if p.encoder_layers == n_enc), None)
    ctc_layer = hints.get("ctc_encoder_layer") or (preset.ctc_encoder_layer if preset else n_enc * 2 // 3)
    return ModelConfig(
        input_dim=sd[convs[0]].shape[1],
        d_model=d_model,
        encoder_layers=n_enc,
        encoder_heads=heads,
        ffn_expansion=sd["encoder.conformer_layers.0.first_feed_forward.first_linear.weight"].shape[0] // d_model,
        subsampler_channels=sd[convs[0]].shape[0],
        subsampler_kernels=tuple(sd[k].shape[2] for k in convs),
        conv_kernel=sd["encoder.conformer_layers.0.conv_module.depthwise_conv1d.weight"].shape[2],
        ctc_encoder_layer=int(ctc_layer),
        decoder_dim=dec_dim,
        decoder_ffn_dim=sd["decoder.layers.0.fc1.weight"].shape[0],
        decoder_layers=n_dec,
        decoder_heads=int(hints.get("decoder_attention_heads") or hints.get("decoder_heads") or heads),
        vocab_size=sd["decoder.embed_tokens.weight"].shape[0],
        src_vocab_size=sd["encoder.ctc_fc.weight"].shape[0],
    )


def build_model(cfg: ModelConfig, sd: dict[str, torch.Tensor], source: str) -> FamaModel:
    """A model with exactly these weights; any missing, unexpected or mis-shaped tensor is an error."""
    model = FamaModel(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        def show(keys: list[str], what: str, shapes: dict) -> str:
            items = [f"{k} {tuple(shapes[k].shape)}" for k in keys[:8]]
            more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
            return f"{what}: {', '.join(items)}{more}"

        parts = []
        if missing:
            parts.append(show(missing, "missing", expected))
        if unexpected:
            parts.append(show(unexpected, "unexpected", sd))
        if wrong:
            parts.append("wrong shape: " + ", ".join(
                f"{k} {tuple(sd[k].shape)} != {tuple(expected[k].shape)}" for k in wrong[:8]))
        raise CheckpointError(f"{source}: weights do not match the FAMA architecture; " + "; ".join(parts))
    for k, v in sd.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{source}: tensor {k} contains NaN or infinite values")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in sd.items()}, strict=True)
    return model


def load_fama_folder(folder: Path) -> tuple[FamaModel, Tokenizer]:
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: unreadable model config: {e}") from None
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{folder}: not a fama model folder")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{folder}: written by a newer fama (format {meta['format_version']}); upgrade fama")
    cfg = ModelConfig.from_dict(meta["model"])
    try:
        sd = load_file(folder / WEIGHTS_FILE)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: unreadable weights (truncated or corrupted?): {e}") from None
    return build_model(cfg, sd, str(folder / WEIGHTS_FILE)), Tokenizer.from_folder(folder)


def save_model(model: FamaModel, tokenizer: Tokenizer, folder: str | Path, dtype: torch.dtype | None = None,
               extra: dict[str, Any] | None = None) -> Path:
    """Write fama's model folder (config.json, model.safetensors, tokenizer files) atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
              for k, v in model.state_dict().items()}
        save_file(sd, tmp / WEIGHTS_FILE, metadata={"format": FORMAT_NAME})
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model": model.cfg.to_dict(),
                "languages": tokenizer.languages, **(extra or {})}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        tokenizer.save(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _find_tokenizer(folder: Path, spm: Path | None = None, dict_path: Path | None = None) -> Tokenizer:
    if spm is not None:
        return Tokenizer(spm, dict_path)
    if (folder / "tokenizer.model").exists():
        return Tokenizer.from_folder(folder)
    models = sorted(folder.glob("*.model"))
    if not models:
        raise CheckpointError(f"{folder}: no SentencePiece model (*.model) found beside the weights")
    dicts = [p for p in sorted(folder.glob("*.txt")) if p.stem == models[0].stem]
    return Tokenizer(models[0], dicts[0] if dicts else None)


def load_fairseq(path: str | Path, spm: str | Path | None = None,
                 dict_path: str | Path | None = None) -> tuple[FamaModel, Tokenizer]:
    """An FBK fairseq checkpoint; the SentencePiece model defaults to the `*.model` beside it."""
    path = Path(path)
    sd, args = read_fairseq_checkpoint(path)
    tokenizer = _find_tokenizer(path.parent, Path(spm) if spm else None, Path(dict_path) if dict_path else None)
    try:
        vocab = sd["decoder.embed_tokens.weight"].shape[0]
        src_vocab = sd["encoder.ctc_fc.weight"].shape[0]
        cfg = ModelConfig.from_fairseq_args(args, vocab, src_vocab)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    if tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} entries but the model {cfg.vocab_size}")
    return build_model(cfg, sd, str(path)), tokenizer


def load_hub_folder(folder: Path) -> tuple[FamaModel, Tokenizer]:
    """A downloaded hub repo: either a fama folder or FBK's own upload (fairseq-style names, any prefix)."""
    meta: dict[str, Any] = {}
    if (folder / CONFIG_FILE).exists():
        meta = json.loads((folder / CONFIG_FILE).read_text())
        if meta.get("format") == FORMAT_NAME:
            return load_fama_folder(folder)
    weights = sorted(folder.glob("*.safetensors"))
    sd: dict[str, torch.Tensor] = {}
    try:
        if weights:
            for w in weights:
                sd.update(load_file(w))
        else:
            for w in sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt")):
                obj = safe_torch_load(w)
                obj = obj.get("model", obj) if isinstance(obj, dict) else obj
                sd.update(obj)
    except SafetensorError as e:
        raise CheckpointError(f"{folder}: unreadable weights: {e}") from None
    if not sd:
        raise CheckpointError(f"{folder}: no weights (*.safetensors, *.bin) found")
    sd = _clean_state_dict(strip_prefix(sd))
    cfg = config_from_state_dict(sd, meta)
    tokenizer = _find_tokenizer(folder)
    return build_model(cfg, sd, str(folder)), tokenizer


# --------------------------------------------------------------------------------------- hub


def resolve_alias(name: str) -> str:
    return HF_ALIASES.get(name, name)


def pull(name: str, revision: str | None = None, local_files_only: bool | None = None,
         cache_dir: str | Path | None = None) -> Path:
    """Download (or find in the cache) a Hugging Face model repo; returns its local snapshot folder.

    Honours HF_HOME / HF_HUB_CACHE and HF_HUB_OFFLINE. Only weights, configs and tokenizer files are fetched.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo = resolve_alias(name)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        path = snapshot_download(repo, revision=revision, allow_patterns=HUB_PATTERNS, cache_dir=cache_dir,
                                 local_files_only=bool(local_files_only) or offline)
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo}: no such model on the Hugging Face Hub (or it is private)") from None
    except LocalEntryNotFoundError:
        why = "offline mode is on" if (offline or local_files_only) else "the Hub cannot be reached"
        raise CheckpointError(f"{repo}: not in the local cache and {why}; run `fama pull {name}` online") from None
    except (HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"{repo}: download failed: {str(e).splitlines()[0]}") from None
    return Path(path)


def cached_models(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Models in the Hugging Face cache that look like FAMA repos (or any repo of an alias), with sizes."""
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir(cache_dir)
    except Exception:  # no cache yet
        return []
    rows = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        rows.append({"repo": repo.repo_id, "size_bytes": repo.size_on_disk, "path": str(repo.repo_path),
                     "revisions": len(repo.revisions)})
    return sorted(rows, key=lambda r: r["repo"])


# --------------------------------------------------------------------------------------- entry point


def load_model(name_or_path: str | Path, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None,
               local_files_only: bool | None = None, spm: str | Path | None = None) -> tuple[FamaModel, Tokenizer]:
    """The one way to get a model: a fama folder, a fairseq `.pt`, an alias (`fama-small`) or a hub repo id.

    Returns the model in eval mode on `device` (default: cuda if available) in `dtype` (default float32;
    "auto", "bfloat16", "float16", "int8": see `precision.py`), and its tokenizer.
    """
    path = Path(name_or_path)
    if path.is_dir():
        model, tok = load_hub_folder(path)
    elif path.is_file():
        model, tok = load_fairseq(path, spm)
    elif str(name_or_path) in HF_ALIASES or re.fullmatch(r"[\w.-]+/[\w.-]+", str(name_or_path)):
        model, tok = load_hub_folder(pull(str(name_or_path), local_files_only=local_files_only))
    else:
        raise CheckpointError(f"{name_or_path}: no such file or folder, and not a model alias or hub repo id "
                              f"(aliases: {', '.join(HF_ALIASES)})")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return apply_precision(model, dtype or "float32", device), tok
