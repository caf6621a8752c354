"""Loading and saving weights: fama's model folder, FBK's fairseq checkpoints, Hugging Face repos.

Every format is read into the same thing, a fairseq-named state dict plus a `ModelConfig`, and
checked against the model before any weight is copied. Nothing here executes code from a file:
pickles go through an allow-listed unpickler and remote modeling code is never downloaded.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import shutil
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .model import FamaModel
from .names import IGNORED, NameMapping, config_from_state_dict, map_names, unmatched_names
from .outputs import atomic_path, file_mode
from .precision import FLOAT_DTYPES, WEIGHT_DTYPES, apply_precision, normalize, return_freed_memory
from .tokenizer import DICT_FILE, MODEL_FILE, SPM_FILE, VOCAB_FILE, Tokenizer, fairseq_dict_text

FORMAT_NAME = "fama"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, MODEL_FILE, DICT_FILE)  # everything a model folder consists of

HF_ALIASES = {
    "fama-small": "FBK-MT/fama-small",
    "fama-medium": "FBK-MT/fama-medium",
    "fama-small-asr": "FBK-MT/fama-small-asr",
    "fama-medium-asr": "FBK-MT/fama-medium-asr",
}
# Models that ship inside the package: loaded from there, never downloaded.
BUNDLED = {"fama-demo": Path(__file__).parent / "assets" / "demo"}
# Files worth fetching from a hub repo; *.py (remote modeling code) is never downloaded.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.pt", "*.model", "*.txt"]


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


class _Refused(pickle.UnpicklingError):
    """A pickle that asks for something outside the allow-list (as opposed to a corrupted one)."""


def _newobj(cls: type, *args: Any) -> Any:
    if cls not in _STAND_INS.values() and cls not in (OrderedDict, dict, list, set):
        raise _Refused(f"refusing to build {cls!r}")
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
        raise _Refused(f"refusing to load '{module}.{name}': not an allowed type in a checkpoint")


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
    except _Refused as e:
        raise CheckpointError(f"{path}: refused: {e}") from None
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a torch.save archive nor a readable "
                              "pickle; truncated or corrupted?)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, TypeError,
            KeyError, IndexError, AttributeError, UnicodeDecodeError, MemoryError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupted?): {first}") from None


# --------------------------------------------------------------------------------------- writing


# --------------------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class _Lazy:
    """A tensor of a .safetensors file, read only when the model needs it."""

    path: Path
    key: str
    shape: tuple[int, ...]
    floating: bool
    nbytes: int
    dtype: str = ""  # as safetensors names it: F32, F16, BF16, ...


_MAP_BYTES = 64 << 20  # tensors read per memory map of a weights file


def _read_tensors(sd: Weights, keys: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for `keys`; safetensors data comes from memory maps of about 64 MB of tensors each.

    The tensors are views of the mapped file (no copy). A map is released when its tensors are: pages of
    tensors converted to another dtype stay resident only while their map is open.
    """
    keys = list(keys)
    i = 0
    while i < len(keys):
        v = sd[keys[i]]
        if not isinstance(v, _Lazy):
            yield keys[i], v
            i += 1
            continue
        group, size = [], 0
        while i < len(keys) and isinstance(sd[keys[i]], _Lazy) and sd[keys[i]].path == v.path and (
                not group or size + sd[keys[i]].nbytes <= _MAP_BYTES):
            group.append(keys[i])
            size += sd[keys[i]].nbytes
            i += 1
        try:
            with safe_open(v.path, framework="pt") as f:
                tensors = [(k, f.get_tensor(sd[k].key)) for k in group]
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{v.path}: unreadable weights (truncated or corrupted?): {e}") from None
        while tensors:
            yield tensors.pop(0)


Weights = dict[str, "torch.Tensor | _Lazy"]


def _open_safetensors(path: Path) -> Weights:
    """Names and shapes of a .safetensors file's tensors; the data stays on disk until `build_model` reads it."""
    try:
        with safe_open(path, framework="pt") as f:
            out: Weights = {}
            for k in f.keys():
                sl = f.get_slice(k)
                shape = tuple(sl.get_shape())
                out[k] = _Lazy(path, k, shape, sl.get_dtype() in _FLOAT_CODES, math.prod(shape) * 4, sl.get_dtype())
            return out
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}: unreadable weights (truncated or corrupted?): {e}") from None


