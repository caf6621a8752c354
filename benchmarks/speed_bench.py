"""Model-only speed of fama at FAMA-small (or -medium) size, per precision, on real speech (issue #12, item 4).

Random weights at the real size, fed the filterbanks of real speech from ../shared/data/media (cut into chunks
by fama's own VAD, batched as `fama transcribe` does), every chunk forced to 3.3 output tokens per second of
speech (the decoder's </s> logit is lowered so only the length limit ends a hypothesis), beam 5, CTC 0.2.
Prints the RTF (seconds of compute per second of audio) of float32, bfloat16, int8 and auto, the encoder's
achieved FLOP/s against the measured matmul peak, medians of --runs runs. Before each run it waits until
the load average is below --idle-load (--no-wait skips that: functional checks only) and it discards a run
during which the machine's load rose above that.

NOT DONE YET: the faster-whisper / CTranslate2 peer run (random-weight whisper-small built locally) and the
final `fama-small/faster-whisper-small CPU speed: N.Nx` line.

    python benchmarks/speed_bench.py                      # FAMA-small, >= 120 s of speech, 3 runs, waits for idle
    python benchmarks/speed_bench.py --no-wait --seconds 20 --runs 1 --precisions float32,int8   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from decode_bench import encoder_matmul_flops  # noqa: E402

from fama_core.audio import stream_audio  # noqa: E402
from fama_core.config import preset  # noqa: E402
from fama_core.decoding import DecodeOptions, decode_encoded  # noqa: E402
from fama_core.features import SAMPLE_RATE, compute_features  # noqa: E402
from fama_core.model import FamaModel  # noqa: E402
from fama_core.pipeline import TranscribeOptions, _batches  # noqa: E402
from fama_core.precision import FLOAT_DTYPES, apply_precision, precision_of, quantize_int8  # noqa: E402
from fama_core.vad import VadOptions, iter_speech_chunks  # noqa: E402

MEDIA = ROOT.parent / "shared" / "data" / "media"
TOKENS_PER_SECOND = 3.3
FRAMES_PER_SECOND = 100  # filterbank frames


def speech_chunks(seconds: float) -> list[np.ndarray]:
    """VAD chunks of the shared recordings, file after file, until `seconds` of speech."""
    chunks, total = [], 0.0
    for path in sorted(p for p in MEDIA.iterdir() if p.suffix in (".wav", ".flac", ".mp3")):
        for chunk in iter_speech_chunks(stream_audio(str(path), 30.0), VadOptions()):
            audio = np.asarray(chunk.audio, dtype=np.float32).reshape(-1)
            chunks.append(audio)
            total += len(audio) / SAMPLE_RATE
            if total >= seconds:
                return chunks
    if total < seconds:
        raise SystemExit(f"only {total:.0f} s of speech in {MEDIA}")
    return chunks


def build(size: str, seed: int) -> FamaModel:
    torch.manual_seed(seed)
    model = FamaModel(preset(size)).eval()
    eos = model.cfg.eos

    def no_eos(module, args, out):  # only the length limit ends a hypothesis
        out[..., eos] = -1e4
        return out

    model.decoder.output_projection.register_forward_hook(no_eos)
    return model


@torch.no_grad()
def run_once(model: FamaModel, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    opts = DecodeOptions(beam_size=5, ctc_weight=0.2, max_len_a=TOKENS_PER_SECOND / FRAMES_PER_SECOND,
                         max_len_b=1, min_len=1, no_repeat_ngram_size=0)
    enc_s = search_s = 0.0
    for feats, lengths in batches:
        t0 = time.perf_counter()
        enc = model.encode(feats.to(model.dtype), lengths)
        t1 = time.perf_counter()
        hyps = decode_encoded(model, enc, 4, opts, source_lengths=lengths)
        t2 = time.perf_counter()
        want = (opts.max_len_a * lengths.float()).long() + opts.max_len_b - 1
        got = [len(h[0].tokens) for h in hyps]
        if got != want.tolist():
            raise RuntimeError(f"forced token counts not met: {got} != {want.tolist()}")
        enc_s, search_s = enc_s + t1 - t0, search_s + t2 - t1
    return {"encoder": enc_s, "search": search_s, "total": enc_s + search_s}


def matmul_peak(name: str, m: int = 512, k: int = 1024, n: int = 4096, reps: int = 5) -> float:
    layer = torch.nn.Linear(k, n).eval()
    x = torch.randn(m, k)
    if name == "int8":
        layer = quantize_int8(torch.nn.Sequential(layer))
    else:
        layer, x = layer.to(FLOAT_DTYPES[name]), x.to(FLOAT_DTYPES[name])
    with torch.no_grad():
        layer(x)
        best = min(_timed(layer, x) for _ in range(reps))
    return 2.0 * m * k * n / best


def _timed(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def wait_for_idle(limit: float, no_wait: bool) -> None:
    while not no_wait and os.getloadavg()[0] > limit:
        time.sleep(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small", choices=["small", "medium"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=120.0, help="speech to decode (>= 120 for the figures)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", default="float32,bfloat16,int8,auto")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--idle-load", type=float, default=0.5, help="load average below which a run may start")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for an idle machine (functional check)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    chunks = speech_chunks(args.seconds)
    audio_s = sum(len(c) for c in chunks) / SAMPLE_RATE
    lengths = [len(c) for c in chunks]
    order = sorted(range(len(chunks)), key=lambda j: -lengths[j])
    o = TranscribeOptions(batch_size=args.batch_size)
    batches = []
    for b in _batches(order, lengths, o.batch_size, int(o.batch_seconds * SAMPLE_RATE)):
        feats = [compute_features([torch.from_numpy(chunks[j])])[0][0] for j in b]
        batches.append((torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(args.device),
                        torch.tensor([len(f) for f in feats], device=args.device)))
    base = build(args.size, args.seed)
    cfg = base.cfg
    print(f"FAMA-{args.size} size ({base.num_parameters():,} parameters, random weights), {len(chunks)} VAD chunks "
          f"= {audio_s:.1f} s of speech in {len(batches)} batches, {TOKENS_PER_SECOND} tokens/s forced, beam 5, "
          f"CTC 0.2, {args.threads} threads, device {args.device}, torch {torch.__version__}")
    flops = sum(encoder_matmul_flops(cfg, f.shape[0], f.shape[1])["total"] for f, _ in batches)
    results = {}
    for name in args.precisions.split(","):
        model = apply_precision(copy.deepcopy(base), name, args.device)
        resolved = precision_of(model)
        run_once(model, batches[-1:])  # warm-up on the shortest batch
        runs = []
        while len(runs) < args.runs:
            wait_for_idle(args.idle_load, args.no_wait)
            r = run_once(model, batches)
            if not args.no_wait and os.getloadavg()[0] > args.idle_load + 1.0:
                print(f"  {name}: run discarded (load {os.getloadavg()[0]:.1f})")
                continue
            runs.append(r)
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        results[name] = med
        peak = matmul_peak(resolved) if args.device == "cpu" else float("nan")
        print(f"{name:>9} ({resolved}): encoder {med['encoder']:.2f} s + search {med['search']:.2f} s = "
              f"{med['total']:.2f} s, RTF {med['total'] / audio_s:.3f}; encoder {flops / med['encoder'] / 1e9:.1f} "
              f"GFLOP/s vs matmul peak {peak / 1e9:.1f} GFLOP/s")
        del model
    best = min(results, key=lambda k: results[k]["total"])
    print(f"fastest: {best}, RTF {results[best]['total'] / audio_s:.3f}")


if __name__ == "__main__":
    main()
