"""The pipeline's mechanics: cross-file batching, language detection, segments and token times."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fama_core.pipeline as tr
from fama_core.decoding import DecodeOptions
from fama_core.inputs import InputFile
from fama_core.pipeline import Pipeline, TranscribeOptions, language_scores, make_segments
from fama_core.vad import SpeechChunk

from conftest import require_shared


@pytest.fixture(scope="module")
def tiny():
    from fama_core import load_model

    path = require_shared("fixtures", "fbk_reference", "tiny", "checkpoint.pt")
    return load_model(path, device="cpu", dtype="float32")


def fixed_chunks(seconds: float):
    """A stand-in VAD: the whole stream in chunks of `seconds`."""

    def chunks(blocks, options):
        audio = np.concatenate(list(blocks))
        step = int(seconds * 16000)
        for i in range(0, len(audio), step):
            yield SpeechChunk(i / 16000, min(i + step, len(audio)) / 16000, audio[i:i + step])

    return chunks


def waves(*seconds: float) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in seconds]


def test_batches_mix_files_sorted_by_length_within_budget(tiny, monkeypatch):
    monkeypatch.setattr(tr, "iter_speech_chunks", fixed_chunks(4.0))
    batches = []

    def fake_decode(model, audios, lang_ids, options, **_):
        batches.append([len(a) / 16000 for a in audios])
        return [([], []) for _ in audios]

    monkeypatch.setattr(tr, "decode_chunks", fake_decode)
    sources = waves(10, 3, 7, 1.5, 12)
    items = [InputFile(f"f{i}") for i in range(len(sources))]
    opts = TranscribeOptions(language="en", batch_size=4, batch_seconds=12.0)
    results = list(Pipeline(*tiny, opts).run(items, sources))
    assert sorted(r.item.path for r in results) == [it.path for it in items] and not any(r.error for r in results)
    flat = [s for b in batches for s in b]
    assert sorted(flat, reverse=True) == flat  # longest first across all files
    assert len(flat) == 3 + 1 + 2 + 1 + 3
    assert all(len(b) <= 4 and max(b) * len(b) <= 12.0 for b in batches)
    assert any(len(b) > 1 for b in batches)
    assert [round(r.seconds, 3) for r in sorted(results, key=lambda r: r.item.path)] == [10, 3, 7, 1.5, 12]


def test_readers_run_vad_on_one_torch_thread(tiny, monkeypatch):
    """A reader thread with torch threads of its own made the decoding thread 40-70 % slower (libgomp stops
    spinning once more threads are in teams than there are cores): readers use one, the caller keeps its own."""
    seen = []
    chunks = fixed_chunks(4.0)

    def vad(blocks, options):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        yield from chunks(blocks, options)

    monkeypatch.setattr(tr, "iter_speech_chunks", vad)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = list(Pipeline(*tiny, TranscribeOptions(language="en")).run([InputFile("a"), InputFile("b")],
                                                                              waves(5, 3)))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(results) == 2 and not any(r.error for r in results)
    assert len(seen) == 2 and all(n == 1 for _, n in seen)
    assert threading.get_ident() not in {t for t, _ in seen}


def test_files_finish_as_their_chunks_are_done(tiny, monkeypatch):
    monkeypatch.setattr(tr, "iter_speech_chunks", fixed_chunks(2.0))
    calls = []
    monkeypatch.setattr(tr, "decode_chunks",
                        lambda m, audios, langs, o, **_: calls.append(1) or [([], [])] * len(audios))
    sources = waves(*[3.0] * 6)
    items = [InputFile(f"f{i}") for i in range(6)]
    opts = TranscribeOptions(language="en", pool_seconds=5.0, readers=1)  # pools hold about 2 files at a time
    done = [(r.item.path, len(calls)) for r in Pipeline(*tiny, opts).run(items, sources)]
    assert [path for path, _ in done] == [it.path for it in items]
    assert done[0][1] < done[-1][1]  # the first file was out before the last was decoded
    opts.readers = 3
    assert sorted(r.item.path for r in Pipeline(*tiny, opts).run(items, sources)) == [it.path for it in items]


def test_language_auto_uses_the_higher_tag_score(tiny, monkeypatch):
    monkeypatch.setattr(tr, "iter_speech_chunks", fixed_chunks(3.0))
    model, tok = tiny
    seen = {}

    def fake_scores(model, tokenizer, audios, languages):
        # pretend: audio with a positive first sample is Italian
        return torch.tensor([[-1.0, -0.5] if a[0] > 0 else [-0.2, -3.0] for a in audios])

    def fake_decode(model, audios, lang_ids, options, **_):
        for a, lang in zip(audios, lang_ids):
            seen[float(a[0])] = lang
        return [([], []) for _ in audios]

    monkeypatch.setattr(tr, "language_scores", fake_scores)
    monkeypatch.setattr(tr, "decode_chunks", fake_decode)
    a, b = waves(5, 5)
    a[0], b[0] = 0.5, -0.5
    results = {r.item.path: r for r in Pipeline(model, tok, TranscribeOptions()).run(
        [InputFile("it"), InputFile("en")], [a, b])}
    assert results["it"].transcript.language == "it" and results["en"].transcript.language == "en"
    assert results["it"].transcript.options["language_scores"] == {"en": -2.0, "it": -1.0}  # summed over 2 chunks
    assert seen[0.5] == tok.lang_tag_id("it") and seen[-0.5] == tok.lang_tag_id("en")


def test_language_scores_are_ctc_agreement_log_likelihoods(tiny):
    """Score of language L = log P_topCTC(what the intermediate CTC head reads | L), one utterance at a time."""
    model, tok = tiny
    audios = [torch.as_tensor(w) for w in waves(2, 3)]
    scores = language_scores(model, tok, audios, ["en", "it"])
    feats, lengths = tr.compute_features(audios)
    manual = []
    for i in range(2):
        with torch.no_grad():
            one = model.encode(feats[i:i + 1, :int(lengths[i])], lengths[i:i + 1], inter_ctc=True)
            path = torch.unique_consecutive(one.ctc_inter_logits[0].argmax(-1))
            read = path[path != model.cfg.src_blank]
            row = []
            for lang in ("en", "it"):
                lp = F.log_softmax(model.ctc_logits(one, torch.tensor([tok.lang_tag_id(lang)])), -1)[0]
                row.append(-F.ctc_loss(lp, read, [lp.shape[0]], [len(read)], blank=model.cfg.blank,
                                       reduction="sum").item())
        manual.append(row)
    assert torch.allclose(scores, torch.tensor(manual), atol=1e-3)
    assert scores[0, 0] != scores[0, 1]


def test_batched_equals_one_by_one(tiny, monkeypatch):
    monkeypatch.setattr(tr, "iter_speech_chunks", fixed_chunks(3.0))
    sources = waves(5, 2, 4)
    items = [InputFile(f"f{i}") for i in range(3)]
    decode = DecodeOptions(beam_size=2, max_len_b=8)
    texts = []
    for batch_size in (1, 16):
        opts = TranscribeOptions(language="en", decode=decode, batch_size=batch_size)
        res = sorted(Pipeline(*tiny, opts).run(items, sources), key=lambda r: r.item.path)
        texts.append([[(s.text, s.start, s.end) for s in r.transcript.segments] for r in res])
    assert texts[0] == texts[1] and any(texts[0])


def test_segments_words_and_times(tiny):
    _, tok = tiny
    ids = tok.encode("the cat sees a book. il gatto legge")
    spans = [(2 * i, 2 * i + 1) for i in range(len(ids))]
    segs = make_segments(tok, [(10.0, 20.0)], [(ids, spans)])
    assert [s.text for s in segs] == ["the cat sees a book.", "il gatto legge"]
    words = [w for s in segs for w in s.words]
    assert [w.text for w in words] == "the cat sees a book. il gatto legge".split()
    assert words[0].start == 10.0 and all(10.0 <= w.start < w.end <= 20.0 for w in words)
    assert all(a.end <= b.start for a, b in zip(words, words[1:]))
    assert make_segments(tok, [(0.0, 1.0)], [([], [])]) == []


def test_library_on_waveforms(tiny):
    silence = np.zeros(16000 * 3, dtype=np.float32)
    t = tr.transcribe(silence, tiny, "en", beam_size=1, max_len_b=8)
    assert t.segments == [] and t.text == "" and abs(t.duration - 3.0) < 1e-6
    out = tr.translate([silence, silence], tiny, to="it", beam_size=1, max_len_b=8)
    assert [o.task for o in out] == ["translate", "translate"] and out[0].source_language == "en"
    with pytest.raises(tr.TranscribeError, match="no such file"):
        tr.transcribe("/nonexistent.wav", tiny, "en")
    with pytest.raises(ValueError):
        tr.transcribe(silence, tiny, "fr")


def test_several_devices_share_the_batches_and_give_the_same_transcripts(tiny, monkeypatch):
    """One process, several devices: each replica decodes whole batches; the output is as with one device."""
    monkeypatch.setattr(tr, "iter_speech_chunks", fixed_chunks(2.0))
    sources = waves(5, 2, 4, 6, 3)
    items = [InputFile(f"f{i}") for i in range(len(sources))]
    opts = TranscribeOptions(language="en", decode=DecodeOptions(beam_size=2, max_len_b=8), batch_size=2)
    real_decode = tr.decode_chunks
    used = []

    def counting_decode(model, audios, lang_ids, options, **_):
        used.append(id(model))
        return real_decode(model, audios, lang_ids, options, **_)

    monkeypatch.setattr(tr, "decode_chunks", counting_decode)
    texts = []
    for devices in (None, ["cpu", "cpu"]):
        used.clear()
        pipeline = Pipeline(*tiny, opts, devices=devices)
        res = sorted(pipeline.run(items, sources), key=lambda r: r.item.path)
        assert not any(r.error for r in res)
        texts.append([[(s.text, s.start, s.end) for s in r.transcript.segments] for r in res])
        assert set(used) <= {id(m) for m in pipeline.replicas}
    assert len(pipeline.replicas) == 2 and pipeline.replicas[1] is not tiny[0]
    assert len(set(used)) == 2  # both replicas decoded batches (11 chunks in 6 batches)
    assert texts[0] == texts[1] and any(texts[0])


def test_a_failing_batch_on_one_device_fails_only_its_files(tiny, monkeypatch):
    monkeypatch.setattr(tr, "iter_speech_chunks", fixed_chunks(3.0))

    def fake_decode(model, audios, lang_ids, options, **_):
        if any(abs(len(a) / 16000 - 1.0) < 1e-6 for a in audios):
            raise RuntimeError("boom")
        return [([], []) for _ in audios]

    monkeypatch.setattr(tr, "decode_chunks", fake_decode)
    sources = waves(3, 1, 3, 3)
    items = [InputFile(f"f{i}") for i in range(4)]
    opts = TranscribeOptions(language="en", batch_size=1)
    res = {r.item.path: r for r in Pipeline(*tiny, opts, devices=["cpu", "cpu"]).run(items, sources)}
    assert res["f1"].error == "decoding failed: RuntimeError: boom"
    assert [res[f"f{i}"].error for i in (0, 2, 3)] == [None, None, None]


def test_resolve_devices():
    assert tr.resolve_devices("cpu") == ["cpu"]
    assert tr.resolve_devices("cpu,cpu") == ["cpu", "cpu"]
    if not torch.cuda.is_available():
        assert tr.resolve_devices(None) == ["cpu"]
        from fama_core.checkpoints import check_device

        with pytest.raises(ValueError) as why:  # the library's reason: a CPU-only torch, or no GPU visible
            check_device("cuda:1")
        with pytest.raises(ValueError) as e:
            tr.resolve_devices("cuda:1")
        assert str(e.value) == str(why.value)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        tr.resolve_devices("gpu")


def test_lang_auto_refuses_a_model_whose_ctc_heads_have_different_dictionaries(tiny):
    import copy
    import dataclasses

    model, tok = tiny
    other = copy.deepcopy(model)
    other.cfg = dataclasses.replace(model.cfg, src_vocab_size=model.cfg.vocab_size + 1)
    with pytest.raises(ValueError, match=r"--lang auto needs a model with the intermediate CTC head \(sharing the "
                                         r"decoder's dictionary\), which this one lacks"):
        Pipeline(other, tok, TranscribeOptions(language="auto"))
    Pipeline(other, tok, TranscribeOptions(language="en"))  # a given language needs no detection


def test_oom_retry_runs_after_the_failed_attempt_is_released(tiny, monkeypatch):
    """Halved retries start only once the failed attempt's tensors (kept alive by its traceback) are freed."""
    import sys
    import weakref

    monkeypatch.setattr(tr, "iter_speech_chunks", fixed_chunks(2.0))
    failed: list[weakref.ref] = []
    calls = []

    def fake_decode(model, audios, lang_ids, options, **_):
        calls.append((len(audios), sys.exc_info()[0], [r() is None for r in failed]))
        if len(audios) > 1:
            activations = torch.ones(1000, 1000)  # what the failed attempt had allocated
            failed.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [([], [])]

    monkeypatch.setattr(tr, "decode_chunks", fake_decode)
    results = list(Pipeline(*tiny, TranscribeOptions(language="en", batch_size=4)).run([InputFile("f")], waves(8)))
    assert results[0].error is None
    assert [n for n, _, _ in calls] == [4, 2, 1, 1, 2, 1, 1]
    assert all(exc is None for _, exc, _ in calls)  # never retried inside an `except` block
    assert all(all(freed) for n, _, freed in calls if n == 1)  # the failed attempts' tensors were gone


