"""Simultaneous decoding: quality against latency for AlignAtt, StreamAtt and wait-k (issue #29).

For every row of the manifests (fairseq speech-to-text TSVs, e.g. the synthetic recipe's `asr_en_test.tsv`,
`st_en_it_test.tsv`), the clip is delivered to `fama_core.live.LiveDecoder` in `--step` seconds of audio at a
time, as fast as the decoder takes it, and each committed word gets its delay: the audio read when it was
committed (ideal) and that plus the decoder's computation time so far (computation-aware, as SimulEval
computes it: the step's compute stacks on the audio). Reported per manifest, policy and latency setting:

* quality: WER (ASR) or BLEU (ST), against the references and against fama's own offline output of the same
  model (beam 5 with joint CTC, `fama transcribe`'s default; and greedy, which the live search is);
* latency: LAAL and AL in seconds, ideal and computation-aware (`fama_core.live.lagging`), averaged over
  the clips; the words' delays are those of the words of the committed text (word unit, as FBK's papers).

StreamLAAL (long-form audio resegmented on the references with mwerSegmenter) is not computed: the recipe's
test sets are single utterances, where StreamLAAL is LAAL.

A plot of quality against ideal LAAL is written as PNG when matplotlib is installed (it is not a project
requirement). The machine's load inflates the computation-aware figures; the ideal ones do not depend on it.

Run:  python benchmarks/live_bench.py DATA/asr_en_test.tsv DATA/st_en_it_test.tsv --model fama-demo --limit 50
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fama_core.audio import load_audio  # noqa: E402
from fama_core.checkpoints import load_model  # noqa: E402
from fama_core.decoding import DecodeOptions, decode_encoded  # noqa: E402
from fama_core.features import SAMPLE_RATE, compute_features  # noqa: E402
from fama_core.live import LiveDecoder, LiveOptions, lagging  # noqa: E402
from fama_core.manifest import read_manifest  # noqa: E402
from fama_core.scoring import bleu, wer  # noqa: E402

DEFAULT_SETTINGS = "alignatt:0.2,0.4,0.8;streamatt:0.4;waitk:0.5,1.0,2.0,inf"


def parse_settings(text: str) -> list[tuple[str, float]]:
    """`policy:latency,latency;policy:...` -> [(policy, latency)]."""
    out = []
    for part in text.split(";"):
        policy, _, values = part.partition(":")
        out += [(policy.strip(), float(v)) for v in values.split(",")]
    return out


def offline(model, tokenizer, audio, lang_id: int, beam: int) -> str:
    feats, lengths = compute_features([torch.from_numpy(audio)])
    enc = model.encode(feats.to(model.dtype), lengths)
    hyp = decode_encoded(model, enc, lang_id, DecodeOptions(beam_size=beam), source_lengths=lengths)[0]
    return tokenizer.decode(hyp[0].tokens) if hyp else ""


def simultaneous(model, tokenizer, audio, options: LiveOptions, step: float) -> tuple[str, list[float], list[float]]:
    """The committed text and each word's ideal and computation-aware delay."""
    decoder = LiveDecoder(model, tokenizer, options)
    commits = []
    n = int(step * SAMPLE_RATE)
    for i in range(0, len(audio), n):
        commits += decoder.feed(audio[i:i + n])
    commits += decoder.finish()
    words = [(w.text, c.read, c.read + c.elapsed) for c in commits for w in c.words]
    return " ".join(w for w, _, _ in words), [d for _, d, _ in words], [d for _, _, d in words]


def quality(task: str, hyps: list[str], refs: list[str], lang: str) -> float:
    return wer(hyps, refs, lang=lang).wer if task == "asr" else bleu(hyps, refs).bleu


