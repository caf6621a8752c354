"""Training throughput (input frames/s) of fama's update next to ESPnet's training step, same dims and batch.

    python benchmarks/train_bench.py                       # CPU, a reduced model (d=256, 12+6 layers)
    python benchmarks/train_bench.py --preset small        # FAMA small dims (slow on CPU)
    python benchmarks/train_bench.py --device cuda --dtype bf16

fama: `Trainer.update` (forward, FBK's three-term loss, backward, gradient normalisation, clipping, AdamW).
ESPnet (optional, `pip install --no-deps espnet` + its imports): `ESPnetASRModel` built from ESPnet's own
Conformer encoder (macaron, rel-pos attention, conv kernel 31, intermediate CTC), Transformer decoder and CTC,
stepped as ESPnet's `Trainer.train_one_epoch` does (forward -> loss.backward -> clip_grad_norm_ ->
optimizer.step). ESPnet's subsampler is its conv2d (4x), fama's FBK's conv1d (4x): the only structural
difference. Both read the same precomputed features (feature extraction is not timed).
"""

from __future__ import annotations

import argparse
import time

import torch

from fama_core.config import ModelConfig, preset
from fama_core.model import FamaModel
from fama_core.training import Batch, LossWeights, Schedule, TrainOptions
from fama_core.training.trainer import Dist, Trainer


def make_batch(batch: int, seconds: float, vocab: int, tokens: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    frames = int(seconds * 100)
    lengths = torch.linspace(frames * 0.8, frames, batch).long().flip(0)
    feats = torch.randn(batch, frames, 80, generator=g)
    target = torch.randint(6, vocab - 1, (batch, tokens + 2), generator=g)
    target[:, 0], target[:, -1] = 4, 2  # <lang:xx> ... </s>
    prev = torch.cat([torch.full((batch, 1), 2), target[:, :-1]], dim=1)
    transcript = torch.cat([target[:, 1:-1], torch.full((batch, 1), 2)], dim=1)
    return Batch([str(i) for i in range(batch)], feats, lengths, target, prev, transcript, ["en"] * batch)


def fama_trainer(cfg: ModelConfig, device: torch.device, dtype: str) -> Trainer:
    """A Trainer around a fresh model, without manifests (the benchmark feeds its batches directly)."""
    t = Trainer.__new__(Trainer)
    t.opts = TrainOptions(schedule=Schedule("fixed", lr=1e-4), loss=LossWeights(), dtype=dtype)
    t.dist, t.device, t.ddp, t.num_updates = Dist(), device, False, 0
    t.model = t.net = FamaModel(cfg).to(device).train()
    t.optimizer = torch.optim.AdamW(t.model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=1e-3)
    t.amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    t.scaler = torch.amp.GradScaler(device.type, enabled=t.amp == torch.float16)
    return t


def espnet_step_fn(cfg: ModelConfig, device: torch.device, dtype: str):
    from espnet2.asr.ctc import CTC
    from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
    from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
    from espnet2.asr.espnet_model import ESPnetASRModel

    V, d = cfg.vocab_size, cfg.d_model
    encoder = ConformerEncoder(80, output_size=d, attention_heads=cfg.encoder_heads,
                               linear_units=d * cfg.ffn_expansion, num_blocks=cfg.encoder_layers, input_layer="conv2d",
                               macaron_style=True, rel_pos_type="latest", pos_enc_layer_type="rel_pos",
                               selfattention_layer_type="rel_selfattn", activation_type="swish",
                               cnn_module_kernel=cfg.conv_kernel, interctc_layer_idx=[cfg.ctc_encoder_layer],
                               use_flash_attn=False)
    decoder = TransformerDecoder(V, d, attention_heads=cfg.decoder_heads, linear_units=cfg.decoder_ffn_dim,
                                 num_blocks=cfg.decoder_layers, use_flash_attn=False)
    model = ESPnetASRModel(V, [str(i) for i in range(V)], None, None, None, None, encoder, None, decoder,
                           CTC(V, d), None, ctc_weight=0.3, interctc_weight=0.1, lsm_weight=0.1, report_cer=False,
                           report_wer=False).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=1e-3)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]

    def step(b: Batch) -> None:
        text = b.target[:, 1:-1].to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, _, _ = model(speech=b.features.to(device), speech_lengths=b.lengths.to(device), text=text,
                               text_lengths=torch.full((len(b),), text.shape[1], device=device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        opt.zero_grad()

    return step, sum(p.numel() for p in model.parameters())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_alternating(steps: dict, batch: Batch, warmup: int, n: int, device: torch.device) -> dict[str, float]:
    """Median seconds per step of each function, run in turns so that a busy machine slows all of them alike."""
    for f in steps.values():
        for _ in range(warmup):
            f(batch)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(n):
        for k, f in steps.items():
            sync(device)
            start = time.perf_counter()
            f(batch)
            sync(device)
            times[k].append(time.perf_counter() - start)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=["small", "medium"], help="FAMA dims (default: a reduced model)")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--encoder-layers", type=int, default=12)
    ap.add_argument("--decoder-layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2001)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=8.0, help="longest utterance of the batch")
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.preset:
        cfg = preset(args.preset, vocab_size=args.vocab, src_vocab_size=args.vocab)
    else:
        d = args.d_model
        cfg = ModelConfig(d_model=d, encoder_heads=args.heads, decoder_heads=args.heads,
                          encoder_layers=args.encoder_layers, decoder_layers=args.decoder_layers,
                          ctc_encoder_layer=args.encoder_layers * 2 // 3,
                          subsampler_channels=2 * d, decoder_dim=d, decoder_ffn_dim=4 * d, vocab_size=args.vocab,
                          src_vocab_size=args.vocab)
    batch = make_batch(args.batch, args.seconds, args.vocab, args.tokens)
    frames = batch.frames
    torch.manual_seed(0)
    trainer = fama_trainer(cfg, device, args.dtype)
    steps = {"fama": lambda b: trainer.update([(1, 0, b)], None)}
    sizes = {"fama": trainer.model.num_parameters()}
    try:
        steps["espnet"], sizes["espnet"] = espnet_step_fn(cfg, device, args.dtype)
    except ImportError as e:
        print(f"espnet not importable ({e}); install with `pip install --no-deps espnet` and its imports")
    sec = timed_alternating(steps, batch, args.warmup, args.steps, device)
    print(f"device {device} ({torch.get_num_threads()} threads), dtype {args.dtype}; batch {args.batch} x "
          f"{args.seconds:g} s = {frames} frames, {args.tokens} tokens each; median of {args.steps} steps")
    for k, s in sec.items():
        print(f"{k:7s}{sizes[k] / 1e6:7.1f}M params  {s:7.3f} s/step  {frames / s:9.0f} frames/s")
    if "espnet" in sec:
        print(f"ratio fama/espnet throughput: {sec['espnet'] / sec['fama']:.2f}x")


if __name__ == "__main__":
    main()
