"""SentencePiece tokenizer with FAMA's fairseq ids, language tags and the CTC blank.

ids: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, then the fairseq dict entries in order (equal to the spm ids),
then `<ctc_blank>` appended last, as `JointCtcMultiTaskModel.build_model` does.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from .outputs import InputGuard, check_output, write_all

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
BOS, PAD, EOS, UNK = 0, 1, 2, 3
BLANK_PIECE = "<ctc_blank>"
LANG_TAG = "<lang:{}>"
MODEL_FILE, DICT_FILE = "tokenizer.model", "dict.txt"
# transformers' Speech2TextTokenizer files (FBK's Hugging Face uploads): the ids come from vocab.json
SPM_FILE, VOCAB_FILE = "sentencepiece.bpe.model", "vocab.json"
_LANG_RE = re.compile(r"^<lang:([^<>]+)>$")
LANGUAGE_NAMES = {"en": "english", "it": "italian"}  # the names OpenAI's API and whisper accept for the codes


def language_code(value: str) -> str:
    """The code of a language given as a code or a name, in any case ("English", "IT" -> "en", "it"); anything
    else is returned lowercased, for the caller to refuse with its own choices."""
    key = value.strip().lower()
    return {name: code for code, name in LANGUAGE_NAMES.items()}.get(key, key)


def read_vocab_json(path: str | Path) -> list[str]:
    """Symbols of a Speech2Text `vocab.json` ({piece: id}) by id; ValueError unless the ids are 0..N-1, once each."""
    try:
        vocab = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable JSON: {e}") from None
    if not isinstance(vocab, dict) or not all(isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
        raise ValueError(f"{path}: not a vocabulary (a JSON object of piece: integer id)")
    by_id = {i: piece for piece, i in vocab.items()}
    if len(by_id) != len(vocab) or set(by_id) != set(range(len(vocab))):
        raise ValueError(f"{path}: the ids are not 0..{len(vocab) - 1}, each once")
    return [by_id[i] for i in range(len(vocab))]


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

    def __init__(self, model_path: str | Path, dict_path: str | Path | None = None,
                 vocab_path: str | Path | None = None):
        """`dict_path`: fairseq's dictionary; `vocab_path`: a Speech2Text vocab.json. Either is checked against
        the SentencePiece model: fama's ids are the spm ids, `<ctc_blank>` after them."""
        self.model_path = Path(model_path)
        self.dict_path = Path(dict_path) if dict_path is not None else None
        self.vocab_path = Path(vocab_path) if vocab_path is not None else None
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
        if self.vocab_path is not None:
            self._check_vocab(read_vocab_json(self.vocab_path))
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

    def _check_vocab(self, symbols: list[str]) -> None:
        n = self.sp.get_piece_size()
        where = f"{self.vocab_path} does not match the SentencePiece model {self.model_path}"
        for i, got in enumerate(symbols[:n]):
            want = self.sp.id_to_piece(i)
            if got != want:
                raise ValueError(f"{where}: id {i} is {got!r} in vocab.json but {want!r} in the spm model")
        if symbols[n:] not in ([], [BLANK_PIECE]):
            raise ValueError(f"{where}: vocab.json has {len(symbols)} entries, the spm model {n} pieces "
                             f"(vocab.json may add only {BLANK_PIECE} after them)")

    @property
    def files(self) -> list[Path]:
        """The files this tokenizer was read from."""
        return [p for p in (self.model_path, self.dict_path, self.vocab_path) if p is not None]

    @classmethod
    def from_folder(cls, folder: str | Path) -> Tokenizer:
        folder = Path(folder)
        dict_path = folder / DICT_FILE
        return cls(folder / MODEL_FILE, dict_path if dict_path.exists() else None)

    def save(self, folder: str | Path, *, overwrite: bool = False) -> None:
        """Write `tokenizer.model` and `dict.txt` into a model folder, together (the one writer); an existing
        file is replaced only with `overwrite` (else OutputExistsError). Saving onto its own files does nothing."""
        folder = Path(folder)
        files = {folder / MODEL_FILE: self.model_path.read_bytes(),
                 folder / DICT_FILE: self.dict_path.read_bytes() if self.dict_path is not None
                 else fairseq_dict_text(self.sp)}
        own = InputGuard(p for p in (self.model_path, self.dict_path) if p is not None)
        write_all({p: data for p, data in files.items() if p not in own}, overwrite=overwrite)

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


def fairseq_dict_text(sp: spm.SentencePieceProcessor) -> str:
    """fairseq dict as FBK's gen_vocab writes it: `<piece> 1` for every spm id >= 4, in id order."""
    return "".join(f"{sp.id_to_piece(i)} 1\n" for i in range(4, sp.get_piece_size()))


def train_spm(
    sentences: Iterable[str],
    out_prefix: str | Path,
    vocab_size: int,
    model_type: str = "unigram",
    langs: Sequence[str] = ("en", "it"),
    num_threads: int = 8,
    *,
    overwrite: bool = False,
    protect: Iterable[str | Path] = (),
) -> Tokenizer:
    """Train `<out_prefix>.model` and the fairseq dict `<out_prefix>.txt` like FBK's `gen_vocab`.

    unk/bos/eos/pad ids 3/0/2/1, character_coverage 1.0, `<lang:xx>` user-defined symbols (ids 4, 5, ...),
    default nmt_nfkc normaliser. The result depends only on the sentences and these arguments: the thread
    count is fixed (not the machine's core count) because it changes the piece scores in the last digits.
    Both files are written by the one writer, together: an output that exists (without `overwrite`) or is
    one of `protect` (the inputs) is a PlanError before training.
    """
    out_prefix = Path(out_prefix)
    model_path = out_prefix.with_name(out_prefix.name + ".model")
    dict_path = out_prefix.with_name(out_prefix.name + ".txt")
    guard = InputGuard(protect)
    for path in (model_path, dict_path):
        check_output(path, inputs=guard, overwrite=overwrite)
    lines = (s.replace("\r", " ").replace("\n", " ").strip() for s in sentences)
    model = io.BytesIO()  # the trainer writes no file of its own (it would replace PREFIX.model and PREFIX.vocab)
    spm.SentencePieceTrainer.train(
        sentence_iterator=(s for s in lines if s),
        model_writer=model,
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
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    write_all({model_path: model.getvalue(), dict_path: fairseq_dict_text(sp)}, overwrite=overwrite)
    return Tokenizer(model_path, dict_path)
