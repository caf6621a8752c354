"""Tensor names: how a checkpoint's parameter names map onto fama's model, in one table.

fama's model uses FBK-fairseq's names (`encoder.conformer_layers.N...`, `decoder.layers.N...`,
`auxiliary_decoder...`). Checkpoints come in two families of names:

- fairseq's, as FBK's `.pt` and fama's own folder hold them, under any wrapping prefix (`model.`, ...);
- transformers' Speech2Text names, which FBK's Hugging Face code builds on (`model.encoder.conv.conv_layers.N`,
  `model.encoder.layers.N`, `model.decoder.layers.N`, `lm_head`); an absent `lm_head` means the output layer
  is tied to the decoder's embeddings.

Each rule below renames a family of tensors; `map_names` applies them and records what it did, so that
`fama inspect` can show the mapping. Dimensions are then read off the tensor shapes, and checked against the
Speech2Text fields of the repo's `config.json` where it gives them (`config_from_state_dict`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .config import PRESETS, ModelConfig

# (old name pattern, fama name, what it is); applied in order, once, to each name after its prefix is removed.
RENAMES: list[tuple[str, str, str]] = [
    (r"^(?:.*\.)?lm_head\.weight$", "decoder.output_projection.weight", "output layer (lm_head)"),
    (r"^encoder\.conv\.conv_layers\.(\d+)\.", r"encoder.subsample.conv_layers.\1.", "subsampler (conv)"),
    (r"^encoder\.layers\.(\d+)\.", r"encoder.conformer_layers.\1.", "conformer blocks (layers)"),
]
# Tables fama recomputes: the conformer's relative-position tables, the decoder's sinusoidal positions (fairseq's
# `_float_tensor`, Speech2Text's `embed_positions.weights`), fairseq's version counters.
IGNORED = re.compile(r"(positional_encoding\.pe|embed_positions\._float_tensor|embed_positions\.weights?|"
                     r"(^|\.)version)$")
_ANCHOR = re.compile(r"(^|\.)(encoder|decoder|auxiliary_decoder)\.")
OUTPUT = "decoder.output_projection.weight"
EMBEDDINGS = "decoder.embed_tokens.weight"
CONVERT_HINT = ("or convert FBK's fairseq checkpoint instead: fama convert avg25.pt OUT --spm "
                "spm_en_it_16000_lid.model (download links in fbk_works/FAMA.md of github.com/hlt-mt/FBK-fairseq)")


@dataclass
class NameMapping:
    """What `map_names` did to a checkpoint's names."""

    layout: str = "fairseq"  # or "speech2text"
    prefix: str = ""  # removed from every name
    renamed: dict[str, int] = field(default_factory=dict)  # rule -> tensors renamed by it
    ignored: int = 0  # recomputed tables dropped
    tied_output: bool = False  # no output layer in the file: tied to the decoder's embeddings
    origin: dict[str, str] = field(default_factory=dict, repr=False)  # fama name -> the file's name

    def describe(self) -> list[str]:
        lines = [f"layout: {self.layout} names" + (f" under the prefix {self.prefix!r}" if self.prefix else "")]
        lines += [f"{what}: {n} tensors renamed" for what, n in self.renamed.items()]
        if self.tied_output:
            lines.append(f"output layer: tied to {EMBEDDINGS} (no lm_head in the weights)")
        if self.ignored:
            lines.append(f"{self.ignored} position tables ignored (recomputed)")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"layout": self.layout, "prefix": self.prefix, "renamed": dict(self.renamed),
                "ignored": self.ignored, "tied_output": self.tied_output}


def strip_prefix(sd: dict[str, Any]) -> dict[str, Any]:
    """fairseq names wrapped in any prefix (`model.`, `fama.model.`, ...) without it."""
    return _strip(sd)[0]


def _strip(sd: dict[str, Any]) -> tuple[dict[str, Any], str]:
    prefixes = {k[: m.start(2)] for k in sd if (m := _ANCHOR.search(k))}
    if len(prefixes) != 1:
        return sd, ""
    p = prefixes.pop()
    return {k[len(p):] if k.startswith(p) else k: v for k, v in sd.items()}, p