_FLOAT_CODES = {"F64", "F32", "F16", "BF16"}


def disk_dtypes(weights: Weights) -> dict[str, int]:
    """How many tensors of `weights` are stored in each dtype (safetensors' names: F32, F16, BF16, I64, ...)."""
    counts: dict[str, int] = {}
    for v in weights.values():
        name = v.dtype if isinstance(v, _Lazy) else str(v.dtype).removeprefix("torch.")
        counts[name] = counts.get(name, 0) + 1
    return counts


def weights_of(folder: Path) -> Weights:
    """The tensors (names and shapes; data read later) of a fama folder's model.safetensors."""
    return _open_safetensors(Path(folder) / WEIGHTS_FILE)


def _tensors(obj: Any, path: Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """`obj` if it is a state dict of tensors, else a CheckpointError naming the file and the problem."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: the {what} are not a dict of named tensors but of type {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: the {what} entry {bad[0]!r} is not a tensor but of type "
                              f"{type(obj[bad[0]]).__name__}")
    return obj


def _clean_state_dict(sd: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sd.items() if not IGNORED.search(k)}


def _fairseq_parts(ckpt: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: neither a fairseq checkpoint nor a fama training checkpoint (no 'model' entry)")
    args: dict[str, Any] | None = None
    cfg = _plain(ckpt.get("cfg"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        args = cfg["model"]
    elif isinstance(_plain(ckpt.get("args")), dict):
        args = _plain(ckpt["args"])
    if not args:
        raise CheckpointError(f"{path}: the checkpoint has neither 'cfg.model' nor 'args'")
    return _clean_state_dict(_tensors(ckpt["model"], path, "'model'")), args


def read_fairseq_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, model args) from an FBK fairseq `.pt`, without fairseq or omegaconf installed."""
    return _fairseq_parts(safe_torch_load(path), Path(path))


def _config(d: Any, where: str) -> ModelConfig:
    try:
        return ModelConfig.from_dict(d)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: {e}") from None


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """(state dict, model config) of a `.pt`: a fama training checkpoint (`checkpoint_N.pt`, `checkpoint_last.pt`)
    or an FBK fairseq checkpoint, told apart by their contents."""
    path = Path(path)
    ckpt = safe_torch_load(path)
    if isinstance(ckpt, dict) and "fama_train" in ckpt:
        sd = _tensors(ckpt.get("model"), path, "'model'")
        return sd, _config(ckpt.get("model_config"), str(path))
    sd, args = _fairseq_parts(ckpt, path)
    try:
        cfg = ModelConfig.from_fairseq_args(args, sd["decoder.embed_tokens.weight"].shape[0],
                                            sd["encoder.ctc_fc.weight"].shape[0])
    except KeyError as e:
        raise CheckpointError(f"{path}: not FAMA's architecture: no {e} tensor") from None
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    return sd, cfg


def _mismatch(expected: dict[str, torch.Tensor], sd: Weights) -> str:
    """'' when `sd` has exactly the model's tensors with the model's shapes, else what differs."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]

    def show(keys: list[str], what: str, shapes: Any) -> str:
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
    return "; ".join(parts)


def build_model(cfg: ModelConfig, sd: Weights, source: str, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None) -> FamaModel:
    """A model with exactly these weights on `device`, floating ones in `dtype` (default float32).

    Any missing, unexpected, mis-shaped, non-finite or wrongly typed tensor is an error. The model is built on
    the meta device (no memory, no random initialisation) and each tensor is read, converted and assigned one
    at a time, so loading holds one copy of the weights plus one tensor.
    """
    with torch.device("meta"), _no_random_init_on_meta():
        model = FamaModel(cfg)
    expected = model.state_dict()
    problem = _mismatch(expected, sd)
    if problem:
        raise CheckpointError(f"{source}: weights do not match the FAMA architecture; {problem}")
    for k, want in expected.items():
        floating = sd[k].floating if isinstance(sd[k], _Lazy) else sd[k].is_floating_point()
        if floating != want.is_floating_point():
            raise CheckpointError(f"{source}: tensor {k} is {'' if floating else 'not '}floating point, unlike the "
                                  f"model's {want.dtype}")
    target = dtype or torch.float32
    loaded: dict[str, torch.Tensor] = {}
    for k, t in _read_tensors(sd, expected):
        floating = t.is_floating_point()
        if floating and not _all_finite(t):
            raise CheckpointError(f"{source}: tensor {k} contains NaN or infinite values")
        out = t.to(device=device, dtype=target if floating else expected[k].dtype)
        # Copied out of the mapped file when unconverted, so that each map is released once its tensors are
        # read: on a CPU the weights are then packed for oneDNN (a second copy), and a view kept the whole file
        # resident beside the packed copies (a float32 load of FAMA-small peaked at 2.1x the weights).
        loaded[k] = out.clone() if out.data_ptr() == t.data_ptr() else out
        del t, out
    model.load_state_dict(loaded, strict=True, assign=True)
    return model


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN or infinity in `t`. The temporary is one byte per value. (A float64 sum, used before, makes a
    float64 copy of its input; loading FAMA-small-size weights then peaked at 1.22-1.38x their size, and at
    1.42-1.51x summed 1 M values at a time, against 1.12x with this: the heap kept the freed copies.)"""
    return bool(torch.isfinite(t).all())


@contextlib.contextmanager
def _no_random_init_on_meta() -> Iterator[None]:
    """Skip `nn.init.normal_` on meta tensors: torch's meta implementation of it takes seconds on first use, and
    a model built to receive weights needs no random values. Tensors on real devices are initialised as usual."""
    real = torch.nn.init.normal_

    def normal_(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor if tensor.is_meta else real(tensor, *args, **kwargs)

    torch.nn.init.normal_ = normal_
    try:
        yield
    finally:
        torch.nn.init.normal_ = real


def _tokenizer(model_path: Path, dict_path: Path | None = None, vocab_path: Path | None = None) -> Tokenizer:
    try:
        return Tokenizer(model_path, dict_path, vocab_path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    except (OSError, RuntimeError) as e:
        why = "empty file" if model_path.is_file() and model_path.stat().st_size == 0 else str(e).strip().splitlines()
        why = why if isinstance(why, str) else (why[0] if why else type(e).__name__)
        raise CheckpointError(f"{model_path}: not a readable SentencePiece model: {why}") from None


def _find_tokenizer(folder: Path, spm: Path | None = None, dict_path: Path | None = None) -> Tokenizer:
    """fama's tokenizer.model (+ dict.txt); else Speech2Text's sentencepiece.bpe.model + vocab.json; else the
    *.model beside the weights (+ the .txt dictionary of the same name)."""
    if spm is not None:
        return _tokenizer(spm, dict_path)
    if (folder / MODEL_FILE).exists():
        return _tokenizer(folder / MODEL_FILE, folder / DICT_FILE if (folder / DICT_FILE).exists() else None)
    models = [folder / SPM_FILE] if (folder / SPM_FILE).exists() else sorted(folder.glob("*.model"))
    if not models:
        raise CheckpointError(f"{folder}: no SentencePiece model (*.model) found beside the weights")
    if (folder / VOCAB_FILE).exists():
        return _tokenizer(models[0], vocab_path=folder / VOCAB_FILE)
    dicts = [p for p in sorted(folder.glob("*.txt")) if p.stem == models[0].stem]
    return _tokenizer(models[0], dicts[0] if dicts else None)


def _matched(model_cfg: ModelConfig, tok: Tokenizer, source: Path) -> Tokenizer:
    if tok.vocab_size != model_cfg.vocab_size:
        raise CheckpointError(f"{source}: the tokenizer ({' + '.join(str(p) for p in tok.files)}) has "
                              f"{tok.vocab_size} entries (<ctc_blank> included) but the model {model_cfg.vocab_size}")
    return tok


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON: {e}") from None


def load_fama_folder(folder: Path, device: str | torch.device = "cpu",
                     dtype: torch.dtype | None = None) -> tuple[FamaModel, Tokenizer]:
    """fama's own model folder (config.json, model.safetensors, tokenizer.model, dict.txt)."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    meta = _read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a fama model config (no \"format\": \"fama\")")
    version = meta.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{folder}: written by a newer fama (format {version}); upgrade fama")
    if "model" not in meta:
        raise CheckpointError(f"{path}: no \"model\" entry (the model's dimensions)")
    cfg = _config(meta["model"], str(path))
    tok = _matched(cfg, _find_tokenizer(folder), path)
    return build_model(cfg, _open_safetensors(folder / WEIGHTS_FILE), str(folder / WEIGHTS_FILE), device, dtype), tok


def load_checkpoint_file(path: str | Path, spm: str | Path | None = None, dict_path: str | Path | None = None,
                         device: str | torch.device = "cpu",
                         dtype: torch.dtype | None = None) -> tuple[FamaModel, Tokenizer]:
    """A `.pt`: FBK's fairseq checkpoint or fama's training checkpoint. The SentencePiece model defaults to
    `tokenizer.model`, else the `*.model`, beside it."""
    path = Path(path)
    sd, cfg = read_checkpoint(path)
    tok = _matched(cfg, _find_tokenizer(path.parent, Path(spm) if spm else None,
                                        Path(dict_path) if dict_path else None), path)
    return build_model(cfg, sd, str(path), device, dtype), tok


load_fairseq = load_checkpoint_file  # the name older callers use


def _hub_weights(folder: Path) -> tuple[Weights, list[Path]]:
    sd: Weights = {}
    weights = sorted(folder.glob("*.safetensors"))
    for w in weights:
        sd.update(_open_safetensors(w))
    if not weights:
        weights = sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt"))
        for w in weights:
            obj = safe_torch_load(w)
            sd.update(_tensors(obj.get("model", obj) if isinstance(obj, dict) else obj, w))
    if not sd:
        raise CheckpointError(f"{folder}: no weights (*.safetensors, *.bin, *.pt) found")
    return sd, weights


@dataclass
class HubFolder:
    """A model folder that is not fama's own, read but not yet built: its weights under fama's names."""

    folder: Path
    weights: Weights
    config: ModelConfig
    tokenizer: Tokenizer
    mapping: NameMapping
    files: list[Path]  # the files read: weights, config.json, tokenizer files
    meta: dict[str, Any]  # its config.json ({} without one)


def read_hub_folder(folder: Path) -> HubFolder:
    """Weights, dimensions and tokenizer of a hub upload (fairseq names under any prefix, or Speech2Text names:
    `names.py`), with one-line errors for names that match nothing and for a config.json that disagrees."""
    folder = Path(folder)
    meta: Any = {}
    files: list[Path] = []
    if (folder / CONFIG_FILE).exists():
        meta = _read_json(folder / CONFIG_FILE)
        if not isinstance(meta, dict):
            raise CheckpointError(f"{folder / CONFIG_FILE}: a JSON {type(meta).__name__}, not an object")
        files.append(folder / CONFIG_FILE)
    raw, weight_files = _hub_weights(folder)
    sd, mapping = map_names(raw, tie_output=True)
    problem = unmatched_names(sd, mapping, str(folder))
    if problem:
        raise CheckpointError(problem)
    try:
        cfg = config_from_state_dict(sd, meta)
    except (KeyError, IndexError) as e:
        raise CheckpointError(f"{folder}: cannot infer the architecture from the weights: missing {e}") from None
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{folder}: {e}") from None
    tok = _matched(cfg, _find_tokenizer(folder), folder)
    files += weight_files + tok.files
    return HubFolder(folder, sd, cfg, tok, mapping, files, meta)


def load_hub_folder(folder: Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> tuple[FamaModel, Tokenizer]:
    """A model folder: fama's own, or a hub upload (FBK's: see `read_hub_folder`)."""
    folder = Path(folder)
    if is_fama_folder(folder):
        return load_fama_folder(folder, device, dtype)
    hub = read_hub_folder(folder)
    return build_model(hub.config, hub.weights, str(folder), device, dtype), hub.tokenizer


def is_fama_folder(folder: Path) -> bool:
    """Whether `folder` holds fama's own model folder (its config.json has a "format" entry)."""
    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        return False
    meta = _read_json(path)
    return isinstance(meta, dict) and "format" in meta


# --------------------------------------------------------------------------------------- saving


def check_output_folder(folder: str | Path, *, overwrite: bool = False, protect: Iterable[str | Path] = ()) -> Path:
    """Refuse an output model folder that would lose data, before anything is computed or written.

    Refused: a folder equal to or containing one of the `protect` paths (the inputs), a path that is not a
    folder, and a folder that holds anything unless `overwrite` (which then replaces only the model files).
    """
    folder = Path(folder)
    target = folder.resolve()
    for p in protect:
        src = Path(p).resolve()
        if src == target or target in src.parents:
            raise CheckpointError(f"{folder}: the output folder {'is' if src == target else 'contains'} the input "
                                  f"{p}; choose another output folder")
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder}: exists and is not a folder")
    if not overwrite and folder.is_dir() and any(folder.iterdir()):
        raise CheckpointError(f"{folder}: the folder exists and is not empty; choose a new folder, or pass "
                              f"--overwrite to replace only its model files ({', '.join(MODEL_FILES)})")
    return folder


def save_model(model: FamaModel, tokenizer: Tokenizer, folder: str | Path, dtype: torch.dtype | None = None,
               extra: dict[str, Any] | None = None, *, overwrite: bool = False,
               protect: Iterable[str | Path] = ()) -> Path:
    """Write fama's model folder: config.json, model.safetensors, tokenizer.model, dict.txt.

    The folder is created if missing; an existing non-empty folder is refused unless `overwrite`, which
    replaces only those four files and never touches anything else in it. Each file is written to a temporary
    name and renamed. `protect` lists the inputs (checkpoints) the folder must not be or contain; the
    tokenizer's own files are always protected.
    """
    own = [tokenizer.model_path] + ([tokenizer.dict_path] if tokenizer.dict_path is not None else [])
    folder = check_output_folder(folder, overwrite=overwrite, protect=[*protect, *own])
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
          for k, v in model.state_dict().items()}
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model": model.cfg.to_dict(),
            "languages": tokenizer.languages, **(extra or {})}
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.ExitStack() as stack:
            tmp = {name: stack.enter_context(atomic_path(folder / name, overwrite=overwrite))
                   for name in MODEL_FILES}
            save_file(sd, tmp[WEIGHTS_FILE], metadata={"format": FORMAT_NAME})
            os.chmod(tmp[WEIGHTS_FILE], file_mode())  # safetensors creates its file 0600
            tmp[CONFIG_FILE].write_text(json.dumps(meta, indent=2) + "\n")
            shutil.copyfile(tokenizer.model_path, tmp[MODEL_FILE])
            if tokenizer.dict_path is not None:
                shutil.copyfile(tokenizer.dict_path, tmp[DICT_FILE])
            else:
                tmp[DICT_FILE].write_text(fairseq_dict_text(tokenizer.sp), encoding="utf-8")
    except FileExistsError as e:
        raise CheckpointError(f"{e.filename}: appeared while the model was being written; not replaced") from None
    return folder


