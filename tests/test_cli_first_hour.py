"""What a new user types in the first hour, mostly out of whisper habits: -h, whisper's underscore options,
language names, too many threads, dtype aliases, and error lines that say why (docs/usage.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import typer.main
from typer.testing import CliRunner

from fama_cli.main import app
from fama_core.checkpoints import BUNDLED, check_device
from fama_core.precision import dtype_error

from conftest import ROOT

CLIPS = BUNDLED["fama-demo"] / "clips"
DEMO = ["--model", "fama-demo", "--device", "cpu", "--quiet"]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def commands(group=None, path=()):
    group = group or typer.main.get_command(app)
    for name, cmd in group.commands.items():
        yield (*path, name)
        if hasattr(cmd, "commands"):
            yield from commands(cmd, (*path, name))


@pytest.mark.parametrize("path", [(), *commands()], ids=lambda p: " ".join(p) or "fama")
def test_dash_h_is_help_everywhere(path):
    code, stdout, _ = run(*path, "-h")
    assert code == 0 and "Usage:" in stdout and "--help" in stdout


def params(*args: str) -> dict:
    """The values `fama ARGS` parses into (nothing runs)."""
    group = typer.main.get_command(app)
    cmd = group.commands[args[0]]
    return cmd.make_context(args[0], list(args[1:])).params


@pytest.mark.parametrize("command", ["transcribe", "translate", "serve"])
def test_whisper_underscore_spellings_of_the_cue_options(command):
    inputs = [] if command == "serve" else ["x.wav"]
    got = params(command, *inputs, "--max_line_width", "20", "--max_line_count", "1")
    assert (got["max_line_width"], got["max_line_count"]) == (20, 1)
    if command != "serve":  # (word highlighting is a file option of the CLI)
        assert params(command, *inputs, "--highlight_words")["highlight_words"] is True


@pytest.mark.parametrize("flag,name,clip,expected", [
    ("--language", "Italian", "it_boy", "Il ragazzo è al cinema."),
    ("--lang", "ENGLISH", "en_bag", "Your bag is yellow."),
    ("-l", "english", "en_bag", "Your bag is yellow."),
])
def test_language_names_are_accepted(tmp_path, flag, name, clip, expected):
    code, _, err = run("transcribe", CLIPS / f"{clip}.wav", flag, name, "-o", tmp_path, "--txt", *DEMO)
    assert code == 0, err
    assert (tmp_path / f"{clip}.txt").read_text(encoding="utf-8") == expected + "\n"


def test_translate_to_a_language_name(tmp_path):
    code, _, err = run("translate", CLIPS / "en_bag.wav", "--to", "Italian", "--language", "English", "-o",
                       tmp_path, "--txt", *DEMO)
    assert code == 0, err
    assert (tmp_path / "en_bag.txt").read_text(encoding="utf-8") == "La tua borsa è gialla.\n"


def test_unknown_language_one_line_naming_the_choices(tmp_path):
    code, _, err = run("transcribe", CLIPS / "en_bag.wav", "--language", "Klingon", "-o", tmp_path, *DEMO)
    assert code == 2 and errors(err) == [
        "error: --lang must be en (english), it (italian) or auto, not 'Klingon'"]
    assert not any(tmp_path.iterdir())


def test_more_threads_than_cores_warns_and_uses_the_cores(tmp_path):
    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        code, _, err = run("transcribe", CLIPS / "en_bag.wav", "--threads", "999", "-o", tmp_path, "--txt", *DEMO)
        assert code == 0, err
        assert errors(err) == [f"warning: --threads 999: this process may use {cores} CPU cores; using {cores}"]
        assert torch.get_num_threads() == cores
        assert (tmp_path / "en_bag.txt").read_text(encoding="utf-8") == "Your bag is yellow.\n"
    finally:
        torch.set_num_threads(before)


def test_threads_within_the_cores_say_nothing(tmp_path):
    before = torch.get_num_threads()
    try:
        code, _, err = run("transcribe", CLIPS / "en_bag.wav", "--threads", "1", "-o", tmp_path, "--txt", *DEMO)
        assert code == 0 and err == ""
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


INFERENCE = "auto, float32, bfloat16, float16, int8 (or fp32, bf16, fp16, half)"


def test_the_one_dtype_error_lists_every_accepted_value():
    assert dtype_error("fp17") == f"unknown dtype 'fp17'; choose one of {INFERENCE}"
    assert dtype_error("int8", ("float32", "bfloat16", "float16")) == (
        "unknown dtype 'int8'; choose one of float32, bfloat16, float16 (or fp32, bf16, fp16, half)")


@pytest.mark.parametrize("command", [
    ["transcribe", str(CLIPS / "en_bag.wav")], ["translate", str(CLIPS / "en_bag.wav"), "--to", "it"], ["serve"],
    ["eval", str(ROOT / "tests" / "missing.tsv")]])
def test_a_bad_dtype_is_one_line_listing_every_value(command):
    code, _, err = run(*command, "--dtype", "fp17", "--model", "fama-demo", "--device", "cpu")
    assert code == 2 and errors(err) == [f"error: unknown dtype 'fp17'; choose one of {INFERENCE}"]


@pytest.mark.parametrize("alias,precision", [("bf16", "bfloat16"), ("FP32", "float32"), ("half", "float16")])
def test_dtype_aliases_work_in_the_cli_as_in_the_library(tmp_path, alias, precision):
    code, _, err = run("transcribe", CLIPS / "en_bag.wav", "--dtype", alias, "-o", tmp_path, "--json", *DEMO)
    assert code == 0, err
    assert json.loads((tmp_path / "en_bag.json").read_text())["options"]["precision"] == precision


def test_convert_and_train_refuse_dtypes_they_cannot_write(tmp_path):
    code, _, err = run("convert", tmp_path / "x.pt", tmp_path / "out", "--dtype", "int8")
    assert code == 2 and errors(err) == [
        "error: unknown dtype 'int8'; choose one of float32, bfloat16, float16 (or fp32, bf16, fp16, half)"]
    from fama_core.training import TrainOptions
    from fama_core.training.trainer import check_options

    with pytest.raises(ValueError) as e:
        check_options(TrainOptions(save_dir=str(tmp_path / "run"), train=["x.tsv"], dtype="int8"))
    assert str(e.value) == "unknown dtype 'int8'; choose one of auto, float32, bfloat16, float16 (or fp32, bf16, " \
                           "fp16, half)"
    check_options(TrainOptions(save_dir=str(tmp_path / "run"), train=["x.tsv"], dtype="half"))


def test_load_model_names_every_dtype_in_its_error():
    from fama_core.checkpoints import load_model

    with pytest.raises(ValueError) as e:
        load_model("fama-demo", device="cpu", dtype="fp17")
    assert str(e.value) == f"unknown dtype 'fp17'; choose one of {INFERENCE}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_missing_gpu_says_why_as_the_library_does(tmp_path):
    with pytest.raises(ValueError) as e:
        check_device("cuda")
    code, _, err = run("transcribe", CLIPS / "en_bag.wav", "--device", "cuda", "--model", "fama-demo",
                       "-o", tmp_path)
    assert code == 2 and errors(err) == [f"error: --device: {e.value}"]


def pull(tmp_path, **env: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}, "PYTHONPATH": str(ROOT),
           "HF_HOME": str(tmp_path / "hf"), "NO_COLOR": "1", "COLUMNS": "300", **env}
    return subprocess.run([sys.executable, "-m", "fama_cli", "pull", "fama-small"], env=env, capture_output=True,
                          text=True, timeout=120)


def test_pull_without_the_hub_says_why(tmp_path):
    r = pull(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens on the discard port
    assert r.returncode == 1 and errors(r.stderr) == [
        "error: FBK-MT/fama-small: not in the local cache and the Hub cannot be reached (ConnectionRefusedError: "
        "[Errno 111] Connection refused); run `fama pull fama-small` online"]


def test_pull_in_offline_mode_says_which_setting(tmp_path):
    r = pull(tmp_path, HF_HUB_OFFLINE="1")
    assert r.returncode == 1 and errors(r.stderr) == [
        "error: FBK-MT/fama-small: not in the local cache and offline mode is on (HF_HUB_OFFLINE=1); run "
        "`fama pull fama-small` online"]
