"""Which files a run reads and where their outputs go.

Arguments are files, folders (media files inside; `recursive` walks subfolders), glob patterns, or `-`
(stdin). Outputs go beside each input, or under `output_dir` mirroring the tree below each folder or glob
root. Two inputs never get the same output stem: when names collide, every colliding input keeps its
source extension in the output name (`talk.mp3.srt`, `talk.wav.srt`), then a counter if still needed.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

STDIN = "-"
MEDIA_EXTENSIONS = frozenset(
    ".wav .flac .mp3 .ogg .oga .opus .m4a .aac .wma .aif .aiff .amr .ac3 .webm .mp4 .m4v .mkv .mov .avi .mpg .mpeg "
    ".ts .mts .3gp .wmv .flv".split()
)


@dataclass
class InputFile:
    path: str  # a file path, or "-" for stdin
    root: str | None = None  # the folder or glob root it was found under (its tree is mirrored)
    stem: str = ""  # output path without the format extension
    error: str | None = None  # why it cannot be read, when that is known before reading (e.g. an unreadable folder)

    @property
    def name(self) -> str:
        return "<stdin>" if self.path == STDIN else self.path


@dataclass
class InputScan:
    """What the arguments named: the inputs (some with an `error`), and warnings such as a glob matching nothing."""

    items: list[InputFile]
    warnings: list[str] = field(default_factory=list)


def _is_glob(arg: str) -> bool:
    return any(c in arg for c in "*?[")


def _glob_root(pattern: str) -> str:
    parts = Path(pattern).parts
    keep = []
    for p in parts:
        if _is_glob(p):
            break
        keep.append(p)
    return str(Path(*keep)) if keep else "."


def _reason(e: OSError) -> str:
    return (e.strerror or type(e).__name__).lower()


def _media_in(folder: Path, recursive: bool, root: str) -> list[InputFile]:
    """Media files in `folder` (sorted), and a failed item for every folder that cannot be read."""
    found: list[InputFile] = []

    def unreadable(e: OSError) -> None:
        found.append(InputFile(str(e.filename or folder), root, error=f"cannot read folder: {_reason(e)}"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        found += [InputFile(str(Path(dirpath, f)), root) for f in sorted(filenames)
                  if not f.startswith(".") and Path(f).suffix.lower() in MEDIA_EXTENSIONS]
    return found


def _examine(arg: str) -> tuple[bool | None, str | None]:
    """(is a folder, None), (None, None) when it does not exist, or (None, reason) when it cannot be examined."""
    try:
        return stat.S_ISDIR(os.stat(arg).st_mode), None
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except OSError as e:  # permission denied on a parent folder, a name too long, a symlink loop ...
        return None, f"cannot access: {_reason(e)}"
    except ValueError as e:  # an embedded NUL byte
        return None, f"cannot access: {e}"


def _expand_glob(arg: str, recursive: bool, scan: InputScan) -> None:
    root = _glob_root(arg)
    found = []
    for m in sorted(glob.glob(arg, recursive=True)):
        is_dir, _ = _examine(m)
        if is_dir:
            found += _media_in(Path(m), recursive, root)
        elif not Path(m).name.startswith("."):
            found.append(InputFile(m, root))
    if not found:
        scan.warnings.append(f"{arg}: matches no media files")
    scan.items += found


def find_inputs(args: list[str], recursive: bool = False) -> InputScan:
    """Inputs in argument order (folder and glob contents sorted), each real file once.

    A path that does not exist stays in the list, so that it is reported as failed like any bad file; a
    path or folder that cannot be examined is listed with its `error`; a glob matching nothing is a warning.
    """
    scan = InputScan([])
    for arg in args:
        is_dir, error = (False, None) if arg == STDIN else _examine(arg)
        if arg == STDIN:
            scan.items.append(InputFile(STDIN))
        elif error:
            scan.items.append(InputFile(arg, error=error))
        elif is_dir:
            scan.items += _media_in(Path(arg), recursive, arg)
        elif is_dir is None and _is_glob(arg):
            _expand_glob(arg, recursive, scan)
        else:
            scan.items.append(InputFile(arg))
    seen, unique = set(), []
    for it in scan.items:
        key = it.path if it.path == STDIN or it.error or _examine(it.path)[0] is None else os.path.realpath(it.path)
        if key not in seen:
            seen.add(key)
            unique.append(it)
    scan.items = unique
    return scan


def expand_inputs(args: list[str], recursive: bool = False) -> list[InputFile]:
    """The inputs of `find_inputs`, without its warnings."""
    return find_inputs(args, recursive).items


def assign_output_stems(items: list[InputFile], output_dir: str | Path | None = None) -> list[InputFile]:
    """Set each item's `stem`; deterministic for a given list of inputs."""

    def base(it: InputFile, keep_ext: bool) -> Path:
        if it.path == STDIN:
            return Path(output_dir or ".") / "stdin"
        p = Path(it.path)
        name = p.name if keep_ext else p.stem
        if output_dir is None:
            return p.parent / name
        rel = Path(os.path.relpath(p.parent, it.root)) if it.root else Path()
        if rel.parts[:1] == ("..",):
            rel = Path()
        return Path(output_dir) / rel / name

    def key(p: Path) -> str:
        return os.path.normcase(os.path.abspath(p)).lower()

    first = [key(base(it, False)) for it in items]
    counts: dict[str, int] = {}
    for k in first:
        counts[k] = counts.get(k, 0) + 1
    used: set[str] = set()
    for it, k in zip(items, first):
        stem = base(it, counts[k] > 1)
        candidate, n = stem, 1
        while key(candidate) in used:
            n += 1
            candidate = stem.with_name(f"{stem.name}-{n}")
        used.add(key(candidate))
        it.stem = str(candidate)
    return items


def shard(items: list[InputFile], rank: int, world_size: int) -> list[InputFile]:
    """The share of rank `rank` out of `world_size` (torchrun): inputs i with i % world_size == rank."""
    return [it for i, it in enumerate(items) if i % world_size == rank]


def torchrun_rank() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) from the environment torchrun sets; (0, 1) otherwise. ValueError if they make no sense."""
    raw_rank, raw_world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(raw_world)
    except ValueError:
        raise ValueError(f"WORLD_SIZE={raw_world!r} is not a number") from None
    try:
        rank = int(raw_rank)
    except ValueError:
        raise ValueError(f"RANK={raw_rank!r} is not a number") from None
    if world < 1:
        raise ValueError(f"WORLD_SIZE={raw_world!r} must be at least 1")
    if not 0 <= rank < world:
        raise ValueError(f"RANK={raw_rank!r} must be between 0 and WORLD_SIZE-1 ({world - 1})")
    return rank, world
