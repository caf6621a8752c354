"""What `fama transcribe` promises about files, errors, options and signals (docs/usage.md, "Guarantees").

Runs the small trained model of tests/fixtures on its clips (no downloads, no ../shared).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fama_cli.main import app
from fama_core import outputs

from conftest import ROOT

MODEL = ROOT / "tests" / "fixtures" / "tiny_trained"
CLIPS = MODEL / "clips"
FAST = ["--model", str(MODEL), "--device", "cpu", "--beam-size", "1", "--max-tokens", "30", "--quiet"]


def run(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def names(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def clips(tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for name in ("en_cats.wav", "en_bag.wav"):
        shutil.copy(CLIPS / name, d / name)
    return d


# --- item 2: --overwrite never replaces an input


def test_overwrite_never_replaces_an_input(tmp_path):
    talk = tmp_path / "talk.txt"  # audio under a transcript's name
    shutil.copy(CLIPS / "en_cats.wav", talk)
    before = talk.read_bytes()
    code, out, err = run("transcribe", talk, "--txt", "--overwrite", "--lang", "en", *FAST)
    assert code == 1 and f"{talk}: output {talk} would replace an input" in err
    assert talk.read_bytes() == before and names(tmp_path) == ["talk.txt"]


def test_overwrite_never_replaces_an_input_through_a_hard_link(clips, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.link(clips / "en_cats.wav", out / "en_cats.txt")  # the output name is the input file under another name
    before = (clips / "en_cats.wav").read_bytes()
    code, _, err = run("transcribe", clips, "-o", out, "--txt", "--overwrite", "--lang", "en", *FAST)
    assert code == 1 and "en_cats.wav: output" in err and "would replace an input" in err
    assert (clips / "en_cats.wav").read_bytes() == before and (out / "en_cats.txt").read_bytes() == before
    assert (out / "en_bag.txt").read_text().strip()  # the other input still done


# --- item 3: an output created during the run is not replaced


def test_an_output_that_appears_during_the_run_is_not_replaced(clips, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = outputs._write_temp

    def other_run_writes_first(path, data):
        tmp = real(path, data)
        if path.name == "en_cats.srt":
            path.write_text("another fama's subtitles\n")
        return tmp

    monkeypatch.setattr(outputs, "_write_temp", other_run_writes_first)
    code, _, err = run("transcribe", clips, "-o", out, "--srt", "--txt", "--lang", "en", *FAST)
    assert code == 1
    assert f"{clips / 'en_cats.wav'}: output exists: {out / 'en_cats.srt'}" in err
    assert (out / "en_cats.srt").read_text() == "another fama's subtitles\n"
    assert names(out) == ["en_bag.srt", "en_bag.txt", "en_cats.srt"]  # en_cats.txt was not left alone either


def test_two_concurrent_runs_on_one_folder_never_replace_each_other(clips, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fama_cli", "transcribe", str(clips), "-o", str(out), "--json", "--lang", "en",
           *FAST[:-1]]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert names(out) == ["en_bag.json", "en_cats.json"]
    done = sum(int(err.split(" done")[0].split()[-1]) for _, err in results)
    refused = sum(err.count("output exists") for _, err in results)
    assert done == 2 and refused == 2, results  # each file written by exactly one run, refused by the other
    for name in ("en_bag.json", "en_cats.json"):
        json.loads((out / name).read_text(encoding="utf-8"))


# --- item 4: disk full: all or nothing per input; stale temporary files; a plain rerun works


def test_disk_full_leaves_no_partial_output_set_and_a_rerun_works(clips, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = os.write
    calls = {"n": 0}

    def full_on_second_format(fd, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(outputs.os, "write", full_on_second_format)
    code, _, err = run("transcribe", clips / "en_cats.wav", "-o", out, "-f", "all", "--lang", "en", *FAST)
    assert code == 1 and "en_cats.wav: cannot write output" in err and "No space left on device" in err
    assert names(out) == []
    monkeypatch.setattr(outputs.os, "write", real)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    mine = outputs.temp_path(out / "en_cats.srt")
    stale = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{int(dead.stdout)}-"))
    stale.write_text("left by a crashed run")
    code, _, err = run("transcribe", clips / "en_cats.wav", "-o", out, "-f", "all", "--lang", "en", *FAST)
    assert code == 0, err
    assert names(out) == [f"en_cats.{f}" for f in ("json", "srt", "tsv", "txt", "vtt")]


# --- item 6: paths that cannot be examined, unreadable folders


def test_unexaminable_paths_and_unreadable_folders_fail_alone(clips, tmp_path, monkeypatch):
    out = tmp_path / "out"
    long_name = tmp_path / ("x" * 300 + ".wav")  # a name component over 255 bytes: stat fails
    locked = tmp_path / "locked"  # tests run as root: an unreadable folder is simulated
    locked.mkdir()
    (locked / "a.wav").write_bytes(b"")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    code, _, err = run("transcribe", clips / "en_cats.wav", long_name, locked, clips / "en_bag.wav", "-o", out,
                       "--txt", "--lang", "en", *FAST)
    assert code == 1 and "Traceback" not in err
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert failed == [f"failed: {long_name}: cannot access: file name too long",
                      f"failed: {locked}: cannot read folder: permission denied"]
    assert names(out) == ["en_bag.txt", "en_cats.txt"]


def test_a_path_in_a_folder_that_cannot_be_searched(clips, tmp_path, monkeypatch):
    hidden = tmp_path / "private" / "talk.wav"
    real_stat = os.stat

    def stat(path, *a, **k):
        if Path(path) == hidden:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_stat(path, *a, **k)

    monkeypatch.setattr(os, "stat", stat)
    code, _, err = run("transcribe", hidden, clips / "en_bag.wav", "-o", tmp_path / "out", "--txt", "--lang", "en",
                       *FAST)
    assert code == 1 and f"failed: {hidden}: cannot access: permission denied" in err and "Traceback" not in err
    assert names(tmp_path / "out") == ["en_bag.txt"]


# --- item 8: bad options are usage errors (exit 2, one line), caught before decoding


@pytest.mark.parametrize("args, message", [
    (["--max-tokens", "0"], "max tokens must be at least 1, not 0"),
    (["--max-tokens", "-1"], "max tokens must be at least 1, not -1"),
    (["--beam-size", "257"], "beam size 257 must be smaller than the model's vocabulary (257 tokens)"),
    (["--max-cue-seconds", "0"], "--max-cue-seconds must be greater than 0, not 0.0"),
    (["--max-cue-seconds", "-5"], "--max-cue-seconds must be greater than 0, not -5.0"),
    (["--no-repeat-ngram-size", "-1"], "no-repeat n-gram size must be 0 (off) or more, not -1"),
    (["--min-cue-seconds", "-1"], "--min-cue-seconds must be between 0 and --max-cue-seconds (7.0), not -1.0"),
    (["--max-cps", "-1"], "--max-cps must be greater than 0, not -1.0"),
    (["--max-chunk-seconds", "200"], "max chunk seconds must be between 1 and 120, not 200.0"),
    (["--ctc-weight", "1.5"], "CTC weight must be between 0 and 1, not 1.5"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--task", "summarize"], "--task must be transcribe or translate"),
    (["--to", "it"], "--to goes with --task translate"),
    (["--task", "translate", "--language", "en"], "the speech is already in en: nothing to translate"),
])
def test_bad_options_exit_2(clips, tmp_path, args, message):
    code, _, err = run("transcribe", clips / "en_cats.wav", "-o", tmp_path / "out", "--txt", *FAST, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' must be at least 1"),
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a number"),
    ({"RANK": "5", "WORLD_SIZE": "2"}, "RANK='5' must be between 0 and WORLD_SIZE-1 (1)"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK='-1' must be between 0 and WORLD_SIZE-1 (1)"),
])
def test_bad_torchrun_environment_exits_2(clips, tmp_path, monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, _, err = run("transcribe", clips / "en_cats.wav", "-o", tmp_path, "--txt", *FAST)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_library_refuses_options_that_cannot_work():
    from fama_core import load_model
    from fama_core.decoding import DecodeOptions
    from fama_core.pipeline import Pipeline, TranscribeOptions

    model, tok = load_model(MODEL, device="cpu", dtype="float32")
    for decode, message in ((DecodeOptions(beam_size=300), "smaller than the model's vocabulary"),
                            (DecodeOptions(max_len_b=0), "max tokens must be at least 1"),
                            (DecodeOptions(no_repeat_ngram_size=-1), "no-repeat n-gram size")):
        with pytest.raises(ValueError, match=message):
            Pipeline(model, tok, TranscribeOptions(language="en", decode=decode))


# --- item 9: SIGINT


def _children(pid: int) -> list[int]:
    return [int(c) for f in Path(f"/proc/{pid}/task").glob("*/children") for c in f.read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to see the ffmpeg child")
def test_sigint_while_reading_stdin_exits_130_within_2_seconds(tmp_path):
    """The `interrupted` line and the summary come within 2 s of SIGINT, and the process exits with 130.

    The exit itself also takes Python's shutdown with torch loaded (0.3-0.6 s on an idle machine, up to 2 s
    at a load of 10 on 2 cores), so only the lines are held to 2 s here, the exit to 2 s more.
    """
    import threading

    clip = (CLIPS / "en_cats.wav").read_bytes()
    cmd = [sys.executable, "-m", "fama_cli", "transcribe", "-", "--lang", "en", "--model", str(MODEL), "--device",
           "cpu", "-o", str(tmp_path), "--txt"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[tuple[float, str]] = []
    try:
        proc.stdin.write(clip[: len(clip) // 2])  # half a file, and stdin stays open
        proc.stdin.flush()
        deadline = time.monotonic() + 120
        while not _children(proc.pid) and time.monotonic() < deadline:  # ffmpeg started: the run is reading
            time.sleep(0.05)
        assert _children(proc.pid), "the run never started reading stdin"
        time.sleep(0.3)

        def read() -> None:
            for line in proc.stderr:
                lines.append((time.monotonic() - sent, line.decode()))

        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        reader = threading.Thread(target=read)
        reader.start()
        proc.wait(timeout=10)
        exited = time.monotonic() - sent
        reader.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(line for _, line in lines)
    assert proc.returncode == 130, text
    assert [line for _, line in lines[:1]] == ["interrupted\n"], text
    assert lines[1][1].startswith("0 done, 0 skipped, 0 failed") and lines[1][0] < 2.0, lines
    assert exited < 4.0, exited
    assert "Traceback" not in text and "Fatal" not in text and names(tmp_path) == []


# --- item 14: modes from the umask


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_get_the_modes_the_umask_gives(clips, tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        code, _, err = run("transcribe", clips / "en_cats.wav", "-o", tmp_path / "new" / "out", "--srt", "--json",
                           "--lang", "en", *FAST)
        assert os.umask(umask) == umask  # never changed by fama
    finally:
        os.umask(old)
    assert code == 0, err
    for f in ("en_cats.srt", "en_cats.json"):
        assert (tmp_path / "new" / "out" / f).stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "new" / "out").stat().st_mode & 0o777 == dir_mode


# --- issue 13, item 4: whisper's options, --threads, --version, help


def test_whisper_option_names(clips, tmp_path):
    out = tmp_path / "out"
    code, _, err = run("transcribe", clips / "en_cats.wav", "--language", "en", "--output_dir", out,
                       "--output_format", "json,txt", *FAST)
    assert code == 0, err
    d = json.loads((out / "en_cats.json").read_text(encoding="utf-8"))
    assert (d["task"], d["language"], d["text"]) == ("transcribe", "en", "There are twelve cats on the table.")
    assert names(out) == ["en_cats.json", "en_cats.txt"]
    it_out = tmp_path / "it"
    code, _, err = run("transcribe", CLIPS / "it_boy.wav", "--task", "translate", "--language", "it",
                       "--output_dir", it_out, "--output_format", "json", *FAST)
    d = json.loads((it_out / "it_boy.json").read_text(encoding="utf-8"))
    assert code == 0 and (d["task"], d["language"], d["source_language"]) == ("translate", "en", "it")
    assert d["text"].strip() and d["text"] != json.loads((CLIPS / "clips.json").read_text())[2]["text"]


def test_task_translate_with_to(clips, tmp_path):
    code, _, err = run("transcribe", clips / "en_cats.wav", "--task", "translate", "--to", "it", "-o", tmp_path,
                       "--json", *FAST)
    d = json.loads((tmp_path / "en_cats.json").read_text(encoding="utf-8"))
    assert code == 0 and (d["task"], d["language"], d["source_language"]) == ("translate", "it", "en")


def test_threads_sets_torch_threads(clips, tmp_path):
    before = torch.get_num_threads()
    try:
        code, _, err = run("transcribe", clips / "en_cats.wav", "-o", tmp_path, "--txt", "--threads", "1",
                           "--lang", "en", *FAST)
        assert code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_version():
    from importlib import metadata

    code, out, _ = run("--version")
    dist = metadata.packages_distributions()["fama_cli"][0]
    assert code == 0 and out == f"fama {metadata.version(dist)}\n"


def test_help_is_clean(monkeypatch):
    import typer

    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run("--help")
    commands = [line.split()[1] for line in out.splitlines() if line.startswith("│ ") and len(line.split()) > 2
                and not line.split()[1].startswith("-")]
    assert code == 0 and commands[:2] == ["transcribe", "translate"] and "--version" in out
    command = typer.main.get_command(app)
    for name in ("transcribe", "translate"):
        code, out, _ = run(name, "--help")
        assert code == 0 and "<bool>" not in out and "{inputs}" not in out
        assert f"{name} [OPTIONS] INPUTS..." in out
        for opt in ("--language", "--output_dir", "--output_format", "--threads", "--min-cue-seconds", "--max-cps"):
            assert opt in out
        params = command.commands[name].params
        assert all(p.help for p in params if p.name != "help"), [p.name for p in params if not p.help]


# --- issue 13, item 6: feedback


def test_up_front_checks_happen_before_the_model_is_loaded(clips, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    code, _, err = run("transcribe", clips, "-o", tmp_path / "file", "--txt", "--model", tmp_path / "no-such-model")
    assert code == 2 and "-o" in err and "exists and is not a folder" in err and "no-such-model" not in err
    code, _, err = run("transcribe", clips, "-o", tmp_path / "file" / "sub", "--txt", "--model", tmp_path / "nope")
    assert code == 2 and "on the way to the output folder" in err


def test_globs_that_match_nothing(clips, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run("transcribe", clips / "en_cats.wav", "nothing/*.ogg", "-o", "out", "--txt", "--lang", "en",
                       *FAST)
    assert code == 0 and "warning: nothing/*.ogg: matches no media files" in err
    assert names(tmp_path / "out") == ["en_cats.txt"]
    (tmp_path / "tree").mkdir()
    code, _, err = run("transcribe", "tree/**/*.ogg", "--txt", *FAST)
    assert code == 2 and "no media files found in tree/**/*.ogg" in err and "--recursive" not in err
    code, _, err = run("transcribe", "tree", "--txt", *FAST)
    assert code == 2 and "no media files found in tree" in err and "--recursive" not in err
    (tmp_path / "tree" / "sub").mkdir()
    code, _, err = run("transcribe", "tree", "--txt", *FAST)
    assert code == 2 and "no media files found in tree (use --recursive for subfolders)" in err


def test_summary_names_the_output_folder_and_notes_no_speech(clips, tmp_path):
    import wave

    import numpy as np

    silent = clips / "silent.wav"
    with wave.open(str(silent), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(16000 * 2, dtype=np.int16).tobytes())
    args = [a for a in FAST if a != "--quiet"]
    code, _, err = run("transcribe", clips, "-o", tmp_path / "out", "--srt", "--lang", "en", *args)
    assert code == 0, err
    assert f"note: {silent}: no speech found" in err
    assert err.strip().splitlines()[-1].startswith("3 done, 0 skipped, 0 failed")
    assert err.strip().endswith(f"outputs in {tmp_path / 'out'}")


# --- issue 13, item 7: translating into the language already spoken


def test_translate_into_the_spoken_language_warns_and_records_it(tmp_path):
    code, _, err = run("translate", CLIPS / "en_bag.wav", "--to", "en", "-o", tmp_path, "--json", *FAST)
    d = json.loads((tmp_path / "en_bag.json").read_text(encoding="utf-8"))
    assert code == 0 and d["source_language"] == "en" and d["language"] == "en"
    assert err.count("warning:") == 1 and "en_bag.wav: the speech is already in en (detected)" in err
    code, _, err = run("translate", CLIPS / "it_boy.wav", "--to", "en", "-o", tmp_path, "--json", *FAST)
    d = json.loads((tmp_path / "it_boy.json").read_text(encoding="utf-8"))
    assert code == 0 and d["source_language"] == "it" and "warning" not in err
