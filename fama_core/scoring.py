"""Scores as papers report them: corpus-level WER/CER (jiwer) on normalised text, BLEU/chrF (sacrebleu).

All scores are percentages (0-100). The normalisation rules are documented in docs/evaluation.md.
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jiwer
from sacrebleu.metrics import BLEU, CHRF

# ---------------------------------------------------------------------------------------------------------------
# normalisation

_APOSTROPHES = str.maketrans({c: "'" for c in "\u2019\u2018\u02bc\u00b4`\u2032\uff07"})
_THOUSANDS = {"en": ",", "it": "."}  # other or unknown languages accept both separators
_SPLIT_APOSTROPHE = {"it"}  # elision languages: "l'acqua" -> "l acqua"
_GROUPED = {
    sep: re.compile(rf"(?<![\d.,])\d{{1,3}}(?:{re.escape(sep)}\d{{3}})+(?!\d|{re.escape(sep)}\d)") for sep in ",."
}
_DECIMAL = re.compile(r"(?<=\d)[.,](?=\d)")


def _base_lang(lang: str | None) -> str | None:
    return lang.lower().replace("_", "-").split("-")[0] if lang else None


def _word_char(c: str) -> bool:
    return unicodedata.category(c)[0] in "LNM"


def normalize_text(text: str, lang: str | None = None) -> str:
    """Lowercased text without punctuation and symbols, for WER/CER (rules and examples: docs/evaluation.md).

    1. apostrophe look-alikes (’ ‘ ʼ ´ ` ′ ＇) become ', then Unicode NFKC, then lowercase;
    2. numbers stay digits; thousands separators are dropped ("1,000" -> "1000"; the separator is "," for
       English, "." for Italian, either for other/unknown languages) and a remaining "." or "," between
       digits is a decimal mark, written "." ("3,5" -> "3.5");
    3. apostrophes: Italian splits elisions ("l'acqua" -> "l acqua", "c'è" -> "c è"); other languages keep
       an apostrophe between two letters/digits ("don't") and drop the others;
    4. letters (accents kept), digits and combining marks stay; format characters are deleted; everything
       else (punctuation, symbols, whitespace) becomes a space; spaces are squeezed.
    """
    lang = _base_lang(lang)
    text = unicodedata.normalize("NFKC", text.translate(_APOSTROPHES)).lower()
    for sep in _THOUSANDS.get(lang, ",."):
        text = _GROUPED[sep].sub(lambda m, s=sep: m.group().replace(s, ""), text)
    text = _DECIMAL.sub(".", text)
    keep_apostrophe = lang not in _SPLIT_APOSTROPHE
    out = []
    for i, c in enumerate(text):
        prev, nxt = text[i - 1] if i else " ", text[i + 1] if i + 1 < len(text) else " "
        if _word_char(c):
            out.append(c)
        elif unicodedata.category(c) == "Cf":
            continue
        elif c == "'" and keep_apostrophe and _word_char(prev) and _word_char(nxt):
            out.append(c)
        elif c == "." and prev.isdigit() and nxt.isdigit():
            out.append(c)
        else:
            out.append(" ")
    return " ".join("".join(out).split())


# ---------------------------------------------------------------------------------------------------------------
# WER / CER


@dataclass
class WerResult:
    wer: float  # 100 * (S + D + I) / ref_words, over the whole set
    cer: float  # the same over characters (spaces between words included)
    raw_wer: float  # WER on the text as given: case and punctuation kept, only whitespace split
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    ref_words: int
    hyp_words: int
    char_errors: int
    ref_chars: int
    utterances: int
    normalized: bool = True

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def _edit_ops(hyps: list[str], refs: list[str], chars: bool) -> list[tuple[int, int, int, int]]:
    """(substitutions, deletions, insertions, hits) per utterance; an empty side is pure insertions/deletions."""
    units = (lambda s: list(s)) if chars else (lambda s: s.split())
    ops: list[tuple[int, int, int, int] | None] = []
    todo = []
    for n, (h, r) in enumerate(zip(hyps, refs, strict=True)):
        hu, ru = units(h), units(r)
        if hu and ru:
            ops.append(None)
            todo.append(n)
        else:
            ops.append((0, len(ru), len(hu), 0))
    if todo:
        process = jiwer.process_characters if chars else jiwer.process_words
        out = process([refs[n] for n in todo], [hyps[n] for n in todo])
        for n, chunks in zip(todo, out.alignments, strict=True):
            c = {"substitute": 0, "delete": 0, "insert": 0, "equal": 0}
            for a in chunks:
                insert = a.type == "insert"
                c[a.type] += a.hyp_end_idx - a.hyp_start_idx if insert else a.ref_end_idx - a.ref_start_idx
            ops[n] = (c["substitute"], c["delete"], c["insert"], c["equal"])
    return ops  # type: ignore[return-value]


def _pct(errors: int, total: int) -> float:
    # an empty reference set counts as one word, so any insertion there is an error, not a division by zero
    return 100.0 * errors / max(total, 1)


_COUNTS = ("substitutions", "deletions", "insertions", "hits", "ref_words", "hyp_words", "char_errors", "ref_chars")


def _asr_utterances(ids, hyps, refs, langs, normalize: bool) -> list[dict]:
    raw_h, raw_r = [" ".join(s.split()) for s in hyps], [" ".join(s.split()) for s in refs]
    if normalize:
        hyps = [normalize_text(h, lg) for h, lg in zip(hyps, langs, strict=True)]
        refs = [normalize_text(r, lg) for r, lg in zip(refs, langs, strict=True)]
    else:
        hyps, refs = raw_h, raw_r
    words, chars = _edit_ops(hyps, refs, False), _edit_ops(hyps, refs, True)
    raw = _edit_ops(raw_h, raw_r, False) if normalize else words
    rows = []
    for n, i in enumerate(ids):
        (s, d, ins, hits), (cs, cd, ci, ch), (rs, rd, ri, rh) = words[n], chars[n], raw[n]
        row = {"id": i, "wer": _pct(s + d + ins, s + d + hits), "errors": s + d + ins}
        row.update(
            zip(_COUNTS, (s, d, ins, hits, s + d + hits, s + ins + hits, cs + cd + ci, cs + cd + ch), strict=True)
        )
        row.update(raw_errors=rs + rd + ri, raw_ref_words=rs + rd + rh, hyp=raw_h[n], ref=raw_r[n])
        if normalize:
            row.update(norm_hyp=hyps[n], norm_ref=refs[n])
        rows.append(row)
    return rows


def _wer_of(rows: list[dict], normalize: bool) -> WerResult:
    tot = {k: sum(r[k] for r in rows) for k in (*_COUNTS, "raw_errors", "raw_ref_words")}
    return WerResult(
        wer=_pct(tot["substitutions"] + tot["deletions"] + tot["insertions"], tot["ref_words"]),
        cer=_pct(tot["char_errors"], tot["ref_chars"]),
        raw_wer=_pct(tot["raw_errors"], tot["raw_ref_words"]),
        **{k: tot[k] for k in _COUNTS},
        utterances=len(rows),
        normalized=normalize,
    )


def _check_lengths(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")


def wer(hyps: Sequence[str], refs: Sequence[str], normalize: bool = True, lang: str | None = None) -> WerResult:
    """Corpus-level WER/CER: total edit operations over total reference words (characters), in percent."""
    _check_lengths(hyps, refs)
    rows = _asr_utterances(range(len(hyps)), list(hyps), list(refs), [lang] * len(hyps), normalize)
    return _wer_of(rows, normalize)


# ---------------------------------------------------------------------------------------------------------------
# BLEU / chrF


@dataclass
class BleuResult:
    bleu: float
    chrf: float
    precisions: list[float]  # 1- to 4-gram precisions, percent
    brevity_penalty: float
    hyp_len: int
    ref_len: int
    utterances: int
    signature: str  # sacrebleu BLEU signature
    chrf_signature: str


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> BleuResult:
    """sacrebleu corpus BLEU and chrF with default settings (13a tokenisation, case-sensitive, one reference)."""
    _check_lengths(hyps, refs)
    hyps, refs = [" ".join(h.split()) for h in hyps], [" ".join(r.split()) for r in refs]
    b, c = BLEU(), CHRF()
    if not hyps:  # nothing to score (e.g. every row failed): zeros, as for an all-wrong corpus
        b.corpus_score(["x"], [["x"]]), c.corpus_score(["x"], [["x"]])  # sacrebleu signs only scored metrics
        return BleuResult(0.0, 0.0, [0.0] * 4, 0.0, 0, 0, 0, str(b.get_signature()), str(c.get_signature()))
    bs, cs = b.corpus_score(hyps, [refs]), c.corpus_score(hyps, [refs])
    return BleuResult(
        bleu=bs.score,
        chrf=cs.score,
        precisions=list(bs.precisions),
        brevity_penalty=bs.bp,
        hyp_len=bs.sys_len,
        ref_len=bs.ref_len,
        utterances=len(hyps),
        signature=str(b.get_signature()),
        chrf_signature=str(c.get_signature()),
    )


def _st_utterances(ids, hyps, refs) -> list[dict]:
    b, c = BLEU(effective_order=True), CHRF()
    return [
        {"id": i, "bleu": b.sentence_score(h, [r]).score, "chrf": c.sentence_score(h, [r]).score, "hyp": h, "ref": r}
        for i, h, r in zip(ids, hyps, refs, strict=True)
    ]


# ---------------------------------------------------------------------------------------------------------------
# per-utterance scores and reports


def _sort_worst_first(rows: list[dict], task: str) -> list[dict]:
    if task == "asr":
        return sorted(rows, key=lambda r: (-r["wer"], -r["errors"]))
    return sorted(rows, key=lambda r: (r["chrf"], r["bleu"]))


def _check_task(task: str) -> None:
    if task not in ("asr", "st"):
        raise ValueError(f"task must be 'asr' or 'st', not {task!r}")


def score_utterances(
    ids: Sequence[str], hyps: Sequence[str], refs: Sequence[str], task: str = "asr", lang: str | None = None
) -> list[dict]:
    """One dict per utterance, worst first: ASR by WER (then errors), ST by sentence chrF (then sentence BLEU)."""
    _check_task(task)
    _check_lengths(hyps, refs)
    if task == "asr":
        rows = _asr_utterances(list(ids), list(hyps), list(refs), [lang] * len(hyps), True)
    else:
        rows = _st_utterances(list(ids), list(hyps), list(refs))
    return _sort_worst_first(rows, task)


@dataclass
class Report:
    task: str  # "asr" or "st"
    overall: WerResult | BleuResult
    groups: dict[str, WerResult | BleuResult] = field(default_factory=dict)  # per language or "src-tgt"
    utterances: list[dict] = field(default_factory=list)  # worst first

    @property
    def score(self) -> float:
        """The headline number: WER for ASR, BLEU for ST."""
        return self.overall.wer if isinstance(self.overall, WerResult) else self.overall.bleu

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "overall": dataclasses.asdict(self.overall),
            "groups": {k: dataclasses.asdict(v) for k, v in self.groups.items()},
            "utterances": self.utterances,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def summary(self) -> str:
        lines = []
        for name, r in [("all", self.overall), *self.groups.items()]:
            if isinstance(r, WerResult):
                lines.append(
                    f"{name}: WER {r.wer:.2f} (S {r.substitutions} D {r.deletions} I {r.insertions} "
                    f"N {r.ref_words})  CER {r.cer:.2f}  raw WER {r.raw_wer:.2f}  [{r.utterances} utt]"
                )
            else:
                lines.append(f"{name}: BLEU {r.bleu:.2f}  chrF {r.chrf:.2f}  [{r.utterances} utt]  {r.signature}")
        return "\n".join(lines)


def score(
    ids: Sequence[str],
    hyps: Sequence[str],
    refs: Sequence[str],
    task: str = "asr",
    lang: str | Sequence[str | None] | None = None,
    normalize: bool = True,
) -> Report:
    """Report over aligned lists. `lang`: one label for all, or one per utterance, which also gives per-group
    results: the language of the text for ASR ("it", used by the normaliser), for ST any label, e.g. "en-it"."""
    _check_task(task)
    _check_lengths(hyps, refs)
    ids, hyps, refs = [str(i) for i in ids], list(hyps), list(refs)
    labels = [lang] * len(ids) if lang is None or isinstance(lang, str) else list(lang)
    if len(labels) != len(ids):
        raise ValueError(f"{len(labels)} language labels for {len(ids)} utterances")
    if task == "asr":
        rows = _asr_utterances(ids, hyps, refs, labels, normalize)
        overall = _wer_of(rows, normalize)
        groups = {
            g: _wer_of([r for r, x in zip(rows, labels, strict=True) if x == g], normalize) for g in _uniq(labels)
        }
    else:
        rows = _st_utterances(ids, hyps, refs)
        overall = bleu(hyps, refs)
        groups = {}
        for g in _uniq(labels):
            sel = [n for n, x in enumerate(labels) if x == g]
            groups[g] = bleu([hyps[n] for n in sel], [refs[n] for n in sel])
    for r, x in zip(rows, labels, strict=True):
        if x is not None:
            r["lang"] = x
    return Report(task, overall, groups, _sort_worst_first(rows, task))


def _uniq(labels: list) -> list[str]:
    return sorted({x for x in labels if x is not None})


def gate(report: Report, max_wer: float | None = None, min_bleu: float | None = None) -> bool:
    """True when the overall scores pass: WER <= max_wer and BLEU >= min_bleu (percent; None = no check)."""
    ok = True
    if max_wer is not None:
        if not isinstance(report.overall, WerResult):
            raise ValueError("max_wer needs an ASR report (WER); use min_bleu for speech translation")
        ok &= report.overall.wer <= max_wer
    if min_bleu is not None:
        if not isinstance(report.overall, BleuResult):
            raise ValueError("min_bleu needs a speech-translation report (BLEU); use max_wer for ASR")
        ok &= report.overall.bleu >= min_bleu
    return bool(ok)


# ---------------------------------------------------------------------------------------------------------------
# reading hypotheses and references

TEXT_COLUMNS = ("text", "tgt_text", "hyp", "ref")


def _read_tsv(path: Path, lines: list[str], column: str | None) -> tuple[dict[str, str], dict[str, dict]]:
    header = lines[0].split("\t")
    col = column or next(c for c in TEXT_COLUMNS if c in header)
    texts, rows = {}, {}
    for n, line in enumerate(lines[1:], 2):
        if not line:
            continue
        values = line.split("\t")
        if len(values) != len(header):
            raise ValueError(f"{path}:{n}: {len(values)} fields, the header has {len(header)}")
        row = dict(zip(header, values, strict=True))
        if row["id"] in texts:
            raise ValueError(f"{path}:{n}: duplicate id {row['id']!r}")
        texts[row["id"]], rows[row["id"]] = row[col], row
    return texts, rows


def _json_text(obj, where: str) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        return obj["text"]
    if isinstance(obj, dict) and isinstance(obj.get("segments"), list):
        return " ".join(s["text"].strip() for s in obj["segments"])
    raise ValueError(f"{where}: expected a string or an object with 'text'")


def _read_json(path: Path) -> dict[str, str]:
    if path.suffix == ".jsonl":
        items = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    else:
        items = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(items, dict) and ("text" in items or "segments" in items):
        return {path.stem: _json_text(items, str(path))}
    if isinstance(items, dict):
        return {str(k): _json_text(v, f"{path}[{k!r}]") for k, v in items.items()}
    if isinstance(items, list):
        out = {}
        for n, item in enumerate(items):
            if not isinstance(item, dict) or "id" not in item:
                raise ValueError(f"{path}: item {n} has no 'id'")
            out[str(item["id"])] = _json_text(item, f"{path}[{n}]")
        return out
    raise ValueError(f"{path}: not a fama JSON output (an object with 'text' or a list of {{'id', 'text'}})")


def _read_folder(path: Path) -> dict[str, str]:
    out = {f.stem: " ".join(f.read_text(encoding="utf-8").split()) for f in sorted(path.glob("*.txt"))}
    for f in sorted(path.glob("*.json")):  # a .json wins over the .txt of the same name
        out[f.stem] = _json_text(json.loads(f.read_text(encoding="utf-8")), str(f))
    if not out:
        raise ValueError(f"{path}: no fama .json or .txt outputs in this folder")
    return out


def _read(path: str | Path, column: str | None = None) -> tuple[dict[str, str], dict[str, dict]]:
    path = Path(path)
    if path.is_dir():
        return _read_folder(path), {}
    if path.suffix in (".json", ".jsonl"):
        return _read_json(path), {}
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    if "id" in header and (column in header if column else any(c in header for c in TEXT_COLUMNS)):
        return _read_tsv(path, lines, column)
    if path.suffix == ".tsv" or column:
        raise ValueError(
            f"{path}: the TSV header needs an 'id' column and a {column or ' or '.join(TEXT_COLUMNS)} "
            f"column, found {header}"
        )
    return {str(n): line for n, line in enumerate(lines, 1)}, {}


def read_texts(path: str | Path, column: str | None = None) -> dict[str, str]:
    """id -> text from a TSV with a header (`id` + `text`/`tgt_text`/`hyp`/`ref`, or `column`), a fama JSON
    output (`{"text": ...}` keyed by file stem, or a list of `{"id", "text"}`), a JSON Lines file, a folder of
    fama .json/.txt outputs (keyed by file stem), or plain lines (id = line number, from 1)."""
    return _read(path, column)[0]


def _ids_error(hyp_path, ref_path, missing: list[str], extra: list[str]) -> ValueError:
    def show(ids: list[str]) -> str:
        return ", ".join(ids[:20]) + (f" ... ({len(ids) - 20} more)" if len(ids) > 20 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} reference ids of {ref_path} have no hypothesis in {hyp_path}: {show(missing)}")
    if extra:
        parts.append(f"{len(extra)} hypothesis ids of {hyp_path} are not in {ref_path}: {show(extra)}")
    return ValueError("; ".join(parts))


def score_files(
    hyp_path: str | Path,
    ref_path: str | Path,
    task: str = "asr",
    lang: str | None = None,
    normalize: bool = True,
    ref_column: str | None = None,
) -> Report:
    """Score hypotheses against references matched by id. Without `lang`, a reference TSV's `lang`,
    `tgt_lang` (ASR) or `src_lang`+`tgt_lang` (ST) columns give per-utterance languages and groups."""
    hyps = read_texts(hyp_path)
    refs, rows = _read(ref_path, ref_column)
    missing = [i for i in refs if i not in hyps]
    extra = [i for i in hyps if i not in refs]
    if missing or extra:
        raise _ids_error(hyp_path, ref_path, missing, extra)
    ids = list(refs)
    labels: str | list | None = lang
    if lang is None and rows:
        labels = [_row_label(rows[i], task, ref_column) for i in ids]
    return score(ids, [hyps[i] for i in ids], [refs[i] for i in ids], task, labels, normalize)


def _row_label(row: dict, task: str, column: str | None) -> str | None:
    if row.get("lang"):
        return row["lang"]
    if column == "src_text":
        return row.get("src_lang") or None
    if task == "st" and row.get("src_lang") and row.get("tgt_lang"):
        return f"{row['src_lang']}-{row['tgt_lang']}"
    return row.get("tgt_lang") or None
