"""Transcription pipeline benchmark: memory on long input, pipeline overhead, batching across files.

    python benchmarks/transcribe_bench.py [--hours 2] [--overhead-minutes 3] [--short-files 200] [--repeats 3]
                                          [--small-long 150 75] [--skip memory overhead fama-small batching]

1. Peak memory (max RSS of a child process) transcribing generated speech-with-pauses of 10 minutes and of
   `--hours`, with the tiny model: the two should be about equal (streaming decode, bounded chunk pool).
2. Overhead: end-to-end time (ffmpeg, VAD, batching, segments, writing) / model-only time (features,
   encoder, decoding, alignment on the same chunks in the same batches), with a random-weight model of
   the `small` preset's shape so that model time is realistic. Target <= 1.15.
3. The same at FAMA-small size as users run it (`fama-small`): the model folder loaded with `dtype auto`, beam 5
   and CTC 0.2 with a forced output length, over a few short and long files. Target <= 1.15.
4. Throughput of `--short-files` short files vs one file of the same total duration. Target within 1.3x.

Greedy CTC decoding is used in 1, 2 and 4: a random-weight model's beam search always runs to the length
limit, which would make decoding cost depend on the number of chunks rather than on the audio.
Wall and process CPU times are both printed (a shared machine makes wall times noisy).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TINY = SHARED / "fixtures" / "fbk_reference" / "tiny" / "checkpoint.pt"
CLIPS = ["jfk.flac", "leopard_en.wav", "cheetah_it.wav", "librivox_0870.wav", "cheetah_en.wav", "leopard_it.wav"]


def ffmpeg(*args: str) -> None:
    from fama_core.audio import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def make_base(folder: Path) -> Path:
    """About 60 s of speech clips separated by 1.5 s pauses (16 kHz mono wav)."""
    inputs, filters = [], []
    for i, clip in enumerate(CLIPS):
        inputs += ["-i", str(SHARED / "data" / "media" / clip)]
        filters.append(f"[{i}:a]aformat=sample_rates=16000:channel_layouts=mono,apad=pad_dur=1.5[a{i}]")
    concat = "".join(f"[a{i}]" for i in range(len(CLIPS))) + f"concat=n={len(CLIPS)}:v=0:a=1[out]"
    base = folder / "base.wav"
    ffmpeg(*inputs, "-filter_complex", ";".join(filters + [concat]), "-map", "[out]", str(base))
    return base


def looped(base: Path, seconds: float, path: Path) -> Path:
    ffmpeg("-stream_loop", "-1", "-i", str(base), "-t", str(seconds), "-c:a", "flac", str(path))
    return path


def options(**kw):
    from fama_core.decoding import DecodeOptions
    from fama_core.pipeline import TranscribeOptions

    return TranscribeOptions(language="en", decode=DecodeOptions(greedy=True), **kw)


def run_pipeline(model, tok, paths: list[Path], out_dir: Path, opts=None) -> float:
    """End to end over files, writing srt+json; returns audio seconds."""
    from fama_core.inputs import assign_output_stems, expand_inputs
    from fama_core.pipeline import Pipeline
    from fama_core.subtitles import write_transcript

    items = assign_output_stems(expand_inputs([str(p) for p in paths]), out_dir)
    seconds = 0.0
    for r in Pipeline(model, tok, opts or options()).run(items):
        assert r.error is None, r.error
        write_transcript(r.transcript, r.item.stem, ["srt", "json"], overwrite=True)
        seconds += r.seconds
    return seconds


def child_memory(path: str) -> None:
    """Run in a subprocess: transcribe one file with the tiny model, print max RSS in MB."""
    from fama_core import load_model

    model, tok = load_model(TINY, device="cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as out:
        seconds = run_pipeline(model, tok, [Path(path)], Path(out))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"audio_s": seconds, "rss_after_load_mb": before, "peak_rss_mb": peak}))


def memory(tmp: Path, base: Path, hours: float) -> None:
    for seconds in (600.0, hours * 3600):
        path = looped(base, seconds, tmp / f"long_{int(seconds)}.flac")
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, __file__, "--child-memory", str(path)], capture_output=True,
                             text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"memory: {r['audio_s'] / 3600:.2f} h audio -> peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(after model load {r['rss_after_load_mb']:.0f} MB), {time.perf_counter() - t0:.0f} s")
        path.unlink()


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - w, time.process_time() - c


def _median_run(runs: list[tuple]) -> tuple:
    """The run with the median wall time (field 1)."""
    return sorted(runs, key=lambda t: t[1])[len(runs) // 2]


def overhead(tmp: Path, base: Path, minutes: float, repeats: int) -> None:
    import fama_core.pipeline as tr
    from fama_core import load_model
    from fama_core.config import preset
    from fama_core.model import FamaModel
    from fama_core.vad import speech_chunks
    _, tok = load_model(TINY, device="cpu")
    torch.manual_seed(0)
    model = FamaModel(preset("small", vocab_size=tok.vocab_size, src_vocab_size=tok.vocab_size)).eval()
    path = looped(base, minutes * 60, tmp / "overhead.flac")
    run_pipeline(model, tok, [looped(base, 20, tmp / "warm.flac")], tmp / "warm")  # VAD/JIT warm-up

    from fama_core.audio import load_audio

    o = options()
    chunks = speech_chunks(load_audio(path), o.vad)
    audios = [torch.as_tensor(c.audio) for c in chunks]
    lengths = [len(a) for a in audios]
    order = sorted(range(len(audios)), key=lambda j: -lengths[j])
    batches = list(tr._batches(order, lengths, o, model.device))  # as the pipeline batches

    def model_only():
        for b in batches:
            tr.decode_chunks(model, [audios[j] for j in b], [tok.lang_tag_id("en")] * len(b), o.decode)

    runs = []
    for _ in range(repeats):  # interleaved, so a shared machine's load that comes and goes hits both
        runs.append((timed(model_only), timed(lambda: run_pipeline(model, tok, [path], tmp / "out"))))
    _, mw, mc = _median_run([r[0] for r in runs])
    seconds, ew, ec = _median_run([r[1] for r in runs])
    print(f"overhead: {seconds / 60:.1f} min audio, {len(chunks)} chunks in {len(batches)} batches, "
          f"small-shaped random model, greedy, median of {repeats}")
    print(f"  model only   : {mw:7.1f} s wall, {mc:7.1f} s CPU")
    print(f"  end to end   : {ew:7.1f} s wall, {ec:7.1f} s CPU (RTF {ew / seconds:.3f})")
    print(f"  ratio        : {ew / mw:.3f} wall, {ec / mc:.3f} CPU (target <= 1.15)")


def fama_small(tmp: Path, base: Path, long_seconds: list[float], repeats: int) -> None:
    """A FAMA-small-size model folder (random weights, FAMA's 16,001-entry vocabulary: `load_bench.py`'s) loaded
    as `fama transcribe` loads it (`dtype auto`), beam 5 and CTC weight 0.2 with 3.3 tokens per second of speech
    forced (as `speed_bench.py`), over a job of short and long files: the shared recordings and looped speech
    with pauses. End to end (`Pipeline.run`: ffmpeg, VAD, pooling and batching across files, features,
    decoding, alignment, segments, writing) against the model alone on the same chunks (`decode_chunks` over
    the same length-sorted batches)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from load_bench import build_folder
    from speed_bench import TOKENS_PER_SECOND, forced_options, suppress_eos

    import fama_core.pipeline as tr
    from fama_core import load_model
    from fama_core.audio import load_audio
    from fama_core.precision import precision_of
    from fama_core.vad import speech_chunks

    folder = tmp / "fama-small" / "model"
    folder.parent.mkdir()
    build_folder("small", folder)
    t0 = time.perf_counter()
    model, tok = load_model(folder, device="cpu", dtype="auto")
    load_s = time.perf_counter() - t0
    suppress_eos(model)
    decode = forced_options()
    opts = options()
    opts.decode = decode
    paths = [SHARED / "data" / "media" / c for c in CLIPS]
    paths += [looped(base, s, tmp / f"long_{int(s)}.flac") for s in long_seconds]
    chunks = [torch.as_tensor(c.audio) for p in paths for c in speech_chunks(load_audio(p), opts.vad)]
    lengths = [len(a) for a in chunks]
    order = sorted(range(len(chunks)), key=lambda j: -lengths[j])
    batches = list(tr._batches(order, lengths, opts, model.device))
    lang = [tok.lang_tag_id("en")]

    def model_only():
        for b in batches:
            tr.decode_chunks(model, [chunks[j] for j in b], lang * len(b), decode)

    run_pipeline(model, tok, paths[:1], tmp / "warm_small", opts)
    runs = []
    for _ in range(repeats):
        runs.append((timed(model_only), timed(lambda: run_pipeline(model, tok, paths, tmp / "out_small", opts))))
    _, mw, mc = _median_run([r[0] for r in runs])
    seconds, ew, ec = _median_run([r[1] for r in runs])
    speech = sum(lengths) / 16000
    print(f"fama-small: {len(paths)} files ({seconds / 60:.1f} min of audio, {speech:.0f} s of speech in "
          f"{len(chunks)} chunks of {min(lengths) / 16000:.1f}-{max(lengths) / 16000:.1f} s, {len(batches)} batches), "
          f"FAMA-small-size random model loaded in {load_s:.1f} s as {precision_of(model)} (auto), beam 5, "
          f"CTC 0.2, {TOKENS_PER_SECOND} tokens/s forced, median of {repeats}")
    print(f"  model only   : {mw:7.1f} s wall, {mc:7.1f} s CPU (RTF {mw / seconds:.3f})")
    print(f"  end to end   : {ew:7.1f} s wall, {ec:7.1f} s CPU (RTF {ew / seconds:.3f})")
    print(f"  ratio        : {ew / mw:.3f} wall, {ec / mc:.3f} CPU (target <= 1.15)")


