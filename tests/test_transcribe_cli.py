"""`fama transcribe` / `fama translate` end to end with the tiny random-weight model.

Its text is gibberish, so these tests check files, formats, times, limits and exit codes; with a trained
model (tests/fixtures, when it exists) the same runs can also assert words.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pysubs2
import pytest
from typer.testing import CliRunner

from fama_cli.main import app
from fama_core.audio import ffmpeg_exe
from fama_core.subtitles import EMPTY_SRT

from conftest import require_shared

FAST = ["--beam-size", "1", "--max-tokens", "12", "--quiet"]
MEDIA_FILES = ["cheetah_en.wav", "cheetah_it.wav", "jfk.flac", "leopard_it.wav", "multilingual.mp3",
               "silence_8s.wav", "stereo_diarization.wav"]


@pytest.fixture(scope="module")
def tiny() -> str:
    return str(require_shared("fixtures", "fbk_reference", "tiny", "checkpoint.pt"))


@pytest.fixture(scope="module")
def media() -> Path:
    return require_shared("data", "media")


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def generated(tmp_path_factory, media) -> Path:
    """An mp4 with an audio track, an opus file, 48 kHz stereo, a 0-byte file, text named .wav, spaces+accents."""
    d = tmp_path_factory.mktemp("gen")
    src = str(media / "jfk.flac")
    ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x64:d=4", "-i", src, "-t", "4", "-c:v", "libx264",
           "-c:a", "aac", "-shortest", str(d / "video.mp4"))
    ffmpeg("-i", str(media / "cheetah_it.wav"), "-c:a", "libopus", str(d / "voice.opus"))
    ffmpeg("-i", str(media / "leopard_en.wav"), "-ar", "48000", "-ac", "2", str(d / "stereo48k.wav"))
    (d / "empty.wav").write_bytes(b"")
    (d / "notes.wav").write_text("this is not audio\n")
    (d / "cartella con spazi").mkdir()
    shutil.copy(media / "cheetah_en.wav", d / "cartella con spazi" / "però è così.wav")
    return d


def check_subtitles(path: Path, duration: float, width: int = 42, count: int = 2) -> int:
    subs = pysubs2.load(str(path))  # the format recognised from the content, as subtitle editors do
    assert subs.format == path.suffix[1:]
    if path.suffix == ".srt" and path.read_text(encoding="utf-8") == EMPTY_SRT:
        return 0  # no speech: the one empty, zero-length cue that lets tools recognise an SRT
    last_end = 0
    for ev in subs:
        assert last_end <= ev.start < ev.end <= round(duration * 1000) + 1
        lines = ev.plaintext.split("\n")
        assert 1 <= len(lines) <= count and all(len(line) <= width for line in lines), lines
        last_end = ev.end
    return len(subs)


def test_shared_media_all_formats(tiny, media, tmp_path):
    inputs = [media / f for f in MEDIA_FILES]
    code, out, err = run("transcribe", *inputs, "-o", tmp_path, "-f", "all", "--lang", "en", "--model", tiny, *FAST)
    assert code == 0, err
    expected = {f"{Path(f).stem}.{ext}" for f in MEDIA_FILES for ext in ("txt", "srt", "vtt", "tsv", "json")}
    assert {p.name for p in tmp_path.iterdir()} == expected
    for f in MEDIA_FILES:
        stem = tmp_path / Path(f).stem
        d = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
        assert d["language"] == "en" and d["task"] == "transcribe" and d["model"] == tiny
        assert d["options"]["beam_size"] == 1 and d["duration"] > 0
        for s in d["segments"]:
            assert 0 <= s["start"] <= s["end"] <= d["duration"] + 1e-6
            assert all(s["start"] <= w["start"] <= w["end"] <= s["end"] for w in s["words"])
        n_srt = check_subtitles(stem.with_suffix(".srt"), d["duration"])
        n_vtt = check_subtitles(stem.with_suffix(".vtt"), d["duration"])
        assert n_srt == n_vtt
        assert stem.with_suffix(".txt").read_text(encoding="utf-8") == "".join(s["text"] + "\n" for s in d["segments"])
        if f == "silence_8s.wav":  # no speech: no text, no cues
            assert d["segments"] == [] and d["text"] == "" and n_srt == 0
        else:
            assert n_srt > 0


def test_generated_media_bad_files_and_exit_code(tiny, generated, tmp_path):
    code, out, err = run("transcribe", generated, "-r", "-o", tmp_path, "--srt", "--json", "--lang", "it",
                         "--model", tiny, *FAST)
    assert code == 1
    failures = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failures) == 2, err
    assert any("empty.wav" in line and "empty" in line.split("empty.wav", 1)[1] for line in failures)
    assert any("notes.wav" in line and "not a media file" in line for line in failures)
    produced = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert produced == sorted(f"{s}.{e}" for s in ["video", "voice", "stereo48k", "cartella con spazi/però è così"]
                              for e in ("srt", "json"))
    for stem in ["video", "voice", "stereo48k", "cartella con spazi/però è così"]:
        d = json.loads((tmp_path / f"{stem}.json").read_text(encoding="utf-8"))
        assert d["duration"] > 1
        check_subtitles(tmp_path / f"{stem}.srt", d["duration"])
    assert "1 failed" not in err  # --quiet: no summary


def test_skip_existing_overwrite_and_refusal(tiny, media, tmp_path):
    args = ["transcribe", media / "cheetah_en.wav", media / "leopard_it.wav", "-o", tmp_path, "--txt", "--srt",
            "--lang", "en", "--model", tiny, "--beam-size", "1", "--max-tokens", "12"]
    assert run(*args)[0] == 0
    (tmp_path / "leopard_it.srt").unlink()  # as if a run had stopped half way
    before = (tmp_path / "cheetah_en.txt").stat().st_mtime_ns
    code, out, err = run(*args, "--skip-existing")
    assert code == 0 and "1 done, 1 skipped, 0 failed" in err
    assert (tmp_path / "leopard_it.srt").exists() and (tmp_path / "cheetah_en.txt").stat().st_mtime_ns == before
    code, out, err = run(*args)
    assert code == 1 and "output exists" in err and "--overwrite" in err
    code, out, err = run(*args, "--overwrite")
    assert code == 0 and "2 done" in err
    assert run(*args, "--overwrite", "--skip-existing")[0] == 2


def test_single_input_to_stdout_matches_library(tiny, media):
    from fama_core import load_model, transcribe

    code, out, err = run("transcribe", media / "jfk.flac", "--lang", "en", "--model", tiny, *FAST)
    assert code == 0
    t = transcribe(str(media / "jfk.flac"), load_model(tiny, dtype="float32"), "en", beam_size=1, max_len_b=12)
    assert out == "".join(s.text + "\n" for s in t.segments) and out.strip()
    code, out, err = run("transcribe", media / "jfk.flac", "--json", "-o", "-", "--lang", "en", "--model", tiny,
                         *FAST)
    assert json.loads(out)["text"] == t.text


def test_stdin_pipe(tiny, media):
    data = (media / "cheetah_en.wav").read_bytes()
    cmd = [sys.executable, "-m", "fama_cli", "transcribe", "-", "--lang", "en", "--model", tiny, *FAST]
    proc = subprocess.run(cmd, input=data, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip()


def test_crash_mid_write_leaves_no_partial_files(tiny, media, tmp_path, monkeypatch):
    from fama_core import outputs

    real_link = os.link
    calls = []

    def crash_on_second(src, dst, **kw):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C between writing the temp files and giving them their names
        real_link(src, dst, **kw)

    monkeypatch.setattr(outputs.os, "link", crash_on_second)
    code, out, err = run("transcribe", media / "cheetah_en.wav", "-o", tmp_path, "--srt", "--txt", "--lang", "en",
                         "--model", tiny, *FAST)
    assert code == 130 and len(calls) == 2 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []  # the input's set is all or nothing: no output, no temporary file
    monkeypatch.setattr(outputs.os, "link", real_link)
    code, out, err = run("transcribe", media / "cheetah_en.wav", "-o", tmp_path, "--srt", "--txt", "--lang", "en",
                         "--model", tiny, *FAST)
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["cheetah_en.srt", "cheetah_en.txt"]


def test_translate(tiny, media, tmp_path):
    code, out, err = run("translate", media / "cheetah_en.wav", "--to", "it", "-o", tmp_path, "--json",
                         "--model", tiny, *FAST)
    assert code == 0, err
    d = json.loads((tmp_path / "cheetah_en.json").read_text(encoding="utf-8"))
    scores = d["options"]["language_scores"]  # the spoken language is detected (random weights: either)
    assert (d["task"], d["language"], d["source_language"]) == ("translate", "it", max(scores, key=scores.get))
    code, out, err = run("translate", media / "cheetah_en.wav", "--to", "it", "--lang", "en", "-o", tmp_path,
                         "--json", "--model", tiny, "--overwrite", *FAST)
    d = json.loads((tmp_path / "cheetah_en.json").read_text(encoding="utf-8"))
    assert code == 0 and d["source_language"] == "en" and "language_scores" not in d["options"]


def test_lang_auto_records_scores(tiny, media, tmp_path):
    code, out, err = run("transcribe", media / "leopard_it.wav", "-o", tmp_path, "--json", "--model", tiny, *FAST)
    assert code == 0
    d = json.loads((tmp_path / "leopard_it.json").read_text(encoding="utf-8"))
    scores = d["options"]["language_scores"]
    assert set(scores) == {"en", "it"} and d["language"] == max(scores, key=scores.get)


def test_torchrun_rank_takes_its_share(tiny, media, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    files = [media / f for f in ["cheetah_en.wav", "cheetah_it.wav", "leopard_en.wav", "leopard_it.wav"]]
    code, out, err = run("transcribe", *files, "-o", tmp_path, "--txt", "--lang", "en", "--model", tiny,
                         "--beam-size", "1", "--max-tokens", "12")
    assert code == 0 and "[rank 1/2] 2 done" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cheetah_it.txt", "leopard_it.txt"]


def test_several_devices_in_one_process(tiny, media, tmp_path):
    files = [media / f for f in ["cheetah_en.wav", "leopard_en.wav"]]
    outputs = []
    for device, out in (("cpu", tmp_path / "one"), ("cpu,cpu", tmp_path / "two")):
        code, _, err = run("transcribe", *files, "-o", out, "--txt", "--lang", "en", "--model", tiny,
                           "--device", device, *FAST)
        assert code == 0, err
        outputs.append({p.name: p.read_text() for p in out.iterdir()})
    assert outputs[0] == outputs[1] and sorted(outputs[0]) == ["cheetah_en.txt", "leopard_en.txt"]
    code, _, err = run("transcribe", files[0], "--model", tiny, "--device", "gpu")
    assert code == 2 and "--device: unknown device 'gpu'" in err


@pytest.mark.parametrize("args", [
    ["--lang", "fr"],
    ["-f", "docx"],
    ["--beam-size", "0"],
    ["--dtype", "int3"],
    ["--overwrite", "--skip-existing"],
    ["--no-such-option"],
])
def test_usage_errors_exit_2(tiny, media, args):
    code, out, err = run("transcribe", media / "jfk.flac", "--model", tiny, *args)
    assert code == 2


def test_missing_input_and_nothing_found(tiny, tmp_path):
    code, out, err = run("transcribe", tmp_path / "nope.wav", "-o", tmp_path, "--txt", "--model", tiny, *FAST)
    assert code == 1 and "nope.wav" in err and "no such file" in err
    assert run("transcribe", str(tmp_path / "*.wav"), "--model", tiny, *FAST)[0] == 2
