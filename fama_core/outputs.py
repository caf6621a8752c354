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
import json
import os
import re
import shutil
import socket
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .inputs import STDIN, InputFile, assign_output_stems, shard

if TYPE_CHECKING:
    from .subtitles import SubtitleOptions, Transcript

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


def _proc_umask() -> int | None:
    try:  # Linux: read without changing it (os.umask would, for every thread, for a moment)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def _import_umask() -> int:
    mask = _proc_umask()
    if mask is None:
        mask = os.umask(0o022)  # at import, before fama starts threads
        os.umask(mask)
    return mask


UMASK = _import_umask()


def current_umask() -> int:
    """The process's umask now (where it cannot be read without changing it: the one at import)."""
    mask = _proc_umask()
    return UMASK if mask is None else mask


def file_mode() -> int:
    """The mode a new file gets from the umask (0644 for umask 022)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode a new folder gets from the umask (0755 for umask 022)."""
    return 0o777 & ~current_umask()


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


_MINE = re.compile(rf"\.(.+){re.escape(TEMP_MARK)}{_HOST}-(\d+)-\d+")
_LEGACY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.part")  # the temporary names of fama before this writer
_scans: dict[str, dict[str, list[str]]] = {}  # folder -> target base name -> temporary names found there


def _scan(folder: str) -> dict[str, list[str]]:
    """Temporary names in `folder` that fama runs on this host left and that are not being written now."""
    found: dict[str, list[str]] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        if (m := _MINE.fullmatch(name)) and not _alive(int(m.group(2))) or (m := _LEGACY.fullmatch(name)):
            found.setdefault(m.group(1), []).append(name)
    return found


def forget_scans() -> None:
    """Make the next write into each folder look for stale temporary files again (at the start of a run)."""
    _scans.clear()


def clean_stale_temps(path: str | Path, *, rescan: bool = True) -> list[Path]:
    """Remove the temporary files of `path` left by fama runs on this host that no longer exist.

    Also removes `.NAME.XXXXXXXX.part` files, the temporary names of fama versions before this writer.
    With `rescan=False` each folder is listed once (until `forget_scans`), not at every write.
    """
    path = Path(path)
    folder = str(path.parent) or "."
    if rescan or folder not in _scans:
        _scans[folder] = _scan(folder)
    found = _scans[folder]
    stale = found.pop(_temp_base(path.name), []) + (found.pop(path.name, []) if _temp_base(path.name) != path.name
                                                    else [])
    removed = []
    for name in stale:
        try:
            os.unlink(path.with_name(name))
            removed.append(path.with_name(name))
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
            clean_stale_temps(path, rescan=False)
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
    clean_stale_temps(path, rescan=False)
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


def publish_link(src: str | Path, path: str | Path, *, overwrite: bool) -> Path:
    """Give `path` the finished file `src`'s contents: a hard link to it (a copy where the file system has no
    links), published as by `atomic_write`."""
    path = Path(path)
    clean_stale_temps(path, rescan=False)
    tmp = temp_path(path)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        return publish(tmp, path, overwrite=overwrite)
    except BaseException:
        _unlink(tmp)
        raise


# ----------------------------------------------------------------------------------------------- planning


class PlanError(ValueError):
    """A request that cannot be carried out as asked (a usage error: the command line exits 2)."""


def parse_formats(specs: list[str] | None) -> list[str]:
    """Formats from `-f` values (repeatable, comma-separated, "all"), in the canonical order of FORMATS."""
    from .subtitles import ALL_FORMATS, FORMATS

    chosen: list[str] = []
    for spec in specs or []:
        for name in spec.split(","):
            name = name.strip().lower()
            if name == "all":
                chosen += ALL_FORMATS
            elif name in FORMATS:
                chosen.append(name)
            else:
                raise PlanError(f"unknown format {name!r}; choose from {', '.join(FORMATS)} or all")
    return [f for f in FORMATS if f in chosen]


@dataclass
class OutputRequest:
    """What the user asked for: where outputs go and what happens to existing ones."""

    output_dir: str | None = None  # None: beside each input; "-": one input in one format to stdout
    formats: list[str] = field(default_factory=list)  # empty: txt (to stdout for a single file argument)
    skip_existing: bool = False  # an input whose outputs all exist is skipped; missing ones are written
    overwrite: bool = False  # existing outputs are replaced (never an input)


@dataclass
class OutputPlan:
    """Which inputs to transcribe, what to write for each, and which were skipped or refused up front."""

    request: OutputRequest
    to_stdout: bool
    formats: list[str]
    todo: list[InputFile] = field(default_factory=list)
    skipped: list[InputFile] = field(default_factory=list)
    refused: list[tuple[InputFile, str]] = field(default_factory=list)  # input, one-line reason
    _formats_of: dict[int, list[str]] = field(default_factory=dict, repr=False)

    def outputs(self, item: InputFile) -> list[Path]:
        """The files that `write` will create for `item` (none when writing to stdout)."""
        return [Path(f"{item.stem}.{fmt}") for fmt in self._formats_of.get(id(item), [])]

    def write(self, item: InputFile, transcript: Transcript, subtitles: SubtitleOptions | None = None) -> list[Path]:
        """Write `item`'s outputs as one set (all or none); OutputExistsError if one appeared meanwhile."""
        from .subtitles import write_transcript

        return write_transcript(transcript, item.stem, self._formats_of.get(id(item), []), subtitles,
                                overwrite=self.request.overwrite)

    def folders(self) -> list[str]:
        """The folders the outputs go to, in first-use order."""
        seen = dict.fromkeys(str(p.parent) for it in self.todo for p in self.outputs(it))
        return list(seen)