def many_files(tmp: Path, n: int, repeats: int) -> None:
    from fama_core import load_model
    from fama_core.audio import load_audio

    model, tok = load_model(TINY, device="cpu")
    folder = tmp / "short"
    folder.mkdir()
    clips = [SHARED / "data" / "media" / c for c in CLIPS]
    paths = []
    for i in range(n):
        p = folder / f"clip{i:03d}.wav"
        ffmpeg("-i", str(clips[i % len(clips)]), "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(p))
        paths.append(p)
    lst = tmp / "list.txt"
    lst.write_text("".join(f"file '{p}'\n" for p in paths))
    long = tmp / "joined.flac"
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(lst), "-c:a", "flac", str(long))
    total = sum(len(load_audio(p)) for p in paths) / 16000
    run_pipeline(model, tok, paths[:3], tmp / "warm2")
    runs = [(timed(lambda: run_pipeline(model, tok, paths, tmp / "out_many")),
             timed(lambda: run_pipeline(model, tok, [long], tmp / "out_one"))) for _ in range(repeats)]
    s_many, w_many, c_many = _median_run([r[0] for r in runs])
    s_one, w_one, c_one = _median_run([r[1] for r in runs])
    print(f"batching: {n} files ({total / 60:.1f} min) vs one file of the same audio, tiny model, greedy, "
          f"median of {repeats}")
    print(f"  {n} files : {w_many:6.1f} s wall, {c_many:6.1f} s CPU ({s_many / w_many:.0f}x real time)")
    print(f"  one file  : {w_one:6.1f} s wall, {c_one:6.1f} s CPU ({s_one / w_one:.0f}x real time)")
    print(f"  ratio     : {w_many / w_one:.2f} wall, {c_many / c_one:.2f} CPU (target <= 1.3)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--overhead-minutes", type=float, default=3.0)
    ap.add_argument("--short-files", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--small-long", type=float, nargs="*", default=[150.0, 75.0],
                    help="lengths (s) of the long files of the fama-small job")
    ap.add_argument("--skip", nargs="*", default=[], choices=["memory", "overhead", "fama-small", "batching"])
    ap.add_argument("--child-memory", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_memory:
        return child_memory(a.child_memory)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base = make_base(tmp)
        if "memory" not in a.skip:
            memory(tmp, base, a.hours)
        if "overhead" not in a.skip:
            overhead(tmp, base, a.overhead_minutes, a.repeats)
        if "fama-small" not in a.skip:
            fama_small(tmp, base, a.small_long, a.repeats)
        if "batching" not in a.skip:
            many_files(tmp, a.short_files, a.repeats)


if __name__ == "__main__":
    main()
