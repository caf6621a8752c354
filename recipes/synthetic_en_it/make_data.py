"""Make a synthetic English-Italian speech corpus: grammar sentences (and some Tatoeba) spoken by TTS voices.

    python recipes/synthetic_en_it/make_data.py --out DIR [--n-train N] [--n-dev N] [--n-test N]
        [--n-tatoeba N] [--smoke] [--jobs 2] [--seed S] [--splits test,...]

Writes DIR/wav/<split>/<lang>/*.wav (16 kHz mono 16-bit), the manifests asr_{en,it}_<split>.tsv,
st_en_it_<split>.tsv, st_it_en_<split>.tsv for train, dev, test and test_unseen_voice, text_for_spm.txt
(every train text, both languages) and summary.json. Existing wavs are reused, so a run can be resumed;
file names carry a digest of text, voice and settings, so a changed setting never reuses a stale file.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import wave
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]
import grammar  # noqa: E402

from fama_core.manifest import ManifestRow, n_frames_for_samples, write_manifest  # noqa: E402

SR = 16000
VERSION = 1  # part of every file digest: bump when the audio processing changes
SPLITS = ("train", "dev", "test", "test_unseen_voice")
LANGS = ("en", "it")
SHARED = Path(os.environ.get("FAMA_SHARED_DIR", ROOT.parent / "shared"))
TATOEBA = SHARED / "data" / "text" / "tatoeba_en_it.tsv"


@dataclass(frozen=True)
class Voice:
    engine: str  # espeak | festival
    name: str  # espeak voice (+variant) or festival voice function without "voice_"
    lang: str
    weight: float = 1.0  # share of the seen-voice utterances of its language
    held_out: bool = False  # only speaks test_unseen_voice

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"


VOICES = (
    Voice("espeak", "en-us", "en"),
    Voice("espeak", "en-gb", "en"),
    Voice("espeak", "en-us+f2", "en"),
    Voice("festival", "kal_diphone", "en", 1.5),
    Voice("festival", "cmu_us_slt_arctic_hts", "en", 1.5),
    Voice("festival", "ked_diphone", "en", held_out=True),
    Voice("espeak", "it", "it"),
    Voice("espeak", "it+f3", "it"),
    Voice("espeak", "it+m3", "it"),
    Voice("festival", "lp_diphone", "it", 2.0),
    Voice("festival", "pc_diphone", "it", held_out=True),
)


@dataclass(frozen=True)
class Utterance:
    id: str
    split: str
    lang: str
    text: str
    voice: Voice
    rate: float  # espeak words per minute, or festival Duration_Stretch (diphone voices only)
    pitch: int  # espeak pitch 0-99
    speed: float  # speed perturbation: tempo, pitch and formants scale together
    level_db: float  # RMS level in dBFS
    snr_db: float | None  # added white or pink noise, None for clean
    pink: bool
    pad: tuple[float, float]  # seconds of silence (noise) before and after

    @property
    def path(self) -> str:
        settings = repr((VERSION, self.text, self.voice.id, self.rate, self.pitch, self.speed, self.level_db,
                         self.snr_db, self.pink, self.pad))
        digest = hashlib.sha1(settings.encode()).hexdigest()[:8]
        return f"wav/{self.split}/{self.lang}/{self.id}-{digest}.wav"


def plan_utterance(uid: str, split: str, lang: str, text: str, seed: int) -> Utterance:
    """Voice and settings of one utterance, drawn from its own seeded stream (stable under resizing)."""
    rng = random.Random(f"{seed}/{uid}")
    voices = [v for v in VOICES if v.lang == lang and v.held_out == (split == "test_unseen_voice")]
    voice = rng.choices(voices, [v.weight for v in voices])[0]
    if voice.engine == "espeak":
        rate, pitch = rng.randint(140, 185), rng.randint(30, 70)
    else:
        rate, pitch = round(rng.uniform(0.9, 1.15), 2), 50
    snr = round(rng.uniform(25, 35), 1) if rng.random() < 0.8 else None
    return Utterance(uid, split, lang, text, voice, rate, pitch, round(rng.uniform(0.93, 1.07), 2),
                     round(rng.uniform(-30, -18), 1), snr, rng.random() < 0.5,
                     (round(rng.uniform(0.05, 0.4), 2), round(rng.uniform(0.05, 0.4), 2)))


# ---------------------------------------------------------------- synthesis (runs in worker processes)
def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"expected 16-bit audio, got {8 * w.getsampwidth()}-bit")
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())
        return x.mean(axis=1, dtype=np.float32) / 32768, w.getframerate()


def _espeak(u: Utterance) -> tuple[np.ndarray, int]:
    cmd = ["espeak-ng", "-v", u.voice.name, "-s", str(u.rate), "-p", str(u.pitch), "--stdout"]
    return _read_wav(subprocess.run(cmd, input=u.text.encode(), capture_output=True, check=True).stdout)


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival(utts: list[Utterance], tmp: Path) -> list[tuple[np.ndarray, int] | None]:
    """Synthesise utterances of one voice in one festival process; a crash (festival segfaults on some
    inputs) costs only the item that caused it: the items after it are retried in a new process."""
    script = [f"(voice_{utts[0].voice.name})"]
    for i, u in enumerate(utts):
        script.append(f"(Parameter.set 'Duration_Stretch {u.rate})")
        script.append(f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(u.text)})) \"{tmp}/{i}.wav\" 'riff)")
    try:
        subprocess.run(["festival", "--pipe"], input="\n".join(script).encode("latin-1", "replace"),
                       capture_output=True, timeout=60 + 10 * len(utts))
    except subprocess.TimeoutExpired:
        pass  # treated like a crash below
    out: list[tuple[np.ndarray, int] | None] = []
    for i in range(len(utts)):
        f = tmp / f"{i}.wav"
        if not f.exists():
            if i + 1 < len(utts):  # item i crashed festival: give up on it, retry the rest
                (tmp / "rest").mkdir(exist_ok=True)
                return out + [None] + _festival(utts[i + 1:], tmp / "rest")
            return out + [None]
        out.append(_read_wav(f.read_bytes()))
    return out


def _noise(n: int, pink: bool, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if not pink:
        return white
    spectrum = np.fft.rfft(white) / np.sqrt(np.maximum(np.arange(n // 2 + 1), 1))
    return np.fft.irfft(spectrum, n)


def finish(x: np.ndarray, sr: int, u: Utterance) -> np.ndarray:
    """Speed perturbation, resampling to 16 kHz, level, padding and noise; returns int16 samples."""
    src = max(50, round(sr * u.speed / 50) * 50)  # play `sr` audio as if recorded at sr * speed
    k = gcd(src, SR)
    y = resample_poly(x.astype(np.float64), SR // k, src // k)
    rng = np.random.default_rng(int(hashlib.sha1(u.path.encode()).hexdigest()[:8], 16))
    y *= 10 ** (u.level_db / 20) / max(np.sqrt(np.mean(y**2)), 1e-6)
    speech_rms = np.sqrt(np.mean(y**2))
    y = np.concatenate([np.zeros(round(u.pad[0] * SR)), y, np.zeros(round(u.pad[1] * SR))])
    if u.snr_db is not None:
        noise = _noise(len(y), u.pink, rng)
        y += noise * speech_rms / 10 ** (u.snr_db / 20) / np.sqrt(np.mean(noise**2))
    return (np.clip(y, -1, 32767 / 32768) * 32768).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(samples.tobytes())
    os.replace(tmp, path)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (TTS engines, pool workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def synthesise(out: Path, utts: list[Utterance]) -> tuple[dict[str, int | None], float, float]:
    """One task (a chunk of one voice): writes the wavs; returns samples per id (None: failed), the CPU
    seconds the TTS engine took and the seconds of audio it made."""
    start = cpu_seconds()
    if utts[0].voice.engine == "festival":
        with tempfile.TemporaryDirectory() as tmp:
            audio = _festival(utts, Path(tmp))
    else:
        audio = [_espeak(u) for u in utts]
    tts_seconds = cpu_seconds() - start
    tts_audio = sum(len(a[0]) / a[1] for a in audio if a is not None)
    done: dict[str, int | None] = {}
    for u, a in zip(utts, audio):
        if a is None or len(a[0]) < a[1] // 10:  # festival says nothing for text it cannot read
            done[u.id] = None
            continue
        samples = finish(*a, u)
        write_wav(out / u.path, samples)
        done[u.id] = len(samples)
    return done, tts_seconds, tts_audio


# ---------------------------------------------------------------- corpus
def tatoeba_pairs(path: Path, n: int, seed: int) -> list[grammar.Pair]:
    """Up to n Tatoeba pairs that TTS reads unambiguously: no digits, Latin-1, at most 12 words."""
    if n <= 0 or not path.exists():
        if n > 0:
            print(f"warning: {path} not found, no Tatoeba sentences", file=sys.stderr)
        return []
    quotes = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        en, it = (s.strip().translate(quotes) for s in line.split("\t"))
        texts = en + it
        if any(c.isdigit() for c in texts) or len(en.split()) > 12 or len(it.split()) > 12 or not en or not it:
            continue
        try:
            texts.encode("latin-1")
        except UnicodeEncodeError:
            continue
        pairs.append(grammar.Pair(en, it, ("tatoeba", en), "tatoeba"))
    random.Random(seed).shuffle(pairs)
    return pairs[:n]


def plan(args: argparse.Namespace) -> tuple[dict[str, list[grammar.Pair]], list[Utterance]]:
    sizes = {"train": args.n_train, "dev": args.n_dev, "test": args.n_test}
    pairs = grammar.make_splits(sizes, seed=args.seed, known_words=args.n_train >= 200)
    pairs["train"] += tatoeba_pairs(args.tatoeba, args.n_tatoeba, args.seed)
    pairs["test_unseen_voice"] = pairs["test"]  # the same sentences, spoken by the held-out voices
    utts = [plan_utterance(f"{split}-{i:05d}-{lang}", split, lang, getattr(p, lang), args.seed)
            for split in SPLITS for i, p in enumerate(pairs[split]) for lang in LANGS]
    return pairs, utts


def tasks(utts: list[Utterance]) -> list[list[Utterance]]:
    """Chunks of one voice each, slowest engines first so that two workers finish together."""
    by_voice: dict[Voice, list[Utterance]] = defaultdict(list)
    for u in utts:
        by_voice[u.voice].append(u)
    chunks = [vs[i:i + 40] for vs in by_voice.values() for i in range(0, len(vs), 40)]
    return sorted(chunks, key=lambda c: (c[0].voice.engine != "festival", "hts" not in c[0].voice.name))


def wav_samples(path: Path) -> int:
    with wave.open(str(path)) as w:
        return w.getnframes()


def source(p: grammar.Pair) -> str:
    return "tatoeba" if p.template == "tatoeba" else f"grammar:{p.template}"


def write_outputs(out: Path, pairs: dict[str, list[grammar.Pair]], utts: list[Utterance],
                  samples: dict[str, int]) -> dict[str, dict[str, float]]:
    """Manifests, text_for_spm.txt; returns hours and utterance counts per manifest."""
    by_id = {u.id: u for u in utts}
    stats = {}
    for split in SPLITS:
        for src in LANGS:
            asr: list[ManifestRow] = []
            st: list[ManifestRow] = []
            tgt = "it" if src == "en" else "en"
            for i, p in enumerate(pairs[split]):
                u = by_id[f"{split}-{i:05d}-{src}"]
                if u.id not in samples:
                    continue
                text, other = getattr(p, src), getattr(p, tgt)
                common = dict(id=u.id, audio=u.path, n_frames=n_frames_for_samples(samples[u.id]),
                              speaker=u.voice.id, src_text=text, src_lang=src, extra={"source": source(p)})
                asr.append(ManifestRow(**common, tgt_text=text, tgt_lang=src))
                st.append(ManifestRow(**common, tgt_text=other, tgt_lang=tgt))
            hours = sum(samples[r.id] for r in asr) / SR / 3600
            for name, rs in ((f"asr_{src}_{split}", asr), (f"st_{src}_{tgt}_{split}", st)):
                write_manifest(out / f"{name}.tsv", rs)
                stats[name] = {"utterances": len(rs), "hours": round(hours, 3)}
    spm = [getattr(p, lang) for p in pairs["train"] for lang in LANGS]
    (out / "text_for_spm.txt").write_text("\n".join(spm) + "\n", encoding="utf-8")
    return stats


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder (created; reused wavs are kept)")
    ap.add_argument("--n-train", type=int, help="grammar sentence pairs in train (1000; smoke 10)")
    ap.add_argument("--n-dev", type=int, help="(100; smoke 4)")
    ap.add_argument("--n-test", type=int, help="also spoken by the held-out voices (150; smoke 4)")
    ap.add_argument("--n-tatoeba", type=int, help="Tatoeba pairs added to train (150; smoke 2)")
    ap.add_argument("--tatoeba", type=Path, default=TATOEBA, help="Tatoeba TSV (header en<TAB>it)")
    ap.add_argument("--smoke", action="store_true", help="tiny corpus in seconds (for CI and CLI tests)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--splits", default=",".join(SPLITS),
                    help="synthesise only these splits (comma-separated; the sentences stay those of the full plan)")
    args = ap.parse_args(argv)
    splits = args.splits.split(",")
    if not set(splits) <= set(SPLITS):
        ap.error(f"--splits: choose from {', '.join(SPLITS)}")
    for name, sizes in {"n_train": (1000, 10), "n_dev": (100, 4), "n_test": (150, 4), "n_tatoeba": (150, 2)}.items():
        if getattr(args, name) is None:
            setattr(args, name, sizes[args.smoke])
    start, start_cpu = time.perf_counter(), cpu_seconds()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    pairs, utts = plan(args)
    samples = {u.id: wav_samples(out / u.path) for u in utts if (out / u.path).exists()}
    todo = [u for u in utts if u.id not in samples and u.id.rsplit("-", 2)[0] in splits]
    print(f"{len(utts)} utterances, {len(samples)} already there, {len(todo)} to synthesise on {args.jobs} cores")
    tts_seconds: dict[str, float] = defaultdict(float)
    audio_seconds: dict[str, float] = defaultdict(float)
    failed: list[str] = []
    chunks = tasks(todo)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(synthesise, out, chunk): chunk[0].voice.id for chunk in chunks}
        for k, future in enumerate(as_completed(futures), 1):
            done, seconds, audio = future.result()
            tts_seconds[futures[future]] += seconds
            audio_seconds[futures[future]] += audio
            failed += [uid for uid, n in done.items() if n is None]
            samples.update((uid, n) for uid, n in done.items() if n is not None)
            if k % max(1, len(chunks) // 10) == 0 or k == len(chunks):
                print(f"  {k}/{len(chunks)} chunks, {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        print(f"warning: {len(failed)} utterances produced no audio and are left out: {failed[:5]}", file=sys.stderr)
    stats = write_outputs(out, pairs, utts, samples)
    train_sets = {"": pairs["train"], "_grammar": [p for p in pairs["train"] if p.template != "tatoeba"]}
    wall = time.perf_counter() - start
    total_hours = sum(v["hours"] for k, v in stats.items() if k.startswith("asr_"))
    speed = {v: round(audio_seconds[v] / tts_seconds[v], 1) for v in tts_seconds if tts_seconds[v] > 0}
    summary = {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu_seconds() - start_cpu, 1),
               "total_hours": round(total_hours, 3), "jobs": args.jobs,
               "synthesised": len(todo) - len(failed), "failed": failed,
               "tts_x_realtime_per_cpu_second": speed,
               "train_vocabulary": {f"{lang}{tag}": len(grammar.vocabulary([getattr(p, lang) for p in ps]))
                                    for tag, ps in train_sets.items() for lang in LANGS},
               "voices": {"seen": [v.id for v in VOICES if not v.held_out],
                          "held_out": [v.id for v in VOICES if v.held_out]},
               "args": {k: str(v) for k, v in vars(args).items()}, "manifests": stats}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    for name, s in stats.items():
        if name.startswith("asr_"):
            print(f"  {name:28s} {s['utterances']:5d} utts {s['hours']:6.2f} h")
    print(f"total {total_hours:.2f} h of audio in {wall:.0f} s wall, {summary['cpu_seconds']:.0f} CPU s; "
          f"TTS speed (x real time per CPU second): {speed}")


if __name__ == "__main__":
    main()
