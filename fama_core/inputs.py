"""Which files a run reads and where their outputs go.

Arguments are files, folders (media files inside; `recursive` walks subfolders), glob patterns, or `-`
(stdin). Outputs go beside each input, or under `output_dir` mirroring the tree below each folder or glob
root. Two inputs never get the same output stem: when names collide, every colliding input keeps its
source extension in the output name (`talk.mp3.srt`, `talk.wav.srt`), then a counter if still needed.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
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

    @property
    def name(self) -> str:
        return "<stdin>" if self.path == STDIN else self.path


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


def _media_in(folder: Path, recursive: bool) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        found += [Path(dirpath, f) for f in sorted(filenames)
                  if not f.startswith(".") and Path(f).suffix.lower() in MEDIA_EXTENSIONS]
    return found


def expand_inputs(args: list[str], recursive: bool = False) -> list[InputFile]:
    """Inputs in argument order (folder and glob contents sorted), each real file once.

    A path that does not exist stays in the list, so that it is reported as failed like any bad file.
    """
    items: list[InputFile] = []
    for arg in args:
        p = Path(arg)
        if arg == STDIN:
            items.append(InputFile(STDIN))
        elif p.is_dir():
            items += [InputFile(str(f), str(p)) for f in _media_in(p, recursive)]
        elif not p.exists() and _is_glob(arg):
            root = _glob_root(arg)
            for m in sorted(glob.glob(arg, recursive=True)):
                if Path(m).is_dir():
                    items += [InputFile(str(f), root) for f in _media_in(Path(m), recursive)]
                elif not Path(m).name.startswith("."):
                    items.append(InputFile(m, root))
        else:
            items.append(InputFile(arg))
    seen, unique = set(), []
    for it in items:
        key = it.path if it.path == STDIN or not Path(it.path).exists() else os.path.realpath(it.path)
        if key not in seen:
            seen.add(key)
            unique.append(it)
    return unique


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
    """(RANK, WORLD_SIZE) from the environment torchrun sets; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
