"""Inference precision: float32, bfloat16, float16 or int8 (decoder) weights, and `auto`, the fastest here.

`auto` on a GPU is bfloat16 where the GPU supports it, else float16. On a CPU it is whichever of float32,
bfloat16 and int8 runs the model's own matrix shapes fastest, measured by a short probe (well under a second)
and cached per CPU model, instruction-set limits in force, torch version, thread count and model shape in the
user cache folder.
float32 is the reference: the only precision that reproduces FBK's n-best lists token for token.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import json
import os
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .model import FamaModel
from .outputs import atomic_write

# The one dtype vocabulary of the library and of every command (case-insensitive): PRECISIONS for inference,
# WEIGHT_DTYPES for weights written to disk (`fama convert`), TRAIN_DTYPES for training; ALIASES everywhere.
PRECISIONS = ("auto", "float32", "bfloat16", "float16", "int8")
WEIGHT_DTYPES = ("float32", "bfloat16", "float16")
TRAIN_DTYPES = ("auto", *WEIGHT_DTYPES)
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_CANDIDATES = ("float32", "bfloat16", "int8")
AUTO_CANDIDATES = CPU_CANDIDATES  # what `auto` may pick on a CPU
PREFER_MARGIN = 0.05  # a lower precision must be this much faster than a more exact one to be chosen
# 4: the probe times the encoder on packed weights, as inference now runs it; 5: the ISA limits are in the key
CACHE_VERSION = 5


def dtype_error(value: object, allowed: tuple[str, ...] = PRECISIONS) -> str:
    """The one error text for a dtype outside `allowed`: every name and alias that would have been accepted."""
    aliases = [alias for alias, name in ALIASES.items() if name in allowed]
    return f"unknown dtype {value!r}; choose one of {', '.join(allowed)}" + (
        f" (or {', '.join(aliases)})" if aliases else "")


def normalize(precision: str | torch.dtype | None, allowed: tuple[str, ...] = PRECISIONS) -> str:
    """The name in `allowed` ('auto', 'float32', 'bfloat16', 'float16', 'int8' by default) of a name, alias
    (any case) or torch dtype; None is 'auto'. ValueError (`dtype_error`) otherwise."""
    if precision is None:
        precision = "auto"
    if isinstance(precision, torch.dtype):
        name = next((n for n, dt in FLOAT_DTYPES.items() if dt == precision), None)
        if name is None:
            raise ValueError(f"unsupported dtype {precision}")
    else:
        key = str(precision).strip().lower()
        name = ALIASES.get(key, key)
    if name not in allowed:
        raise ValueError(dtype_error(precision, allowed))
    return name


class Int8Linear(nn.Module):
    """A Linear with int8 weights (one scale per output channel) and int8 activations quantised per row.

    Each row is mapped affinely onto [-1, 1] (x = centre + half_range * u), and one constant row [1, -1, 0, ...]
    is appended: the kernel's dynamic range is then [-1, 1] whatever the other rows hold, so a row's result
    never depends on which rows share its batch (per-tensor dynamic quantisation makes a chunk's tokens depend
    on the other chunks of its batch), and every row uses all the levels, also after a ReLU.
    W x = half_range * (W u) + centre * sum_j W[:, j].

    On AVX2 the kernel sums pairs of u8 x s8 products in int16, so 8-bit weights allow only 7-bit activations.
    The rounding error of those is quantised again, as extra rows of the same product: ~13-bit activations
    (0.4 % error on random data, against 1.5 % without) for twice the rows, which costs little where reading
    the weights bounds the time, as in a decoder step.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        scales = (weight.abs().amax(1) / 127).clamp_min(1e-12).double()
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized-tensor creation is deprecated; the kernels are not
            qweight = torch.quantize_per_channel(weight, scales, zero, 0, torch.qint8)
        self._packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.register_buffer("weight_sums", qweight.dequantize().sum(1), persistent=False)
        bias = torch.zeros(self.out_features) if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias", bias, persistent=False)
        pin = torch.zeros(1, self.in_features)
        pin[0, 0], pin[0, -1] = 1.0, -1.0
        self.register_buffer("pin", pin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        n = rows.shape[0]
        low, high = torch.aminmax(rows, dim=1, keepdim=True)
        centre, half = (high + low) * 0.5, ((high - low) * 0.5).clamp_min_(1e-30)
        u = (rows - centre) / half
        levels = u * (127 / 2)  # the kernel's step for [-1, 1] on 0..127 (zero point 64) is 2/127
        error = (levels - levels.round().clamp_(-64, 63)) * 2  # the rounding error, scaled back onto [-1, 1]
        y = torch.ops.quantized.linear_dynamic(torch.cat([u, error, self.pin]), self._packed, True)
        y = torch.add(y[:n], y[n:2 * n], alpha=1 / 127)
        y = torch.addcmul(torch.addcmul(self.bias, centre, self.weight_sums), y, half)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def step_layer(name: str) -> bool:
    """Whether the Linear called `name` is one of the decoder's products that run once per step on a few rows
    each, bound by reading the weights: those `int8` quantises (4x fewer bytes). The encoder, the
    cross-attention keys/values of the encoder frames and the top CTC head run once per chunk on many rows and
    stay float32 (packed, like every float Linear on a CPU): on the demo model's outputs, an int8 encoder changed
    9-16 of 170 outputs, against 4-6 for the int8 decoder."""
    return name == "decoder.output_projection" or (
        name.startswith("decoder.layers.") and not name.endswith(("encoder_attn.k_proj", "encoder_attn.v_proj")))


class PackedLinear(nn.Module):
    """A float32 or bfloat16 Linear (or kernel-1 Conv1d, applied over B x T x C) whose weight oneDNN lays out once
    for its CPU kernels.

    `F.linear` hands a plain weight to MKL (float32) or to oneDNN, which relays it out on every call. Packed, a
    decoder step's 1024 x 4096 product of 15 rows (weights not in cache) took 0.46 ms against 1.44 ms in float32
    and 0.24 ms against 0.40 ms in bfloat16, and an encoder layer's 1466 rows 25 ms against 60 ms in float32
    (MKL) and 12.5 against 13.1 ms in bfloat16, on a 2-core Zen 5. A row's result never depends on how many rows
    share the product (MKL's float32 one does, in the last bits). bfloat16 results are those of F.linear; float32
    ones differ by the summation order only. Pickled, copied and saved as the plain layer.
    """

    def __init__(self, layer: nn.Linear | nn.Conv1d):
        super().__init__()
        self.conv = isinstance(layer, nn.Conv1d)
        weight = layer.weight.detach()
        self.out_features, self.in_features = weight.shape[:2]
        self.bias = layer.bias
        self._pack(weight.squeeze(-1) if self.conv else weight)

    def _pack(self, weight: torch.Tensor) -> None:
        self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())

    @property
    def weight(self) -> torch.Tensor:
        return self._packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self._packed, self.bias, "none",
                                               [], "")
        return y.view(*x.shape[:-1], self.out_features)

    def _plain_weight(self) -> torch.Tensor:
        return self.weight.unsqueeze(-1) if self.conv else self.weight

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_packed"] = self.weight  # oneDNN's tensors cannot be pickled or copied (deepcopy comes here too)
        return state

    def __setstate__(self, state: dict) -> None:
        weight = state.pop("_packed")
        self.__dict__.update(state)
        self._pack(weight)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self._plain_weight()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        if prefix + "weight" in state_dict:
            weight = state_dict[prefix + "weight"].to(self._packed.dtype)
            self._pack(weight.squeeze(-1) if self.conv else weight)
        elif strict:
            missing_keys.append(prefix + "weight")
        rest = {k: v for k, v in state_dict.items() if k != prefix + "weight"}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed {self._packed.dtype}"

    def as_plain(self) -> nn.Linear | nn.Conv1d:
        """The layer it was made from."""
        shape = (self.in_features, self.out_features)
        plain = nn.Conv1d(*shape, 1, bias=self.bias is not None, device="meta") if self.conv else nn.Linear(
            *shape, bias=self.bias is not None, device="meta")
        plain.weight = nn.Parameter(self._plain_weight(), requires_grad=False)
        plain.bias = self.bias
        return plain


