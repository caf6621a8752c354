"""`fama serve` throughput: 1 client (sequential requests) against 16 concurrent clients.

    python benchmarks/serve_bench.py [--requests 32] [--clients 16] [--threads 2] [--wait-idle]
    python benchmarks/serve_bench.py --quick        # functional run: a few requests, a 2-layer small-width model

Two servers, each in its own process, on 127.0.0.1, with the fixture clips of tests/fixtures/tiny_trained
(2.8-6.2 s each, cycled) sent as multipart uploads (response_format=srt, language=en):
1. the trained fixture model through `python -m fama_cli serve` (beam 5, CTC weight 0.2, natural output length);
2. a random-weight model of FAMA-small's shape (12 Conformer + 6 decoder layers, d_model 1024; the fixture
   tokenizer's 256-token vocabulary) with every output forced to `--tokens` tokens (`min_len` = `max_len_b`: a
   random model's beam search would otherwise stop at arbitrary lengths), beam 5, CTC weight 0.2, prepared as
   `fama serve` prepares a loaded model (`dtype auto`, packed weights on a CPU).
Each phase sends `--requests` requests: first one at a time from one client, then from `--clients` threads at
once. Printed: requests/s, audio seconds per second, p50/p95 latency, the server's batch counters, the
model-only batching gain of the random model (`decode_chunks` on 16 clips one by one vs in one batch: the
ceiling of what batching requests can give), and the last lines `serve throughput, N clients vs 1: R.Rx
(<model>)` (target >= 3x at 16 clients on the 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "tiny_trained"
CLIPS = sorted((MODEL / "clips").glob("*.wav"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_server(port: int, threads: int, tokens: int, layers: str) -> None:
    """Run in a subprocess: the random FAMA-small-shaped model behind the server, until killed."""
    import torch
    import uvicorn

    from fama_core.config import preset
    from fama_core.decoding import DecodeOptions
    from fama_core.model import FamaModel
    from fama_core.pipeline import TranscribeOptions
    from fama_core.precision import apply_precision
    from fama_core.server import BatchPool, ServeOptions, compute_thread, create_app
    from fama_core.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_folder(MODEL)
    enc, dec = (int(n) for n in layers.split(","))
    cfg = preset("small", vocab_size=tokenizer.vocab_size, src_vocab_size=tokenizer.vocab_size,
                 encoder_layers=enc, decoder_layers=dec, ctc_encoder_layer=min(8, enc))

    def load() -> FamaModel:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        return apply_precision(FamaModel(cfg), "auto", "cpu")

    compute = compute_thread()  # as `fama serve` loads a model: on the thread that decodes
    model = compute.submit(load).result()
    decode = DecodeOptions(beam_size=5, ctc_weight=0.2, min_len=tokens, max_len_b=tokens)
    pool = BatchPool(model, tokenizer, f"random-small-{enc}x{dec}", ServeOptions(TranscribeOptions(decode=decode)),
                     compute)
    uvicorn.run(create_app(pool), host="127.0.0.1", port=port, log_level="warning")


def model_ceiling(threads: int, tokens: int, layers: str, n: int) -> float:
    """Model only, no server: `decode_chunks` on n clips one at a time vs all n in one batch. The server's gain
    from batching cannot exceed this ratio (only ffmpeg/VAD/HTTP overlap comes on top)."""
    import torch

    from fama_core.audio import load_audio
    from fama_core.config import preset
    from fama_core.decoding import DecodeOptions
    from fama_core.model import FamaModel
    from fama_core.pipeline import decode_chunks
    from fama_core.precision import apply_precision
    from fama_core.tokenizer import Tokenizer

    torch.set_num_threads(threads)
    tokenizer = Tokenizer.from_folder(MODEL)
    enc, dec = (int(k) for k in layers.split(","))
    torch.manual_seed(0)
    model = apply_precision(FamaModel(preset("small", vocab_size=tokenizer.vocab_size,
                                             src_vocab_size=tokenizer.vocab_size, encoder_layers=enc,
                                             decoder_layers=dec, ctc_encoder_layer=min(8, enc))), "auto", "cpu")
    decode = DecodeOptions(beam_size=5, ctc_weight=0.2, min_len=tokens, max_len_b=tokens)
    audios = [torch.as_tensor(load_audio(CLIPS[i % len(CLIPS)])) for i in range(n)]
    en = [tokenizer.lang_tag_id("en")]
    decode_chunks(model, audios[:2], en * 2, decode)  # warm-up
    t0 = time.perf_counter()
    for a in audios:
        decode_chunks(model, [a], en, decode)
    single = time.perf_counter() - t0
    t0 = time.perf_counter()
    decode_chunks(model, audios, en * n, decode)
    batched = time.perf_counter() - t0
    print(f"  model only (decode_chunks, no server): {n} clips one at a time {single:.1f} s, in one batch "
          f"{batched:.1f} s: {single / batched:.1f}x")
    return single / batched


def start(cmd: list[str], port: int) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("server did not start in 300 s")
        time.sleep(0.2)


def seconds_of(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def phase(url: str, requests: int, clients: int) -> dict:
    """`requests` uploads from `clients` threads; wall time and each request's latency."""
    import httpx

    bodies = [(p.name, p.read_bytes(), seconds_of(p)) for p in CLIPS]
    latencies: list[float] = []
    lock = threading.Lock()
    http = httpx.Client(timeout=3600, limits=httpx.Limits(max_connections=clients + 4))

    def one(i: int) -> None:
        name, data, _ = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        r = http.post(f"{url}/v1/audio/transcriptions", files={"file": (name, data)},
                      data={"model": "x", "language": "en", "response_format": "srt"})
        took = time.perf_counter() - t0
        if r.status_code != 200:
            raise SystemExit(f"request failed: {r.status_code} {r.text}")
        with lock:
            latencies.append(took)

    before = http.get(f"{url}/health").json()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(one, range(requests)))
    wall = time.perf_counter() - t0
    after = http.get(f"{url}/health").json()
    audio = sum(bodies[i % len(bodies)][2] for i in range(requests))
    q = statistics.quantiles(latencies, n=20, method="inclusive") if len(latencies) > 1 else latencies * 19
    batches = after["batches"] - before["batches"]
    return {"wall": wall, "rps": requests / wall, "audio_rate": audio / wall, "p50": statistics.median(latencies),
            "p95": q[18], "batches": batches, "rows": after["rows"] - before["rows"], "max_rows": after["max_rows"]}


