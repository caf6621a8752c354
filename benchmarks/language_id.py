"""Accuracy of `--lang auto` (spoken-language detection) on recordings whose language is known.

    python benchmarks/language_id.py --model MODEL [--manifest TSV ...] [--no-shared] [--device cpu]

Recordings: the English and Italian files of ../shared/data/media/manifest.tsv (real human speech; the
silent and the English+German files are left out), plus every row of each `--manifest` (fama/fairseq TSV:
`audio` and `src_lang` columns, audio relative to the manifest's folder), e.g. the synthetic recipe's
test sets. Each file goes through the pipeline exactly as `fama transcribe --lang auto` runs it (VAD
chunks, the first `detect_seconds` of speech scored by the decoder's language-tag log-probability); greedy
CTC decoding keeps the rest cheap. Prints accuracy per language and per set, and the confusions.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def shared_recordings() -> list[tuple[str, str, str]]:
    media = SHARED / "data" / "media"
    with open(media / "manifest.tsv", newline="", encoding="utf-8") as f:
        return [("shared media", str(media / r["file"]), r["lang"]) for r in csv.DictReader(f, delimiter="\t")
                if r["lang"] in ("en", "it")]


def manifest_recordings(path: Path) -> list[tuple[str, str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [(path.stem, str(path.parent / r["audio"]), r["src_lang"]) for r in csv.DictReader(f, delimiter="\t")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="alias, hub repo or model folder")
    ap.add_argument("--manifest", type=Path, action="append", default=[], help="TSV with audio and src_lang")
    ap.add_argument("--no-shared", action="store_true", help="leave out ../shared/data/media")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    from fama_core import load_model
    from fama_core.decoding import DecodeOptions
    from fama_core.inputs import InputFile
    from fama_core.pipeline import Pipeline, TranscribeOptions

    recordings = [] if args.no_shared else shared_recordings()
    for m in args.manifest:
        recordings += manifest_recordings(m)
    if not recordings:
        sys.exit("no recordings (is ../shared there?)")
    model, tokenizer = load_model(args.model, device=args.device)
    options = TranscribeOptions(language="auto", decode=DecodeOptions(greedy=True))
    items = [InputFile(path) for _, path, _ in recordings]
    detected = {r.item.path: (r.transcript.language if r.transcript else f"error: {r.error}")
                for r in Pipeline(model, tokenizer, options, args.model).run(items)}
    per_set: dict[str, Counter] = defaultdict(Counter)
    confusions: Counter = Counter()
    for name, path, lang in recordings:
        got = detected[path]
        for key in (name, f"{name} [{lang}]", f"all [{lang}]", "all"):
            per_set[key]["n"] += 1
            per_set[key]["right"] += got == lang
        if got != lang:
            confusions[(lang, got)] += 1
            if name == "shared media":
                print(f"  {Path(path).name}: spoken {lang}, detected {got}")
    print(f"\nlanguage detection, model {args.model}")
    print("| set | files | correct | accuracy |\n|---|---|---|---|")
    for key in sorted(per_set):
        c = per_set[key]
        print(f"| {key} | {c['n']} | {c['right']} | {100 * c['right'] / c['n']:.1f}% |")
    if confusions:
        print("confusions (spoken -> detected): " + ", ".join(f"{a}->{b}: {n}" for (a, b), n in confusions.items()))


if __name__ == "__main__":
    main()
