"""Hotwords and word confidence, measured on speech fama can make (espeak-ng voices of the synthetic recipe).

    python benchmarks/quality_bench.py [--model fama-demo] [--per-name 6] [--weights 0,3,6,9] [--threads 1]

Sentences in the shape of the recipe's grammar, each holding one of NAMES, names the demo model never saw
(its vocabulary spells them letter by letter), plus as many control sentences with the grammar's own names
(Tom, Marco, Anna, ...) and no term; spoken by the recipe's seen espeak-ng voices (en-us, en-gb, en-us+f2).

- hotwords: every utterance is decoded with all NAMES as hotwords, at each `--weights` value (0 = off);
  recall = utterances whose spoken name is written (as a word, any case) / utterances with a name; false
  alarms = boosted terms written in an utterance where they were not spoken, per 100 utterances (all
  utterances); WER of the control sentences (no term spoken: the other words) and of the name sentences with
  the name left out of both reference and hypothesis;
- cost: the time of `decode_chunks` on all utterances with no term against 100 terms (NAMES and generated
  names), in the same run, one after the other, twice each (best of two): a ratio, valid on a loaded machine;
  at a weight too small to change any hypothesis (the graph's own cost) and at the largest weight;
- confidence (no hotwords): each hypothesis word is right when the edit alignment to the reference matches it;
  expected calibration error (10 equal-width bins) of `probability` and `ctc_probability`, and AUROC of
  1 - confidence for finding the wrong words.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAMES = ["Trento", "Kessler", "Bentivogli", "Giulia", "Bruno", "Rovereto", "Negri", "Federico", "Matteo", "Gaido"]
KNOWN = ["Tom", "Marco", "Paolo", "Anna", "Laura", "Sara"]  # the grammar's own names
TEMPLATES = ["{} buys the bread.", "Where is {}?", "{} is at home.", "{} sells three old books.",
             "{} wants to go to the station.", "{} is tired.", "The doctor sees {}.", "{} has a red bag."]
VOICES = ["en-us", "en-gb", "en-us+f2"]


def speak(text: str, voice: str, rate: int) -> object:
    import torch

    from fama_core.audio import load_audio

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(path), text], check=True)
        return torch.as_tensor(load_audio(path))


def words(text: str) -> list[str]:
    return re.sub(r"[^\w' ]", " ", text.casefold()).split()


def align(hyp: list[str], ref: list[str]) -> tuple[int, list[bool]]:
    """(edits, per hypothesis word: matched) of a minimum edit alignment."""
    n, m = len(hyp), len(ref)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (hyp[i - 1] != ref[j - 1]))
    ok, i, j = [False] * n, n, m
    while i > 0 and j > 0:
        if d[i][j] == d[i - 1][j - 1] + (hyp[i - 1] != ref[j - 1]):
            ok[i - 1] = hyp[i - 1] == ref[j - 1]
            i, j = i - 1, j - 1
        elif d[i][j] == d[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return d[n][m], ok


def ece(conf: list[float], right: list[bool], bins: int = 10) -> float:
    total, err = len(conf), 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [k for k, c in enumerate(conf) if lo <= c < hi or (b == bins - 1 and c == 1.0)]
        if idx:
            err += len(idx) / total * abs(sum(conf[k] for k in idx) / len(idx) - sum(right[k] for k in idx) / len(idx))
    return err


def auroc(score: list[float], positive: list[bool]) -> float:
    """P(a random positive scores above a random negative), ties counting half."""
    pos = [s for s, p in zip(score, positive) if p]
    neg = [s for s, p in zip(score, positive) if not p]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def make_data(per_name: int, seed: int) -> list[tuple[str, str | None, object]]:
    """(text, spoken term or None, waveform): per_name utterances per name, as many controls."""
    rng = random.Random(seed)
    items = []
    for name in NAMES:
        for _ in range(per_name):
            items.append((rng.choice(TEMPLATES).format(name), name))
    for _ in range(per_name * len(NAMES)):
        items.append((rng.choice(TEMPLATES).format(rng.choice(KNOWN)), None))
    return [(t, n, speak(t, rng.choice(VOICES), rng.randint(140, 170))) for t, n in items]


def decode(pair, audios: list, hotwords: tuple, weight: float, term_ctc_weight: float = 1.0) -> list:
    import fama_core
    from fama_core.hotwords import Hotword

    terms = tuple(Hotword(t, weight) for t in hotwords) if weight > 0 else ()
    return fama_core.transcribe(audios, pair, language="en", hotwords=terms, hotword_ctc_weight=term_ctc_weight)


def hotword_figures(data: list, texts: list[str]) -> dict:
    spoken_hits = sum(1 for (_, name, _), t in zip(data, texts) if name and name.casefold() in words(t))
    with_name = sum(1 for _, name, _ in data if name)
    false = sum(1 for (_, name, _), t in zip(data, texts) for n in NAMES
                if n != name and n.casefold() in words(t))
    ctrl_err = ctrl_n = name_err = name_n = 0
    for (ref, name, _), hyp in zip(data, texts):
        r, h = words(ref), words(hyp)
        if name:
            r = [w for w in r if w != name.casefold()]
            h = [w for w in h if w != name.casefold()]
            name_err, name_n = name_err + align(h, r)[0], name_n + len(r)
        else:
            ctrl_err, ctrl_n = ctrl_err + align(h, r)[0], ctrl_n + len(r)
    return {"recall": 100 * spoken_hits / with_name, "false_alarms_per_100": 100 * false / len(data),
            "wer_controls": 100 * ctrl_err / ctrl_n, "wer_name_sentences_without_name": 100 * name_err / name_n}


def confidence_figures(data: list, transcripts: list) -> dict:
    prob, ctc, right = [], [], []
    for (ref, _, _), t in zip(data, transcripts):
        ws = [w for s in t.segments for w in s.words]
        hyp = [" ".join(words(w.text)) for w in ws]
        _, ok = align(hyp, words(ref))
        for w, good in zip(ws, ok):
            prob.append(w.probability)
            ctc.append(w.ctc_probability)
            right.append(good)
    wrong = [not r for r in right]
    return {"words": len(right), "wrong": sum(wrong),
            "ece_probability": ece(prob, right), "ece_ctc_probability": ece(ctc, right),
            "auroc_probability": auroc([1 - p for p in prob], wrong),
            "auroc_ctc_probability": auroc([1 - p for p in ctc], wrong),
            "auroc_product": auroc([1 - p * q for p, q in zip(prob, ctc)], wrong)}


def cost(pair, audios: list, weight: float) -> tuple[float, float]:
    rng = random.Random(7)
    letters = "bcdfglmnprstvz"
    fillers = []
    while len(fillers) < 90:
        w = "".join(rng.choice(letters) + rng.choice("aeiou") for _ in range(rng.randint(2, 4))).capitalize()
        if w not in fillers and w not in NAMES:
            fillers.append(w)
    hundred = tuple(NAMES + fillers)
    from fama_core.decoding import DecodeOptions, with_hotword_spellings
    from fama_core.hotwords import Hotword
    from fama_core.pipeline import decode_chunks

    model, tok = pair
    en = tok.lang_tag_id("en")
    plain = DecodeOptions()
    boosted = with_hotword_spellings(DecodeOptions(hotwords=tuple(Hotword(t, weight) for t in hundred)), tok)
    times = {0: [], 100: []}
    for _ in range(2):
        for n, opts in ((0, plain), (100, boosted)):
            start = time.perf_counter()
            for i in range(0, len(audios), 16):
                decode_chunks(model, audios[i:i + 16], [en] * len(audios[i:i + 16]), opts)
            times[n].append(time.perf_counter() - start)
    return min(times[0]), min(times[100])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="fama-demo")
    ap.add_argument("--per-name", type=int, default=6, help="utterances per name (as many controls in all)")
    ap.add_argument("--weights", default="0,3,6,9", help="bonus per token; 0 = no hotwords")
    ap.add_argument("--term-ctc-weights", default="1", help="CTC weights of boosted tokens (DecodeOptions."
                    "hotword_ctc_weight), each with every weight")
    ap.add_argument("--no-cost", action="store_true", help="skip the cost measurement")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    import torch

    import fama_core

    torch.set_num_threads(args.threads)
    pair = fama_core.load_model(args.model, device="cpu", dtype="float32")
    t0 = time.perf_counter()
    data = make_data(args.per_name, args.seed)
    audios = [a for _, _, a in data]
    print(f"{len(data)} utterances ({sum(1 for d in data if d[1])} with a name), "
          f"{sum(len(a) for a in audios) / 16000:.0f} s of speech, made in {time.perf_counter() - t0:.0f} s")
    weights = [float(w) for w in args.weights.split(",")]
    print("hotwords (all NAMES boosted):")
    print("  weight  term CTC weight  recall %  false alarms/100 utt  WER controls %  WER name sentences w/o name %")
    c = confidence_figures(data, decode(pair, audios, (), 0))
    for tw in (float(x) for x in args.term_ctc_weights.split(",")):
        for w in weights:
            ts = decode(pair, audios, tuple(NAMES), w, tw)
            f = hotword_figures(data, [t.text for t in ts])
            print(f"  {w:6g}  {tw:15g}  {f['recall']:8.1f}  {f['false_alarms_per_100']:20.1f}  "
                  f"{f['wer_controls']:14.1f}  {f['wer_name_sentences_without_name']:29.1f}")
    print(f"confidence (no hotwords): {c['words']} words, {c['wrong']} wrong")
    print(f"  ECE probability {c['ece_probability']:.3f}, ctc_probability {c['ece_ctc_probability']:.3f}")
    print(f"  AUROC of wrong words: probability {c['auroc_probability']:.3f}, ctc_probability "
          f"{c['auroc_ctc_probability']:.3f}, product {c['auroc_product']:.3f}")
    # the graph's own cost at a weight too small to change a hypothesis, then at the largest weight, where the
    # search itself changes (other hypotheses, more CTC candidates scored when bonuses lift their bounds)
    for w_cost in () if args.no_cost else (0.001, max(weights) or 1.5):
        none, hundred = cost(pair, audios, w_cost)
        print(f"cost, weight {w_cost:g}: decode_chunks (encoder, beam, alignment) of all {len(audios)} utterances "
              f"in batches of 16: no term {none:.2f} s, 100 terms {hundred:.2f} s: x{hundred / none:.3f} "
              f"(same run, best of 2)")


if __name__ == "__main__":
    main()
