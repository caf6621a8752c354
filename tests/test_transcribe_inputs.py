"""Input expansion, output naming and rank sharding."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fama_core.inputs import assign_output_stems, expand_inputs, shard, torchrun_rank


def touch(root: Path, *names: str) -> None:
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_folders_globs_stdin_and_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    touch(tmp_path, "rec/a.wav", "rec/b.MP3", "rec/notes.txt", "rec/.hidden.wav", "rec/sub/c.flac", "x.ogg")
    assert [i.path for i in expand_inputs(["rec"])] == ["rec/a.wav", "rec/b.MP3"]
    assert [i.path for i in expand_inputs(["rec"], recursive=True)] == ["rec/a.wav", "rec/b.MP3", "rec/sub/c.flac"]
    assert [i.path for i in expand_inputs(["rec/**/*.flac"])] == ["rec/sub/c.flac"]
    assert [i.path for i in expand_inputs(["missing.wav", "-", "x.ogg", "./x.ogg"])] == ["missing.wav", "-", "x.ogg"]
    assert expand_inputs(["nothing*.wav"]) == []
    assert [i.path for i in expand_inputs(["rec/notes.txt"])] == ["rec/notes.txt"]  # explicit files are tried


def test_output_stems_mirror_and_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    touch(tmp_path, "rec/a.wav", "rec/sub/a.wav", "rec/sub/a.mp3", "other/a.wav")
    items = assign_output_stems(expand_inputs(["rec", "other/a.wav"], recursive=True), "out")
    stems = {i.path: i.stem for i in items}
    assert stems["rec/a.wav"] == "out/a.wav" and stems["other/a.wav"] == "out/a.wav-2"
    assert stems["rec/sub/a.wav"] == "out/sub/a.wav" and stems["rec/sub/a.mp3"] == "out/sub/a.mp3"
    assert len(set(stems.values())) == len(stems)
    beside = assign_output_stems(expand_inputs(["rec"], recursive=True))
    assert [i.stem for i in beside] == ["rec/a", "rec/sub/a.mp3", "rec/sub/a.wav"]
    assert assign_output_stems(expand_inputs(["-"]), "o")[0].stem == "o/stdin"


def test_shard(monkeypatch):
    items = list(range(10))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == [1, 4, 7]
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert torchrun_rank() == (2, 4)


def test_find_inputs_reports_what_cannot_be_read(tmp_path, monkeypatch):
    import errno
    import os

    from fama_core.inputs import find_inputs

    monkeypatch.chdir(tmp_path)
    touch(tmp_path, "rec/a.wav", "rec/locked/b.wav", "rec/open/c.wav")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.basename(str(path)) == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    scan = find_inputs(["rec", "none/*.wav", "x" * 300 + ".wav"], recursive=True)
    assert [(i.path, i.error) for i in scan.items] == [
        ("rec/a.wav", None),
        ("rec/locked", "cannot read folder: permission denied"),
        ("rec/open/c.wav", None),
        ("x" * 300 + ".wav", "cannot access: file name too long"),
    ]
    assert scan.warnings == ["none/*.wav: matches no media files"]
    assert [i.error for i in find_inputs(["rec/locked"]).items] == ["cannot read folder: permission denied"]


@pytest.mark.parametrize("rank, world, message", [
    ("0", "0", "WORLD_SIZE='0' must be at least 1"),
    ("0", "abc", "WORLD_SIZE='abc' is not a number"),
    ("x", "2", "RANK='x' is not a number"),
    ("5", "2", "RANK='5' must be between 0 and WORLD_SIZE-1 (1)"),
])
def test_torchrun_rank_refuses_nonsense(monkeypatch, rank, world, message):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(ValueError, match=re.escape(message)):
        torchrun_rank()


def test_plan_outputs(tmp_path, monkeypatch):
    from fama_core.outputs import OutputRequest, PlanError, plan_outputs

    monkeypatch.chdir(tmp_path)
    touch(tmp_path, "rec/a.wav", "rec/b.wav", "rec/c.wav", "out/a.txt", "out/a.srt", "out/b.txt")
    items = expand_inputs(["rec"])

    def plan(**kw):
        return plan_outputs(["rec"], expand_inputs(["rec"]), OutputRequest("out", ["srt", "txt"], **kw))

    p = plan()
    assert [i.path for i in p.todo] == ["rec/c.wav"] and not p.skipped
    assert [(i.path, why) for i, why in p.refused] == [
        ("rec/a.wav", "output exists: out/a.srt (use --overwrite or --skip-existing)"),
        ("rec/b.wav", "output exists: out/b.txt (use --overwrite or --skip-existing)")]
    p = plan(skip_existing=True)
    assert [i.path for i in p.skipped] == ["rec/a.wav"]
    assert {i.path: [str(o) for o in p.outputs(i)] for i in p.todo} == {
        "rec/b.wav": ["out/b.srt"], "rec/c.wav": ["out/c.srt", "out/c.txt"]}  # only what is missing
    p = plan(overwrite=True)
    assert [str(o) for o in p.outputs(p.todo[0])] == ["out/a.srt", "out/a.txt"] and p.folders() == ["out"]
    assert plan_outputs(["rec/a.wav"], items[:1], OutputRequest()).to_stdout
    assert not plan_outputs(["rec"], items[:1], OutputRequest()).to_stdout  # a folder argument writes files
    with pytest.raises(PlanError, match="-o rec/a.wav: the output folder exists and is not a folder"):
        plan_outputs(["rec"], items, OutputRequest("rec/a.wav", ["txt"]))
    with pytest.raises(PlanError, match="exclude each other"):
        plan(skip_existing=True, overwrite=True)
    with pytest.raises(PlanError, match="-o - writes one input in one format"):
        plan_outputs(["rec"], items, OutputRequest("-", ["txt"]))
    touch(tmp_path, "talk.wav")
    (tmp_path / "talk.wav").rename(tmp_path / "talk.txt")
    p = plan_outputs(["talk.txt"], expand_inputs(["talk.txt"]), OutputRequest(None, ["txt"], overwrite=True))
    assert [why for _, why in p.refused] == ["output talk.txt would replace an input; choose another -o"]