def _replace(model: nn.Module, pick: Callable[[str, nn.Module], bool],
             make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Every submodule that `pick(name, module)` selects replaced by `make(module)`, in place, one at a time (each
    replaced module is freed before the next is made: holding them all doubled the peak memory of packing)."""
    for name in [n for n, m in model.named_modules() if pick(n, m)]:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, attr, make(getattr(owner, attr)))
    return model


def unpack_linears(model: nn.Module) -> nn.Module:
    """Every PackedLinear back to a plain Linear, in place (before another precision or device)."""
    return _replace(model, lambda _, m: isinstance(m, PackedLinear), PackedLinear.as_plain)


def can_pack(dtype: torch.dtype) -> bool:
    """Whether this torch build packs CPU Linear weights of `dtype` (float32, or bfloat16 with oneDNN support)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pack_linears(model: nn.Module) -> nn.Module:
    """Every float32 or bfloat16 Linear, and the Conformer's pointwise convolutions, as PackedLinear, in place
    (CPU inference)."""
    return _replace(model, _packable, PackedLinear)


def _packable(name: str, module: nn.Module) -> bool:
    if isinstance(module, nn.Conv1d):
        return name.endswith("pointwise_conv1d") and module.kernel_size == (1,) and module.groups == 1
    return type(module) is nn.Linear and module.weight.dtype in (torch.float32, torch.bfloat16)


def _step_linear(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and step_layer(name)


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of returning it to the system: a CPU forward pass
    allocates and frees tensors of tens of MB, each of which glibc maps afresh (above its 32 MB mmap threshold)
    and the kernel then zero-fills page by page: 7.5 ms against 0.4 ms to zero 34 MB here, 15 % of the whole
    decoding time at FAMA-small's size. Peak memory is unchanged; it is simply not handed back between
    batches. No effect off glibc."""
    _mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: allocations below 1 GiB come from the heap
    _mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: never trim the heap's top


def return_freed_memory() -> None:
    """Have glibc map every allocation of 1 MB or more on its own, so that freeing it returns the memory to the
    system at once. While a model loads, each layer's weight is read, then replaced by its packed copy: in
    glibc's heap the freed weights left holes that the packed copies did not fit, and a float32 FAMA-small load
    peaked 0.25 GB higher. `keep_freed_memory` undoes it for inference. No effect off glibc."""
    _mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD (setting it also stops glibc from raising it on its own)


def _mallopt(param: int, value: int) -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(param, ctypes.c_int(value))
    except (OSError, AttributeError):
        pass


def quantize_int8(model: nn.Module) -> nn.Module:
    """The Linears `step_layer` picks, as Int8Linear, in place.

    torch.ao.quantization is deprecated in favour of torchao, but torchao's int8 CPU path (0.18 on torch 2.13)
    only becomes fast under torch.compile: in eager mode it measured 25x slower than float32 here (its
    `torch._int_mm` runs ~100x slower than fbgemm's kernel on the CPU), while fbgemm's dynamic int8 kernel,
    called directly, runs 2-5x faster than float32 on a decoder step's rows on AVX2. This function and
    Int8Linear are the one place that knows which library does it.
    """
    return _replace(model, _step_linear, Int8Linear)


def apply_precision(model: FamaModel, precision: str | torch.dtype | None, device: str | torch.device,
                    pack: bool = True) -> FamaModel:
    """`model` moved to `device` in `precision` (resolved when 'auto'); sets `model.precision` to the name. On a
    CPU, float32 and bfloat16 weights are packed for inference (`PackedLinear`) unless `pack` is False (an int8
    model's float32 encoder too)."""
    name = normalize(precision)
    device = torch.device(device)
    if name == "auto":
        name = resolve_auto(model, device)
    if name == "int8" and device.type != "cpu":
        raise ValueError("int8 weights run on the CPU only; use bfloat16 or float16 on a GPU")
    model = unpack_linears(model)  # a model prepared before for another precision or device
    if name == "int8":
        model = quantize_int8(model.to(device=device, dtype=torch.float32).eval())
    else:
        model = model.to(device=device, dtype=FLOAT_DTYPES[name]).eval()
    dtype = FLOAT_DTYPES.get(name, torch.float32)
    if pack and device.type == "cpu" and can_pack(dtype):
        model = pack_linears(model)
    if device.type == "cpu":
        keep_freed_memory()
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
    8 chunks per batch), as `apply_precision` would run them (`PackedLinear`, `Int8Linear`). `int8` quantises
    only the decoder (`step_layer`); its encoder runs float32, packed. Each product runs once untimed first
    (oneDNN builds its kernels on first use: timing that call once dropped bfloat16 as 3x slower than it is)."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    d, f = cfg.d_model, cfg.d_model * cfg.ffn_expansion
    dd, df = cfg.decoder_dim, cfg.decoder_ffn_dim
    enc_x = torch.randn(128, d, generator=g)
    dec_x = torch.randn(40, dd, generator=g)
    enc_w, dec_w = _linear(d, f), _linear(dd, df)
    # Products per second of audio, in units of the probed shapes.
    enc_units = 25 / 128 * cfg.encoder_layers * (2 * 2 * d * f + 7 * d * d) / (d * f)
    layer_units = 3.3 / 8 * cfg.decoder_layers * (4 * dd * dd + 2 * dd * df) / (dd * df)
    vocab_units = 3.3 / 8 * dd * cfg.vocab_size / (dd * df)
    times: dict[tuple[str, str], float] = {}

    def timed(kind: str, name: str, units: float, give_up: float) -> float:
        if (kind, name) not in times:
            layer, x = (enc_w, enc_x) if kind == "encoder" else (dec_w, dec_x)
            if name == "int8":
                run, inp = Int8Linear(layer), x
            else:
                run, inp = copy.deepcopy(layer).to(FLOAT_DTYPES[name]), x.to(FLOAT_DTYPES[name])
                if can_pack(FLOAT_DTYPES[name]):
                    run = PackedLinear(run)
            times[kind, name] = _best_time(run, inp, reps, give_up / units)
        return times[kind, name] * units

    out: dict[str, float] = {}
    for name in ("float32", "int8", "bfloat16"):
        # A precision already twice as slow as the best on its first product is not timed further.
        give_up = 2 * min(out.values()) if out else float("inf")
        main = "float32" if name == "int8" else name
        total = timed("encoder", main, enc_units, give_up)
        total += timed("decoder", name, layer_units + vocab_units, give_up)
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
    fn(x)
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
    """The CPU's name, family, model and a digest of its feature flags: VMs often report only a brand name
    ("AMD EPYC" for a Zen 3 and a Zen 5 alike), and the flags (avx512_bf16, amx) decide which precision wins."""
    try:
        info: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
        if "model name" in info:
            flags = hashlib.sha1(" ".join(sorted(info.get("flags", "").split())).encode()).hexdigest()[:8]
            return f"{info['model name']} (family {info.get('cpu family', '?')} model {info.get('model', '?')}, " \
                   f"flags {flags})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Variables that cap the instruction set torch's kernels use (ATen's dispatch, oneDNN, MKL, fbgemm). A CPU
# restricted by them is, for the choice of precision, another CPU: bfloat16 or int8 may win without them and lose
# with them.
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "FBGEMM_ENABLE_INSTRUCTIONS")


def isa_restrictions() -> str:
    """The instruction-set limits in force: ATen's capability as torch sees it, and every set ISA variable."""
    capability = torch.backends.cpu.get_cpu_capability()
    limits = [f"{name}={os.environ[name]}" for name in ISA_VARIABLES if os.environ.get(name)]
    return " ".join([f"aten {capability}", *limits])


def _cache_key(model: FamaModel) -> str:
    c = model.cfg
    shape = f"{c.d_model}x{c.ffn_expansion}x{c.encoder_layers}/{c.decoder_dim}x{c.decoder_ffn_dim}x{c.decoder_layers}"
    return (f"{_cpu_model()} | {isa_restrictions()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
            f" | {shape}/{c.vocab_size}")


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
