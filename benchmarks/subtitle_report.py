"""Subtitle quality of `fama transcribe --srt` with the default cue shaping, file by file.

    python benchmarks/subtitle_report.py [--model tests/fixtures/tiny_trained] [--long-seconds 180]
                                         [--device cpu] [--keep DIR]

Files: the test clips of the fixture model (tests/fixtures/tiny_trained/clips, each in its own language) and one
long recording, made by concatenating the real recordings of ../shared/data/media (sorted by name, 1 s of
silence between them, over again) until it lasts at least --long-seconds, transcribed as English. Each goes
through the pipeline as `fama transcribe` runs it; its SRT is made by `format_transcript` with the default
`SubtitleOptions`, read back with pysubs2 and measured: cue count, shortest / median / longest cue, the
fastest reading speed (characters per second, a line break counting as a space), and how many cues break a
rule (shorter than min_cue_seconds, faster than max_cps, longer than max_duration).

The fixture model knows only synthetic voices: on the real recordings its words are mostly wrong, but their
times follow the speech, which is what cue shaping works from.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = ROOT / "tests" / "fixtures" / "tiny_trained"
MEDIA = ROOT.parent / "shared" / "data" / "media"
MEDIA_EXTENSIONS = (".wav", ".flac", ".mp3")


def long_recording(path: Path, seconds: float) -> Path:
    """The shared recordings one after another (1 s of silence between) until `seconds`, as 16-bit WAV."""
    from fama_core.audio import SAMPLE_RATE, load_audio

    sources = sorted(p for p in MEDIA.iterdir() if p.suffix in MEDIA_EXTENSIONS)
    if not sources:
        sys.exit(f"no recordings in {MEDIA}")
    pieces, total = [], 0
    while total < seconds * SAMPLE_RATE:
        for p in sources:
            pieces += [load_audio(p), np.zeros(SAMPLE_RATE, dtype=np.float32)]
            total += len(pieces[-2]) + SAMPLE_RATE
            if total >= seconds * SAMPLE_RATE:
                break
    audio = np.clip(np.concatenate(pieces), -1, 1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.round(audio * 32767).astype("<i2").tobytes())
    return path


def cue_stats(srt: str, opts) -> dict[str, float | int]:
    import pysubs2

    events = [ev for ev in pysubs2.SSAFile.from_string(srt, format_="srt") if ev.plaintext]
    seconds = [(ev.end - ev.start) / 1000 for ev in events]
    cps = [len(ev.plaintext.replace("\n", " ")) / s for ev, s in zip(events, seconds)]
    return {
        "cues": len(events),
        "min": min(seconds, default=0.0),
        "median": statistics.median(seconds) if seconds else 0.0,
        "max": max(seconds, default=0.0),
        "max_cps": max(cps, default=0.0),
        "short": sum(s < opts.min_cue_seconds - 5e-4 for s in seconds),
        "fast": sum(c > opts.max_cps + 1e-6 for c in cps),
        "long": sum(s > opts.max_duration + 5e-4 for s in seconds),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(MODEL), help="model folder or alias (default: the fixture model)")
    ap.add_argument("--long-seconds", type=float, default=180.0, help="length of the long recording")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, help="also write each file's SRT and the long WAV into this folder")
    args = ap.parse_args()

    from fama_core import load_model
    from fama_core.inputs import InputFile
    from fama_core.pipeline import Pipeline, TranscribeOptions
    from fama_core.subtitles import SubtitleOptions, format_transcript

    clips_dir = Path(args.model) / "clips"
    clips = json.loads((clips_dir / "clips.json").read_text(encoding="utf-8")) if clips_dir.is_dir() else []
    work = args.keep or Path(tempfile.mkdtemp(prefix="subtitle_report."))
    work.mkdir(parents=True, exist_ok=True)
    files = [(str(clips_dir / f"{c['id']}.wav"), c["lang"]) for c in clips]
    files.append((str(long_recording(work / "long_media.wav", args.long_seconds)), "en"))

    model, tokenizer = load_model(args.model, device=args.device)
    opts = SubtitleOptions()
    transcripts = {}
    for lang in sorted({lang for _, lang in files}):
        items = [InputFile(path) for path, file_lang in files if file_lang == lang]
        for r in Pipeline(model, tokenizer, TranscribeOptions(language=lang), args.model).run(items):
            if r.error:
                sys.exit(f"{r.item.name}: {r.error}")
            transcripts[r.item.path] = r.transcript

    print(f"subtitles of `fama transcribe --srt`, model {Path(args.model).name}, defaults: lines "
          f"{opts.max_line_count} x {opts.max_line_width}, cues {opts.min_cue_seconds}-{opts.max_duration} s, "
          f"<= {opts.max_cps:g} characters/s\n")
    print("| file | audio s | cues | min s | median s | max s | max chars/s | < min | > max chars/s | > max s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path, _ in files:
        t = transcripts[path]
        srt = format_transcript(t, "srt", opts)
        if args.keep:
            (work / f"{Path(path).stem}.srt").write_text(srt, encoding="utf-8")
        s = cue_stats(srt, opts)
        print(f"| {Path(path).name} | {t.duration:.1f} | {s['cues']} | {s['min']:.2f} | {s['median']:.2f} | "
              f"{s['max']:.2f} | {s['max_cps']:.1f} | {s['short']} | {s['fast']} | {s['long']} |")
    if not args.keep:
        (work / "long_media.wav").unlink()
        work.rmdir()


if __name__ == "__main__":
    main()
