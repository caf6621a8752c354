"""`fama transcribe` on media that is not what it claims: NaN/Inf samples, truncated files; and on FIFOs and
`<(...)` paths, which are streams, not empty files. With the trained fixture model, so the words are real."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import wave
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fama_cli.main import app
from fama_core import load_model
from fama_core.audio import ffmpeg_exe, load_audio
from fama_core.pipeline import TranscribeError, transcribe

from conftest import ROOT

MODEL = ROOT / "tests" / "fixtures" / "tiny_trained"
CATS = MODEL / "clips" / "en_cats.wav"
CATS_TEXT = "There are twelve cats on the table.\n"
COMMON = ["--model", str(MODEL), "--device", "cpu", "--quiet"]


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def float_copy(source: Path, target: Path, bad_at: float | None = None, bad: float = np.nan) -> Path:
    """`source` (16-bit mono WAV) as a 32-bit float WAV, with one sample at `bad_at` seconds set to `bad`."""
    with wave.open(str(source)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    if bad_at is not None:
        x[int(bad_at * rate)] = bad
    data = x.astype("<f4").tobytes()
    fmt = (3).to_bytes(2, "little") + (1).to_bytes(2, "little") + rate.to_bytes(4, "little")
    fmt += (rate * 4).to_bytes(4, "little") + (4).to_bytes(2, "little") + (32).to_bytes(2, "little")
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"data" + len(data).to_bytes(4, "little")
    target.write_bytes(b"RIFF" + (len(body) + len(data)).to_bytes(4, "little") + body + data)
    return target


def strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_nan_and_inf_audio_fail_alone_and_json_stays_valid(tmp_path) -> None:
    good = float_copy(CATS, tmp_path / "cats.wav")  # the same clip as float samples: still transcribed
    nan = float_copy(CATS, tmp_path / "nan.wav", bad_at=0.5)
    inf = float_copy(CATS, tmp_path / "inf.wav", bad_at=1.25, bad=-np.inf)
    code, _, err = run("transcribe", good, nan, inf, "--lang", "auto", "--json", "--txt", "-o", tmp_path / "out",
                       *COMMON)
    assert code == 1
    lines = err.splitlines()
    assert f"failed: {nan}: audio contains NaN/Inf samples (the first at 0.50 s)" in lines
    assert f"failed: {inf}: audio contains NaN/Inf samples (the first at 1.25 s)" in lines
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cats.json", "cats.txt"]
    assert (tmp_path / "out" / "cats.txt").read_text() == CATS_TEXT
    result = strict_json((tmp_path / "out" / "cats.json").read_text())
    assert result["language"] == "en" and set(result["options"]["language_scores"]) == {"en", "it"}


def test_truncated_flac_fails_with_both_durations(tmp_path) -> None:
    whole = tmp_path / "cats.flac"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(CATS), str(whole)], check=True)
    data = whole.read_bytes()
    cut = tmp_path / "half.flac"
    cut.write_bytes(data[: len(data) // 2])
    code, _, err = run("transcribe", whole, cut, "--txt", *COMMON)
    assert code == 1
    assert re.search(rf"^failed: {re.escape(str(cut))}: truncated or damaged: the header declares 3\.73 s of audio, "
                     r"only 1\.\d\d s could be decoded", err, re.M), err
    assert (tmp_path / "cats.txt").read_text() == CATS_TEXT
    assert not (tmp_path / "half.txt").exists()


def test_fifo_input_is_transcribed(tmp_path) -> None:
    fifo = tmp_path / "cats.wav"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(CATS.read_bytes())

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    code, _, err = run("transcribe", fifo, "--txt", "-o", tmp_path / "out", *COMMON)
    assert code == 0, err
    assert (tmp_path / "out" / "cats.txt").read_text() == CATS_TEXT
    writer.join(timeout=10)


def test_process_substitution_input_is_transcribed(tmp_path) -> None:
    if shutil.which("bash") is None:
        return
    args = " ".join(f'"{a}"' for a in COMMON)
    script = f'"{sys.executable}" -m fama_cli transcribe <(cat "{CATS}") {args}'
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout == CATS_TEXT


def test_library_refuses_a_waveform_with_nan() -> None:
    model = load_model(str(MODEL), device="cpu", dtype="float32")
    wave_ok = load_audio(CATS)
    assert transcribe(wave_ok, model, language="en").text == CATS_TEXT.strip()
    broken = wave_ok.copy()
    broken[40000] = np.nan
    with pytest.raises(TranscribeError, match=r"^<array 0>: audio contains NaN/Inf samples \(the first at 2\.50 s\)$"):
        transcribe(broken, model, language="en")
