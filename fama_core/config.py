"""Model dimensions: one dataclass, the two released presets, and the mapping from fairseq's args."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Fields that are not positive integers.
_FLOATS = ("dropout", "attention_dropout", "activation_dropout")
_NON_NEGATIVE = ("pad", "eos", "ctc_encoder_layer")


@dataclass
class ModelConfig:
    """Hyper-parameters of a FAMA model (fairseq's `conformer_joint_ctc`).

    Names follow the meaning, not fairseq's flags; `from_fairseq_args` does the translation.
    """

    input_dim: int = 80
    d_model: int = 1024
    encoder_layers: int = 12
    encoder_heads: int = 16
    ffn_expansion: int = 4
    subsampler_channels: int = 1024
    subsampler_kernels: tuple[int, ...] = (5, 5)
    conv_kernel: int = 31
    ctc_encoder_layer: int = 8
    decoder_dim: int = 1024
    decoder_ffn_dim: int = 4096
    decoder_layers: int = 6
    decoder_heads: int = 16
    vocab_size: int = 16001
    src_vocab_size: int = 16001
    pad: int = 1
    eos: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    max_source_positions: int = 10000
    max_target_positions: int = 4000
    top_ctc: bool = True  # the top (language-conditioned) CTC head; ctc_encoder_layer 0: no intermediate CTC head

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that no FAMA model can have (wrong type or impossible value)."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "top_ctc":
                if not isinstance(v, bool):
                    raise ValueError(f"model config: top_ctc must be true or false, got {v!r}")
            elif f.name in _FLOATS:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                    raise ValueError(f"model config: {f.name} must be a number in [0, 1), got {v!r}")
            elif f.name == "subsampler_kernels":
                if (not isinstance(v, tuple) or not v
                        or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in v)):
                    raise ValueError(f"model config: {f.name} must be a non-empty list of positive integers, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, int) or v < (0 if f.name in _NON_NEGATIVE else 1):
                least = "a non-negative" if f.name in _NON_NEGATIVE else "a positive"
                raise ValueError(f"model config: {f.name} must be {least} integer, got {v!r}")
        rules = [
            (self.d_model % self.encoder_heads == 0, "d_model must be divisible by encoder_heads"),
            (self.decoder_dim % self.decoder_heads == 0, "decoder_dim must be divisible by decoder_heads"),
            (self.decoder_dim == self.d_model, "decoder_dim must equal d_model (the top CTC head adds the decoder's "
                                               "language embedding to the encoder output)"),
            (self.subsampler_channels % 2 == 0, "subsampler_channels must be even (GLU halves them)"),
            (max(self.pad, self.eos) < min(self.vocab_size, self.src_vocab_size), "pad and eos must be vocabulary ids"),
        ]
        for ok, why in rules:
            if not ok:
                raise ValueError(f"model config: {why}")

    @property
    def inter_ctc(self) -> bool:
        """Whether the model has the intermediate (transcript) CTC head."""
        return self.ctc_encoder_layer > 0

    @property
    def blank(self) -> int:
        """`<ctc_blank>` is the last entry of the target dictionary."""
        return self.vocab_size - 1

    @property
    def src_blank(self) -> int:
        return self.src_vocab_size - 1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["subsampler_kernels"] = list(self.subsampler_kernels)
        if self.top_ctc:  # written only when false, so that folders of models with both heads read in older fama
            del d["top_ctc"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """From `to_dict`'s form (config.json's `model`); ValueError names any unknown, mistyped or impossible field."""
        if not isinstance(d, dict):
            raise ValueError(f"model config must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        if d.get("extra", {}) == {}:  # an always-empty field that fama 0.1 wrote
            d.pop("extra", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        if isinstance(d.get("subsampler_kernels"), list):
            d["subsampler_kernels"] = tuple(d["subsampler_kernels"])
        return cls(**d)

    @classmethod
    def from_fairseq_args(cls, args: dict[str, Any], vocab_size: int, src_vocab_size: int) -> ModelConfig:
        """Build from the `model` namespace of a fairseq checkpoint (dict form)."""

        def get(name: str, default: Any) -> Any:
            v = args.get(name)
            return default if v is None else v

        arch = get("arch", get("_name", ""))
        if arch and arch != "conformer_joint_ctc":
            raise ValueError(f"unsupported fairseq architecture {arch!r} (expected conformer_joint_ctc)")
        if get("ctc_compress_strategy", "none") != "none":
            raise ValueError("CTC compression is not used by FAMA and is not supported")
        if get("share_decoder_input_output_embed", False) or get("decoder_learned_pos", False):
            raise ValueError("tied embeddings / learned decoder positions are not FAMA's architecture")
        d_model = int(get("encoder_embed_dim", 512))
        kernels = get("conv_kernel_sizes", "5,5")
        if isinstance(kernels, str):
            kernels = tuple(int(k) for k in kernels.split(","))
        return cls(
            input_dim=int(get("input_feat_per_channel", 80)) * int(get("input_channels", 1)),
            d_model=d_model,
            encoder_layers=int(get("encoder_layers", 12)),
            encoder_heads=int(get("encoder_attention_heads", 8)),
            ffn_expansion=int(get("feed_forward_expansion_factor", 4)),
            subsampler_channels=int(get("conv_channels", 1024)),
            subsampler_kernels=tuple(kernels),
            conv_kernel=int(get("conformer_conv_kernel_size", 31)),
            ctc_encoder_layer=int(get("ctc_encoder_layer", 0)),
            decoder_dim=int(get("decoder_embed_dim", d_model)),
            decoder_ffn_dim=int(get("decoder_ffn_embed_dim", 4 * d_model)),
            decoder_layers=int(get("decoder_layers", 6)),
            decoder_heads=int(get("decoder_attention_heads", 8)),
            vocab_size=vocab_size,
            src_vocab_size=src_vocab_size,
            pad=int(get("pad", 1)),
            eos=int(get("eos", 2)),
            dropout=float(get("dropout", 0.1)),
            attention_dropout=float(get("conformer_attention_dropout", get("attention_dropout", 0.1))),
            activation_dropout=float(get("activation_dropout", 0.1)),
        )


def _preset(encoder_layers: int, decoder_layers: int, ctc_layer: int) -> ModelConfig:
    return ModelConfig(encoder_layers=encoder_layers, decoder_layers=decoder_layers, ctc_encoder_layer=ctc_layer)


PRESETS: dict[str, ModelConfig] = {
    "small": _preset(12, 6, 8),
    "medium": _preset(24, 12, 16),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A copy of a named preset (`small`, `medium`) with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def package_version() -> str:
    """The installed distribution's version, whatever the distribution is called."""
    from importlib import metadata

    for dist in metadata.packages_distributions().get("fama_core", []):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown (not installed)"
