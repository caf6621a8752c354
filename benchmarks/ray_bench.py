"""`--ray` on one machine: a local Ray with 1 and 2 decoding actors against the plain single-process run.

    python benchmarks/ray_bench.py                 # waits for an idle machine, then 60 min of audio, 2 repeats
    python benchmarks/ray_bench.py --minutes 10    # a short job: Ray's start-up per job weighs more
    python benchmarks/ray_bench.py --quick         # functional run: 2 min of audio, tiny model, no waiting

A job on Ray pays a start-up that the plain run does not: the model put in the object store, a new actor
process and a new reading process that import torch, the replica's copy of the model (~5-8 s here, on the
same 2 cores). Its share depends on how much work the job is, not on the minutes of audio: on a fast-bfloat16
CPU 10 minutes of audio are ~16 s of plain work, so the default is an hour (~90 s), what a Ray job is for.

Audio: the speech recordings of ../shared/data/media joined with 1.5 s pauses (~80 s), looped into `--files`
files of `--minutes` in total (flac), --lang en. Model (`--model`):
- `small` (default): a random-weight model of the `small` preset's shape (410 M parameters; the tiny
  fixture's 256-token vocabulary), greedy CTC decoding, as in transcribe_bench.py: the model's time is that
  of FAMA-small's encoder, so the share of reading, VAD and Ray's own work is realistic. Prepared as
  `fama transcribe` prepares a loaded model (`--dtype`, default auto: the precision the machine runs fastest,
  packed weights on a CPU). At most 1.7 GB per copy (float32): this process, Ray's object store and each
  actor hold one.
- `tiny`: tests/fixtures/tiny_trained with beam 5, as the CLI runs it. Its decoding is so cheap (~60x real
  time on one thread) that ffmpeg and VAD take ~20-40 % of the work: the actors' speed-up is capped by them.

Configurations, interleaved in every repeat so that each sees the same load:
- plain: `Pipeline.run` in this process, torch on 2 threads (what `fama transcribe` does on this machine);
- ray 1x2: `RayExecutor` with one actor of 2 threads (the whole machine, as plain);
- ray 1x1 and ray 2x1: one and two actors of 1 thread each.
Every Ray run is a new Ray Data job (new actors, model shipped through the object store, reading tasks), as one
`fama transcribe --ray` is; Ray itself is started once, as `fama transcribe --ray` starts it
(`cluster.connect`), and timed apart. Each configuration's transcripts are checked to equal plain's. For Ray
runs, the replicas' busy time (the decoding calls, summed over replicas) and the time until the driver receives
its first decoded row (Ray's start-up, the first reads and the first call) are printed.
At the end: medians, then the two target ratios:
- `ray(1 actor)/plain time`: Ray's overhead, target <= 1.15;
- `speed-up of 2 vs 1 one-thread actors`: target >= 1.6.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FAMA_SHARED_DIR", ROOT.parent / "shared"))
MODEL = ROOT / "tests" / "fixtures" / "tiny_trained"
SPEECH = ["jfk.flac", "cheetah_en.wav", "cheetah_it.wav", "cheetah_it_numbers.wav", "leopard_en.wav",
          "leopard_it.wav", "librivox_0870.wav", "librivox_0880.wav", "librivox_0890.wav", "multilingual.mp3",
          "stereo_diarization.wav"]


def ffmpeg(*args: str, stdin: bytes | None = None) -> None:
    from fama_core.audio import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], input=stdin, check=True)


def make_audio(folder: Path, minutes: float, files: int) -> list[Path]:
    inputs, filters = [], []
    for i, clip in enumerate(SPEECH):
        inputs += ["-i", str(SHARED / "data" / "media" / clip)]
        filters.append(f"[{i}:a]aformat=sample_rates=16000:channel_layouts=mono,apad=pad_dur=1.5[a{i}]")
    concat = "".join(f"[a{i}]" for i in range(len(SPEECH))) + f"concat=n={len(SPEECH)}:v=0:a=1[out]"
    base = folder / "base.wav"
    ffmpeg(*inputs, "-filter_complex", ";".join(filters + [concat]), "-map", "[out]", str(base))
    with wave.open(str(base)) as w:
        loop = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    samples = int(minutes * 60 / files * 16000)
    paths = []
    for k in range(files):  # each file starts at another point of the loop: not 10 copies of one decode
        start = int(7.3 * k * 16000) % len(loop)
        # cut here, to exactly `minutes` in all: ffmpeg's -stream_loop with -ss made longer files once they looped
        audio = np.resize(np.roll(loop, -start), samples)
        path = folder / f"talk{k:02d}.flac"
        ffmpeg("-f", "s16le", "-ar", "16000", "-ac", "1", "-i", "-", "-c:a", "flac", str(path), stdin=audio.tobytes())
        paths.append(path)
    return paths


def wait_for_idle(max_load: float, timeout: float) -> None:
    """Until the 1-minute load average is under `max_load` (or `timeout` seconds passed)."""
    start = time.time()
    while (load := os.getloadavg()[0]) > max_load and time.time() - start < timeout:
        print(f"waiting for an idle machine: load {load:.2f} > {max_load}", file=sys.stderr, flush=True)
        time.sleep(30)
    print(f"load average at start: {os.getloadavg()}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0, help="audio in total (at least 10 for the figures)")
    ap.add_argument("--files", type=int, default=12)
    ap.add_argument("--model", choices=("small", "tiny"), default="small")
    ap.add_argument("--dtype", default="auto", help="precision of the model, as --dtype of fama transcribe")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="~2 min of audio, 1 repeat, no waiting: a functional run")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for an idle machine")
    ap.add_argument("--max-load", type=float, default=0.6)
    args = ap.parse_args()
    if args.quick:
        args.minutes, args.files, args.repeats, args.no_wait, args.model = 2.0, 4, 1, True, "tiny"
    sys.path.insert(0, str(ROOT))
    import ray
    import torch

    from fama_core.checkpoints import load_model
    from fama_core.cluster import RayExecutor, connect
    from fama_core.config import preset
    from fama_core.decoding import DecodeOptions
    from fama_core.inputs import InputFile
    from fama_core.model import FamaModel
    from fama_core.pipeline import Pipeline, TranscribeOptions
    from fama_core.precision import apply_precision
    from fama_core.subtitles import format_transcript

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_audio(Path(tmp), args.minutes, args.files)
        items = [InputFile(str(p)) for p in paths]
        if not args.no_wait:
            wait_for_idle(args.max_load, 3600)
        t0 = time.perf_counter()
        connect()  # as `fama transcribe --ray` starts a local Ray
        print(f"ray.init: {time.perf_counter() - t0:.1f} s (once per job; not in the times below)", flush=True)
        torch.set_num_threads(2)
        model, tokenizer = load_model(str(MODEL), device="cpu", dtype=args.dtype)
        options = TranscribeOptions(language="en")
        if args.model == "small":
            torch.manual_seed(0)
            model = apply_precision(FamaModel(preset("small", vocab_size=tokenizer.vocab_size,
                                                     src_vocab_size=tokenizer.vocab_size)), args.dtype, "cpu")
            options.decode = DecodeOptions(greedy=True)
        pipeline = Pipeline(model, tokenizer, options, args.model)
        print(f"model {args.model}, {sum(v.numel() for v in model.state_dict().values()) / 1e6:.0f} M weights, "
              f"{model.precision}, "
              f"{'greedy' if options.decode.greedy else f'beam {options.decode.beam_size}'}; "
              f"{len(items)} files, {args.minutes} min of audio", flush=True)

        def plain() -> list:
            return list(pipeline.run(items))

        timings: dict[str, float] = {}

        def on_ray(actors: int, threads: int):
            def run() -> list:
                executor = RayExecutor(pipeline, actors=actors, threads=threads)
                results = list(executor.run(items))
                timings.update(executor.timings)
                return results
            return run

        configs = {"plain": plain, "ray 1x2": on_ray(1, 2), "ray 1x1": on_ray(1, 1), "ray 2x1": on_ray(2, 1)}
        times: dict[str, list[float]] = {name: [] for name in configs}
        reference = None
        for repeat in range(args.repeats):
            for name, fn in configs.items():
                start = time.perf_counter()
                results = fn()
                wall = time.perf_counter() - start
                times[name].append(wall)
                got = {r.item.path: (r.error, r.transcript and format_transcript(r.transcript, "json"))
                       for r in results}
                reference = reference or got
                audio = sum(r.seconds for r in results)
                ray_timing = (f"; replicas busy {timings['busy']:.1f} s in all, first result after "
                              f"{timings['first_result']:.1f} s" if timings else "")
                timings.clear()
                print(f"repeat {repeat + 1} {name}: {wall:.1f} s, {audio / 60:.1f} min audio, "
                      f"{audio / wall:.1f} audio-s/s, transcripts {'= plain' if got == reference else 'DIFFER'}"
                      f"{ray_timing}", flush=True)
        ray.shutdown()
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"medians over {args.repeats} repeats (s): " + ", ".join(f"{n} {t:.1f}" for n, t in med.items()))
    print(f"load average at end: {os.getloadavg()}")
    print(f"ray(1 actor)/plain time: {med['ray 1x2'] / med['plain']:.2f}x (target <= 1.15)")
    print(f"speed-up of 2 vs 1 one-thread actors: {med['ray 1x1'] / med['ray 2x1']:.2f}x (target >= 1.6)")


if __name__ == "__main__":
    main()
