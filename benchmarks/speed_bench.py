"""Model-only speed of fama at FAMA-small (or -medium) size, per precision, on real speech (issue #12, item 4).

Random weights at the real size, fed the filterbanks of real speech from ../shared/data/media (cut into chunks
by fama's own VAD, batched as `fama transcribe` does), every chunk forced to 3.3 output tokens per second of
speech (the decoder's </s> logit is lowered so only the length limit ends a hypothesis), beam 5, CTC 0.2.
Prints the RTF (seconds of compute per second of audio) of float32, bfloat16, int8 and auto (when auto picks one
of the precisions measured, that model's runs are its runs), the encoder's achieved FLOP/s against the
measured matmul peak, medians of --runs runs. The runs start once the load average is below --idle-load
(--no-wait skips that: functional checks only); the runs of every system are interleaved, and a run during
which other processes kept more than --max-others cores busy (from /proc/stat less this process's CPU time)
is discarded and repeated.

The peer in the same run (in a process of its own, its runs interleaved with fama's): faster-whisper /
CTranslate2 at its CPU default (int8), beam 5, on the same audio cut into 30 s windows, a random-weight
whisper-small (-medium with --size medium) built locally with transformers and converted by CTranslate2's own
Whisper loader (no download), forced to the same tokens per second. Last
line: `fama-small/faster-whisper-small CPU speed: N.Nx` (the peer's RTF over fama's auto RTF).

Benchmark-only dependencies (never project requirements):
    pip install faster-whisper==1.2.1 ctranslate2==4.8.5 transformers && pip install --no-deps openai-whisper

    python benchmarks/speed_bench.py                      # FAMA-small, >= 120 s of speech, 3 runs, waits for idle
    python benchmarks/speed_bench.py --no-wait --seconds 20 --runs 1 --precisions float32,int8   # smoke run
    python benchmarks/speed_bench.py --isa avx2           # both systems capped at AVX2 (a proxy for an AVX2-only CPU)

--isa avx2|avx512|native restarts the script in a process of its own with every variable of ISA_LIMITS set (torch's
ATen dispatch, oneDNN, MKL and fbgemm, and CTranslate2 for the peer, which inherits them) and a fresh precision
cache, so that `auto` is probed under the restriction; the header names the restriction. fbgemm must be capped
too: without FBGEMM_ENABLE_INSTRUCTIONS it keeps using AVX-512 VNNI for int8 under an AVX2 cap.
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
from fama_core.model import FamaModel, length_groups  # noqa: E402
from fama_core.pipeline import MAX_PADDING, TranscribeOptions  # noqa: E402
from fama_core.precision import (  # noqa: E402
    FLOAT_DTYPES,
    PackedLinear,
    apply_precision,
    can_pack,
    precision_of,
    quantize_int8,
)
from fama_core.vad import VadOptions, iter_speech_chunks  # noqa: E402

MEDIA = ROOT.parent / "shared" / "data" / "media"
TOKENS_PER_SECOND = 3.3
# Instruction-set caps: an AVX2-only CPU (Zen 2/3, Intel before AVX-512), AVX-512 without VNNI and bf16
# (Skylake-SP), or nothing capped.
ISA_LIMITS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "CT2_FORCE_CPU_ISA": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
               "MKL_ENABLE_INSTRUCTIONS": "AVX512", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX512",
               "CT2_FORCE_CPU_ISA": "AVX512"},
    "native": {},
}
FRAMES_PER_SECOND = 100  # filterbank frames


def restrict_isa(isa: str | None) -> str:
    """Restart this script under the ISA caps of `isa` (once: the restarted process finds them set); returns the
    header's description of the caps in force."""
    if isa is not None and os.environ.get("FAMA_BENCH_ISA") != isa:
        import tempfile

        env = {k: v for k, v in os.environ.items() if k not in ISA_LIMITS["avx2"]}
        env.update(ISA_LIMITS[isa], FAMA_BENCH_ISA=isa, FAMA_CACHE_DIR=tempfile.mkdtemp(prefix="fama-isa-cache-"))
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    caps = " ".join(f"{k}={os.environ[k]}" for k in ISA_LIMITS["avx2"] if os.environ.get(k))
    return f"ISA {isa or 'as set'}: {caps or 'no caps'} (torch dispatch {torch.backends.cpu.get_cpu_capability()})"


