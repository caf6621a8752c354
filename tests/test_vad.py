"""fama_core.vad: Silero probabilities, region -> chunk logic, streaming behaviour, real and synthetic audio."""

from __future__ import annotations

import logging
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fama_core import vad
from fama_core.audio import AudioError, load_audio, stream_audio
from fama_core.vad import SpeechChunk, VadOptions, iter_speech_chunks, speech_chunks

from conftest import ROOT, require_shared

SR = 16000
needs_silero = pytest.mark.skipif(not vad.silero_available(), reason="silero-vad is not installed")
CLIPS = ["librivox_0870", "librivox_0880", "librivox_0890", "leopard_en", "leopard_it", "cheetah_en",
         "cheetah_it", "cheetah_it_numbers"]  # single sentences, no long pause inside


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768


def speech_extent(audio: np.ndarray) -> tuple[float, float]:
    """First and last sustained loud stretch (>= 5 windows of 32 ms at >= 10% of the loudest): clicks excluded."""
    n = len(audio) // 512
    rms = np.sqrt((audio[: n * 512].reshape(n, 512) ** 2).mean(axis=1))
    loud = np.convolve(rms >= 0.1 * rms.max(), np.ones(5), mode="valid") == 5
    idx = np.flatnonzero(loud)
    return idx[0] * 512 / SR, (idx[-1] + 5) * 512 / SR


def blocks_of(audio: np.ndarray, sizes: list[int]) -> Iterator[np.ndarray]:
    i, k = 0, 0
    while i < len(audio):
        yield audio[i : i + sizes[k % len(sizes)]]
        i += sizes[k % len(sizes)]
        k += 1


def spans(chunks: list[SpeechChunk]) -> list[tuple[float, float]]:
    return [(c.start, c.end) for c in chunks]


def check_chunks(chunks: list[SpeechChunk], audio: np.ndarray, max_s: float = 30.0) -> None:
    for a, b in zip(chunks, chunks[1:]):
        assert a.end <= b.start
    for c in chunks:
        assert 0 <= c.start < c.end <= len(audio) / SR and c.end - c.start <= max_s + 1e-9
        np.testing.assert_array_equal(c.audio, audio[round(c.start * SR) : round(c.end * SR)])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """VAD batches are small: on a small shared CI machine a busy thread pool makes them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- chunking logic, fake VAD


class LoudnessVad:
    """Deterministic stand-in for Silero: a window is speech when it is loud."""

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        return np.where(np.abs(windows).max(axis=1) > 0.1, 0.95, 0.02).astype(np.float32)


@pytest.fixture
def fake_vad(monkeypatch):
    monkeypatch.setattr(vad, "_backend", lambda options: LoudnessVad())


def synth(pattern: list[tuple[float, bool]], seed: int = 0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Audio from (seconds, is_speech) pieces: loud noise or near silence; also the speech spans."""
    rng = np.random.default_rng(seed)
    pieces, speech, t = [], [], 0.0
    for seconds, loud in pattern:
        n = round(seconds * SR)
        pieces.append((rng.uniform(-0.5, 0.5, n) if loud else rng.normal(0, 1e-3, n)).astype(np.float32))
        if loud:
            speech.append((t, t + n / SR))
        t += n / SR
    return np.concatenate(pieces), speech


def test_greedy_merge_and_gap_limit(fake_vad) -> None:
    # 5 s of speech every 6 s: five fit in 30 s; then a 4 s gap (> max_merge_gap_s) forces a new chunk
    pattern = [(1.0, False)] + [(5.0, True), (1.0, False)] * 7 + [(4.0, False), (5.0, True), (1.0, False)]
    audio, speech = synth(pattern)
    chunks = speech_chunks(audio)
    check_chunks(chunks, audio)
    assert len(chunks) == 3
    assert [sum(s >= c.start and e <= c.end for s, e in speech) for c in chunks] == [5, 2, 1]
    assert chunks[0].start == pytest.approx(1.0 - 0.2, abs=0.04)  # 200 ms of padding


