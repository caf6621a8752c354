"""The one atomic writer: exclusive creation, all-or-nothing sets, stale temporary files, umask modes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading

import pytest

from fama_core import outputs
from fama_core.outputs import (
    OutputExistsError,
    atomic_path,
    atomic_write,
    clean_stale_temps,
    temp_path,
    write_all,
)


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_creates_parents_and_refuses_an_existing_file(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    assert atomic_write(target, "one\n", overwrite=False) == target
    assert target.read_text() == "one\n"
    with pytest.raises(OutputExistsError, match=r"^output exists: .*out\.txt$"):
        atomic_write(target, "two\n", overwrite=False)
    assert target.read_text() == "one\n"
    atomic_write(target, b"three\n", overwrite=True)
    assert target.read_bytes() == b"three\n"
    assert names(target.parent) == ["out.txt"]


def test_a_file_created_after_the_data_was_written_is_not_replaced(tmp_path, monkeypatch):
    """The existence check happens at rename time, not before: a file that appears meanwhile survives."""
    target = tmp_path / "out.srt"
    real = outputs._write_temp

    def then_someone_else_writes(path, data):
        tmp = real(path, data)
        target.write_text("the other run's\n")
        return tmp

    monkeypatch.setattr(outputs, "_write_temp", then_someone_else_writes)
    with pytest.raises(OutputExistsError):
        atomic_write(target, "ours\n", overwrite=False)
    assert target.read_text() == "the other run's\n"
    assert names(tmp_path) == ["out.srt"]


def test_a_dangling_symlink_counts_as_existing(tmp_path):
    (tmp_path / "out.txt").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputExistsError):
        atomic_write(tmp_path / "out.txt", "x", overwrite=False)
    assert not (tmp_path / "nowhere").exists()


def test_overwrite_replaces_a_symlink_not_its_target(tmp_path):
    (tmp_path / "precious.txt").write_text("keep\n")
    (tmp_path / "out.txt").symlink_to(tmp_path / "precious.txt")
    atomic_write(tmp_path / "out.txt", "new\n", overwrite=True)
    assert (tmp_path / "precious.txt").read_text() == "keep\n"
    assert not (tmp_path / "out.txt").is_symlink() and (tmp_path / "out.txt").read_text() == "new\n"


def test_racing_writers_exactly_one_wins(tmp_path):
    target = tmp_path / "out.txt"
    results: list[str] = []
    barrier = threading.Barrier(8)

    def write(k: int) -> None:
        barrier.wait()
        try:
            atomic_write(target, f"writer {k}\n", overwrite=False)
            results.append("ok")
        except OutputExistsError:
            results.append("exists")

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["exists"] * 7 + ["ok"]
    assert names(tmp_path) == ["out.txt"]


def test_disk_full_on_the_second_file_writes_none(tmp_path, monkeypatch):
    real = os.write
    calls = {"n": 0}

    def full(fd, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(outputs.os, "write", full)
    files = {tmp_path / "x.srt": "1\n", tmp_path / "x.txt": "2\n", tmp_path / "x.json": "{}\n"}
    with pytest.raises(OSError) as e:
        write_all(files, overwrite=False)
    assert e.value.errno == errno.ENOSPC
    assert names(tmp_path) == []
    monkeypatch.setattr(outputs.os, "write", real)
    assert write_all(files, overwrite=False) == list(files)
    assert names(tmp_path) == ["x.json", "x.srt", "x.txt"]


def test_a_set_whose_last_name_appeared_removes_the_ones_it_published(tmp_path):
    (tmp_path / "x.txt").write_text("someone else's\n")
    with pytest.raises(OutputExistsError):
        write_all({tmp_path / "x.srt": "1\n", tmp_path / "x.txt": "2\n"}, overwrite=False)
    assert names(tmp_path) == ["x.txt"]
    assert (tmp_path / "x.txt").read_text() == "someone else's\n"


def test_interrupt_inside_a_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.srt"
    atomic_write(target, "old\n", overwrite=False)

    def crash(fd):
        raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    monkeypatch.setattr(outputs.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, "new text that never lands\n", overwrite=True)
    assert target.read_text() == "old\n"
    assert names(tmp_path) == ["out.srt"]


def test_stale_temporary_files_of_a_dead_run_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "talk.srt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    mine = temp_path(target)
    stale = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{dead_pid}-"))
    stale.write_text("half a file")
    legacy = tmp_path / ".talk.srt.ab12cd_9.part"  # the temporary name of fama before this writer
    legacy.write_text("half")
    live = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{os.getppid()}-"))  # a running process
    live.write_text("being written")
    unrelated = [tmp_path / ".talk.srt.notes", tmp_path / ".other.srt.fama-tmp-x-1-1", tmp_path / "talk.srt.part"]
    for u in unrelated:
        u.write_text("keep")
    atomic_write(target, "fresh\n", overwrite=False)
    assert target.read_text() == "fresh\n"
    assert not stale.exists() and not legacy.exists()
    assert live.exists() and all(u.exists() for u in unrelated)


def test_temporary_names_fit_the_file_name_limit(tmp_path):
    long_name = "é" * 120 + ".srt"  # 244 bytes: valid, but the temporary name must be shortened
    target = tmp_path / long_name
    tmp = temp_path(target)
    assert len(tmp.name.encode()) <= 255
    atomic_write(target, "x\n", overwrite=False)
    assert names(tmp_path) == [long_name]
    stale = tmp.with_name(tmp.name.replace(f"-{os.getpid()}-", "-999999999-"))
    stale.write_text("stale")
    assert clean_stale_temps(target) == [stale]


def test_modes_follow_the_umask_and_the_umask_is_untouched(tmp_path):
    old = os.umask(0o027)
    try:
        assert outputs.current_umask() == 0o027  # followed as it changes, read without changing it
        atomic_write(tmp_path / "d" / "f.txt", "x", overwrite=False)
        with atomic_path(tmp_path / "g.bin", overwrite=False) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"y")
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)
    assert (tmp_path / "d" / "f.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "g.bin").stat().st_mode & 0o777 == 0o640
    assert outputs.file_mode() == 0o666 & ~old and outputs.dir_mode() == 0o777 & ~old


def test_atomic_path_publishes_on_success_and_cleans_on_error(tmp_path):
    target = tmp_path / "model.bin"
    with atomic_path(target, overwrite=False) as tmp:
        tmp.write_bytes(b"weights")
        assert not target.exists()
    assert target.read_bytes() == b"weights"
    with pytest.raises(RuntimeError):
        with atomic_path(target, overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash while saving")
    assert target.read_bytes() == b"weights" and names(tmp_path) == ["model.bin"]
    with pytest.raises(OutputExistsError):
        with atomic_path(target, overwrite=False) as tmp:
            tmp.write_bytes(b"other")
    assert target.read_bytes() == b"weights" and names(tmp_path) == ["model.bin"]


def test_publish_without_hard_links_is_still_exclusive(tmp_path, monkeypatch):
    def no_links(*a, **k):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(outputs.os, "link", no_links)
    atomic_write(tmp_path / "a.txt", "1\n", overwrite=False)
    assert (tmp_path / "a.txt").read_text() == "1\n"
    with pytest.raises(OutputExistsError):
        atomic_write(tmp_path / "a.txt", "2\n", overwrite=False)
    assert (tmp_path / "a.txt").read_text() == "1\n" and names(tmp_path) == ["a.txt"]


def test_a_folder_is_listed_once_per_run_not_at_every_write(tmp_path, monkeypatch):
    real = os.listdir
    listed = []
    monkeypatch.setattr(outputs.os, "listdir", lambda p: listed.append(p) or real(p))
    outputs.forget_scans()
    for k in range(20):
        write_all({tmp_path / f"f{k}.srt": "x", tmp_path / f"f{k}.txt": "y"}, overwrite=False)
    assert listed == [str(tmp_path)] and len(names(tmp_path)) == 40
