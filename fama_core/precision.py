"""Inference precision: float32, bfloat16, float16 or int8 weights, and `auto`, the fastest on this machine.

`auto` on a GPU is bfloat16 where the GPU supports it, else float16. On a CPU it is whichever of float32,
bfloat16 and int8 runs the model's own matrix shapes fastest, measured by a short probe (well under a second)
and cached per CPU model, torch version, thread count and model shape in the user cache folder.
float32 is the reference: the only precision that reproduces FBK's n-best lists token for token.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from .model import FamaModel
from .outputs import atomic_write

PRECISIONS = ("auto", "float32", "bfloat16", "float16", "int8")
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPES = {**FLOAT_DTYPES, **{alias: FLOAT_DTYPES[name] for alias, name in ALIASES.items()}}  # weights' dtypes
CPU_CANDIDATES = ("float32", "bfloat16", "int8")
# What `auto` may pick on a CPU. Not int8: dynamic quantisation scales activations per batch, so a chunk's
# tokens would depend on which chunks share its batch (and it misses the accuracy guard); ask for it by name.
AUTO_CANDIDATES = ("float32", "bfloat16")
PREFER_MARGIN = 0.05  # a lower precision must be this much faster than a more exact one to be chosen
CACHE_VERSION = 1
FLOAT_LAYERS = ("output_projection", "auxiliary_decoder.fc", "ctc_fc")  # vocabulary projections


def normalize(precision: str | torch.dtype | None) -> str:
    """'auto', 'float32', 'bfloat16', 'float16' or 'int8' for a name, alias or torch dtype; ValueError otherwise."""
    if precision is None:
        return "auto"
    if isinstance(precision, torch.dtype):
        for name, dt in FLOAT_DTYPES.items():
            if dt == precision:
                return name
        raise ValueError(f"unsupported dtype {precision}")
    name = ALIASES.get(precision, precision)
    if name not in PRECISIONS:
        raise ValueError(f"unknown dtype {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return name


def quantize_int8(model: nn.Module) -> nn.Module:
    """Every nn.Linear with int8 weights and dynamically quantised int8 activations, in place.

    torch.ao.quantization is deprecated in favour of torchao, but torchao's int8 CPU path (0.18 on torch 2.13)
    only becomes fast under torch.compile: in eager mode it measured 18x slower than float32 here, while
    quantize_dynamic's fbgemm kernels run 3-5x faster than float32 on AVX2. This function is the one place
    that knows which library does it.
    """
    # Per-channel weight scales; the vocabulary projections stay float32 (they decide between close tokens).
    spec = {name: torch.ao.quantization.per_channel_dynamic_qconfig for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(part in name for part in FLOAT_LAYERS)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)


def apply_precision(model: FamaModel, precision: str | torch.dtype | None, device: str | torch.device) -> FamaModel:
    """`model` moved to `device` in `precision` (resolved when 'auto'); sets `model.precision` to the name."""
    name = normalize(precision)
    device = torch.device(device)
    if name == "auto":
        name = resolve_auto(model, device)
    if name == "int8" and device.type != "cpu":
        raise ValueError("int8 weights run on the CPU only; use bfloat16 or float16 on a GPU")
    if name == "int8":
        model = quantize_int8(model.to(device=device, dtype=torch.float32).eval())
    else:
        model = model.to(device=device, dtype=FLOAT_DTYPES[name]).eval()
    model.precision = name
    return model


def precision_of(model: nn.Module) -> str:
    """The precision a model runs in ('int8' for a quantised one)."""
    name = getattr(model, "precision", None)
    return name if name else normalize(next(model.parameters()).dtype)


# ------------------------------------------------------------------------------------------------ auto


def resolve_auto(model: FamaModel, device: torch.device) -> str:
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device.type != "cpu":
        return "float32"
    key = _cache_key(model)
    cache = _cache_path()
    entries = _read_cache(cache)
    if key in entries and entries[key].get("choice") in AUTO_CANDIDATES:
        return entries[key]["choice"]
    seconds = probe(model)
    choice = choose({name: s for name, s in seconds.items() if name in AUTO_CANDIDATES})
    entries[key] = {"choice": choice, "seconds": seconds, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                  time.gmtime())}
    _write_cache(cache, entries)
    return choice


def choose(seconds: dict[str, float]) -> str:
    """The fastest precision, preferring the more exact one (float32, then bfloat16) unless another is faster
    by more than PREFER_MARGIN."""
    best = min(seconds, key=seconds.get)
    for name in CPU_CANDIDATES:
        if name in seconds and seconds[name] <= seconds[best] * (1 + PREFER_MARGIN):
            return name
    return best


def probe(model: FamaModel, reps: int = 2) -> dict[str, float]:
    """Estimated seconds per second of audio for each CPU precision, from timing the model's two kinds of
    matrix product: the encoder's (25 frames/s, compute-bound) and a decoder step's (a few rows, bound by
    reading the weights), weighted by how many of each a second of audio needs (3.3 tokens/s, beam 5,
    8 chunks per batch)."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    d, f = cfg.d_model, cfg.d_model * cfg.ffn_expansion
    dd, df = cfg.decoder_dim, cfg.decoder_ffn_dim
    enc_x = torch.randn(128, d, generator=g)
    dec_x = torch.randn(40, dd, generator=g)
    enc_w, dec_w = _linear(d, f), _linear(dd, df)
    # Products per second of audio, in units of the probed shapes.
    enc_units = 25 / 128 * cfg.encoder_layers * (2 * 2 * d * f + 7 * d * d) / (d * f)
    dec_units = 3.3 / 8 * (cfg.decoder_layers * (6 * dd * dd + 2 * dd * df) + dd * cfg.vocab_size) / (dd * df)
    out: dict[str, float] = {}
    for name in ("float32", "int8", "bfloat16"):
        total = 0.0
        for layer, x, units in ((enc_w, enc_x, enc_units), (dec_w, dec_x, dec_units)):
            if name == "int8":
                run, inp = quantize_int8(nn.Sequential(copy.deepcopy(layer))), x
            else:
                run, inp = copy.deepcopy(layer).to(FLOAT_DTYPES[name]), x.to(FLOAT_DTYPES[name])
            # A precision already twice as slow as the best on its first product is not timed further.
            give_up = 2 * min(out.values()) / units if out else float("inf")
            total += _best_time(run, inp, reps, give_up) * units
        out[name] = total
    return out


def _linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.utils.skip_init(nn.Linear, n_in, n_out)
    with torch.no_grad():
        layer.weight.uniform_(-(n_in**-0.5), n_in**-0.5)
        layer.bias.zero_()
    return layer.eval()


@torch.no_grad()
def _best_time(fn: nn.Module, x: torch.Tensor, reps: int, give_up: float = float("inf")) -> float:
    t0 = time.perf_counter()
    fn(x)
    best = time.perf_counter() - t0
    if best > give_up:
        return best
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return best


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_key(model: FamaModel) -> str:
    c = model.cfg
    shape = f"{c.d_model}x{c.ffn_expansion}x{c.encoder_layers}/{c.decoder_dim}x{c.decoder_ffn_dim}x{c.decoder_layers}"
    return f"{_cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {shape}/{c.vocab_size}"


def _cache_path() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("FAMA_CACHE_DIR") or user_cache_dir("fama")) / "precision.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: dict) -> None:
    """Atomic; a cache that cannot be written is only a lost speed-up."""
    try:
        atomic_write(path, json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1), overwrite=True)
    except OSError:
        pass