def test_long_region_is_cut_at_its_longest_pause(fake_vad) -> None:
    # one 60 s region: pauses shorter than min_silence_ms, the longest one (0.4 s) at 21-21.4 s
    pattern = [(7.0, True), (0.2, False), (7.0, True), (0.3, False), (6.5, True), (0.4, False)]
    pattern += [(8.0, True), (0.2, False), (30.4, True)]
    audio, _ = synth(pattern)
    chunks = speech_chunks(audio)
    check_chunks(chunks, audio)
    assert chunks[0].start == 0 and 21.0 < chunks[0].end < 21.4
    assert chunks[1].start == chunks[0].end  # a cut inside a region loses nothing
    assert chunks[-1].end == pytest.approx(len(audio) / SR)


def test_region_without_any_pause_is_hard_split(fake_vad) -> None:
    audio, _ = synth([(65.0, True)])
    chunks = speech_chunks(audio)
    check_chunks(chunks, audio)
    assert len(chunks) == 3 and chunks[0].start == 0 and chunks[-1].end == 65.0
    assert all(a.end == b.start for a, b in zip(chunks, chunks[1:]))
    assert chunks[0].end - chunks[0].start > 29.0  # the latest of equally good cut points


def test_blips_and_silence_yield_nothing(fake_vad) -> None:
    audio, _ = synth([(3.0, False), (0.1, True), (3.0, False), (0.2, True), (2.0, False)])
    assert speech_chunks(audio) == []
    assert speech_chunks(np.zeros(0, dtype=np.float32)) == []
    assert speech_chunks(np.zeros(100, dtype=np.float32)) == []


def test_block_sizes_do_not_matter(fake_vad) -> None:
    pattern = [(0.7, False), (12.0, True), (0.6, False), (25.0, True), (3.5, False), (40.0, True), (0.9, False)]
    audio, _ = synth(pattern, seed=3)
    for part, sizes in ((audio[: 3 * SR], [1]), (audio, [511, 513]), (audio, [7777, 16000, 100]), (audio, [SR * 30])):
        whole = speech_chunks(part)
        chunks = list(iter_speech_chunks(blocks_of(part, sizes)))
        assert whole and spans(chunks) == spans(whole)
        for a, b in zip(chunks, whole):
            np.testing.assert_array_equal(a.audio, b.audio)


@pytest.mark.filterwarnings("error")
def test_energy_fallback_without_silero_is_one_logged_note(monkeypatch, caplog) -> None:
    monkeypatch.setattr(vad, "silero_available", lambda: False)
    vad._note_fallback.cache_clear()
    audio, speech = synth([(2.0, False), (3.0, True), (2.0, False)])
    with caplog.at_level(logging.WARNING, logger="fama_core"):
        chunks = speech_chunks(audio)
        assert speech_chunks(audio[: 4 * SR])  # a second file: no second note
    assert len(chunks) == 1 and chunks[0].start <= speech[0][0] and chunks[0].end >= speech[0][1]
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("fama_core.vad", "note: silero-vad is not installed: using the energy VAD fallback (pip install silero-vad)")]


def test_energy_fallback_note_is_one_stderr_line_and_silenced_with_the_logger(tmp_path) -> None:
    code = ("import logging, sys, numpy as np; from fama_core import vad; vad.silero_available = lambda: False\n"
            "if sys.argv[1] == 'quiet': logging.getLogger('fama_core').setLevel(logging.ERROR)\n"
            "for _ in range(3): vad.speech_chunks(np.zeros(16000, np.float32))\n")
    for mode, expected in (("loud", "note: silero-vad is not installed: using the energy VAD fallback (pip install "
                                    "silero-vad)\n"), ("quiet", "")):
        out = subprocess.run([sys.executable, "-W", "error", "-c", code, mode], capture_output=True, text=True,
                             cwd=ROOT, check=True)
        assert out.stderr == expected and out.stdout == ""


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        VadOptions(backend="webrtc")
    with pytest.raises(ValueError):
        VadOptions(speech_pad_ms=400, min_silence_ms=500)


