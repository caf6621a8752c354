"""SentencePiece tokenizer with FAMA's fairseq ids, language tags and the CTC blank.

ids: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, then the fairseq dict entries in order (equal to the spm ids),
then `<ctc_blank>` appended last, as `JointCtcMultiTaskModel.build_model` does.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
BOS, PAD, EOS, UNK = 0, 1, 2, 3
BLANK_PIECE = "<ctc_blank>"
LANG_TAG = "<lang:{}>"
MODEL_FILE, DICT_FILE = "tokenizer.model", "dict.txt"
_LANG_RE = re.compile(r"^<lang:([^<>]+)>$")
LANGUAGE_NAMES = {"en": "english", "it": "italian"}  # the names OpenAI's API and whisper accept for the codes


def language_code(value: str) -> str:
    """The code of a language given as a code or a name, in any case ("English", "IT" -> "en", "it"); anything
    else is returned lowercased, for the caller to refuse with its own choices."""
    key = value.strip().lower()
    return {name: code for code, name in LANGUAGE_NAMES.items()}.get(key, key)


def read_fairseq_dict(path: str | Path) -> list[str]:
    """Symbols of a fairseq dict file (`<symbol> <count> [#fairseq:overwrite]` per line), in order."""
    symbols = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        word, _, field = line.rstrip().rpartition(" ")
        if field == "#fairseq:overwrite":
            word, _, field = word.rpartition(" ")
        if not word or not field.lstrip("-").isdigit():
            raise ValueError(f"{path}:{n}: not a fairseq dict line ('<symbol> <count>'): {line!r}")
        symbols.append(word)
    return symbols


class Tokenizer:
    """SentencePiece model + fairseq dictionary ids as FAMA uses them (source and target share one vocabulary)."""

    def __init__(self, model_path: str | Path, dict_path: str | Path | None = None):
        self.model_path = Path(model_path)
        self.dict_path = Path(dict_path) if dict_path is not None else None
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        n = self.sp.get_piece_size()
        found = tuple(self.sp.id_to_piece(i) for i in range(min(4, n)))
        if found != SPECIALS:
            raise ValueError(
                f"{self.model_path}: ids 0-3 must be {SPECIALS} (spm trained with bos/pad/eos/unk ids 0/1/2/3, "
                f"as FBK's gen_vocab does), found {found}"
            )
        if self.dict_path is not None:
            self._check_dict(read_fairseq_dict(self.dict_path))
        self.blank = n
        self._languages = [m.group(1) for i in range(4, n) if (m := _LANG_RE.match(self.sp.id_to_piece(i)))]

    def _check_dict(self, symbols: list[str]) -> None:
        expected = [self.sp.id_to_piece(i) for i in range(4, self.sp.get_piece_size())]
        if symbols and symbols[-1] == BLANK_PIECE:
            symbols = symbols[:-1]
        where = f"fairseq dict {self.dict_path} does not match the SentencePiece model {self.model_path}"
        for i, (got, want) in enumerate(zip(symbols, expected, strict=False)):
            if got != want:
                raise ValueError(f"{where}: id {i + 4} is {got!r} in the dict but {want!r} in the spm model")
        if len(symbols) != len(expected):
            raise ValueError(
                f"{where}: the dict has {len(symbols)} entries, the spm model {len(expected)} pieces after the "
                "4 specials (fairseq ids must equal spm ids)"
            )

    @classmethod
    def from_folder(cls, folder: str | Path) -> Tokenizer:
        folder = Path(folder)
        dict_path = folder / DICT_FILE
        return cls(folder / MODEL_FILE, dict_path if dict_path.exists() else None)

    def save(self, folder: str | Path) -> None:
        """Write `tokenizer.model` and `dict.txt` into a model folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _copy(self.model_path, folder / MODEL_FILE)
        if self.dict_path is not None:
            _copy(self.dict_path, folder / DICT_FILE)
        else:
            write_fairseq_dict(self.sp, folder / DICT_FILE)

    @property
    def vocab_size(self) -> int:
        """Number of output ids, `<ctc_blank>` included."""
        return self.blank + 1

    bos, pad, eos, unk = BOS, PAD, EOS, UNK

    @property
    def languages(self) -> list[str]:
        return list(self._languages)

    def lang_tag_id(self, lang: str) -> int:
        if lang not in self._languages:
            known = ", ".join(self._languages) or "none"
            raise ValueError(f"no language tag {LANG_TAG.format(lang)} in {self.model_path} (languages: {known})")
        return self.sp.piece_to_id(LANG_TAG.format(lang))

    def encode(self, text: str) -> list[int]:
        """SentencePiece ids of `text`, without `</s>` and without a language tag."""
        return self.sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, dropping `<s>`, `<pad>`, `</s>`, `<unk>`, language tags and `<ctc_blank>`."""
        keep = []
        for i in ids:
            i = int(i)
            if not 0 <= i <= self.blank:
                raise ValueError(f"token id {i} out of range (vocabulary size {self.vocab_size})")
            if i >= 4 and i != self.blank and not _LANG_RE.match(self.sp.id_to_piece(i)):
                keep.append(i)
        return self.sp.decode(keep).strip()

    def id_to_piece(self, i: int) -> str:
        if i == self.blank:
            return BLANK_PIECE
        if not 0 <= i < self.blank:
            raise ValueError(f"token id {i} out of range (vocabulary size {self.vocab_size})")
        return self.sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        """Id of `piece`; `<unk>`'s id for unknown pieces, like fairseq's `Dictionary.index`."""
        return self.blank if piece == BLANK_PIECE else self.sp.piece_to_id(piece)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.model_path)!r}, vocab_size={self.vocab_size}, languages={self._languages})"


def _copy(src: Path, dst: Path) -> None:
    if not (dst.exists() and src.samefile(dst)):
        shutil.copyfile(src, dst)


def write_fairseq_dict(sp: spm.SentencePieceProcessor, path: str | Path) -> None:
    """fairseq dict as FBK's gen_vocab writes it: `<piece> 1` for every spm id >= 4, in id order."""
    lines = [f"{sp.id_to_piece(i)} 1\n" for i in range(4, sp.get_piece_size())]
    Path(path).write_text("".join(lines), encoding="utf-8")


