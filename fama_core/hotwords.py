"""Hotwords: terms (names, jargon) the beam search favours while the audio supports them.

A context graph in the style of icefall's (a token trie with Aho-Corasick failure links) holds every
SentencePiece spelling of every term: as typed and in the case variants people type (lower, upper, each
word capitalised), with and without the word-start marker. A hypothesis that follows a term gets `weight`
per token; when the match breaks, what it got is taken back (the failure link keeps a suffix that still
matches); when a term is complete, its bonus is kept. The graph is compiled into two tables over
(node, token column), so a step of the search is two gathers on the device and no host read.

The bonus only moves hypotheses the decoder and the CTC prefix score already consider: the CTC prefix
probability of a term the audio does not hold falls by far more than the bonus, so the term stays out.
"""

from __future__ import annotations

import functools
import math
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

DEFAULT_WEIGHT = 1.5  # bonus per token of a term, in log-probability units (icefall's default context score)
MAX_WEIGHT = 20.0  # a larger bonus would outweigh any acoustic evidence


@dataclass(frozen=True)
class Hotword:
    text: str
    weight: float = DEFAULT_WEIGHT  # bonus per token while a hypothesis follows the term

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError("a hotword cannot be empty")
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight)
                and 0 < self.weight <= MAX_WEIGHT):
            raise ValueError(f"hotword weight must be a number in (0, {MAX_WEIGHT:g}], not {self.weight!r}")


def parse_hotwords(text: str, weight: float = DEFAULT_WEIGHT) -> list[Hotword]:
    """`"FBK, Trento, Bentivogli"` -> one Hotword per comma-separated term (ValueError if there is none)."""
    terms = [t.strip() for t in text.split(",") if t.strip()]
    if not terms:
        raise ValueError(f"no hotword in {text!r}")
    return [Hotword(" ".join(t.split()), weight) for t in terms]


def read_hotwords_file(path: str | Path, weight: float = DEFAULT_WEIGHT) -> list[Hotword]:
    """One term per line, optionally `term<TAB>weight` (else `weight`); blank lines and lines starting with `#`
    are skipped. ValueError naming the file (and line) and the reason."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not a hotwords file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        term, _, given = line.partition("\t")
        if "\t" in given:
            raise ValueError(f"{path}:{n}: more than one TAB (expected term<TAB>weight)")
        try:
            value = float(given) if given.strip() else weight
        except ValueError:
            raise ValueError(f"{path}:{n}: weight {given.strip()!r} is not a number") from None
        try:
            out.append(Hotword(" ".join(term.split()), value))
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
    if not out:
        raise ValueError(f"{path}: no hotwords (one term per line, optionally term<TAB>weight)")
    return out


def case_variants(text: str) -> list[str]:
    """The term as typed, lower case, upper case and with each word capitalised (distinct, in that order)."""
    words = text.split()
    titled = " ".join(w[:1].upper() + w[1:] for w in words)
    return list(dict.fromkeys([text, text.lower(), text.upper(), titled]))


@functools.lru_cache(maxsize=4)
def _continuation_processor(model_path: str):
    """A copy of the SentencePiece model that does not add the word-start marker before the text (None when
    the model's protobuf module is missing)."""
    import sentencepiece as spm

    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:  # protobuf not installed: the spellings with the marker still work
        return None
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_path).read_bytes())
    proto.normalizer_spec.add_dummy_prefix = False
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def spellings(text: str, tokenizer: Tokenizer) -> list[tuple[int, ...]]:
    """Every token sequence the model may write for `text`: each case variant, starting a word and (when the
    model allows it) continuing one; sequences with `<unk>` are left out."""
    inner = _continuation_processor(str(tokenizer.model_path))
    out: dict[tuple[int, ...], None] = {}
    for variant in case_variants(text):
        ids = [tuple(tokenizer.encode(variant))]
        if inner is not None:
            ids.append(tuple(inner.encode(variant, out_type=int)))
        for seq in ids:
            if seq and tokenizer.unk not in seq:
                out[seq] = None
    return list(out)


