import unicodedata

import numpy as np
import pytest

from fama_core.tokenizer import Tokenizer, read_fairseq_dict, train_spm

from conftest import require_shared

TINY = ("fixtures", "fbk_reference", "tiny")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(require_shared(*TINY, "spm_unigram200_lid.model"), require_shared(*TINY, "spm_unigram200_lid.txt"))


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    path = require_shared("fixtures", "fbk_reference", "text_en_it.txt")
    return path.read_text(encoding="utf-8").splitlines()


def test_ids(tok):
    assert (tok.bos, tok.pad, tok.eos, tok.unk) == (0, 1, 2, 3)
    assert [tok.id_to_piece(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tok.lang_tag_id("en") == 4 and tok.lang_tag_id("it") == 5
    assert tok.languages == ["en", "it"]
    assert tok.blank == 200 and tok.vocab_size == 201 == len(tok)
    assert tok.id_to_piece(200) == "<ctc_blank>" and tok.piece_to_id("<ctc_blank>") == 200
    assert tok.piece_to_id("<lang:it>") == 5 and tok.piece_to_id("no-such-piece") == tok.unk
    with pytest.raises(ValueError, match=r"<lang:de>.*en, it"):
        tok.lang_tag_id("de")
    with pytest.raises(ValueError, match="out of range"):
        tok.id_to_piece(201)


def test_fairseq_dict_ids_equal_spm_ids(tok):
    symbols = read_fairseq_dict(tok.dict_path)
    assert len(symbols) == 196 and symbols[:2] == ["<lang:en>", "<lang:it>"]
    assert all(tok.piece_to_id(s) == i + 4 for i, s in enumerate(symbols))


def test_round_trip_corpus(tok, corpus):
    assert len(corpus) == 600
    for line in corpus:
        ids = tok.encode(line)
        assert ids and tok.unk not in ids and max(ids) < tok.blank
        assert tok.eos not in ids and 4 not in ids and 5 not in ids
        assert unicodedata.normalize("NFKC", line) == line  # already normalised, so the round trip is exact
        assert tok.decode(ids) == line


def test_decode_drops_specials_tags_and_blank(tok):
    ids = tok.encode("Il gatto legge un libro.")
    noisy = [2, 5, *ids[:3], 200, 200, *ids[3:], 1, 2]
    assert tok.decode(noisy) == "Il gatto legge un libro."
    assert tok.decode(np.array(ids)) == "Il gatto legge un libro."
    assert tok.decode([]) == ""
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([201])


def test_teacher_forcing_ids(tok):
    inputs = np.load(require_shared(*TINY, "inputs.npz"))
    texts = ["The cat sees a book today.", "Il gatto legge un libro.", "My friend opens the window every morning."]
    for i, text in enumerate(texts):
        ids = inputs[f"tf_token_ids_{i}"].tolist()
        assert tok.decode(ids) == text
        assert tok.encode(tok.decode(ids)) == ids
    assert inputs["lang_tag_ids"].tolist() == [tok.lang_tag_id(x) for x in ("en", "it")]


def test_save_and_from_folder(tok, tmp_path):
    tok.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["dict.txt", "tokenizer.model"]
    assert (tmp_path / "model" / "dict.txt").read_bytes() == tok.dict_path.read_bytes()
    again = Tokenizer.from_folder(tmp_path / "model")
    assert again.vocab_size == 201 and again.languages == ["en", "it"]
    assert again.encode("La cantante vuole un libro.") == tok.encode("La cantante vuole un libro.")
    again.save(tmp_path / "model")  # saving onto itself is harmless
    assert Tokenizer.from_folder(tmp_path / "model").vocab_size == 201


def test_dict_mismatch_is_reported(tok, tmp_path):
    lines = tok.dict_path.read_text(encoding="utf-8").splitlines()
    swapped = tmp_path / "swapped.txt"
    swapped.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"id 4 is '<lang:it>' in the dict but '<lang:en>'"):
        Tokenizer(tok.model_path, swapped)
    short = tmp_path / "short.txt"
    short.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="195 entries"):
        Tokenizer(tok.model_path, short)
    bad = tmp_path / "bad.txt"
    bad.write_text("oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a fairseq dict line"):
        Tokenizer(tok.model_path, bad)


def test_train_spm_reproduces_fbk_gen_vocab(tok, corpus, tmp_path):
    # FBK trained the fixture with num_threads = cpu_count() = 2; with 2 threads every piece and score is equal
    new = train_spm(corpus, tmp_path / "spm", 200, num_threads=2)
    assert new.model_path == tmp_path / "spm.model" and new.dict_path == tmp_path / "spm.txt"
    assert new.dict_path.read_bytes() == tok.dict_path.read_bytes()
    assert all(new.sp.id_to_piece(i) == tok.sp.id_to_piece(i) for i in range(200))
    assert all(new.sp.get_score(i) == tok.sp.get_score(i) for i in range(200))


def test_train_spm_small_corpus(tmp_path):
    sentences = [
        "the cat sees a book today",
        "il gatto legge un libro",
        "my friend opens the window every morning",
        "la mia amica apre la finestra ogni mattina",
        "dov'è il libro? where is the book?",
    ] * 5
    tok = train_spm(iter(sentences), tmp_path / "out" / "spm", 60, model_type="bpe", langs=("en", "it", "fr"))
    assert tok.lang_tag_id("en") == 4 and tok.lang_tag_id("it") == 5 and tok.lang_tag_id("fr") == 6
    assert tok.vocab_size == 61 and tok.blank == 60
    lines = tok.dict_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 56 and lines[:3] == ["<lang:en> 1", "<lang:it> 1", "<lang:fr> 1"]
    assert all(line.endswith(" 1") and line.count(" ") == 1 for line in lines)
    assert [line[:-2] for line in lines] == [tok.id_to_piece(i) for i in range(4, 60)]
    again = Tokenizer(tok.model_path, tok.dict_path)
    assert all(again.encode(s) == tok.encode(s) and again.decode(tok.encode(s)) == s for s in sentences)
    # deterministic: the same corpus and arguments give the same pieces and scores
    twin = train_spm(sentences, tmp_path / "twin", 60, model_type="bpe", langs=("en", "it", "fr"))
    assert twin.dict_path.read_bytes() == tok.dict_path.read_bytes()
    assert [twin.sp.get_score(i) for i in range(60)] == [tok.sp.get_score(i) for i in range(60)]


def test_model_without_fairseq_specials_is_rejected(tmp_path):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["a b c d e f g"] * 10), model_prefix=str(tmp_path / "m"), vocab_size=12, minloglevel=2
    )
    with pytest.raises(ValueError, match="ids 0-3 must be"):
        Tokenizer(tmp_path / "m.model")