def bench_manifest(path: Path, model, tokenizer, settings, args) -> list[dict]:
    rows = read_manifest(path)[: args.limit or None]
    base = path.parent
    src, tgt = rows[0].src_lang, rows[0].tgt_lang
    task = "asr" if src == tgt else "st"
    lang_id = tokenizer.lang_tag_id(tgt)
    audios = [load_audio(r.audio_path(base)) for r in rows]
    refs = [r.tgt_text for r in rows]
    off5 = [offline(model, tokenizer, a, lang_id, 5) for a in audios]
    off1 = [offline(model, tokenizer, a, lang_id, 1) for a in audios]
    results = []
    for label, hyps in (("offline beam 5", off5), ("offline greedy", off1)):
        results.append({"manifest": path.name, "task": task, "policy": label, "latency": None,
                        "quality": quality(task, hyps, refs, tgt), "vs_offline": quality(task, hyps, off5, tgt)})
    for policy, latency in settings:
        options = LiveOptions(policy=policy, latency=latency, step_seconds=args.step, language=src,
                              target=tgt if task == "st" else None, attention_layer=args.attention_layer)
        hyps, laal, al, laal_ca, al_ca = [], [], [], [], []
        start = time.perf_counter()
        for audio, ref in zip(audios, refs):
            text, ideal, aware = simultaneous(model, tokenizer, audio, options, args.step)
            hyps.append(text)
            seconds, ref_words = len(audio) / SAMPLE_RATE, len(ref.split())
            for out, delays, adaptive in ((laal, ideal, True), (al, ideal, False), (laal_ca, aware, True),
                                          (al_ca, aware, False)):
                value = lagging(delays, seconds, ref_words, adaptive)
                if not math.isnan(value):
                    out.append(value)
        results.append({
            "manifest": path.name, "task": task, "policy": policy, "latency": latency,
            "quality": quality(task, hyps, refs, tgt), "vs_offline": quality(task, hyps, off5, tgt),
            "vs_greedy": quality(task, hyps, off1, tgt),
            "LAAL": statistics.fmean(laal), "AL": statistics.fmean(al),
            "LAAL_ca": statistics.fmean(laal_ca), "AL_ca": statistics.fmean(al_ca),
            "wall": time.perf_counter() - start, "audio": sum(len(a) for a in audios) / SAMPLE_RATE,
        })
        print(format_row(results[-1]), flush=True)
    return results


def format_row(r: dict) -> str:
    metric = "WER" if r["task"] == "asr" else "BLEU"
    head = f"| {r['manifest']} | {r['policy']} | {'' if r['latency'] is None else r['latency']} | " \
           f"{metric} {r['quality']:.1f} | {r['vs_offline']:.1f} |"
    if "LAAL" not in r:
        return head + " | | | |"
    return head + f" {r['LAAL']:.2f} | {r['AL']:.2f} | {r['LAAL_ca']:.2f} | {r['AL_ca']:.2f} |"


def plot(results: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    manifests = list(dict.fromkeys(r["manifest"] for r in results))
    fig, axes = plt.subplots(1, len(manifests), figsize=(5 * len(manifests), 4), squeeze=False)
    for ax, name in zip(axes[0], manifests):
        rows = [r for r in results if r["manifest"] == name]
        for policy in dict.fromkeys(r["policy"] for r in rows if "LAAL" in r):
            pts = sorted((r["LAAL"], r["quality"]) for r in rows if r["policy"] == policy)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=policy)
        for r in rows:
            if "LAAL" not in r:
                ax.axhline(r["quality"], linestyle="--", linewidth=0.8, label=r["policy"])
        ax.set_title(name)
        ax.set_xlabel("ideal LAAL (s)")
        ax.set_ylabel("WER (%)" if rows[0]["task"] == "asr" else "BLEU")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifests", nargs="+", type=Path)
    ap.add_argument("--model", default="fama-demo")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"policy:latency,... (default {DEFAULT_SETTINGS})")
    ap.add_argument("--step", type=float, default=0.5, help="seconds of audio per decoding step")
    ap.add_argument("--attention-layer", type=int, default=None)
    ap.add_argument("--limit", type=int, default=0, help="first N rows of each manifest (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("live_bench"), help="folder for results.json and the plot")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, dtype="float32")
    settings = parse_settings(args.settings)
    print(f"# live_bench: {args.model}, step {args.step} s, {args.threads} thread(s), load {os.getloadavg()[0]:.1f}")
    print("| manifest | policy | latency (s) | quality | vs offline beam 5 | LAAL | AL | LAAL (ca) | AL (ca) |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for path in args.manifests:
        part = bench_manifest(path, model, tokenizer, settings, args)
        for r in part[:2]:
            print(format_row(r))
        results += part
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if plot(results, args.out / "quality_latency.png"):
        print(f"plot: {args.out / 'quality_latency.png'}")
    else:
        print("matplotlib is not installed: no plot")


if __name__ == "__main__":
    main()
