"""`fama live` end to end with the demo model: subtitles valid while the run goes on, jsonl events, Ctrl-C,
stdin, and the checks made before the model loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pysubs2

from fama_core.audio import load_audio
from fama_core.checkpoints import demo_clips

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["--model", "fama-demo", "--lang", "en", "--threads", "1"]


def fama(*args: str, text: bool = True, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "fama_cli", "live", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=text, **kwargs)


def clip(name: str) -> Path:
    return next(p for p in demo_clips() if p.name == name)


def write_wav(path: Path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm16(audio))


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes()


def events(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for r in rows:
        assert r["type"] in ("delta", "segment", "final")
        assert isinstance(r["text"], str) and isinstance(r["emitted"], float)
        assert r["start"] <= r["end"]
    assert [r["type"] for r in rows].count("final") == 1 and rows[-1]["type"] == "final"
    emitted = [r["emitted"] for r in rows]
    assert emitted == sorted(emitted)
    return rows


def test_realtime_file_keeps_the_srt_valid_during_the_run(tmp_path):
    srt, jsonl = tmp_path / "out.srt", tmp_path / "events.jsonl"
    proc = fama(str(clip("en_cats.wav")), "--realtime", "--speed", "1.5", "--srt", str(srt), "--jsonl", str(jsonl),
                *DEMO)
    reads_during_run = 0
    while proc.poll() is None:
        if srt.exists():
            pysubs2.load(str(srt))  # complete and parseable whenever it is read
            reads_during_run += 1
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert reads_during_run > 0
    rows = events(jsonl)
    final = rows[-1]["text"]
    assert final and final == " ".join(r["text"] for r in rows if r["type"] == "delta")
    assert " ".join(r["text"] for r in rows if r["type"] == "segment") == final
    assert stdout.split("\n")[:-1] == [r["text"] for r in rows if r["type"] == "segment"]
    subs = pysubs2.load(str(srt))
    assert " ".join(e.plaintext.replace("\n", " ") for e in subs) == final
    assert rows[-1]["end"] == round(len(load_audio(clip("en_cats.wav"))) / 16000, 3)


def test_ctrl_c_flushes_the_tail_writes_the_files_and_exits_0(tmp_path):
    long = tmp_path / "long.wav"
    audio = np.concatenate([load_audio(clip(n)) for n in ["en_cats.wav", "en_bag.wav"] * 4])
    write_wav(long, audio)
    srt, vtt, jsonl = tmp_path / "out.srt", tmp_path / "out.vtt", tmp_path / "events.jsonl"
    proc = fama(str(long), "--realtime", "--srt", str(srt), "--vtt", str(vtt), "--jsonl", str(jsonl), *DEMO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and '"delta"' not in (jsonl.read_text() if jsonl.exists() else ""):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    rows = events(jsonl)
    assert rows[-1]["end"] < len(audio) / 16000  # stopped early, at what it had read
    assert pysubs2.load(str(srt)) is not None and vtt.read_text().startswith("WEBVTT")
    assert rows[-1]["text"] == " ".join(r["text"] for r in rows if r["type"] == "delta")


def test_raw_pcm_on_stdin(tmp_path):
    audio = load_audio(clip("en_bag.wav"))
    proc = fama("-", "--format", "s16le", "--jsonl", "-", *DEMO, stdin=subprocess.PIPE, text=False)
    stdout, stderr = (b.decode() for b in proc.communicate(pcm16(audio), timeout=120))
    assert proc.returncode == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert rows[-1]["type"] == "final" and rows[-1]["text"]
    assert rows[-1]["end"] == round(len(audio) / 16000, 3)


def test_an_existing_output_is_refused_before_loading(tmp_path):
    srt = tmp_path / "out.srt"
    srt.write_text("mine")
    proc = fama(str(clip("en_bag.wav")), "--srt", str(srt), *DEMO)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert stderr.strip() == f"error: {srt} exists (use --overwrite to replace it)"
    assert srt.read_text() == "mine"


def test_bad_sources_and_options(tmp_path):
    proc = fama(str(tmp_path / "missing.wav"), *DEMO)
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr.strip()) == (1, f"error: {tmp_path / 'missing.wav'}: no such file")
    proc = fama("-", "--realtime", *DEMO)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert stderr.strip() == ("error: realtime pacing is for a file SOURCE (a microphone, stdin or a stream is live "
                              "already)")
    proc = fama(str(clip("en_bag.wav")), "--policy", "magic", *DEMO)
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr.strip()) == (2, "error: unknown policy 'magic'; choose from streamatt, alignatt, "
                                                    "waitk")


def test_capture_commands_per_platform(monkeypatch):
    from fama_core import capture

    def args(platform: str, device: str | None = None) -> list[str]:
        monkeypatch.setattr(capture.sys, "platform", platform)
        capture.capture_backend.cache_clear()
        try:
            return capture.input_args(capture.SourceOptions(input_device=device))
        finally:
            capture.capture_backend.cache_clear()

    assert args("darwin") == ["-f", "avfoundation", "-i", ":default"]
    assert args("darwin", "1") == ["-f", "avfoundation", "-i", ":1"]
    assert args("win32", "Microphone (USB)") == ["-f", "dshow", "-i", "audio=Microphone (USB)"]
    assert args("linux")[:2] == ["-f", capture.capture_backend()] and args("linux")[2:] == ["-i", "default"]
    assert capture.device_list_command("dshow")[-6:] == ["-list_devices", "true", "-f", "dshow", "-i", "dummy"]
    assert capture.input_args(capture.SourceOptions("-", raw_format="s16le", rate=48000, channels=2)) == [
        "-f", "s16le", "-ar", "48000", "-ac", "2", "-i", "pipe:0"]
    assert capture.input_args(capture.SourceOptions("http://host/a.mp3")) == ["-i", "http://host/a.mp3"]