def train_spm(
    sentences: Iterable[str],
    out_prefix: str | Path,
    vocab_size: int,
    model_type: str = "unigram",
    langs: Sequence[str] = ("en", "it"),
    num_threads: int = 8,
) -> Tokenizer:
    """Train `<out_prefix>.model` and the fairseq dict `<out_prefix>.txt` like FBK's `gen_vocab`.

    unk/bos/eos/pad ids 3/0/2/1, character_coverage 1.0, `<lang:xx>` user-defined symbols (ids 4, 5, ...),
    default nmt_nfkc normaliser. The result depends only on the sentences and these arguments: the thread
    count is fixed (not the machine's core count) because it changes the piece scores in the last digits.
    """
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    lines = (s.replace("\r", " ").replace("\n", " ").strip() for s in sentences)
    spm.SentencePieceTrainer.train(
        sentence_iterator=(s for s in lines if s),
        model_prefix=str(out_prefix),
        model_type=model_type,
        vocab_size=vocab_size,
        character_coverage=1.0,
        num_threads=num_threads,
        unk_id=UNK,
        bos_id=BOS,
        eos_id=EOS,
        pad_id=PAD,
        user_defined_symbols=[LANG_TAG.format(lang) for lang in langs],
        minloglevel=2,
    )
    model_path = out_prefix.with_name(out_prefix.name + ".model")
    dict_path = out_prefix.with_name(out_prefix.name + ".txt")
    write_fairseq_dict(spm.SentencePieceProcessor(model_file=str(model_path)), dict_path)
    return Tokenizer(model_path, dict_path)