# --------------------------------------------------------------------------- Silero


@needs_silero
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_silero_probabilities_match_the_packaged_model() -> None:
    imported_before = "silero_vad" in sys.modules
    audio = read_wav(require_shared("data", "media", "leopard_en.wav"))[: SR * 3 // 2]
    windows = audio[: len(audio) // 512 * 512].reshape(-1, 512)
    ours = vad._Silero()(windows)
    stream = vad._Silero()
    streamed = np.concatenate([stream(windows[:7]), stream(windows[7:30]), stream(windows[30:])])
    # importing the silero_vad package would set torch's thread count to 1 for the whole process
    assert ("silero_vad" in sys.modules) == imported_before
    model = torch.jit.load(str(vad._silero_data() / "silero_vad.jit")).eval()
    with torch.inference_mode():
        reference = np.array([model(torch.from_numpy(w)[None], SR).item() for w in windows])
    assert np.abs(ours - reference).max() < 1e-4
    assert np.abs(streamed - reference).max() < 1e-4
    assert reference.max() > 0.9 and reference.min() < 0.1


@needs_silero
@pytest.mark.filterwarnings("error")
def test_loud_input_overflows_nothing() -> None:
    # samples far outside [-1, 1] drive the LSTM gates below -88, where float32 exp(-x) overflows
    loud = (100 * np.random.default_rng(0).standard_normal(160 * 512)).astype(np.float32)
    windows = loud.reshape(-1, 512)
    probs = vad._Silero()(windows)
    assert probs.dtype == np.float32 and np.isfinite(probs).all() and probs.max() < 0.5
    assert speech_chunks(loud) == []


def test_sigmoid_is_exact_where_it_does_not_overflow() -> None:
    x = np.linspace(-80, 80, 100001, dtype=np.float32)
    np.testing.assert_array_equal(vad._sigmoid(x), 1 / (1 + np.exp(-x)))
    with np.errstate(over="raise"):
        assert vad._sigmoid(np.array([-1e4, -89.0, 1e4], dtype=np.float32)).tolist() == pytest.approx([0, 0, 1])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_raise_audio_error(fake_vad, bad) -> None:
    audio, _ = synth([(2.0, False), (3.0, True), (2.0, False)])
    audio[int(2.5 * SR)] = bad
    with pytest.raises(AudioError, match=r"^audio contains NaN/Inf samples \(the first at 2\.50 s\)$"):
        list(iter_speech_chunks(blocks_of(audio, [SR // 3, 7 * SR // 5])))


@needs_silero
def test_silence_yields_no_chunk() -> None:
    audio = read_wav(require_shared("data", "media", "silence_8s.wav"))
    assert speech_chunks(audio) == []
    assert speech_chunks(np.zeros(5 * SR, dtype=np.float32)) == []


@needs_silero
def test_jfk_is_one_chunk() -> None:
    path = require_shared("data", "media", "jfk.flac")
    chunks = list(iter_speech_chunks(stream_audio(path, block_seconds=2.0)))
    assert len(chunks) == 1
    assert chunks[0].start < 0.7 and chunks[0].end > 10.0
    assert len(chunks[0].audio) == round((chunks[0].end - chunks[0].start) * SR)


@needs_silero
def test_shared_speech_files_are_covered() -> None:
    media = require_shared("data", "media")
    for name in CLIPS + ["stereo_diarization.wav", "multilingual.mp3"]:
        path = media / name if "." in name else media / f"{name}.wav"
        audio = load_audio(path)
        chunks = speech_chunks(audio)
        check_chunks(chunks, audio)
        assert chunks, name
        first, last = speech_extent(audio)
        assert chunks[0].start <= first and chunks[-1].end >= last, name


@pytest.fixture(scope="module")
def long_speech() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """> 2 minutes: three rounds of eight real sentences with 0.8-2.5 s pauses, and two 5 s pauses."""
    media = require_shared("data", "media")
    rng = np.random.default_rng(7)
    pieces, speech, t = [], [], 0.0
    for round_ in range(3):
        for name in CLIPS:
            clip = read_wav(media / f"{name}.wav")
            first, last = speech_extent(clip)
            speech.append((t + first, t + last))
            gap = 5.0 if name == CLIPS[-1] and round_ < 2 else rng.uniform(0.8, 2.5)
            pieces += [clip, rng.normal(0, 3e-4, round(gap * SR)).astype(np.float32)]
            t += (len(clip) + len(pieces[-1])) / SR
    audio = np.concatenate(pieces)
    assert len(audio) > 120 * SR
    return audio, speech


@needs_silero
def test_long_speech_is_chunked_at_pauses(long_speech) -> None:
    audio, speech = long_speech
    chunks = speech_chunks(audio)
    check_chunks(chunks, audio)
    assert 4 <= len(chunks) <= 10
    for c in chunks:  # every cut is in a pause: no sentence is split
        for s, e in speech:
            assert not s < c.start < e and not s < c.end < e, (c.start, c.end, s, e)
    for s, e in speech:  # and every sentence is inside a chunk
        assert any(c.start <= s and e <= c.end for c in chunks), (s, e)
    assert sum(c.end - c.start for c in chunks) > 0.9 * sum(e - s for s, e in speech)


@needs_silero
def test_long_speech_streamed_equals_whole_and_is_incremental(long_speech) -> None:
    audio, _ = long_speech
    consumed = []

    def blocks() -> Iterator[np.ndarray]:
        for block in blocks_of(audio, [SR, 12345, 2 * SR]):
            consumed.append(len(block))
            yield block

    streamed = []
    for chunk in iter_speech_chunks(blocks()):
        # a chunk comes out at most max_chunk_s after it starts (+ one block + one model batch)
        assert sum(consumed) / SR <= chunk.start + 30.0 + 2.0 + vad.MIN_BATCH * vad.WINDOW / SR + 0.1
        streamed.append(chunk)
    whole = speech_chunks(audio)
    assert spans(streamed) == spans(whole)
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(streamed, whole))


def test_memory_is_bounded_on_a_long_stream() -> None:
    """Five minutes in 1 s blocks: what the generator holds stays near one chunk, never the stream."""
    speech = read_wav(require_shared("data", "media", "librivox_0870.wav"))
    piece = np.concatenate([speech, np.zeros(SR, dtype=np.float32)])
    held = []

    def blocks() -> Iterator[np.ndarray]:
        for i in range(300):
            if i:  # look inside the running generator (tracemalloc would make torch 50x slower)
                state = chunks.gi_frame.f_locals
                audio = len(state["buf"]) + sum(map(len, state["pending"]))
                held.append(max(audio, len(state["chunker"].probs) * 512))
            yield piece[(np.arange(SR) + i * SR) % len(piece)]

    chunks = iter_speech_chunks(blocks())
    count = sum(1 for _ in chunks)
    assert count >= 10 and len(held) == 299
    assert max(held) <= 30 * SR + vad.MIN_BATCH * vad.WINDOW + 2 * SR  # one chunk + one model batch, of 300 s


def test_energy_backend_on_long_speech(long_speech) -> None:
    audio, speech = long_speech
    chunks = speech_chunks(audio, VadOptions(backend="energy"))
    check_chunks(chunks, audio)
    for s, e in speech:
        assert any(c.start <= s and e <= c.end for c in chunks), (s, e)
    silence = read_wav(require_shared("data", "media", "silence_8s.wav"))
    assert speech_chunks(silence, VadOptions(backend="energy")) == []