def test_language_detection_uses_exactly_the_first_detect_seconds(tiny, monkeypatch):
    """Same file -> the same scores, from exactly its first 5 s of speech, whatever was read alongside it."""
    monkeypatch.setattr(tr, "iter_speech_chunks", fixed_chunks(3.0))
    model, tok = tiny
    a, b, c = waves(10, 7, 4)
    first = torch.as_tensor(a)
    expected = language_scores(model, tok, [first[:48000], first[48000:80000]], tok.languages).sum(0)
    expected = {lang: round(float(s), 4) for lang, s in zip(tok.languages, expected)}
    runs = []
    for others, readers, pool in (([], 1, 900.0), ([b, c], 2, 900.0), ([c, b], 3, 2.0), ([b], 2, 4.0)):
        opts = TranscribeOptions(decode=DecodeOptions(beam_size=1, max_len_b=4), detect_seconds=5.0,
                                 readers=readers, pool_seconds=pool)
        items = [InputFile(f"o{k}") for k in range(len(others))] + [InputFile("a")]
        res = {r.item.path: r for r in Pipeline(model, tok, opts).run(items, [*others, a])}
        t = res["a"].transcript
        runs.append((t.options["language_scores"], t.language))
    assert runs[0][0] == expected and runs[0][1] == max(expected, key=expected.get)
    assert all(r == runs[0] for r in runs)


