"""fama_core.audio: decoding media of many kinds with the same ffmpeg the package uses."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from fama_core import audio
from fama_core.audio import AudioError, audio_duration, ffmpeg_exe, load_audio, stream_audio

from conftest import ROOT, require_shared

SR = 16000
TONE = "0.5*sin(2*PI*440*t)"


def make_media(path: Path, *args: str, seconds: float = 3.0, video: bool = False, audio_src: str | None = None):
    """Write `path` with ffmpeg from lavfi sources: a 440 Hz tone (stereo 48 kHz unless `audio_src`)."""
    src = audio_src or f"aevalsrc=exprs={TONE}|{TONE}:s=48000:d={seconds}"
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", src]
    if video:
        cmd += ["-f", "lavfi", "-i", f"color=c=blue:s=64x64:r=10:d={seconds}"]
    subprocess.run(cmd + list(args) + [str(path)], check=True, stdin=subprocess.DEVNULL)
    return path


@pytest.mark.parametrize(
    "name, args, video, tolerance_ms",
    [
        ("tone.wav", [], False, 1),
        ("tone.flac", [], False, 1),
        ("tone.mp3", ["-c:a", "libmp3lame"], False, 5),
        ("tone.ogg", ["-c:a", "libopus"], False, 5),
        ("tone.m4a", ["-c:a", "aac"], False, 5),
        ("tone.mp4", ["-c:v", "mpeg4", "-c:a", "aac", "-shortest"], True, 5),
        ("tone.mkv", ["-c:v", "mpeg4", "-c:a", "libvorbis", "-shortest"], True, 5),
        ("tone.webm", ["-c:v", "libvpx", "-c:a", "libopus", "-shortest"], True, 5),
    ],
)
def test_formats_decode_to_16k_mono(tmp_path, name, args, video, tolerance_ms) -> None:
    path = make_media(tmp_path / name, *args, video=video)
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - 3 * SR) <= tolerance_ms * SR // 1000, len(wav)
    middle = wav[SR // 2 : 5 * SR // 2]
    assert 0.3 < np.sqrt(np.mean(middle**2)) < 0.4  # the 0.5-amplitude tone, both channels averaged
    duration = audio_duration(path)
    assert duration is not None and abs(duration - 3.0) < 0.1


def test_downmix_cancels_opposite_channels(tmp_path) -> None:
    path = make_media(tmp_path / "phase.wav", audio_src=f"aevalsrc=exprs={TONE}|-{TONE}:s=48000:d=2")
    wav = load_audio(path)
    assert len(wav) == 2 * SR
    assert np.abs(wav).max() < 1e-3


def unusable(kind: str, d: Path) -> Path:
    path = d / {"directory": "folder.wav", "video-without-audio": "mute.mp4"}.get(kind, f"{kind}.wav")
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not audio\n" * 20)
    elif kind == "video-without-audio":
        make_media(path, "-map", "1:v", "-c:v", "mpeg4", video=True)
    elif kind == "zero-length":
        make_media(path, "-t", "0")
    return path


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("missing", "no such file"),
        ("directory", "is a directory"),
        ("empty", "empty file (0 bytes)"),
        ("text", "not a media file"),
        ("video-without-audio", "no audio stream"),
        ("zero-length", "zero-length audio"),
    ],
)
def test_unusable_inputs_raise_audio_error(tmp_path, kind, reason) -> None:
    path = unusable(kind, tmp_path)
    with pytest.raises(AudioError) as excinfo:
        load_audio(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message
    with pytest.raises(AudioError, match=re.escape(reason)):
        list(stream_audio(path))


def test_awkward_file_names(tmp_path) -> None:
    source = make_media(tmp_path / "plain.wav", seconds=1.0)
    for name in ("ré sumé è.wav", "10:30 talk.wav", "-dash.wav"):
        target = tmp_path / name
        shutil.copy(source, target)
        assert len(load_audio(target)) == SR
        assert len(load_audio(str(target))) == SR


def test_stream_blocks_concatenate_to_load(tmp_path) -> None:
    path = make_media(tmp_path / "tone.flac", seconds=3.5)
    blocks = list(stream_audio(path, block_seconds=1.0))
    assert [len(b) for b in blocks] == [SR, SR, SR, SR // 2]
    assert all(b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(path))


def test_stream_closed_early_stops_ffmpeg(tmp_path, monkeypatch) -> None:
    path = make_media(tmp_path / "long.flac", seconds=120.0, audio_src="anoisesrc=d=120:c=pink:r=16000:a=0.1")
    started = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(audio.subprocess, "Popen", RecordingPopen)
    blocks = stream_audio(path, block_seconds=2.0)
    assert len(next(blocks)) == 2 * SR
    assert started[0].poll() is None  # still decoding: nothing past the first blocks was read
    blocks.close()
    assert started[0].returncode is not None and started[0].stdout.closed


def test_stdin_dash_in_process(tmp_path, monkeypatch) -> None:
    data = make_media(tmp_path / "tone.mp3", "-c:a", "libmp3lame", seconds=2.0).read_bytes()
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(data)))
    wav = load_audio("-")
    assert abs(len(wav) - 2 * SR) <= 0.03 * SR  # MP3 from a pipe: ffmpeg cannot trim the encoder padding
    assert audio_duration("-") is None


def test_stdin_dash_from_a_real_pipe(tmp_path) -> None:
    path = make_media(tmp_path / "tone.ogg", "-c:a", "libopus", seconds=2.0)
    code = "from fama_core.audio import stream_audio; print(sum(len(b) for b in stream_audio('-', 0.5)))"
    with open(path, "rb") as f:
        out = subprocess.run([sys.executable, "-c", code], stdin=f, cwd=ROOT, capture_output=True, check=True)
    assert abs(int(out.stdout) - 2 * SR) <= 80


def test_stdin_dash_garbage(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(b"not media at all" * 100)))
    with pytest.raises(AudioError, match=r"^-: not a media file"):
        load_audio("-")


def test_shared_real_media() -> None:
    media = require_shared("data", "media")
    jfk = load_audio(media / "jfk.flac")  # 44.1 kHz stereo FLAC
    assert len(jfk) == 11 * SR and 0.05 < np.abs(jfk).max() < 1.2
    assert audio_duration(media / "jfk.flac") == pytest.approx(11.0)
    mp3 = load_audio(media / "multilingual.mp3")  # 24 kHz mono MP3
    assert abs(len(mp3) / SR - 59.9) < 0.05
    stereo = load_audio(media / "stereo_diarization.wav")  # 16 kHz stereo: a different speaker per channel
    assert abs(len(stereo) / SR - 5.0) < 0.01 and np.abs(stereo).max() > 0.01
    leopard = load_audio(media / "leopard_it.wav")  # 16 kHz mono 16-bit: exact samples
    assert len(leopard) == 88704
    assert np.allclose(leopard * 32768, np.round(leopard * 32768), atol=1e-3)


# --------------------------------------------------------------------------- samples that are not numbers


def float_wav(path: Path, frames: np.ndarray, rate: int) -> Path:
    """A 32-bit IEEE-float WAV of `frames` ([n] or [n, channels]), written byte by byte: values kept exactly."""
    frames = frames.reshape(len(frames), -1)
    data = frames.astype("<f4").tobytes()
    channels = frames.shape[1]
    fmt = struct.pack("<HHIIHH", 3, channels, rate, rate * channels * 4, channels * 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


@pytest.mark.parametrize(
    "case, rate, channels, at, value, first",
    [
        ("one-nan", SR, 1, 0.5, np.nan, "0.50"),
        ("all-nan", SR, 1, None, np.nan, "0.00"),
        ("inf", SR, 1, 1.75, np.inf, "1.75"),
        ("minus-inf-44k-stereo", 44100, 2, 1.0, -np.inf, None),  # resampled: the NaN spreads over a few samples
    ],
)
def test_non_finite_samples_are_a_clear_error(tmp_path, case, rate, channels, at, value, first) -> None:
    rng = np.random.default_rng(0)
    frames = (0.1 * rng.standard_normal((2 * rate, channels))).astype(np.float32)
    path = float_wav(tmp_path / f"{case}.wav", frames, rate)
    if rate == SR:  # the finite file comes back exactly: the test file is what it claims to be
        np.testing.assert_array_equal(load_audio(path), frames[:, 0])
    if at is None:
        frames[:] = value
    else:
        frames[int(at * rate), -1] = value
    float_wav(path, frames, rate)
    when = re.escape(first) if first else r"0\.99|1\.00"
    pattern = rf"^{re.escape(str(path))}: audio contains NaN/Inf samples \(the first at ({when}) s\)$"
    with pytest.raises(AudioError, match=pattern):
        load_audio(path)
    blocks = stream_audio(path, block_seconds=0.25)
    with pytest.raises(AudioError, match=pattern):
        for _ in blocks:
            pass
    ordinary = float_wav(tmp_path / "ok.wav", np.clip(np.nan_to_num(frames, posinf=1, neginf=-1), -1, 1), rate)
    assert np.isfinite(load_audio(ordinary)).all()


# --------------------------------------------------------------------------- truncated files, FIFOs


@pytest.mark.parametrize("name, args", [("tone.mp3", ["-c:a", "libmp3lame"]), ("tone.flac", [])])
def test_truncated_file_is_a_clear_error(tmp_path, name, args) -> None:
    whole = make_media(tmp_path / name, *args, seconds=6.0)
    assert abs(len(load_audio(whole)) - 6 * SR) <= 5 * SR // 1000  # complete: no false alarm
    data = whole.read_bytes()
    cut = tmp_path / f"half-{name}"
    cut.write_bytes(data[: len(data) // 2])
    pattern = (rf"^{re.escape(str(cut))}: truncated or damaged: the header declares 6\.00 s of audio, only "
               r"(\d\.\d\d) s could be decoded( \([^)]*\))?; re-encode it \(e\.g\. ffmpeg -i\) to transcribe the part "
               r"that is there$")
    with pytest.raises(AudioError, match=pattern) as excinfo:
        load_audio(cut)
    decoded = float(re.match(pattern, str(excinfo.value)).group(1))
    assert 2.5 < decoded < 3.5
    # what is there streams out first; the error comes when the stream ends short
    blocks = stream_audio(cut, block_seconds=1.0)
    assert len(next(blocks)) == SR
    with pytest.raises(AudioError, match="truncated or damaged"):
        list(blocks)


def test_video_longer_than_its_audio_is_not_truncated(tmp_path) -> None:
    # the container's duration is the video's: audio that ends earlier is no sign of damage
    path = make_media(tmp_path / "talk.mkv", "-c:v", "mpeg4", "-c:a", "flac", "-t", "6", video=True, seconds=3.0)
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "color=c=blue:s=64x64:r=10:d=6", "-f", "lavfi", "-i", f"aevalsrc=exprs={TONE}:s=16000:d=3",
                    "-c:v", "mpeg4", "-c:a", "flac", str(path)], check=True, stdin=subprocess.DEVNULL)
    assert audio_duration(path) == pytest.approx(6.0, abs=0.15)
    assert abs(len(load_audio(path)) - 3 * SR) <= SR // 100


def _feed(fifo: Path, data: bytes) -> threading.Thread:
    def write() -> None:
        with open(fifo, "wb") as f:  # blocks until the reader opens the FIFO
            f.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_fifo_is_read_as_a_stream(tmp_path) -> None:
    source = make_media(tmp_path / "tone.wav", seconds=2.0)
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    assert fifo.stat().st_size == 0
    writer = _feed(fifo, source.read_bytes())
    np.testing.assert_array_equal(load_audio(fifo), load_audio(source))
    writer.join(timeout=10)
    assert not writer.is_alive()


def test_process_substitution_path(tmp_path) -> None:
    source = make_media(tmp_path / "tone.flac", seconds=2.0)
    code = "import sys; from fama_core.audio import load_audio; print(len(load_audio(sys.argv[1])))"
    script = f'"{sys.executable}" -c "{code}" <(cat "{source}")'
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == 2 * SR


def test_unstatable_path_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / ("x" * 300 + ".wav")
    with pytest.raises(AudioError, match=rf"^{re.escape(str(path))}: cannot read: File name too long$"):
        load_audio(path)
