"""README.md followed literally: its set-up in a fresh copy and virtual environment, its first command twice
(offline, and the second run redoes nothing), then `fama serve` with the demo model answering a curl line of
docs/serve.md (the slow test, which CI runs); and the first command twice in this environment (fast)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fama_core.checkpoints import BUNDLED

from conftest import ROOT

README = ROOT / "README.md"


def fenced_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh)\n(.*?)^```", text, flags=re.S | re.M)


def setup_block() -> str:
    """The README's first shell block: the set-up, in the checkout, inside a virtual environment."""
    block = fenced_blocks(README.read_text(encoding="utf-8"))[0]
    assert block.startswith("python3 -m venv .venv && . .venv/bin/activate\n"), "the set-up makes a venv first"
    assert re.search(r'pip install -e "\.\[[\w,]*serve[\w,]*\]"', block), "the set-up installs the serve extra"
    return block


def first_example() -> str:
    """The first shell block of README.md that runs `fama` (the one before it is the set-up)."""
    return next(b for b in fenced_blocks(README.read_text(encoding="utf-8")) if b.lstrip().startswith("fama "))


def check_outputs(folder: Path) -> None:
    clips = json.loads((BUNDLED["fama-demo"] / "clips" / "clips.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{c['id']}{ext}" for c in clips for ext in (".wav", ".txt", ".srt"))
    exact = {"en_cats": "There are twelve cats on the table.", "en_bag": "Your bag is yellow.",
             "it_boy": "Il ragazzo è al cinema.", "it_bread": "Le tue sorelle mangiano il pane."}
    for clip, text in exact.items():
        assert (folder / f"{clip}.txt").read_text(encoding="utf-8") == text + "\n"
        srt = (folder / f"{clip}.srt").read_text(encoding="utf-8")
        assert srt.startswith("1\n00:00:0") and text.split()[0] in srt, srt
    # the two-sentence clip: the demo model drops words there (documented), but both cues are there
    pause = (folder / "pause_en.srt").read_text(encoding="utf-8")
    assert "My brother" in pause and "garden" in pause


def run_twice(script: str, cwd: Path, env: dict[str, str]) -> tuple[Path, dict[str, bytes]]:
    """The first example run twice in `cwd`; both exit 0, the second writes nothing and says so."""
    example = first_example()
    assert example.count("\n") == 1, "the first example is one command line"
    folder = cwd / re.search(r"fama demo (\S+)", example).group(1)
    first = subprocess.run(["bash", "-c", f"set -e\n{script}\n{example}"], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    check_outputs(folder)
    written = {p.name: p.read_bytes() for p in folder.iterdir()}
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    second = subprocess.run(["bash", "-c", f"set -e\n{script}\n{example}"], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert f"{folder.name}: 0 clips copied, 5 already there" in second.stdout
    hint = next(line for line in second.stdout.splitlines() if line.startswith("next: "))
    assert hint == f"next: {example.split(' && ')[1].strip()}", "fama demo's hint is the README's command"
    assert "0 done, 5 skipped, 0 failed" in second.stderr
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    return folder, written


def test_readme_first_example_runs_twice_offline(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "CI": "", "NO_COLOR": "1"}
    run_twice(f'fama() {{ "{sys.executable}" -m fama_cli "$@"; }}', tmp_path, env)


def checkout_copy(dest: Path) -> Path:
    """What a clone of this checkout holds (its tracked and new files, as they are now) in `dest`."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, server: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read()
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"fama serve did not answer {url} within {seconds} s")


@pytest.mark.slow
def test_readme_verbatim_in_a_fresh_copy_and_venv(tmp_path):
    """The set-up block as written (only its venv sees the system's packages, so that torch is not downloaded
    again), the first command twice offline, then `fama serve` and docs/serve.md's first curl line."""
    repo = checkout_copy(tmp_path / "fama")
    setup = setup_block().replace("python3 -m venv .venv", "python3 -m venv --system-site-packages .venv", 1)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "HF_HUB_OFFLINE")}
    env.update({"HF_HOME": str(tmp_path / "hf"), "CI": "", "NO_COLOR": "1"})
    r = subprocess.run(["bash", "-c", f"set -e\n{setup}"], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    activate = ". .venv/bin/activate"
    where = subprocess.run(["bash", "-c", f"{activate} && command -v fama && python -c 'import fama_core; "
                            "print(fama_core.__file__)'"], cwd=repo, env=env, capture_output=True, text=True)
    assert where.stdout.splitlines() == [str(repo / ".venv" / "bin" / "fama"),
                                         str(repo / "fama_core" / "__init__.py")], where.stderr

    offline = {**env, "HF_HUB_OFFLINE": "1"}
    folder, _ = run_twice(activate, repo, offline)

    port = free_port()
    server = subprocess.Popen(["bash", "-c", f"{activate} && exec fama serve --model fama-demo --port {port}"],
                              cwd=repo, env=offline, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_health(f"http://127.0.0.1:{port}/health", server, 180)
        serve_doc = (repo / "docs" / "serve.md").read_text(encoding="utf-8")
        curl = next(line for line in serve_doc.splitlines() if line.startswith("curl http://127.0.0.1:8000/"))
        assert "-F file=@lecture.mp3" in curl and curl.endswith("> lecture.srt"), curl
        curl = curl.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace(
            "@lecture.mp3", f"@{folder.name}/en_cats.wav")
        r = subprocess.run(["bash", "-c", f"set -e -o pipefail\n{curl}"], cwd=repo, env=offline,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        srt = (repo / "lecture.srt").read_text(encoding="utf-8")
        assert srt.startswith("1\n00:00:0") and "There are twelve cats on the table." in srt, srt
    finally:
        server.terminate()
        server.wait(timeout=30)
