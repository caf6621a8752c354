"""Input expansion, output naming and rank sharding."""

from __future__ import annotations

from pathlib import Path

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