def test_progress_moves_with_the_audio(tiny, monkeypatch):
    monkeypatch.setattr(tr, "iter_speech_chunks", fixed_chunks(2.0))
    monkeypatch.setattr(tr, "decode_chunks", lambda m, audios, langs, o, **_: [([], [])] * len(audios))
    seen: list[tr.RunProgress] = []
    opts = TranscribeOptions(language="en", batch_size=2, pool_seconds=4.0, readers=1)
    results = list(Pipeline(*tiny, opts).run([InputFile(f"f{i}") for i in range(3)], waves(5, 3, 4),
                                             progress=seen.append))
    assert len(results) == 3 and len(seen) > 6
    fields = ("files_read", "files_done", "audio_read", "speech_found", "speech_done")
    for before, after in zip(seen, seen[1:]):
        assert all(getattr(after, f) >= getattr(before, f) for f in fields)
    done = [p.speech_done for p in seen]
    assert len(set(done)) >= 4  # it moves batch by batch, not only at the end
    last = seen[-1]
    assert (last.files, last.files_read, last.files_done) == (3, 3, 3)
    assert last.audio_read == pytest.approx(12.0) and last.speech_done == pytest.approx(12.0)
    assert last.speech_total() == pytest.approx(12.0)
    assert any(0 < p.speech_done < 12.0 and p.speech_total() is not None for p in seen)