def _same_key(path: str | Path) -> str:
    return os.path.normcase(os.path.abspath(path))


def _identity(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


class InputGuard:
    """The inputs of a run, recognised under any name (relative, absolute, through links, hard links)."""

    def __init__(self, inputs: Iterable[str | Path] = ()) -> None:
        self.names: set[str] = set()
        self.inodes: set[tuple[int, int]] = set()
        for p in inputs:
            self.add(p)

    def add(self, path: str | Path) -> None:
        if str(path) == STDIN:
            return
        self.names |= {_same_key(path), _same_key(os.path.realpath(path))}
        if ident := _identity(path):
            self.inodes.add(ident)

    def __contains__(self, path: str | Path) -> bool:
        return (_same_key(path) in self.names or _same_key(os.path.realpath(path)) in self.names
                or _identity(path) in self.inodes)


def _writable_folder(path: Path) -> Path | None:
    """The nearest existing folder on the way to `path` when it cannot be written into, else None."""
    p = path.parent
    while not os.path.lexists(p) and p.parent != p:
        p = p.parent
    return None if p.is_dir() and os.access(p, os.W_OK | os.X_OK) else p


def check_output(path: str | Path, *, inputs: Iterable[str | Path] | InputGuard = (), overwrite: bool = False,
                 what: str = "output") -> Path:
    """Refuse, before any work, an output file that would be lost or lose data; PlanError with one line.

    Refused: an input of the run (always, `--overwrite` or not), a folder, an existing file unless
    `overwrite`, and a path whose folder cannot be written. `publish` catches a file appearing later.
    """
    path = Path(path)
    guard = inputs if isinstance(inputs, InputGuard) else InputGuard(inputs)
    if path in guard:
        raise PlanError(f"{what} {path} would replace an input; choose another name")
    if path.is_dir():
        raise PlanError(f"{what} {path} is a folder; give a file name")
    if os.path.lexists(path) and not overwrite:
        raise PlanError(f"{what} {path} exists; pass --overwrite to replace it")
    if (folder := _writable_folder(path)) is not None:
        raise PlanError(f"{what} {path}: {folder} is {'not writable' if folder.is_dir() else 'not a folder'}")
    return path


def _check_output_dir(output_dir: str) -> None:
    p = Path(output_dir)
    while not os.path.lexists(p) and p.parent != p:
        p = p.parent
    if not p.is_dir():
        what = "the output folder" if str(p) == output_dir else f"{p}, on the way to the output folder,"
        raise PlanError(f"-o {output_dir}: {what} exists and is not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise PlanError(f"-o {output_dir}: {p} is not writable")


def plan_outputs(args: list[str], items: list[InputFile], request: OutputRequest, rank: int = 0,
                 world: int = 1) -> OutputPlan:
    """Decide, before anything is decoded, what this run (rank `rank` of `world`) writes for each input.

    Sets every item's output stem (`assign_output_stems`, over all items so that ranks agree). Raises
    PlanError for requests that make no sense; puts inputs that must not be transcribed in `refused`:
    those that could not be listed, and those whose outputs exist (without `overwrite`/`skip_existing`) or
    would replace an input (always). Concurrent writers are caught again at write time (`publish`).
    """
    r = request
    forget_scans()
    if r.skip_existing and r.overwrite:
        raise PlanError("--skip-existing and --overwrite exclude each other")
    if any(it.path == STDIN for it in items) and len(items) > 1:
        raise PlanError("stdin (-) cannot be combined with other inputs")
    if r.output_dir == "-" and (len(items) > 1 or len(r.formats) > 1):
        raise PlanError("-o - writes one input in one format to stdout")
    single_file = len(items) == 1 and _examine_is_dir(args[0]) is not True
    to_stdout = r.output_dir == "-" or (not r.formats and r.output_dir is None and single_file)
    if r.output_dir not in (None, "-"):
        _check_output_dir(r.output_dir)
    formats = r.formats or ["txt"]
    plan = OutputPlan(r, to_stdout, formats[:1] if to_stdout else formats)
    assign_output_stems(items, None if to_stdout else r.output_dir)
    if r.skip_existing and not to_stdout:
        own_stems(items, formats)
    guard = InputGuard(it.path for it in items)
    unwritable: dict[str, Path | None] = {}  # output folder -> the folder on its way that cannot be written
    for it in shard(items, rank, world):
        if it.error:
            plan.refused.append((it, it.error))
            continue
        if to_stdout:
            plan.todo.append(it)
            continue
        paths = [Path(f"{it.stem}.{fmt}") for fmt in formats]
        clash = next((p for p in paths if p in guard), None)
        existing = [p for p in paths if os.path.lexists(p)]
        folder = str(paths[0].parent)
        if folder not in unwritable:  # checked before decoding, not found out after it
            unwritable[folder] = _writable_folder(paths[0])
        if clash is not None:
            plan.refused.append((it, f"output {clash} would replace an input; choose another -o"))
        elif r.skip_existing and len(existing) == len(paths):
            plan.skipped.append(it)
        elif (blocked := unwritable[folder]) is not None:
            plan.refused.append((it, f"cannot write {paths[0]}: {blocked} is "
                                     f"{'not writable' if blocked.is_dir() else 'not a folder'}; choose another -o"))
        elif existing and not r.overwrite and not r.skip_existing:
            plan.refused.append((it, f"output exists: {existing[0]} (use --overwrite or --skip-existing)"))
        else:
            plan.todo.append(it)
            plan._formats_of[id(it)] = [f for f, p in zip(formats, paths) if r.overwrite or p not in existing]
    return plan


def _recorded_source(stem: Path) -> str | None:
    """The input that `stem.json`, written by fama, records as its source (None: no such file, or not fama's)."""
    try:
        source = json.loads(Path(f"{stem}.json").read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    return source if isinstance(source, str) and source else None


def _same_input(source: str, item: InputFile) -> bool:
    return source == item.path or _same_key(os.path.realpath(source)) == _same_key(os.path.realpath(item.path))


def _foreign(source: str, item: InputFile) -> bool:
    """Whether the recorded `source` is surely another input than `item`: another name, or another existing
    file. A relative source that does not resolve from here (a run from another folder) proves nothing."""
    if _same_input(source, item):
        return False
    if Path(source).name != Path(item.path).name:
        return True
    ident = _identity(source)
    return ident is not None and ident != _identity(item.path)


def _family(item: InputFile, listing: dict[str, list[str]]) -> list[Path]:
    """The stems `assign_output_stems` may have given `item` in an earlier run: `talk`, `talk.wav`, and each
    `talk.wav-N` with a JSON in the folder (`listing`: folder -> its names, filled as needed)."""
    stem = Path(item.stem)
    full = stem.with_name(Path(item.path).name)
    if str(stem.parent) not in listing:
        try:
            listing[str(stem.parent)] = os.listdir(stem.parent)
        except OSError:
            listing[str(stem.parent)] = []
    counted = re.compile(re.escape(full.name) + r"-(\d+)\.json")
    numbers = sorted(int(m.group(1)) for n in listing[str(stem.parent)] if (m := counted.fullmatch(n)))
    return [stem.with_name(Path(item.path).stem), full, *(full.with_name(f"{full.name}-{n}") for n in numbers)]


def own_stems(items: list[InputFile], formats: list[str]) -> None:
    """For `--skip-existing`: give each input the stem of the outputs it wrote in an earlier run, as their JSON's
    `source` records, and never the stem of outputs another input wrote (an earlier run's names differ when
    its inputs differed: `s2/talk.wav` may own `talk.wav.json` while this run's names give it to `s1/talk.wav`).

    An input without such a record keeps its stem unless another input's record claims it; it then takes the
    first free `talk.wav`, `talk.wav-2`, ... (no output there, not another input's). Outputs without a JSON
    are matched by name only.
    """
    if any(it.path == STDIN for it in items):
        return
    listing: dict[str, list[str]] = {}
    owner: dict[str, str | None] = {}

    def source(stem: Path) -> str | None:
        if str(stem) not in owner:
            owner[str(stem)] = _recorded_source(stem)
        return owner[str(stem)]

    claimed: dict[str, InputFile] = {}
    for it in items:
        found = next((stem for stem in _family(it, listing) if str(stem) not in claimed
                      and (src := source(stem)) is not None and _same_input(src, it)), None)
        if found is not None:
            claimed[str(found)] = it
    stem_of = {id(it): stem for stem, it in claimed.items()}
    movers = [it for it in items if id(it) not in stem_of and (
        it.stem in claimed or ((src := source(Path(it.stem))) is not None and _foreign(src, it)))]
    moving = {id(it) for it in movers}
    used = set(claimed) | {it.stem for it in items if id(it) not in stem_of and id(it) not in moving}
    for it in items:
        if id(it) in stem_of:
            it.stem = stem_of[id(it)]
    for it in movers:
        full = Path(it.stem).with_name(Path(it.path).name)
        candidates = itertools.chain([full], (full.with_name(f"{full.name}-{n}") for n in itertools.count(2)))
        it.stem = next(str(stem) for stem in candidates if str(stem) not in used and source(stem) is None
                       and not any(os.path.lexists(f"{stem}.{fmt}") for fmt in formats))
        used.add(it.stem)


def _examine_is_dir(arg: str) -> bool | None:
    if arg == STDIN:
        return False
    try:
        return stat.S_ISDIR(os.stat(arg).st_mode)
    except (OSError, ValueError):
        return None