def speech_chunks(seconds: float) -> list[np.ndarray]:
    """VAD chunks of the shared recordings, file after file (again from the first when they run out: the
    folder holds ~108 s of speech), until `seconds` of speech."""
    chunks, total = [], 0.0
    paths = sorted(p for p in MEDIA.iterdir() if p.suffix in (".wav", ".flac", ".mp3"))
    every = [np.asarray(c.audio, dtype=np.float32).reshape(-1)
             for path in paths for c in iter_speech_chunks(stream_audio(str(path), 30.0), VadOptions())]
    if not every:
        raise SystemExit(f"no speech in {MEDIA}")
    while total < seconds:
        audio = every[len(chunks) % len(every)]
        chunks.append(audio)
        total += len(audio) / SAMPLE_RATE
    return chunks


def build(size: str, seed: int, layers: int | None = None) -> FamaModel:
    torch.manual_seed(seed)
    depth = {} if layers is None else {"encoder_layers": layers, "decoder_layers": layers, "ctc_encoder_layer": 1}
    return suppress_eos(FamaModel(preset(size, **depth)).eval())


def suppress_eos(model: FamaModel) -> FamaModel:
    """Random weights: only the length limit (`forced_options`) may end a hypothesis."""
    eos = model.cfg.eos

    def no_eos(module, args, out):
        out[..., eos] = -1e4
        return out

    model.decoder.output_projection.register_forward_hook(no_eos)
    return model


def forced_options() -> DecodeOptions:
    """Beam 5, CTC 0.2, TOKENS_PER_SECOND tokens per second of speech (with `suppress_eos`)."""
    return DecodeOptions(beam_size=5, ctc_weight=0.2, max_len_a=TOKENS_PER_SECOND / FRAMES_PER_SECOND,
                         max_len_b=1, min_len=1, no_repeat_ngram_size=0)


