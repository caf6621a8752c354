"""Where fama's outputs go, and the one way every file is written.

Every file fama writes goes through `atomic_write`, `atomic_path` or `write_all`: the bytes go to a
temporary name beside the target (`.NAME.fama-tmp-HOST-PID-N`), are flushed to disk, and only then get
the final name. Without `overwrite` the final name is taken exclusively (a hard link, which fails when
the name exists), so a file that appeared meanwhile, e.g. written by a second fama on the same folder, is
never replaced: `OutputExistsError`. Files are created with mode 0666 minus the umask (the kernel applies
it; the process-wide umask is never changed). Temporary files left by a crashed run are recognised by
their name and removed when a later run writes the same output.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import re
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

TEMP_MARK = ".fama-tmp-"
_NAME_MAX = 255  # bytes in one path component on the file systems fama targets
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_counter = itertools.count(1)  # next() on a count is atomic under the GIL: unique temp names across threads


class OutputExistsError(FileExistsError):
    """The output exists and the caller did not ask to overwrite it."""

    def __init__(self, path: str | Path):
        super().__init__(errno.EEXIST, "output exists", str(path))

    def __str__(self) -> str:
        return f"output exists: {self.filename}"


def _read_umask() -> int:
    try:  # Linux: read without changing it (os.umask would, for every thread, for a moment)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # at import, before fama starts threads
    os.umask(mask)
    return mask


UMASK = _read_umask()


def file_mode() -> int:
    """The mode a new file gets from the umask (0644 for umask 022)."""
    return 0o666 & ~UMASK


def dir_mode() -> int:
    """The mode a new folder gets from the umask (0755 for umask 022)."""
    return 0o777 & ~UMASK


def _temp_base(name: str) -> str:
    """`name`, shortened with a hash if `.NAME.fama-tmp-HOST-PID-N` would exceed a file name's length."""
    room = _NAME_MAX - 1 - len(TEMP_MARK) - 40
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= room:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:10]
    return raw[: room - 11].decode("utf-8", "ignore") + "~" + digest


def temp_path(path: str | Path) -> Path:
    """A fresh temporary name beside `path`, unique to this host, process and call."""
    path = Path(path)
    return path.with_name(f".{_temp_base(path.name)}{TEMP_MARK}{_HOST}-{os.getpid()}-{next(_counter)}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def clean_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temporary files of `path` left by fama runs on this host that no longer exist.

    Also removes `.NAME.XXXXXXXX.part` files, the temporary names of fama versions before this writer.
    """
    path = Path(path)
    mine = re.compile(rf"\.{re.escape(_temp_base(path.name))}{re.escape(TEMP_MARK)}{_HOST}-(\d+)-\d+")
    legacy = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.part")
    removed = []
    try:
        names = os.listdir(path.parent if str(path.parent) else ".")
    except OSError:
        return removed
    for name in names:
        m = mine.fullmatch(name)
        if (m and not _alive(int(m.group(1)))) or legacy.fullmatch(name):
            stale = path.with_name(name)
            try:
                os.unlink(stale)
                removed.append(stale)
            except OSError:
                pass
    return removed


def _write_temp(path: Path, data: bytes | str) -> Path:
    """`data` in a new temporary file beside `path`, on disk; nothing is left behind on failure."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def publish(tmp: str | Path, path: str | Path, *, overwrite: bool) -> Path:
    """Give the finished temporary file `tmp` its final name `path` (consumes `tmp`).

    Without `overwrite`, raises OutputExistsError if `path` exists, however recently it appeared.
    """
    tmp, path = Path(tmp), Path(path)
    if overwrite:
        os.replace(tmp, path)
        return path
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise OutputExistsError(path) from None
    except OSError as e:  # a file system without hard links: reserve the name exclusively, then rename over it
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise OutputExistsError(path) from None
        os.replace(tmp, path)
        return path
    _unlink(tmp)
    return path


def atomic_write(path: str | Path, data: bytes | str, *, overwrite: bool) -> Path:
    """Write `data` (str: UTF-8) to `path` atomically: readers see the old file or the whole new one.

    Creates missing parent folders. Without `overwrite`, raises OutputExistsError if `path` exists.
    """
    return write_all({path: data}, overwrite=overwrite)[0]


def write_all(files: Mapping[str | Path, bytes | str], *, overwrite: bool) -> list[Path]:
    """Write several files as one set: all of them, or (on any error, e.g. a full disk) none of them.

    Every file is first written completely to its temporary name; only then are they published. If a
    publication fails (an output appeared meanwhile), the files published by this call are removed again.
    """
    staged: list[tuple[Path, Path]] = []
    published: list[Path] = []
    try:
        for p, data in files.items():
            path = Path(p)
            path.parent.mkdir(parents=True, exist_ok=True)
            clean_stale_temps(path)
            staged.append((_write_temp(path, data), path))
        for tmp, path in staged:
            published.append(publish(tmp, path, overwrite=overwrite))
    except BaseException:
        for tmp, _ in staged:
            _unlink(tmp)
        for path in published:
            _unlink(path)
        raise
    return published


@contextmanager
def atomic_path(path: str | Path, *, overwrite: bool) -> Iterator[Path]:
    """A temporary path for writers that need a file name (`torch.save`, `safetensors.save_file`).

    Write the file there inside the `with` block; on a normal exit it is published as `path` (as by
    `atomic_write`), on an exception it is removed. The writer must create a new file (mode 0666 minus
    the umask, as `open()` does).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if not overwrite and os.path.lexists(path):
            raise OutputExistsError(path)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        publish(tmp, path, overwrite=overwrite)
    except BaseException:
        _unlink(tmp)
        raise
