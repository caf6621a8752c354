"""Fake Hugging Face repos built from a fama model folder, in the layouts FBK's uploads may have."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import sentencepiece as spm
from safetensors.torch import load_file, save_file

# transformers' Speech2Text fields, as FBK's config.json has them (FBK-MT/fama-medium's, with this model's sizes)
S2T_FIELDS = {"d_model": "d_model", "encoder_layers": "encoder_layers", "decoder_layers": "decoder_layers",
              "encoder_attention_heads": "encoder_heads", "decoder_attention_heads": "decoder_heads",
              "decoder_ffn_dim": "decoder_ffn_dim", "conv_channels": "subsampler_channels",
              "conv_kernel_sizes": "subsampler_kernels", "input_feat_per_channel": "input_dim"}


def speech2text_name(name: str) -> str:
    """fama's (fairseq's) name of a tensor -> the Speech2Text-style name a transformers port would give it."""
    if name == "decoder.output_projection.weight":
        return "lm_head.weight"
    name = re.sub(r"^encoder\.subsample\.", "encoder.conv.", name)
    name = re.sub(r"^encoder\.conformer_layers\.", "encoder.layers.", name)
    return "model." + name


def make_repo(src: Path, dst: Path, *, names: str = "speech2text", tied: bool = False, top_ctc: bool = True,
              inter_ctc: bool = True, tokenizer: str = "speech2text", rename: dict[str, str] | None = None,
              vocab_edit=None, config_extra: dict | None = None) -> Path:
    """A hub-style folder from fama folder `src`: `names` "speech2text" or "fairseq" (under `model.`); `tied`:
    no output layer (the embeddings are copied into it, so the weights stay the same); `top_ctc`/`inter_ctc`
    False drop those heads; `tokenizer` "speech2text" (sentencepiece.bpe.model + vocab.json + tokenizer files)
    or "fairseq" (spm + dict); `rename` renames tensors (after the layout); `vocab_edit` edits the vocab dict."""
    dst.mkdir(parents=True)
    meta = json.loads((src / "config.json").read_text())["model"]
    sd = load_file(src / "model.safetensors")
    if tied:
        sd["decoder.output_projection.weight"] = sd["decoder.embed_tokens.weight"].clone()
        del sd["decoder.output_projection.weight"]
    if not top_ctc:
        sd = {k: v for k, v in sd.items() if not k.startswith("auxiliary_decoder.")}
    if not inter_ctc:
        sd = {k: v for k, v in sd.items() if not k.startswith("encoder.ctc_fc.")}
    sd = {(speech2text_name(k) if names == "speech2text" else "model." + k): v for k, v in sd.items()}
    for old, new in (rename or {}).items():
        sd = {re.sub(old, new, k): v for k, v in sd.items()}
    save_file(sd, dst / "model.safetensors")
    config = {"architectures": ["ConformerEncoderDecoderForConditionalGeneration"],
              "auto_map": {"AutoConfig": "configuration_conformer.Speech2TextConformerConfig",
                           "AutoModelForSpeechSeq2Seq":
                               "conformer_model.ConformerEncoderDecoderForConditionalGeneration"},
              "bos_token_id": 0, "decoder_start_token_id": 2, "eos_token_id": 2, "ctc_compress_strategy": "none",
              "max_source_positions": 3000, "max_target_positions": 512,
              **{hf: (list(meta[ours]) if isinstance(meta[ours], list) else meta[ours])
                 for hf, ours in S2T_FIELDS.items()}, **(config_extra or {})}
    (dst / "config.json").write_text(json.dumps(config))
    (dst / "configuration_conformer.py").write_text("raise SystemExit('remote code must never run')\n")
    if tokenizer == "speech2text":
        shutil.copyfile(src / "tokenizer.model", dst / "sentencepiece.bpe.model")
        sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
        vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
        if vocab_edit is not None:
            vocab = vocab_edit(vocab)
        (dst / "vocab.json").write_text(json.dumps(vocab))
        (dst / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "Speech2TextTokenizer"}))
        (dst / "special_tokens_map.json").write_text(json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
             "additional_special_tokens": ["<lang:en>", "<lang:it>"]}))
    else:
        shutil.copyfile(src / "tokenizer.model", dst / "spm.model")
        shutil.copyfile(src / "dict.txt", dst / "spm.txt")
    return dst