@torch.no_grad()
def run_once(model: FamaModel, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    opts = forced_options()
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


def matmul_peak(name: str, d_model: int, ffn: int, rows: int, reps: int = 10) -> float:
    """Best FLOP/s of the encoder's own feed-forward products ([rows, d] @ [d, ffn*d] and back), run as the model
    runs them (packed where the CPU packs, int8 as quantize_int8 makes it), warmed, best of `reps`: a peak the
    encoder can be compared with (a small unwarmed product read below the encoder's own rate)."""
    best_rate = 0.0
    for k, n in ((d_model, ffn * d_model), (ffn * d_model, d_model)):
        layer = torch.nn.Linear(k, n).eval()
        x = torch.randn(rows, k)
        if name == "int8":
            layer = quantize_int8(torch.nn.Sequential(layer))
        else:
            layer, x = layer.to(FLOAT_DTYPES[name]), x.to(FLOAT_DTYPES[name])
            if can_pack(FLOAT_DTYPES[name]):
                layer = PackedLinear(layer)
        with torch.no_grad():
            for _ in range(3):
                layer(x)
            best = min(_timed(layer, x) for _ in range(reps))
        best_rate = max(best_rate, 2.0 * rows * k * n / best)
    return best_rate


def _timed(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ the peer

WHISPER_SIZES = {  # d_model, layers (encoder = decoder), heads, FFN
    "small": (768, 12, 12, 3072),
    "medium": (1024, 24, 16, 4096),
}
WHISPER_VOCAB = 51865
EOT, SOT, EN, TRANSCRIBE, NOTIMESTAMPS = 50257, 50258, 50259, 50359, 50363


class _Vocabulary:
    """The token list CTranslate2's converter reads: multilingual.tiktoken's 50,257 byte pieces (as their base64
    text: the strings are never decoded here) and Whisper's special tokens at their ids."""

    def __init__(self):
        import importlib.util

        spec = importlib.util.find_spec("whisper")
        if spec is None or spec.origin is None:
            raise RuntimeError("pip install --no-deps openai-whisper (for its multilingual.tiktoken file)")
        lines = (Path(spec.origin).parent / "assets" / "multilingual.tiktoken").read_text().split()
        vocab = {tok: int(rank) for tok, rank in zip(lines[::2], lines[1::2])}
        specials = ["<|endoftext|>", "<|startoftranscript|>"] + ["<|en|>"] + [f"<|lang{i}|>" for i in range(98)]
        specials += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
                     "<|notimestamps|>"]
        vocab.update({tok: EOT + i for i, tok in enumerate(specials)})
        self.vocab = vocab
        self.additional_special_tokens = specials[2:]

    def get_vocab(self) -> dict[str, int]:
        return self.vocab

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.vocab[token]


def build_whisper(size: str, folder: Path, seed: int) -> None:
    """A random-weight Whisper of the given size, converted to CTranslate2 int8 in `folder` (no download)."""
    import transformers
    from ctranslate2.converters.transformers import WhisperLoader

    d, layers, heads, ffn = WHISPER_SIZES[size]
    cfg = transformers.WhisperConfig(vocab_size=WHISPER_VOCAB, num_mel_bins=80, d_model=d, encoder_layers=layers,
                                     decoder_layers=layers, encoder_attention_heads=heads,
                                     decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn)
    torch.manual_seed(seed)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    spec = WhisperLoader()(model, _Vocabulary())
    spec.validate()
    spec.optimize(quantization="int8")
    spec.save(str(folder))


def peer_run(ct2_model, windows: list[tuple[np.ndarray, int]]) -> dict:
    """faster-whisper's model call on 30 s windows, each forced to its number of new tokens."""
    import ctranslate2

    enc_s = gen_s = 0.0
    prompt = [SOT, EN, TRANSCRIBE, NOTIMESTAMPS]
    for mels, new_tokens in windows:
        t0 = time.perf_counter()
        feats = ctranslate2.StorageView.from_array(mels)
        enc = ct2_model.encode(feats, to_cpu=False)
        t1 = time.perf_counter()
        # CTranslate2's Whisper generates min(max_length / 2, max_length - prompt) new tokens at most.
        out = ct2_model.generate(enc, [prompt] * len(mels), beam_size=5, max_length=2 * new_tokens,
                                 suppress_tokens=[-1, EOT], suppress_blank=False)
        t2 = time.perf_counter()
        got = [len(r.sequences_ids[0]) for r in out]
        if any(g != new_tokens for g in got):
            raise RuntimeError(f"faster-whisper produced {got} tokens instead of {new_tokens}")
        enc_s, gen_s = enc_s + t1 - t0, gen_s + t2 - t1
    return {"encoder": enc_s, "search": gen_s, "total": enc_s + gen_s}


def whisper_windows(chunks: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
    """The speech cut into 30 s windows (log-mel by faster-whisper's own extractor), full windows in one batch
    and the last partial one alone, each with 3.3 tokens per second of its audio."""
    from faster_whisper.feature_extractor import FeatureExtractor

    audio = np.concatenate(chunks)
    n = 30 * SAMPLE_RATE
    extractor = FeatureExtractor(feature_size=80)
    pieces = [audio[i:i + n] for i in range(0, len(audio), n)]
    mels = [extractor(np.pad(p, (0, n - len(p))), padding=0)[:, :3000].astype(np.float32) for p in pieces]
    full = [m for m, p in zip(mels, pieces) if len(p) == n]
    windows = [(np.stack(full), round(TOKENS_PER_SECOND * 30))] if full else []
    if len(pieces[-1]) < n:
        windows.append((mels[-1][None], max(1, round(TOKENS_PER_SECOND * len(pieces[-1]) / SAMPLE_RATE))))
    return windows


def wait_for_idle(limit: float, no_wait: bool) -> None:
    while not no_wait and os.getloadavg()[0] > limit:
        time.sleep(5)


def _busy_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def others_share(fn, *args) -> tuple[dict, float]:
    """fn(*args) and the cores other processes kept busy meanwhile, on average. The load average cannot tell:
    this process's own threads raise it to ~2 on an otherwise idle 2-core machine."""
    t = os.times()
    busy, own, wall = _busy_seconds(), t.user + t.system, time.perf_counter()
    result = fn(*args)
    t = os.times()
    wall = time.perf_counter() - wall
    others = (_busy_seconds() - busy) - (t.user + t.system - own) - result.get("cpu", 0.0)
    return result, max(0.0, others) / wall


def measure(label: str, fn, args, runs: list[dict], max_others: float, no_wait: bool) -> None:
    """One run of fn(*args) appended to `runs`, unless other processes were busy (then it is discarded)."""
    while True:
        r, others = others_share(fn, *args)
        if no_wait or others <= max_others:
            runs.append(r)
            return
        print(f"  {label}: run discarded (other processes kept {others:.2f} cores busy)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small", choices=["small", "medium"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=120.0, help="speech to decode (>= 120 for the figures)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", default="float32,bfloat16,int8,auto")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batch-seconds", type=float, default=480.0, help="padded audio per batch")
    ap.add_argument("--layers", type=int, default=None, help="encoder and decoder depth (dry runs only)")
    ap.add_argument("--idle-load", type=float, default=0.5, help="load average below which the runs may start")
    ap.add_argument("--max-others", type=float, default=0.15,
                    help="discard a run during which other processes kept more cores than this busy")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for an idle machine (functional check)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-peer", action="store_true", help="skip faster-whisper (always skipped off the CPU)")
    ap.add_argument("--isa", choices=sorted(ISA_LIMITS), default=None,
                    help="cap both systems' instruction set (restarts in a process of its own, fresh precision cache)")
    args = ap.parse_args()
    isa = restrict_isa(args.isa)
    torch.set_num_threads(args.threads)
    chunks = speech_chunks(args.seconds)
    audio_s = sum(len(c) for c in chunks) / SAMPLE_RATE
    lengths = [len(c) for c in chunks]
    order = sorted(range(len(chunks)), key=lambda j: -lengths[j])
    o = TranscribeOptions(batch_size=args.batch_size, batch_seconds=args.batch_seconds)
    batches = []
    for b in length_groups(order, lengths, o.batch_size, int(o.batch_seconds * SAMPLE_RATE), MAX_PADDING):
        feats = [compute_features([torch.from_numpy(chunks[j])])[0][0] for j in b]
        batches.append((torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(args.device),
                        torch.tensor([len(f) for f in feats], device=args.device)))
    base = build(args.size, args.seed, args.layers)
    cfg = base.cfg
    print(f"FAMA-{args.size} size ({base.num_parameters():,} parameters, random weights), {len(chunks)} VAD chunks "
          f"= {audio_s:.1f} s of speech in {len(batches)} batches, {TOKENS_PER_SECOND} tokens/s forced, beam 5, "
          f"CTC 0.2, {args.threads} threads, device {args.device}, torch {torch.__version__}; {isa}")
    flops = sum(encoder_matmul_flops(cfg, f.shape[0], f.shape[1])["total"] for f, _ in batches)
    peak_rows = max(int(f.shape[0] * encoder_matmul_flops(cfg, 1, f.shape[1])["frames_out"]) for f, _ in batches)
    names = args.precisions.split(",")
    models = {name: apply_precision(copy.deepcopy(base), name, args.device) for name in names}
    del base
    auto = precision_of(models["auto"]) if "auto" in models else None
    if auto in models:  # `auto` is that model: timing a second copy of it would only measure noise
        del models["auto"]
        names.remove("auto")
    print(f"auto chose {auto} on this machine ({torch.get_num_threads()} threads)" if auto else "auto not asked for")
    for model in models.values():
        run_once(model, batches[-1:])  # warm-up on the shortest batch
    peer = None
    if args.device == "cpu" and not args.no_peer:
        try:
            peer = PeerProcess(args, chunks)
        except Exception as e:  # a missing benchmark-only package: said on the last line
            peer_error = f"n/a ({type(e).__name__}: {e})"
    wait_for_idle(args.idle_load, args.no_wait)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; a run is discarded when other processes keep more "
          f"than {args.max_others} cores busy during it", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in [*names, "faster-whisper"]}
    for _ in range(args.runs):  # interleaved: every system sees the same conditions
        for name, model in models.items():
            measure(name, run_once, (model, batches), runs[name], args.max_others, args.no_wait)
        if peer is not None:
            measure("faster-whisper", peer.run, (), runs["faster-whisper"], args.max_others, args.no_wait)
    if peer is not None:
        peer.close()
    results = {}
    for name, model in models.items():
        med = _medians(runs[name])
        results[name] = med
        resolved = precision_of(model)
        encoder_precision = "float32" if resolved == "int8" else resolved  # int8 quantises the decoder only
        peak = matmul_peak(encoder_precision, cfg.d_model, cfg.ffn_expansion, peak_rows) \
            if args.device == "cpu" else float("nan")
        print(f"{name:>9} ({resolved}): encoder {med['encoder']:.2f} s + search {med['search']:.2f} s = "
              f"{med['total']:.2f} s, RTF {med['total'] / audio_s:.3f} (runs: "
              f"{_totals(runs[name])} s); encoder "
              f"{flops / med['encoder'] / 1e9:.1f} GFLOP/s vs {encoder_precision} matmul peak {peak / 1e9:.1f} GFLOP/s")
    best = min(results, key=lambda k: results[k]["total"])
    print(f"fastest: {best}, RTF {results[best]['total'] / audio_s:.3f}")
    chosen = "auto" if "auto" in results else auto if auto in results else None
    if chosen is not None and len(results) > 1:  # (with `--precisions auto` alone there is nothing to compare)
        fixed = min((k for k in results if k != "auto"), key=lambda k: results[k]["total"])
        print(f"auto ({auto}) / best fixed precision ({fixed}) time: "
              f"{results[chosen]['total'] / results[fixed]['total']:.3f}")
    fama_rtf = results[chosen or best]["total"] / audio_s
    if args.device != "cpu" or args.no_peer:
        print(f"fama-{args.size} RTFx ({best}, {args.device}): {1 / (results[best]['total'] / audio_s):.0f}")
        return
    if peer is None:
        print(f"fama-{args.size}/faster-whisper-{args.size} CPU speed: {peer_error}")
        return
    import ctranslate2
    import faster_whisper

    med = _medians(runs["faster-whisper"])
    peer_rtf = med["total"] / audio_s
    print(f"faster-whisper {faster_whisper.__version__} / CTranslate2 {ctranslate2.__version__}, random "
          f"whisper-{args.size}, int8, {peer.batches} batches of 30 s windows: encoder {med['encoder']:.2f} s + "
          f"search {med['search']:.2f} s = {med['total']:.2f} s, RTF {peer_rtf:.3f} (runs: "
          f"{_totals(runs['faster-whisper'])} s)")
    print(f"fama-{args.size}/faster-whisper-{args.size} CPU speed: {peer_rtf / fama_rtf:.1f}x")


def _medians(runs: list[dict]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _totals(runs: list[dict]) -> str:
    return ", ".join(f"{r['total']:.1f}" for r in runs)


class PeerProcess:
    """faster-whisper in a process of its own, run on request (so that its runs stay interleaved with fama's).
    In fama's process, CTranslate2's threading runtime slowed fama's search 1.65x (bfloat16, 4.05 s -> 6.71 s,
    measured with this script on a 2-core Zen 5), which no user running the two tools apart would see."""

    def __init__(self, args, chunks: list[np.ndarray]):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        settings = argparse.Namespace(size=args.size, seed=args.seed, threads=args.threads)
        self.proc = ctx.Process(target=_peer_main, args=(child, settings, chunks), daemon=True)
        self.proc.start()
        kind, value = self.conn.recv()
        if kind == "error":
            raise RuntimeError(value)
        self.batches = value

    def run(self) -> dict:
        """One timed run; its "cpu" entry is the CPU time the peer's process spent on it."""
        self.conn.send("run")
        kind, value = self.conn.recv()
        if kind == "error":
            raise RuntimeError(value)
        return value

    def close(self) -> None:
        self.conn.send("stop")
        self.proc.join(30)


def _peer_main(conn, settings, chunks: list[np.ndarray]) -> None:
    torch.set_num_threads(settings.threads)
    try:
        model, windows = build_peer(settings, chunks)
        conn.send(("ready", len(windows)))
        while conn.recv() == "run":
            t = os.times()
            result = peer_run(model, windows)
            done = os.times()
            result["cpu"] = done.user + done.system - t.user - t.system
            conn.send(("result", result))
    except Exception as e:  # a missing benchmark-only package: said on the last line
        conn.send(("error", f"{type(e).__name__}: {e}"))


def build_peer(args, chunks: list[np.ndarray]) -> tuple:
    """(CTranslate2 Whisper model, its 30 s windows), warmed up."""
    import tempfile

    import ctranslate2

    windows = whisper_windows(chunks)
    with tempfile.TemporaryDirectory() as tmp:
        build_whisper(args.size, Path(tmp), args.seed)
        model = ctranslate2.models.Whisper(tmp, device="cpu", compute_type="int8", intra_threads=args.threads)
    peer_run(model, windows[-1:])
    return model, windows


if __name__ == "__main__":
    main()
