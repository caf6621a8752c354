"""Decoding throughput: fama's batched joint CTC/attention beam search vs ESPnet's BatchBeamSearch + CTCPrefixScorer.

Issue #3's benchmark. One run prints, on the machine it runs on:

* fama's decoding throughput (utterances/s and audio-seconds/s) for a batch of utterances decoded together;
* ESPnet's `BatchBeamSearch` with `CTCPrefixScorer` on the same model dimensions, one utterance at a time
  (that is how ESPnet decodes: it batches over beams, not utterances), in two modes: full-vocabulary CTC
  prefix scoring (no pre-beam: exact joint decoding, as fama does; the headline) and ESPnet's default pre-beam
  (`pre_beam_score_key="full"`: CTC scores only the top int(1.5 * beam) candidates of the decoder: an
  approximation);
* the encoder's achieved matmul FLOP/s against the machine's fp32 and bf16 matmul FLOP/s, measured in the
  same run (the roofline ratio);
* last line, exactly: `fama/ESPnet decoding throughput: N.Nx` (medians over the timed runs, full-vocabulary mode).

Set-up (all stated in the output): FAMA-small width (d_model 1024, 16 heads, FFN 4096, 16,001-token vocabulary)
with fewer layers (default 2 encoder / 2 decoder, intermediate CTC after encoder layer 1), random weights and
random 80-dim features (fixed seeds), 16 utterances of 5-20 s, beam 5, CTC weight 0.2 (ESPnet: its own
convention, decoder 0.8 / CTC 0.2, the same work), fp32, 2 threads, and exactly N output tokens per hypothesis
in both systems (default 20): fama bans </s> until step N+1 (`min_len`) where its length limit (`max_len_b`)
forces it; ESPnet gets a -1e9 bias on its decoder's </s> logit and `maxlenratio=-N`, so its max-length rule
appends </s> after N tokens. The N excludes fama's forced language-tag step, and fama still scores </s> at the
end: per utterance it runs 2 decoder steps and 1 CTC step more than ESPnet.

The encoder is the same in both: fama's Conformer (ESPnet's own Conformer imports, but its conv2d subsampler
at 1024 channels is a different, much heavier front-end: that would compare architectures, not decoders).
fama's time is `model.encode` + `decode_encoded` on the batch (exactly what `fama_core.decoding.decode` does).
ESPnet's time is the same encoder time plus its beam search over every utterance. ESPnet's full-vocabulary
search costs minutes per utterance on 2 cores, so to keep a run near 10 minutes it is timed on a subset of the
batch (default: the utterance at the middle of the length-sorted batch, in the first run only; pre-beam mode:
2 utterances, every run) and the sum is scaled to the batch by encoder frames (ESPnet's per-step work runs
over every frame: it recomputes the cross-attention keys/values and loops the CTC recursion over all frames).
`--espnet-full-utts 0 --espnet-full-runs 3 --espnet-prebeam-utts 0` times everything (hours on 2 cores).

On a shared machine other processes' load inflates most the code that issues many small multi-threaded
operations (ESPnet's per-frame CTC loop); the run prints the load average, and the ratios on process CPU time
as a check; `--threads 1` gives a measurement without cross-thread waits.

Benchmark-only dependencies (never project requirements; torch is already installed and must not change):

    pip install --no-deps espnet==202511 typeguard==4.6.0

Run:  python benchmarks/decode_bench.py            (about 10 minutes on 2 CPU cores; longer under other load)
      python benchmarks/decode_bench.py --quick    (smoke run, under a minute)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

from fama_core.config import preset
from fama_core.decoding import DecodeOptions, decode_encoded
from fama_core.model import FamaModel

FRAME_S = 0.01  # 10 ms filterbank frames


# ------------------------------------------------------------------------------------------------ inputs


def make_batch(n: int, min_s: float, max_s: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 80-dim features for `n` utterances with durations uniform in [min_s, max_s] (sorted, longest first)."""
    g = torch.Generator().manual_seed(seed)
    durations = min_s + (max_s - min_s) * torch.rand(n, generator=g)
    lengths = (durations / FRAME_S).round().long().sort(descending=True).values
    feats = torch.randn(n, int(lengths.max()), 80, generator=g)
    feats = feats.masked_fill(torch.arange(feats.shape[1])[None, :, None] >= lengths[:, None, None], 0.0)
    return feats, lengths


# ------------------------------------------------------------------------------------------------ FLOPs