# --------------------------------------------------------------------------------------- demo


def demo_clips() -> list[Path]:
    """The short clips that ship with the demo model (English and Italian sentences, synthetic voices)."""
    return sorted((BUNDLED["fama-demo"] / "clips").glob("*.wav"))


def copy_demo_clips(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """Copy the demo clips into `folder` (created if missing): (copied, already there with the same bytes).

    Never replaces a file: a different file of the same name is a CheckpointError naming it, after the others
    are copied.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    copied, same, clash = [], [], []
    for clip in demo_clips():
        dst = folder / clip.name
        if dst.exists():
            (same if dst.is_file() and dst.read_bytes() == clip.read_bytes() else clash).append(dst)
            continue
        try:
            with atomic_path(dst, overwrite=False) as tmp:
                shutil.copyfile(clip, tmp)
        except FileExistsError:
            clash.append(dst)
            continue
        copied.append(dst)
    if clash:
        raise CheckpointError(f"{clash[0]}: exists and is not the demo clip; not replaced"
                              + (f" (nor {len(clash) - 1} more)" if len(clash) > 1 else ""))
    return copied, same


# --------------------------------------------------------------------------------------- hub


def known_aliases() -> list[str]:
    return [*BUNDLED, *HF_ALIASES]


def resolve_alias(name: str) -> str:
    """The hub repo id of an alias or repo id; CheckpointError listing the aliases for anything else."""
    if name in HF_ALIASES:
        return HF_ALIASES[name]
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise CheckpointError(f"unknown model alias {name!r}; known: {', '.join(known_aliases())} "
                              "(or a Hugging Face repo id such as FBK-MT/fama-small)")
    return name


def pull(name: str, revision: str | None = None, local_files_only: bool | None = None,
         cache_dir: str | Path | None = None) -> Path:
    """Download (or find in the cache) a Hugging Face model repo; returns its local snapshot folder.

    Honours HF_HOME / HF_HUB_CACHE and HF_HUB_OFFLINE. Only weights, configs and tokenizer files are fetched.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    if name in BUNDLED:
        return BUNDLED[name]
    repo = resolve_alias(name)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        path = snapshot_download(repo, revision=revision, allow_patterns=HUB_PATTERNS, cache_dir=cache_dir,
                                 local_files_only=bool(local_files_only) or offline)
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo}: no such model on the Hugging Face Hub (or it is private)") from None
    except LocalEntryNotFoundError as e:
        why = ("offline mode is on (HF_HUB_OFFLINE=1)" if offline else "only local files were allowed"
               if local_files_only else f"the Hub cannot be reached ({root_cause(e)})")
        raise CheckpointError(f"{repo}: not in the local cache and {why}; run `fama pull {name}` online") from None
    except (HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"{repo}: download failed: {str(e).splitlines()[0]}") from None
    return Path(path)


