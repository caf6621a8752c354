"""Decode any media ffmpeg can read (a path, or "-" for stdin) to 16 kHz mono float32, whole or block by block."""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import ffmpeg
import numpy as np

SAMPLE_RATE = 16000
STDIN = "-"


class AudioError(Exception):
    """A media file that cannot be turned into audio; the message names the file and the reason, on one line."""


@cache
def ffmpeg_exe() -> str:
    """The ffmpeg binary: the one on PATH, else the one shipped by imageio-ffmpeg."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    return exe


# ffmpeg's error text -> the reason we report (first match wins)
_REASONS = [
    ("No such file or directory", "no such file"),
    ("Is a directory", "is a directory"),
    ("Permission denied", "permission denied"),
    ("matches no streams", "no audio stream (nothing to transcribe)"),
    ("does not contain any stream", "no audio stream (nothing to transcribe)"),
    ("Invalid data found when processing input", "not a media file ffmpeg can decode"),
]


def _check_path(path: str | Path) -> str:
    name = str(path)
    if name == STDIN:
        return name
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{name}: no such file")
    if p.is_dir():
        raise AudioError(f"{name}: is a directory, not a media file")
    if p.stat().st_size == 0:
        raise AudioError(f"{name}: empty file (0 bytes)")
    return name


def _reason(stderr: str) -> str:
    for needle, reason in _REASONS:
        if needle in stderr:
            return reason
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return f"ffmpeg failed: {lines[-1]}" if lines else "ffmpeg failed"


def _decode_command(name: str, sample_rate: int) -> list[str]:
    # "file:" keeps names such as "10:30 talk.mp3" from being read as a protocol
    stream = ffmpeg.input("pipe:" if name == STDIN else f"file:{name}")["a:0"]
    # rematrix_maxval=1 makes the downmix an average, as for integer output (float output would be louder)
    out = ffmpeg.output(
        stream, "pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=sample_rate, rematrix_maxval=1.0
    )
    head = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error"] + ([] if name == STDIN else ["-nostdin"])
    return out.compile(cmd=head)


def _pump(src, dst) -> None:
    """Forward our stdin into ffmpeg's, in pieces (runs in a thread).

    Reads the file descriptor, not `sys.stdin.buffer`: a daemon thread blocked inside the buffered reader
    holds its lock, and Python aborts at exit ("could not acquire lock ... at interpreter shutdown").
    """
    try:
        fd = src.fileno()
        read = lambda: os.read(fd, 1 << 16)  # noqa: E731
    except (AttributeError, OSError, ValueError):  # an in-memory stdin (tests)
        read = lambda: src.read(1 << 16)  # noqa: E731
    try:
        while piece := read():
            dst.write(piece)
    except (BrokenPipeError, OSError, ValueError):
        pass  # ffmpeg stopped reading (it failed, or we closed it)
    finally:
        try:
            dst.close()
        except OSError:
            pass


def _drain(src, tail: collections.deque) -> None:
    """Keep the last lines of ffmpeg's stderr without ever letting the pipe fill up (runs in a thread)."""
    for line in iter(src.readline, b""):
        tail.append(line.decode("utf-8", "replace"))


def stream_audio(
    path: str | Path, block_seconds: float = 30.0, sample_rate: int = SAMPLE_RATE, processes: set | None = None
) -> Iterator[np.ndarray]:
    """Yield the media's audio as mono float32 blocks of `block_seconds` (the last one shorter).

    Only one block is in memory at a time; closing the iterator early stops ffmpeg. A missing, empty or
    directory path raises AudioError here; what ffmpeg finds (no audio stream, not media) raises it on the
    first `next()`, or at the end for a failure found late. The running ffmpeg process is kept in
    `processes` (when given), so that another thread can kill it to stop a read blocked on a pipe.
    """
    return _stream(_check_path(path), block_seconds, sample_rate, processes)


def _stream(name: str, block_seconds: float, sample_rate: int, processes: set | None) -> Iterator[np.ndarray]:
    block_bytes = max(1, int(round(block_seconds * sample_rate))) * 4
    stdin = sys.stdin.buffer if name == STDIN else None
    proc = subprocess.Popen(
        _decode_command(name, sample_rate),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if processes is not None:
        processes.add(proc)
    tail: collections.deque[str] = collections.deque(maxlen=20)
    threads = [threading.Thread(target=_drain, args=(proc.stderr, tail), daemon=True)]
    if stdin is not None:
        threads.append(threading.Thread(target=_pump, args=(stdin, proc.stdin), daemon=True))
    for thread in threads:
        thread.start()
    total = 0
    try:
        while True:
            buf = bytearray(block_bytes)
            n = proc.stdout.readinto(buf)
            while n and n < block_bytes:  # a pipe read may return early: fill the block
                more = proc.stdout.readinto(memoryview(buf)[n:])
                if not more:
                    break
                n += more
            if not n:
                break
            total += n // 4
            # a short last block gets its own small buffer rather than pinning a whole block's bytes
            yield np.frombuffer(buf if n == block_bytes else buf[: n - n % 4], dtype="<f4")
        proc.wait()
        threads[0].join()
        if proc.returncode != 0:
            raise AudioError(f"{name}: {_reason(''.join(tail))}")
        if total == 0:
            raise AudioError(f"{name}: zero-length audio (the audio stream holds no samples)")
    finally:
        if processes is not None:
            processes.discard(proc)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        threads[0].join(timeout=5)  # the stdin pump may sit in a read of our stdin: it is a daemon, leave it


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The whole audio of a media file (or "-" for stdin) as 16 kHz mono float32, nominally in [-1, 1]."""
    blocks = list(stream_audio(path, block_seconds=60.0, sample_rate=sample_rate))
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def audio_duration(path: str | Path) -> float | None:
    """Duration in seconds from the container header (cheap, may be approximate); None when unknown."""
    name = str(path)
    if name == STDIN or not Path(path).is_file():
        return None
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", f"file:{name}"]
    stderr = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL).stderr.decode("utf-8", "replace")
    match = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", stderr)
    if match is None or not re.search(r"Stream #\S+.*: Audio:", stderr):
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