def conv_out(length: int, kernel: int, stride: int = 2) -> int:
    return (length + 2 * (kernel // 2) - kernel) // stride + 1


def encoder_matmul_flops(cfg, batch: int, frames: int) -> dict[str, float]:
    """Multiply-add FLOPs (2 per MAC) of the encoder's matrix products for `batch` rows of `frames` input frames.

    Counts the subsampler convolutions, every Linear / pointwise conv, the depthwise conv, the relative-position
    projection and the three T x T attention products (positional scores, QK^T, AV). The intermediate CTC
    projection is not counted: inference (model.encode) skips it. Elementwise work is not counted either.
    """
    d, H = cfg.d_model, cfg.encoder_heads
    t, sub = frames, 0.0
    c_in = cfg.input_dim
    for i, k in enumerate(cfg.subsampler_kernels):
        t = conv_out(t, k)
        c_out = cfg.subsampler_channels if i < len(cfg.subsampler_kernels) - 1 else 2 * d
        sub += 2.0 * batch * t * c_out * c_in * k
        c_in = c_out // 2  # GLU halves the channels
    T, B, f = t, batch, cfg.ffn_expansion
    ffn = 2 * (2.0 * B * T * d * f * d * 2)  # two macaron feed-forwards, two Linears each
    proj = 4 * 2.0 * B * T * d * d + 2.0 * T * d * d  # q, k, v, out; positional projection (once per batch)
    attn = 3 * 2.0 * B * H * T * T * (d // H)  # positional scores, QK^T, AV
    conv = 2.0 * B * T * d * 2 * d + 2.0 * B * T * d * cfg.conv_kernel + 2.0 * B * T * d * d
    per_layer = ffn + proj + attn + conv
    return {
        "subsampler": sub,
        "layers": per_layer * cfg.encoder_layers,
        "total": sub + per_layer * cfg.encoder_layers,
        "frames_out": float(T),
    }


def matmul_peak(dtype: torch.dtype, m: int = 1024, k: int = 1024, n: int = 4096, reps: int = 8) -> float:
    """Best FLOP/s of an [m, k] @ [k, n] product (the shape class of the encoder's feed-forwards), best of `reps`."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(k, n, generator=g).to(dtype)
    a @ b
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n / best


# ------------------------------------------------------------------------------------------------ fama


def build_fama(args) -> FamaModel:
    cfg = preset("small", encoder_layers=args.encoder_layers, decoder_layers=args.decoder_layers,
                 ctc_encoder_layer=min(args.ctc_layer, args.encoder_layers))
    torch.manual_seed(args.seed)
    return FamaModel(cfg).eval()


def fama_options(args) -> DecodeOptions:
    # Steps: 0 = forced language tag, 1..N = tokens (</s> banned by min_len), N+1 = </s> forced by max_len_b.
    n = args.tokens + 1
    return DecodeOptions(beam_size=args.beam, ctc_weight=args.ctc_weight, max_len_a=0.0, max_len_b=n, min_len=n,
                         no_repeat_ngram_size=0)


@torch.no_grad()
def run_fama(model: FamaModel, feats, lengths, args) -> dict:
    """fama's decode, timed in its two parts (`decode` is exactly `model.encode` then `decode_encoded`)."""
    w0, c0 = time.perf_counter(), time.process_time()
    enc = model.encode(feats, lengths)
    w1, c1 = time.perf_counter(), time.process_time()
    hyps = decode_encoded(model, enc, args.lang_id, fama_options(args), source_lengths=lengths)
    w2, c2 = time.perf_counter(), time.process_time()
    bad = [len(h[0].tokens) for h in hyps if len(h[0].tokens) != args.tokens]
    if bad:
        raise RuntimeError(f"fama produced {bad} tokens instead of {args.tokens}")
    return {"enc": w1 - w0, "enc_cpu": c1 - c0, "beam": w2 - w1, "beam_cpu": c2 - c1, "out": enc}


# ------------------------------------------------------------------------------------------------ ESPnet


def import_espnet():
    """ESPnet's modules, or None with the reason (its import prints a flash-attention notice: swallowed)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import espnet
            from espnet.nets.batch_beam_search import BatchBeamSearch
            from espnet.nets.scorers.ctc import CTCPrefixScorer
            from espnet2.asr.ctc import CTC
            from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
    except ImportError as e:
        return None, str(e)
    logging.getLogger("espnet").setLevel(logging.ERROR)  # "best hypo length == max output length" per utterance
    return (espnet.__version__, CTC, TransformerDecoder, BatchBeamSearch, CTCPrefixScorer), ""


def build_espnet(mods, cfg, args) -> dict:
    """ESPnet decoder + CTC scorer at fama's dimensions, and one BatchBeamSearch per mode."""
    _, CTC, TransformerDecoder, BatchBeamSearch, CTCPrefixScorer = mods
    torch.manual_seed(args.seed + 1)
    with contextlib.redirect_stdout(io.StringIO()):
        decoder = TransformerDecoder(cfg.vocab_size, cfg.d_model, attention_heads=cfg.decoder_heads,
                                     linear_units=cfg.decoder_ffn_dim, num_blocks=cfg.decoder_layers).eval()
    ctc = CTC(cfg.vocab_size, cfg.d_model).eval()
    with torch.no_grad():
        decoder.output_layer.bias[cfg.eos] = -1e9  # </s> never chosen before the max-length rule appends it
    searches = {}
    # ESPnet's weights convention (espnet2/bin/asr_inference.py): decoder 1 - w, CTC w.
    weights = {"decoder": 1.0 - args.ctc_weight, "ctc": args.ctc_weight}
    for mode, key in (("full", None), ("prebeam", "full")):
        # key None: no pre-beam, CTCPrefixScoreTH scores the whole vocabulary (exact joint decoding).
        # key "full": ESPnet's default, CTC scores only the top int(1.5 * beam) of the decoder's scores.
        bs = BatchBeamSearch(scorers={"decoder": decoder, "ctc": CTCPrefixScorer(ctc, cfg.eos)}, weights=weights,
                             beam_size=args.beam, vocab_size=cfg.vocab_size, sos=cfg.eos, eos=cfg.eos,
                             pre_beam_score_key=key).eval()
        searches[mode] = bs
    return searches


def espnet_mode_line(bs) -> str:
    if bs.do_pre_beam:
        return f"pre-beam: CTC scores the top {bs.pre_beam_size} decoder candidates per hypothesis (approximate)"
    return "no pre-beam: CTC prefix scores over all tokens of the vocabulary (exact)"


@torch.no_grad()
def espnet_search(bs, enc, index: int, tokens: int) -> tuple[float, float]:
    """(wall, CPU) seconds of ESPnet's beam search on utterance `index` of an encoder output."""
    x = enc.out[index, : int(enc.lengths[index])]
    w0, c0 = time.perf_counter(), time.process_time()
    hyps = bs(x, maxlenratio=-tokens, minlenratio=0.0)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    got = len(hyps[0].yseq) - 2  # <sos> ... <eos>
    if got != tokens:
        raise RuntimeError(f"ESPnet produced {got} tokens instead of {tokens}")
    return wall, cpu


def spread_subset(n_total: int, n_pick: int) -> list[int]:
    """`n_pick` indices spread evenly over a length-sorted batch (0 or >= n_total: all)."""
    if n_pick <= 0 or n_pick >= n_total:
        return list(range(n_total))
    return sorted({min(n_total - 1, int((j + 0.5) * n_total / n_pick)) for j in range(n_pick)})


# ------------------------------------------------------------------------------------------------ main


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 3 short utterances, 4 tokens, 1 timed run")
    p.add_argument("--utterances", type=int, default=16)
    p.add_argument("--min-seconds", type=float, default=5.0)
    p.add_argument("--max-seconds", type=float, default=20.0)
    p.add_argument("--tokens", type=int, default=20, help="output tokens per hypothesis, forced in both systems")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--ctc-weight", type=float, default=0.2)
    p.add_argument("--encoder-layers", type=int, default=2)
    p.add_argument("--decoder-layers", type=int, default=2)
    p.add_argument("--ctc-layer", type=int, default=1, help="encoder layer of the intermediate CTC head")
    p.add_argument("--runs", type=int, default=3, help="timed runs per system after the warm-up (median reported)")
    p.add_argument("--espnet-full-utts", type=int, default=1,
                   help="utterances ESPnet's full-vocabulary search is timed on per run (0 = all)")
    p.add_argument("--espnet-full-runs", type=int, default=1,
                   help="timed runs of ESPnet's full-vocabulary search (the slowest part; at most --runs)")
    p.add_argument("--espnet-prebeam-utts", type=int, default=2,
                   help="utterances ESPnet's pre-beam search is timed on per run (0 = all; -1 = skip the mode)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lang-id", type=int, default=4, help="language-tag token id fama forces first")
    args = p.parse_args(argv)
    if args.quick:
        args.utterances, args.min_seconds, args.max_seconds, args.tokens, args.runs = 3, 2.0, 4.0, 4, 1
        args.espnet_full_utts = args.espnet_prebeam_utts = 0
    args.espnet_full_runs = max(1, min(args.espnet_full_runs, args.runs))
    return args


def throughput(seconds: float, n_utts: int, audio_s: float) -> tuple[str, str]:
    """utterances/s and audio-seconds/s, with three significant digits."""
    return f"{n_utts / seconds:.3g}", f"{audio_s / seconds:.3g}"


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    mods, why = import_espnet()
    model = build_fama(args)
    cfg = model.cfg
    feats, lengths = make_batch(args.utterances, args.min_seconds, args.max_seconds, args.seed)
    B, audio_s = feats.shape[0], float(lengths.sum()) * FRAME_S
    print(f"decode_bench  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  {cpu_name()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({args.threads} threads), espnet {mods[0] if mods else 'not installed'}")
    print(f"model: FAMA-small width (d_model {cfg.d_model}, {cfg.encoder_heads} heads, FFN {cfg.decoder_ffn_dim}, "
          f"vocab {cfg.vocab_size}) with {cfg.encoder_layers} encoder / {cfg.decoder_layers} decoder layers "
          f"(FAMA-small: 12 / 6), intermediate CTC after encoder layer {cfg.ctc_encoder_layer}; random weights "
          f"(seed {args.seed}), fp32")
    print(f"batch: {B} utterances of {float(lengths.min()) * FRAME_S:.1f}-{float(lengths.max()) * FRAME_S:.1f} s "
          f"({audio_s:.1f} s of audio), random 80-dim features (seed {args.seed})")
    print(f"search: beam {args.beam}, CTC weight {args.ctc_weight}, exactly {args.tokens} output tokens per "
          f"hypothesis in both (</s> suppressed until then); {args.runs} timed run(s) after a warm-up, median")
    print(f"load average at start (1/5/15 min): {load()}")
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0

    # Roofline reference, measured now (and again at the end: the best of both counts).
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)

    searches = build_espnet(mods, cfg, args) if mods else {}
    subsets = {"full": spread_subset(B, args.espnet_full_utts)}
    if args.espnet_prebeam_utts >= 0:
        subsets["prebeam"] = spread_subset(B, args.espnet_prebeam_utts)
    searches = {m: bs for m, bs in searches.items() if m in subsets}

    # Warm-up: every code path once on two short utterances.
    warm_f, warm_l = make_batch(2, min(args.min_seconds, 3.0), min(args.max_seconds, 4.0), args.seed + 7)
    warm = run_fama(model, warm_f, warm_l, argparse.Namespace(**{**vars(args), "tokens": min(args.tokens, 4)}))
    for bs in searches.values():
        espnet_search(bs, warm["out"], 0, min(args.tokens, 4))

    # Timed runs, interleaved so that every system sees the same machine load. ESPnet decodes one utterance at a
    # time, so its batch time is the encoder's plus the sum of its per-utterance searches; when a subset is timed,
    # that sum is scaled by encoder frames (its per-step work runs over every frame: the cross-attention keys and
    # values are recomputed and the CTC recursion loops over all frames).
    fama_runs: list[dict] = []
    esp_runs: dict[str, list[dict]] = {m: [] for m in searches}
    enc_frames: list[int] = []
    for r in range(args.runs):
        f = run_fama(model, feats, lengths, args)
        fama_runs.append(f)
        enc_frames = f["out"].lengths.tolist()
        line = f"  run {r + 1}: fama {f['enc'] + f['beam']:.2f} s (encoder {f['enc']:.2f} + beam {f['beam']:.2f})"
        for mode, bs in searches.items():
            if mode == "full" and r >= args.espnet_full_runs:
                continue
            per = [espnet_search(bs, f["out"], i, args.tokens) for i in subsets[mode]]
            scale = sum(enc_frames) / sum(enc_frames[i] for i in subsets[mode])
            search_w, search_c = scale * sum(w for w, _ in per), scale * sum(c for _, c in per)
            esp_runs[mode].append({"total": f["enc"] + search_w, "cpu": f["enc_cpu"] + search_c,
                                   "per_utt": [w for w, _ in per]})
            line += f", ESPnet {mode} {f['enc'] + search_w:.2f} s"
        print(line + f"  (load {load()})", flush=True)

    med = statistics.median
    fama_total = med([f["enc"] + f["beam"] for f in fama_runs])
    fama_cpu = med([f["enc_cpu"] + f["beam_cpu"] for f in fama_runs])
    med_enc, med_beam = med([f["enc"] for f in fama_runs]), med([f["beam"] for f in fama_runs])
    print()
    print(f"{'system (time for the whole batch, median)':<62}{'s/batch':>9}{'utt/s':>9}{'audio-s/s':>11}")
    u, a = throughput(fama_total, B, audio_s)
    print(f"{'fama: batched beam search, exact full-vocabulary CTC':<62}{fama_total:>9.2f}{u:>9}{a:>11}")
    labels = {"full": "ESPnet BatchBeamSearch, full-vocabulary CTC (exact)",
              "prebeam": "ESPnet BatchBeamSearch, default pre-beam (approximate CTC)"}
    esp_total = {m: med([e["total"] for e in runs]) for m, runs in esp_runs.items()}
    esp_cpu = {m: med([e["cpu"] for e in runs]) for m, runs in esp_runs.items()}
    for m, t in esp_total.items():
        u, a = throughput(t, B, audio_s)
        print(f"{labels[m]:<62}{t:>9.2f}{u:>9}{a:>11}")
    for m, bs in searches.items():
        idx = subsets[m]
        per = [med([e["per_utt"][j] for e in esp_runs[m]]) for j in range(len(idx))]
        n_runs = len(esp_runs[m])
        basis = f"{n_runs} timed run{'s' if n_runs > 1 else ''}, " + ("all utterances timed" if len(idx) == B else
                 f"search timed on {len(idx)} of {B} utterances (" + ", ".join(
                     f"{enc_frames[i] * 0.04:.1f} s: {p:.1f} s" for i, p in zip(idx, per))
                 + "), scaled to the batch by encoder frames")
        print(f"  ESPnet {m}: {espnet_mode_line(bs)}; {basis}; ESPnet time = fama's encoder time for the batch "
              f"+ its searches")
    print(f"  ESPnet weights: decoder {1 - args.ctc_weight:g}, CTC {args.ctc_weight:g} (ESPnet's convention; fama: "
          f"attention 1, CTC {args.ctc_weight:g}: the same work)")

    peak32, peak16 = max(peak32, matmul_peak(torch.float32)), max(peak16, matmul_peak(torch.bfloat16))
    fl = encoder_matmul_flops(cfg, B, feats.shape[1])
    useful = sum(encoder_matmul_flops(cfg, 1, int(n))["total"] for n in lengths)
    achieved = fl["total"] / med_enc
    print()
    print(f"fama time split (median): encoder {med_enc:.2f} s, beam search (CTC head, CTC prefix scores, decoder "
          f"steps) {med_beam:.2f} s")
    print(f"encoder matmul FLOPs: {fl['total'] / 1e9:.1f} GFLOP as computed on the padded batch "
          f"({B} x {int(fl['frames_out'])} frames: subsampler {fl['subsampler'] / 1e9:.1f}, conformer layers "
          f"{fl['layers'] / 1e9:.1f}; the intermediate CTC head is not run at inference); "
          f"{useful / 1e9:.1f} GFLOP on the unpadded frames")
    print(f"encoder achieved {achieved / 1e9:.1f} GFLOP/s; machine matmul ({args.threads} threads, "
          f"[1024x1024]@[1024x4096], best of 16 in this run): fp32 {peak32 / 1e9:.1f} GFLOP/s, "
          f"bf16 {peak16 / 1e9:.1f} GFLOP/s; "
          f"roofline ratio {achieved / peak32:.2f} of fp32 peak ({achieved / peak16:.2f} of bf16 peak)")
    print(f"load average at end: {load()}; wall time {time.perf_counter() - started:.0f} s")
    if not searches:
        print(f"ESPnet not available ({why}); install: pip install --no-deps espnet==202511 typeguard==4.6.0")
        return 2
    busy = max(os.getloadavg()[0], load_start) > (os.cpu_count() or 1) if hasattr(os, "getloadavg") else False
    if busy:
        print(f"note: the load average exceeded the {os.cpu_count()} cores: other processes competed for the CPU; "
              f"ESPnet's per-frame loop of small multi-threaded operations suffers most (compare the CPU-time ratios, "
              f"or run with --threads 1)")
    cpu_line = ", ".join(f"{m} {esp_cpu[m] / fama_cpu:.1f}x" for m in esp_cpu)
    print(f"same ratios on process CPU time (less sensitive to other load on the machine): {cpu_line}")
    if "prebeam" in esp_total:
        print(f"fama/ESPnet-pre-beam (ESPnet's default, approximate CTC) decoding throughput: "
              f"{esp_total['prebeam'] / fama_total:.1f}x")
    print(f"fama/ESPnet decoding throughput: {esp_total['full'] / fama_total:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
