"""A WAV file is as long as its header's data chunk says: one cut short (copied half way, or still being written)
is a clear per-file error, in the library, the CLI and the server, never a partial transcript. ffmpeg only
estimates a WAV's duration from its bitrate, so the check reads the header itself (RIFF and RF64)."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fama_cli.main import app
from fama_core.audio import AudioError, ffmpeg_exe, load_audio, stream_audio, wav_declared_seconds

from conftest import ROOT

CLIPS = ROOT / "tests" / "fixtures" / "tiny_trained" / "clips"
CATS = CLIPS / "en_cats.wav"  # 3.73 s, 16 kHz mono PCM
SR = 16000


def make_wav(path: Path, *args: str, seconds: float = 6.0) -> Path:
    """A tone, 44.1 kHz stereo, written by ffmpeg with `args` (codec, RF64...)."""
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=f=300:r=44100:d={seconds}", "-ac", "2", *args, str(path)], check=True,
                   stdin=subprocess.DEVNULL)
    return path


def cut(path: Path, size: int, out: Path) -> Path:
    """The first `size` bytes of `path`, as `out`."""
    out.write_bytes(path.read_bytes()[:size])
    return out


@pytest.mark.parametrize("args", [
    [],  # 16-bit PCM
    ["-c:a", "pcm_f32le"],  # IEEE float
    ["-c:a", "pcm_s24le", "-ac", "3"],  # WAVE_FORMAT_EXTENSIBLE
    ["-rf64", "always"],  # RF64: the size is in the ds64 chunk, the data chunk says 0xFFFFFFFF
], ids=["pcm16", "float", "extensible", "rf64"])
def test_a_wav_cut_in_half_is_a_clear_error(tmp_path, args) -> None:
    whole = make_wav(tmp_path / "tone.wav", *args)
    assert wav_declared_seconds(whole) == pytest.approx(6.0)
    assert len(load_audio(whole)) == 6 * SR  # complete: no false alarm
    half = cut(whole, whole.stat().st_size // 2, tmp_path / "half.wav")
    pattern = (rf"^{re.escape(str(half))}: truncated or damaged: the header declares 6\.00 s of audio, only "
               r"(\d\.\d\d) s could be decoded( \([^)]*\))?; re-encode it \(e\.g\. ffmpeg -i\) to transcribe the "
               r"part that is there$")
    with pytest.raises(AudioError, match=pattern) as excinfo:
        load_audio(half)
    assert 2.9 < float(re.match(pattern, str(excinfo.value)).group(1)) < 3.1
    blocks = stream_audio(half, block_seconds=1.0)  # what is there streams first; the error ends the stream
    assert len(next(blocks)) == SR
    with pytest.raises(AudioError, match="truncated or damaged"):
        list(blocks)


def test_a_100_byte_wav_is_truncated_not_empty_speech(tmp_path) -> None:
    tiny = cut(CATS, 100, tmp_path / "tiny.wav")
    with pytest.raises(AudioError, match=rf"^{re.escape(str(tiny))}: truncated or damaged: the header declares "
                                         r"3\.73 s of audio, only 0\.00 s could be decoded"):
        load_audio(tiny)


def test_a_few_samples_missing_are_caught(tmp_path) -> None:
    short = cut(CATS, CATS.stat().st_size - 2 * 400, tmp_path / "short.wav")  # 25 ms of 16-bit mono gone
    with pytest.raises(AudioError, match="truncated or damaged"):
        load_audio(short)
    assert len(load_audio(cut(CATS, CATS.stat().st_size - 2 * 80, tmp_path / "ok.wav"))) == len(load_audio(CATS)) - 80


@pytest.mark.parametrize("size", [0, 0xFFFFFFFF])
def test_streaming_sizes_mean_unknown_length(tmp_path, size) -> None:
    """A streaming writer leaves 0 or 0xFFFFFFFF as the data size: the file is read to its end, unchecked."""
    data = bytearray(CATS.read_bytes())
    at = data.index(b"data") + 4
    data[at:at + 4] = struct.pack("<I", size)
    data[4:8] = struct.pack("<I", size)
    streamed = tmp_path / "streamed.wav"
    streamed.write_bytes(bytes(data))
    assert wav_declared_seconds(streamed) is None
    assert np.array_equal(load_audio(streamed), load_audio(CATS))
    half = cut(streamed, len(data) // 2, tmp_path / "half.wav")
    assert len(load_audio(half)) < len(load_audio(CATS))  # unknowable: read as it is


def test_not_a_wav_or_no_frame_size(tmp_path) -> None:
    flac = tmp_path / "cats.flac"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(CATS), str(flac)], check=True)
    adpcm = make_wav(tmp_path / "adpcm.wav", "-c:a", "adpcm_ms")
    assert wav_declared_seconds(flac) is None and wav_declared_seconds(adpcm) is None
    assert wav_declared_seconds(tmp_path / "missing.wav") is None


def test_cli_fails_the_truncated_wav_alone(tmp_path) -> None:
    whole = tmp_path / "cats.wav"
    whole.write_bytes(CATS.read_bytes())
    half = cut(CATS, CATS.stat().st_size // 2, tmp_path / "half.wav")
    tiny = cut(CATS, 100, tmp_path / "tiny.wav")
    r = CliRunner().invoke(app, ["transcribe", str(whole), str(half), str(tiny), "--txt", "--model",
                                 str(ROOT / "tests" / "fixtures" / "tiny_trained"), "--device", "cpu", "--quiet"],
                           catch_exceptions=False)
    assert r.exit_code == 1, r.output
    failures = sorted(line for line in r.stderr.splitlines() if line.startswith("failed:"))
    assert [line.split(": truncated or damaged: the header declares 3.73 s of audio, only ")[0] for line in failures] \
        == [f"failed: {half}", f"failed: {tiny}"], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cats.txt", "cats.wav", "half.wav", "tiny.wav"]


def test_server_answers_400_for_a_truncated_wav(tmp_path) -> None:
    from test_serve import httpx, load_model, serving  # the serve extra: skipped with test_serve when missing

    half = cut(CATS, CATS.stat().st_size // 2, tmp_path / "half.wav")
    loaded = load_model(ROOT / "tests" / "fixtures" / "tiny_trained", device="cpu", dtype="float32")
    with serving(loaded) as (base, _):
        r = httpx.post(f"{base}/v1/audio/transcriptions", files={"file": ("half.wav", half.read_bytes())},
                       data={"model": "x"}, timeout=60)
    assert r.status_code == 400, r.text
    assert "truncated or damaged: the header declares 3.73 s of audio" in r.json()["error"]["message"]


def test_data_manifest_skips_a_truncated_wav(tmp_path) -> None:
    """`fama data manifest` reads a 16 kHz WAV's length from its header: one cut short is listed and skipped."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "cats.wav").write_bytes(CATS.read_bytes())
    cut(CATS, CATS.stat().st_size // 2, corpus / "half.wav")
    for name in ("cats", "half"):
        (corpus / f"{name}.txt").write_text("There are twelve cats on the table.\n")
    r = CliRunner().invoke(app, ["data", "manifest", str(corpus), str(tmp_path / "m.tsv"), "--lang", "en"],
                           catch_exceptions=False)
    assert r.exit_code == 0 and "1 utterances (1 skipped)" in r.stdout, r.output
    assert r.stderr.startswith(f"skipped: {corpus / 'half.wav'}: truncated or damaged: the header declares 3.73 s")
    assert [line.split("\t")[0] for line in (tmp_path / "m.tsv").read_text().splitlines()] == ["id", "cats"]
