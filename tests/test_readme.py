"""The README's first example runs verbatim, offline, and gives the transcripts and subtitles it promises."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from fama_core.checkpoints import BUNDLED

from conftest import ROOT


def fenced_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh)\n(.*?)^```", text, flags=re.S | re.M)


def first_example() -> str:
    """The first fenced shell block of README.md that runs `fama` (the one before it is the set-up)."""
    blocks = fenced_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert blocks and blocks[0].startswith("pip install"), "the README must start with its set-up command"
    return next(b for b in blocks if b.lstrip().startswith("fama "))


def test_readme_first_example_transcribes_and_subtitles_offline(tmp_path):
    example = first_example()
    assert example.count("\n") == 1, "the first example is one command line"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "CI": "", "NO_COLOR": "1"}
    script = f'fama() {{ "{sys.executable}" -m fama_cli "$@"; }}\nset -e\n{example}'
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    folder = tmp_path / re.search(r"fama demo (\S+)", example).group(1)
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