def map_names(sd: dict[str, Any], tie_output: bool = False) -> tuple[dict[str, Any], NameMapping]:
    """`sd` under fama's names, and what was done. `tie_output`: an absent output layer takes the decoder's
    embeddings (transformers ties them when the file has no `lm_head`)."""
    stripped, prefix = _strip(sd)
    info = NameMapping(prefix=prefix)
    out: dict[str, Any] = {}
    for k, v in stripped.items():
        original = prefix + k if prefix + k in sd else k
        if IGNORED.search(k):
            info.ignored += 1
            continue
        for pattern, repl, what in RENAMES:
            new = re.sub(pattern, repl, k)
            if new != k:
                info.renamed[what] = info.renamed.get(what, 0) + 1
                info.layout = "speech2text"
                k = new
                break
        out[k] = v
        info.origin[k] = original
    if tie_output and OUTPUT not in out and EMBEDDINGS in out:
        out[OUTPUT] = out[EMBEDDINGS]
        info.tied_output = True
        info.layout = "speech2text"
    return out, info


def _pattern(name: str) -> str:
    return re.sub(r"(^|\.)\d+(?=\.|$)", r"\1N", name)


def known_patterns() -> set[str]:
    """fama's parameter names with layer numbers as N (a two-layer model on the meta device)."""
    import torch

    from .model import FamaModel

    with torch.device("meta"):
        model = FamaModel(ModelConfig(d_model=8, encoder_heads=2, decoder_dim=8, decoder_heads=2, decoder_ffn_dim=8,
                                      subsampler_channels=8, encoder_layers=2, decoder_layers=1,
                                      ctc_encoder_layer=1, vocab_size=8, src_vocab_size=8, conv_kernel=3))
    return {_pattern(k) for k in model.state_dict()}


def _group(name: str) -> str:
    parts = _pattern(name).split(".")
    return ".".join(parts[:5]) + (".*" if len(parts) > 5 else "")


def unmatched_names(sd: dict[str, Any], mapping: NameMapping, source: str) -> str | None:
    """One line naming the tensors of `sd` (fama names, from `map_names`) that match no FAMA parameter under
    their names in the file, grouped, a few with shapes, with what fama expected and the way out; None when
    every name is known."""
    known = known_patterns()
    back = mapping.origin
    unknown = [k for k in sd if _pattern(k) not in known]
    missing = [k for k in (EMBEDDINGS, "decoder.layers.0.fc1.weight", "encoder.conformer_layers.0.layernorm.weight",
                           "encoder.subsample.conv_layers.0.weight") if k not in sd]
    if not unknown and not missing:
        return None
    groups = Counter(_group(back.get(k, k)) for k in unknown)
    shown = []
    for g, n in groups.most_common(4):
        example = next(k for k in unknown if _group(back.get(k, k)) == g)
        shape = tuple(getattr(sd[example], "shape", ()))
        shown.append(f"{g} ({n}, e.g. {back.get(example, example)} {shape})")
    more = f" and {len(groups) - 4} more groups" if len(groups) > 4 else ""
    what = (f"{len(unknown)} tensor names match no FAMA parameter: {', '.join(shown)}{more}" if unknown
            else f"no {missing[0]} (nor any name fama maps onto it)")
    return (f"{source}: {what}; fama reads fairseq names (encoder.subsample.conv_layers.N, "
            "encoder.conformer_layers.N, encoder.ctc_fc, decoder.layers.N, decoder.output_projection, "
            "auxiliary_decoder, under any prefix) and Speech2Text names (model.encoder.conv.conv_layers.N, "
            f"model.encoder.layers.N, model.decoder.layers.N, lm_head); {CONVERT_HINT}")


# Speech2Text config.json fields (FBK's Speech2TextConformerConfig keeps them) -> ModelConfig fields.
CONFIG_FIELDS = {
    "d_model": "d_model",
    "encoder_layers": "encoder_layers",
    "decoder_layers": "decoder_layers",
    "encoder_attention_heads": "encoder_heads",
    "decoder_attention_heads": "decoder_heads",
    "decoder_ffn_dim": "decoder_ffn_dim",
    "conv_channels": "subsampler_channels",
    "conv_kernel_sizes": "subsampler_kernels",
    "input_feat_per_channel": "input_dim",
    "conformer_conv_kernel_size": "conv_kernel",
    "vocab_size": "vocab_size",
    "ctc_encoder_layer": "ctc_encoder_layer",
}