class ContextGraph:
    """A deterministic automaton over the spellings: `next_state[node, column]` and `delta[node, column]`,
    the score change of taking the column's token in that node; `column[token]` maps the vocabulary onto the
    graph's tokens (every other token is the last column: back to the root, the partial match taken back).

    delta = acc(next) - acc(node) + kept(next), with acc the bonus of the matched path (what a breaking match
    takes back) and kept the bonus of the longest term that ends at `next` (what a complete match keeps).
    """

    def __init__(self, terms: Sequence[tuple[Sequence[int], float]], vocab_size: int):
        children: list[dict[int, int]] = [{}]
        acc, end = [0.0], [False]
        for tokens, weight in terms:
            node = 0
            for tok in tokens:
                nxt = children[node].get(tok)
                if nxt is None:
                    nxt = len(children)
                    children[node][tok] = nxt
                    children.append({})
                    acc.append(acc[node] + weight)
                    end.append(False)
                else:  # spellings sharing a prefix: the larger bonus
                    acc[nxt] = max(acc[nxt], acc[node] + weight)
                node = nxt
            if tokens:
                end[node] = True
        alphabet = sorted({t for c in children for t in c})
        col = {t: i for i, t in enumerate(alphabet)}
        other = len(alphabet)
        nodes = len(children)
        goto = [[0] * (other + 1) for _ in range(nodes)]
        fail, kept = [0] * nodes, [0.0] * nodes
        queue = deque()
        for tok, child in children[0].items():
            goto[0][col[tok]] = child
            queue.append(child)
        for child in queue:
            kept[child] = acc[child] if end[child] else 0.0
        while queue:  # breadth first: a node's failure link is resolved before its children's
            node = queue.popleft()
            row = goto[node]
            row[:other] = goto[fail[node]][:other]
            for tok, child in children[node].items():
                if node:
                    fail[child] = goto[fail[node]][col[tok]]
                    kept[child] = acc[child] if end[child] else kept[fail[child]]
                row[col[tok]] = child
                queue.append(child)
        next_state = torch.tensor(goto, dtype=torch.long)
        acc_t, kept_t = torch.tensor(acc), torch.tensor(kept)
        self.next_state = next_state
        self.delta = acc_t[next_state] - acc_t[:, None] + kept_t[next_state]
        self.column = torch.full((vocab_size,), other, dtype=torch.long)
        if alphabet:
            self.column[torch.tensor(alphabet)] = torch.arange(other)
        self.nodes = nodes
        self._on: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    def tables(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(next_state, delta, column) on `device` (copied once per device)."""
        if device not in self._on:
            self._on[device] = (self.next_state.to(device), self.delta.to(device), self.column.to(device))
        return self._on[device]


@dataclass(frozen=True)
class SpelledHotwords:
    """Hotwords with their token spellings: what the search needs, made once per tokenizer."""

    terms: tuple[tuple[tuple[int, ...], float], ...]

    @classmethod
    def of(cls, hotwords: Iterable[Hotword], tokenizer: Tokenizer) -> SpelledHotwords:
        return cls(tuple((seq, h.weight) for h in hotwords for seq in spellings(h.text, tokenizer)))


@functools.lru_cache(maxsize=8)
def context_graph(spelled: SpelledHotwords, vocab_size: int) -> ContextGraph:
    """The compiled graph of these spellings (cached: batches of one run share it)."""
    return ContextGraph(spelled.terms, vocab_size)


_EDGE = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)


def restore_spelling(words: list[str], hotwords: Iterable[Hotword]) -> list[str]:
    """`words` (of a transcript) with every occurrence of a hotword, in whatever case the model wrote it,
    spelled as it was given; punctuation around the words stays."""
    parts = [_EDGE.match(w).groups() for w in words]
    cores = [p[1].casefold() for p in parts]
    out = list(words)
    for h in sorted(hotwords, key=lambda h: -len(h.text.split())):  # longer terms first
        typed = h.text.split()
        want = [t.casefold() for t in typed]
        for i in range(len(words) - len(want) + 1):
            if cores[i:i + len(want)] == want:
                for j, t in enumerate(typed):
                    lead, _, trail = parts[i + j]
                    out[i + j] = lead + t + trail
    return out
