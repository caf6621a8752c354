"""Training data: synthetic speech corpora (espeak-ng) shared by the training tests, manifests, batching."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from fama_core.manifest import ManifestRow, read_manifest, write_manifest
from fama_core.tokenizer import train_spm
from fama_core.training import DataOptions, SpeechDataset, build_manifest, manifest_texts

SENTENCES = [
    ("the cat sleeps", "il gatto dorme"), ("open the door", "apri la porta"),
    ("i like green tea", "mi piace il tè verde"),
    ("we go home now", "andiamo a casa ora"), ("she reads a book", "lei legge un libro"),
    ("the sun is hot", "il sole è caldo"), ("he runs fast", "lui corre veloce"), ("call me later", "chiamami dopo"),
    ("it is raining", "sta piovendo"), ("the dog barks", "il cane abbaia"), ("thank you very much", "grazie mille"),
    ("where is the station", "dov'è la stazione"), ("i am hungry", "ho fame"), ("good morning", "buongiorno"),
    ("the water is cold", "l'acqua è fredda"), ("my name is tom", "mi chiamo tom"), ("see you tomorrow", "a domani"),
    ("close the window", "chiudi la finestra"), ("this is my house", "questa è la mia casa"),
    ("we love music", "amiamo la musica"), ("the train is late", "il treno è in ritardo"),
    ("i need help", "ho bisogno di aiuto"), ("look at the sky", "guarda il cielo"),
    ("she is my sister", "lei è mia sorella"),
]


def _resample(x: np.ndarray, sr: int, target: int = 16000) -> np.ndarray:
    n = int(round(len(x) * target / sr))
    return np.interp(np.arange(n) * sr / target, np.arange(len(x)), x).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, sr: int = 16000) -> None:
    pcm = (np.clip(samples, -1, 1 - 1 / 32768) * 32768).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr)
        w.writeframes(pcm.tobytes())


def speak(text: str, path: Path, voice: str = "en-us") -> None:
    """16 kHz mono wav of `text` by espeak-ng (which writes 22.05 kHz; resampled here)."""
    raw = subprocess.run(["espeak-ng", "-v", voice, "-s", "170", "--stdout", text], check=True,
                         capture_output=True).stdout
    with wave.open(__import__("io").BytesIO(raw)) as w:
        sr = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    write_wav(path, _resample(x, sr))


def require_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        reason = "espeak-ng is not installed (apt-get install espeak-ng): no synthetic speech for training tests"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def make_corpus(folder: Path, n: int = 24, translations: bool = False, vocab_size: int = 64) -> dict:
    """`n` English utterances (+ Italian translations) with a manifest and a SentencePiece model.

    Returns {"manifest": ST manifest with translations (else ASR), "asr": ASR manifest, "spm": path, ...}.
    """
    require_espeak()
    folder.mkdir(parents=True, exist_ok=True)
    audio = folder / "audio"
    audio.mkdir(exist_ok=True)
    pairs = SENTENCES[:n]
    for i, (en, it) in enumerate(pairs):
        speak(en, audio / f"utt{i:02d}.wav")
        (audio / f"utt{i:02d}.txt").write_text(en + "\n")
        if translations:
            (audio / f"utt{i:02d}.it.txt").write_text(it + "\n")
    manifest = folder / "train.tsv"
    build_manifest(audio, manifest, src_lang="en", tgt_lang="it" if translations else None,
                   translation_suffix=".it.txt" if translations else None)
    asr = folder / "asr.tsv"
    build_manifest(audio, asr, src_lang="en")
    texts, langs = manifest_texts([manifest])
    tok = train_spm(texts, folder / "spm", vocab_size, langs=("en", "it"), num_threads=1)
    return {"manifest": manifest, "asr": asr, "spm": tok.model_path, "dict": tok.dict_path,
            "texts": [p[0] for p in pairs], "translations": [p[1] for p in pairs]}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict:
    return make_corpus(tmp_path_factory.mktemp("corpus"), translations=True)


def test_build_manifest_from_folder(corpus):
    rows = read_manifest(corpus["manifest"])
    assert len(rows) == 24
    r = rows[0]
    assert (r.src_lang, r.tgt_lang, r.src_text, r.tgt_text) == ("en", "it", "the cat sleeps", "il gatto dorme")
    assert not Path(r.audio).is_absolute() and r.n_frames > 50
    with wave.open(str(corpus["manifest"].parent / r.audio)) as w:
        assert r.n_frames == 1 + (w.getnframes() - 400) // 160


def test_build_manifest_from_jsonl(corpus, tmp_path):
    audio = corpus["manifest"].parent / "audio" / "utt00.wav"
    table = tmp_path / "t.jsonl"
    lines = [{"audio": str(audio), "text": "the cat sleeps", "id": "a"}, {"audio": "missing.wav", "text": "x"}]
    table.write_text("".join(json.dumps(x) + "\n" for x in lines))
    n, problems = build_manifest(table, tmp_path / "m.tsv", src_lang="en")
    assert n == 1 and len(problems) == 1 and "missing.wav" in problems[0]
    r = read_manifest(tmp_path / "m.tsv")[0]
    assert (r.id, r.tgt_text, r.tgt_lang) == ("a", "the cat sleeps", "en")


def _tokenizer(corpus):
    from fama_core.tokenizer import Tokenizer

    return Tokenizer(corpus["spm"], corpus["dict"])


def test_filters_count_skipped_rows_and_batches_respect_max_tokens(corpus, tmp_path):
    rows = read_manifest(corpus["manifest"])
    base = corpus["manifest"].parent
    rows = [ManifestRow(r.id, str(base / r.audio), r.n_frames, r.tgt_text, "", r.src_text, "en", "en") for r in rows]
    rows.append(ManifestRow("empty", str(base / rows[0].audio), 0, "x", "", "x", "en", "en"))
    rows.append(ManifestRow("long", str(base / rows[0].audio), 99999, "x", "", "x", "en", "en"))
    write_manifest(tmp_path / "m.tsv", rows)
    ds = SpeechDataset([tmp_path / "m.tsv"], _tokenizer(corpus), DataOptions(max_tokens=600, max_source_positions=3000))
    assert len(ds) == 24 and ds.skipped["empty"] == 1 and ds.skipped["too_long_source"] == 1
    b1, b2 = ds.batches(1), ds.batches(1)
    assert all((x == y).all() for x, y in zip(b1, b2))  # deterministic
    assert sorted(int(i) for b in b1 for i in b) == list(range(24))
    assert all(ds.n_frames[b].max() * len(b) <= 600 for b in b1)
    assert [len(b) for b in ds.batches(2)] != [len(b) for b in b1] or any((x != y).any() for x, y in
                                                                         zip(ds.batches(2), b1))


def test_collate_targets_and_stage2_tasks(corpus):
    tok = _tokenizer(corpus)
    ds = SpeechDataset([corpus["manifest"]], tok, DataOptions(max_tokens=4000), stage=2)
    items = np.array([0, 1])
    asr, st = ds.collate(items, "asr"), ds.collate(items, "st")
    en, it = tok.lang_tag_id("en"), tok.lang_tag_id("it")
    assert asr.target[0, 0] == en and st.target[0, 0] == it
    assert tok.decode(asr.target[0].tolist()) == "the cat sleeps"
    assert tok.decode(st.target[0].tolist()) == "il gatto dorme"
    assert (st.prev_tokens[:, 0] == tok.eos).all() and (st.prev_tokens[0, 1:] == st.target[0, :-1]).all()
    assert torch.equal(asr.transcript, st.transcript) and asr.sample_size == st.sample_size
    assert asr.features.shape[0] == 2 and asr.lengths.tolist() == ds.n_frames[items].tolist()
    tasks = [ds.task_of(1, b) for b in range(200)]
    assert 70 < tasks.count("asr") < 130 and tasks == [ds.task_of(1, b) for b in range(200)]
    aug1, aug2 = ds.collate(items, "asr", augment_seed=5), ds.collate(items, "asr", augment_seed=5)
    assert torch.equal(aug1.features, aug2.features) and not torch.equal(aug1.features, asr.features)


def test_clips_other_formats_and_worker_processes(corpus, tmp_path):
    from fama_core.training.data import iterate

    base = corpus["manifest"].parent
    wav = base / "audio" / "utt00.wav"
    flac = tmp_path / "utt00.flac"
    subprocess.run(["sox", str(wav), str(flac)], check=True)
    rows = [ManifestRow("w", f"{wav}:1600:8000", 48, "x", "", "x", "en", "en"),
            ManifestRow("f", f"{flac}:1600:8000", 48, "x", "", "x", "en", "en"),
            ManifestRow("bad", str(tmp_path / "broken.wav"), 48, "x", "", "x", "en", "en"),
            ManifestRow("gone", str(tmp_path / "missing.wav"), 48, "x", "", "x", "en", "en")]
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav file")
    write_manifest(tmp_path / "m.tsv", rows)
    ds = SpeechDataset([tmp_path / "m.tsv"], _tokenizer(corpus), DataOptions(max_tokens=1000))
    assert len(ds) == 3 and ds.skipped["missing_audio"] == 1 and ds.missing == [str(tmp_path / "missing.wav")]
    b = ds.collate(np.arange(3))
    assert b.ids == ["w", "f"] and b.lengths.tolist() == [48, 48] and "broken.wav" in b.failed[0]
    torch.testing.assert_close(b.features[0], b.features[1], atol=1e-3, rtol=0)  # flac is lossless
    full = SpeechDataset([corpus["manifest"]], _tokenizer(corpus), DataOptions(max_tokens=600), stage=2)
    plan = [(1, i, items) for i, items in enumerate(full.batches(1))]
    a = list(iterate(full, plan, augment=True, seed=3, num_workers=0))
    w = list(iterate(full, plan, augment=True, seed=3, num_workers=2))
    assert [x[2].ids for x in a] == [x[2].ids for x in w] and [x[2].task for x in a] == [x[2].task for x in w]
    assert all(torch.equal(x[2].features, y[2].features) for x, y in zip(a, w))
