"""Model loading benchmark: peak resident memory and time of `load_model` against the weights' size.

    python benchmarks/load_bench.py [--preset small|medium] [--dtype float32|bfloat16|float16] [--folder DIR]
                                    [--repeats 3]

Builds a FAMA-size model folder with random weights (the preset's dimensions and FAMA's 16,001-entry
vocabulary; the SentencePiece model is the demo's, padded with dummy pieces to 16,000) unless `--folder`
names one, then loads it in fresh processes and prints, per run, the weights' float32 size, the peak RSS of
the process (ru_maxrss: interpreter, torch and the model), the peak minus the RSS before loading, their ratios
to the weights' size, and the load time. Target (issue 12): peak <= 1.3x the float32 weights.
The folder is written under a temporary folder and removed at the end unless `--folder` or `--keep` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 16001  # FAMA's: 16,000 SentencePiece ids + <ctc_blank>

CHILD = r"""
import json, resource, sys, time
import torch
from fama_core.checkpoints import load_model
torch.set_num_threads(2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
model, tok = load_model(sys.argv[1], device="cpu", dtype=sys.argv[2])
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
from fama_core.precision import PackedLinear
params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
params += sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, PackedLinear))
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
kb = {k: int(status[k].split()[0]) * 1024 for k in ("VmHWM", "RssAnon", "RssFile")}
print(json.dumps({"before": before, "peak": peak, "seconds": seconds, "numel": params, **kb}))
"""


def padded_spm(src: Path, dst: Path, size: int) -> None:
    """The demo's SentencePiece model with dummy pieces appended up to `size` ids."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(src.read_bytes())
    n = 0
    while len(m.pieces) < size:
        p = m.pieces.add()
        p.piece, p.score, n = f"\u2581dummy{n}", -100.0 - n, n + 1
    dst.write_bytes(m.SerializeToString())


def build_folder(preset: str, folder: Path) -> None:
    import torch

    from fama_core.checkpoints import BUNDLED, save_model
    from fama_core.config import preset as get_preset
    from fama_core.model import FamaModel
    from fama_core.tokenizer import Tokenizer

    spm = folder.parent / "spm16000.model"
    padded_spm(BUNDLED["fama-demo"] / "tokenizer.model", spm, VOCAB - 1)
    torch.manual_seed(0)
    model = FamaModel(get_preset(preset, vocab_size=VOCAB, src_vocab_size=VOCAB))
    save_model(model, Tokenizer(spm), folder)


def measure(folder: Path, dtype: str) -> dict:
    """One load in a fresh process, spawned by this small one (a child starts with its parent's ru_maxrss)."""
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}
    r = subprocess.run([sys.executable, "-c", CHILD, str(folder), dtype], capture_output=True, text=True, env=env,
                       check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small", choices=["small", "medium"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--folder", type=Path, help="an existing model folder to load instead of building one")
    ap.add_argument("--keep", action="store_true", help="keep the generated folder (its path is printed)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_only:
        build_folder(args.preset, args.build_only)
        return

    tmp = Path(tempfile.mkdtemp(prefix="fama-load-bench-")) if args.folder is None else None
    folder = args.folder or tmp / "model"
    try:
        if args.folder is None:  # in a child: ru_maxrss survives fork and exec, so this process must stay small
            subprocess.run([sys.executable, __file__, "--preset", args.preset, "--build-only", str(folder)], check=True)
            print(f"built {folder} (preset {args.preset}, random weights, vocabulary {VOCAB})")
        gb = 1e9
        for i in range(args.repeats):
            m = measure(folder, args.dtype)
            weights = m["numel"] * 4  # float32 bytes
            print(f"run {i + 1}: weights {weights / gb:.2f} GB float32 ({m['numel']:,} values), load as {args.dtype}: "
                  f"peak RSS {m['peak'] / gb:.2f} GB ({m['peak'] / weights:.2f}x), peak - RSS before loading "
                  f"{(m['peak'] - m['before']) / gb:.2f} GB ({(m['peak'] - m['before']) / weights:.2f}x), "
                  f"load time {m['seconds']:.2f} s; after loading: anonymous {m['RssAnon'] / gb:.2f} GB, file-backed "
                  f"{m['RssFile'] / gb:.2f} GB, VmHWM {m['VmHWM'] / gb:.2f} GB")
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp)
        elif tmp is not None:
            print(f"kept {folder}")


if __name__ == "__main__":
    main()