def test_library_puts_a_named_model_on_one_device(tiny, monkeypatch):
    monkeypatch.setattr(tr, "resolve_devices", lambda spec: ["cpu", "cpu"])  # as if two GPUs were visible
    monkeypatch.setattr(tr, "load_model", lambda name, device=None, dtype=None: tiny)
    replicas = []
    real_init = Pipeline.__init__

    def spy(self, *a, **k):
        real_init(self, *a, **k)
        replicas.append(len(self.replicas))

    monkeypatch.setattr(Pipeline, "__init__", spy)
    silence = np.zeros(16000, dtype=np.float32)
    tr.transcribe(silence, "fama-small", "en", beam_size=1)
    tr.transcribe(silence, "fama-small", "en", device="cuda", beam_size=1)  # asked for every GPU
    assert replicas == [1, 2]


def test_stopping_early_joins_the_device_workers(tiny, monkeypatch):
    """Ctrl-C in the middle of a pool: the device threads finish their batch and are gone when run() is."""
    import threading
    import time

    monkeypatch.setattr(tr, "iter_speech_chunks", fixed_chunks(1.0))

    def slow_decode(model, audios, lang_ids, options, **_):
        time.sleep(0.3)
        return [([], []) for _ in audios]

    def interrupt(p):
        if p.speech_done > 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(tr, "decode_chunks", slow_decode)
    before = threading.active_count()
    pipeline = Pipeline(*tiny, TranscribeOptions(language="en", batch_size=1), devices=["cpu", "cpu"])
    with pytest.raises(KeyboardInterrupt):
        list(pipeline.run([InputFile(f"f{i}") for i in range(3)], waves(4, 4, 4), progress=interrupt))
    assert threading.active_count() == before