def _layers(sd: dict[str, Any], prefix: str) -> int:
    found = [int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))]
    if not found:
        raise KeyError(prefix + "0")
    return 1 + max(found)


def _shape(sd: dict[str, Any], key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


def config_from_state_dict(sd: dict[str, Any], hints: dict[str, Any] | None = None) -> ModelConfig:
    """Model dimensions read off the tensor shapes (fama names), checked against `hints` (a repo's config.json:
    fama's own `ctc_encoder_layer`/`decoder_heads` or the Speech2Text fields of `CONFIG_FIELDS`); ValueError
    naming the field when they disagree. Heads of the decoder and the intermediate-CTC layer cannot be seen in
    shapes: they come from the hints, else the encoder's heads and the preset of that depth."""
    hints = hints or {}
    d_model = _shape(sd, EMBEDDINGS)[1]
    n_enc = _layers(sd, "encoder.conformer_layers.")
    convs = sorted((k for k in sd if re.match(r"encoder\.subsample\.conv_layers\.\d+\.weight$", k)),
                   key=lambda k: int(k.split(".")[3]))
    inter = "encoder.ctc_fc.weight" in sd
    preset = next((p for p in PRESETS.values() if p.encoder_layers == n_enc), None)
    ctc_layer = hints.get("ctc_encoder_layer") or (preset.ctc_encoder_layer if preset else n_enc * 2 // 3)
    heads = _shape(sd, "encoder.conformer_layers.0.attention.attention.u_bias")[0]
    seen = dict(
        input_dim=_shape(sd, convs[0])[1],
        d_model=d_model,
        encoder_layers=n_enc,
        encoder_heads=heads,
        ffn_expansion=_shape(sd, "encoder.conformer_layers.0.first_feed_forward.first_linear.weight")[0] // d_model,
        subsampler_channels=_shape(sd, convs[0])[0],
        subsampler_kernels=tuple(_shape(sd, k)[2] for k in convs),
        conv_kernel=_shape(sd, "encoder.conformer_layers.0.conv_module.depthwise_conv1d.weight")[2],
        ctc_encoder_layer=int(ctc_layer) if inter else 0,
        decoder_dim=_shape(sd, "decoder.layers.0.fc1.weight")[1],
        decoder_ffn_dim=_shape(sd, "decoder.layers.0.fc1.weight")[0],
        decoder_layers=_layers(sd, "decoder.layers."),
        decoder_heads=int(hints.get("decoder_attention_heads") or hints.get("decoder_heads") or heads),
        vocab_size=_shape(sd, EMBEDDINGS)[0],
        src_vocab_size=_shape(sd, "encoder.ctc_fc.weight")[0] if inter else _shape(sd, EMBEDDINGS)[0],
        top_ctc="auxiliary_decoder.fc.weight" in sd,
    )
    _check_hints(seen, hints)
    return ModelConfig(**seen)


def _check_hints(seen: dict[str, Any], hints: dict[str, Any]) -> None:
    strategy = hints.get("ctc_compress_strategy", "none")
    if strategy not in ("none", None):
        raise ValueError(f"config.json: ctc_compress_strategy {strategy!r}: CTC compression is not FAMA's "
                         "architecture (FBK's models use \"none\")")
    for name, ours in CONFIG_FIELDS.items():
        if name not in hints or hints[name] is None or name in ("decoder_attention_heads",):
            continue
        want = hints[name]
        if name == "conv_kernel_sizes":
            want = tuple(want) if isinstance(want, list) else want
        if name == "input_feat_per_channel":
            want = want * int(hints.get("input_channels", 1))
        if name == "ctc_encoder_layer" and not seen["ctc_encoder_layer"]:
            continue
        if want != seen[ours]:
            raise ValueError(f"config.json gives {name} {hints[name]!r} but the weights have {seen[ours]!r} "
                             f"({ours}): the file does not describe these weights")