def root_cause(e: BaseException) -> str:
    """`Type: first line` of the innermost exception that led to `e` (a refused connection, a DNS failure)."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


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


def torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """The torch dtype of a weight dtype's name or alias (or a torch dtype, or None); ValueError otherwise."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return FLOAT_DTYPES[normalize(dtype, WEIGHT_DTYPES)]


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, or a ValueError saying plainly why this machine cannot use it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r} (use cpu, cuda or cuda:N): {e}") from None
    if dev.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise ValueError(f"device {device!r}: CUDA is not available in this torch build (a CPU-only build, "
                             f"torch {torch.__version__}); use --device cpu or install a CUDA build of torch")
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is visible to torch (driver or CUDA_VISIBLE_DEVICES?)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return dev


def load_model(name_or_path: str | Path, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None,
               local_files_only: bool | None = None, spm: str | Path | None = None,
               trainable: bool = False) -> tuple[FamaModel, Tokenizer]:
    """The one way to get a model: a model folder, a `.pt` (FBK fairseq or fama training checkpoint), an alias
    (`fama-small`; `fama-demo` ships with fama) or a hub repo id.

    Returns the model in eval mode on `device` (default: cuda if available) in `dtype` (default "auto": the
    fastest precision on this machine, float32 when `trainable`; "float32" reproduces FBK's outputs;
    "bfloat16", "float16", "int8": see `precision.py`), and its tokenizer. Weights are read one tensor at a
    time, straight into their device and (floating-point) dtype. On a CPU the weights of every Linear are laid
    out for inference (`precision.PackedLinear`) unless `trainable` (fine-tuning: plain Linears everywhere).
    """
    dev = check_device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    dtype = normalize(("float32" if trainable else "auto") if dtype is None else dtype)
    dt = FLOAT_DTYPES.get(dtype)  # None for auto and int8: those two are resolved after loading
    if dev.type == "cpu":
        return_freed_memory()  # until `apply_precision` has packed the weights
    name = str(name_or_path)
    path = BUNDLED.get(name, Path(name_or_path))
    if path.is_dir():
        model, tok = load_hub_folder(path, dev, dt)
    elif path.is_file():
        model, tok = load_checkpoint_file(path, spm, device=dev, dtype=dt)
    elif name in HF_ALIASES or re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        model, tok = load_hub_folder(pull(name, local_files_only=local_files_only), dev, dt)
    else:
        raise CheckpointError(f"{name}: no such file or folder, and not a model alias or hub repo id "
                              f"(aliases: {', '.join(known_aliases())})")
    return apply_precision(model, dtype, dev, pack=not trainable), tok