def bench(name: str, cmd: list[str], port: int, requests: int, clients: int) -> float:
    proc = start(cmd, port)
    try:
        url = f"http://127.0.0.1:{port}"
        phase(url, min(4, requests), min(4, clients))  # warm-up: first-call costs, VAD weights
        results = {1: phase(url, requests, 1), clients: phase(url, requests, clients)}
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"\n{name}: {requests} requests, clips {min(map(seconds_of, CLIPS)):.1f}-{max(map(seconds_of, CLIPS)):.1f} s")
    print(f"  {'clients':>7} {'wall s':>8} {'req/s':>7} {'audio s/s':>9} {'p50 s':>7} {'p95 s':>7} "
          f"{'batches':>7} {'rows/batch':>10}")
    for n, r in results.items():
        print(f"  {n:>7} {r['wall']:8.2f} {r['rps']:7.2f} {r['audio_rate']:9.1f} {r['p50']:7.2f} {r['p95']:7.2f} "
              f"{r['batches']:>7} {r['rows'] / max(1, r['batches']):10.1f}")
    ratio = results[clients]["rps"] / results[1]["rps"]
    return ratio


def wait_idle(limit: float, most_s: float = 900) -> None:
    t0 = time.monotonic()
    while os.getloadavg()[0] > limit and time.monotonic() - t0 < most_s:
        time.sleep(10)
    print(f"load average {os.getloadavg()[0]:.2f} after {time.monotonic() - t0:.0f} s of waiting")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    ap.add_argument("--tokens", type=int, default=20, help="forced output tokens of the random model")
    ap.add_argument("--layers", default="12,6", help="encoder,decoder layers of the random model")
    ap.add_argument("--skip", nargs="*", default=[], choices=["fixture", "small"])
    ap.add_argument("--quick", action="store_true", help="functional run: 8 requests, 4 clients, 2x1 layers, 4 tokens")
    ap.add_argument("--wait-idle", type=float, metavar="LOAD", help="first wait (15 min at most) for a 1-minute "
                    "load average below LOAD")
    ap.add_argument("--child-server", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_server:
        return child_server(a.child_server, a.threads, a.tokens, a.layers)
    if a.quick:
        a.requests, a.clients, a.tokens, a.layers = 8, 4, 4, "2,1"
    if a.wait_idle is not None:
        wait_idle(a.wait_idle)
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, server threads {a.threads}, "
          f"load average {os.getloadavg()[0]:.2f}")
    ratios = {}
    if "fixture" not in a.skip:
        port = free_port()
        cmd = [sys.executable, "-m", "fama_cli", "serve", "--model", str(MODEL), "--device", "cpu", "--port",
               str(port), "--threads", str(a.threads)]
        ratios["fixture model tiny_trained"] = bench("fixture model (tiny_trained, beam 5)", cmd, port, a.requests,
                                                     a.clients)
    if "small" not in a.skip:
        port = free_port()
        cmd = [sys.executable, __file__, "--child-server", str(port), "--threads", str(a.threads), "--tokens",
               str(a.tokens), "--layers", a.layers]
        name = f"random FAMA-small-shaped model ({a.layers} layers, {a.tokens} tokens forced, beam 5)"
        ratios[f"small-shaped random model {a.layers}"] = bench(name, cmd, port, a.requests, a.clients)
        ratios[f"model-only ceiling {a.layers}"] = model_ceiling(a.threads, a.tokens, a.layers, a.clients)
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    for name, ratio in ratios.items():
        what = "batch gain" if name.startswith("model-only") else "serve throughput"
        print(f"{what}, {a.clients} clients vs 1: {ratio:.1f}x ({name})")
    print(json.dumps({"ratios": ratios}))


if __name__ == "__main__":
    main()
