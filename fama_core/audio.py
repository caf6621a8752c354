"""Decode any media ffmpeg can read (a path, or "-" for stdin) to 16 kHz mono float32, whole or block by block."""

from __future__ import annotations

import collections
import os
import re
import shutil
import stat
import struct
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
# a file that decodes this much shorter than its header declares (and over 1 % shorter) is truncated
TRUNCATION_TOLERANCE_S = 0.5
# a WAV's header gives its length exactly (resampling changes it by a sample at most): any shortfall beyond
# this is a file cut short, or one still being written
WAV_TOLERANCE_S = 0.01
_WAV_UNSET = (0, 0xFFFFFFFF)  # data sizes a streaming writer leaves in the header: the length is unknown
_WAV_FRAMED = (1, 3, 6, 7)  # PCM, IEEE float, A-law, mu-law: a frame is block_align bytes


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


def _check_path(path: str | Path) -> tuple[str, bool]:
    """The name to report, and whether it is a stream we feed to ffmpeg (stdin, a FIFO, `<(...)`)."""
    name = str(path)
    if name == STDIN:
        return name, True
    try:
        info = Path(path).stat()
    except FileNotFoundError:
        raise AudioError(f"{name}: no such file") from None
    except OSError as e:  # unreadable folder on the way, name too long, ...
        raise AudioError(f"{name}: cannot read: {e.strerror or e}") from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioError(f"{name}: is a directory, not a media file")
    # only a regular file's size means anything: a FIFO or `<(...)` reports 0 and is read as a stream; and we
    # read it ourselves, since `<(...)`'s /dev/fd/N is one of our file descriptors, closed in ffmpeg
    if stat.S_ISREG(info.st_mode):
        if info.st_size == 0:
            raise AudioError(f"{name}: empty file (0 bytes)")
        return name, False
    return name, True


def _reason(errors: list[str]) -> str:
    text = "\n".join(errors)
    for needle, reason in _REASONS:
        if needle in text:
            return reason
    return f"ffmpeg failed: {errors[-1].strip()}" if errors else "ffmpeg failed"


# The demuxers fama opens (ffmpeg's names; a demuxer with several, such as "mov,mp4,m4a,3gp,3g2,mj2", matches on
# any): media containers that hold their audio themselves. Left out are those that open other files or URLs named
# inside the input (hls, dash, concat/ffconcat, imf, dvdvideo, sdp, rtsp, image2 sequences, avisynth, ...): an
# uploaded or mistaken playlist could read any file the process can, or escape the server's upload limit.
INPUT_FORMATS = frozenset(
    "aac ac3 aiff amr amrnb amrwb ape asf au avi caf dsf dts dtshd dv eac3 flac flv gsm ircam live_flv loas "
    "matroska mlp mov mp3 mpc mpc8 mpeg mpegts mxf nistsphere nut ogg oma qcp rm shn sox spdif tak truehd tta voc "
    "vqf w64 wav wv xwma".split())
_PROBED = re.compile(r"Format (\S+) probed with size")


def input_options(piped: bool) -> dict[str, str]:
    """ffmpeg input options that restrict what a decode may open: the demuxers of `INPUT_FORMATS` only
    (ffmpeg refuses any other right after probing, before it reads past the first bytes), and only the input
    itself (`file`, or `pipe` for a stream), so that no demuxer can reach another file or a URL."""
    return {"format_whitelist": ",".join(sorted(INPUT_FORMATS)), "protocol_whitelist": "pipe" if piped else "file"}


def _open_command(name: str, loglevel: str) -> list[str]:
    """ffmpeg opening a file under `input_options` and doing nothing else: its log describes the input."""
    options = [a for k, v in input_options(False).items() for a in (f"-{k}", v)]
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", loglevel, *options, "-i", f"file:{name}"]


def refused_format(name: str, piped: bool) -> str:
    """The reason for an input whose demuxer is not in `INPUT_FORMATS`, naming that demuxer when it can be
    found again (a regular file is probed once more, with ffmpeg's debug log, refused again before it opens
    anything; a stream cannot be read twice)."""
    found = None
    if not piped:
        log = subprocess.run(_open_command(name, "debug"), capture_output=True, stdin=subprocess.DEVNULL).stderr
        found = m.group(1) if (m := _PROBED.search(log.decode("utf-8", "replace"))) else None
    what = f"ffmpeg reads it as {found!r}, " if found else ""
    return (f"refused: {what}not one of the media formats fama opens (playlists, concat lists, image sequences "
            "and other inputs that name further files or URLs are never opened); give the media file itself")


def _decode_command(name: str, piped: bool, sample_rate: int) -> list[str]:
    # "file:" keeps names such as "10:30 talk.mp3" from being read as a protocol
    stream = ffmpeg.input("pipe:" if piped else f"file:{name}", **input_options(piped))["a:0"]
    # rematrix_maxval=1 makes the downmix an average, as for integer output (float output would be louder)
    out = ffmpeg.output(
        stream, "pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=sample_rate, rematrix_maxval=1.0
    )
    # info level for the input's header (its declared duration); each line tagged with its level
    head = [ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "level+info"]
    return out.compile(cmd=head + ([] if piped else ["-nostdin"]))


_LOG_LINE = re.compile(r"^(?:\[[^\]]*\] )*?\[(panic|fatal|error|warning|info)\] ?(.*)$")
_STREAM = re.compile(r"^\s+Stream #\S+.*?: (Audio|Video): ")
_DURATION = re.compile(r"^  Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


class _FfmpegLog:
    """What ffmpeg's stderr says: its last error lines, and the input header's declared duration."""

    def __init__(self) -> None:
        self.errors: collections.deque[str] = collections.deque(maxlen=20)
        self.duration: float | None = None  # what the container header declares
        self.estimated = False  # the duration is a guess from the bitrate (no length in the header)
        self.has_audio = False
        self.video = False  # the input has a real video stream (the container's duration may be the video's)
        self.in_header = True

    def add(self, line: str) -> None:
        match = _LOG_LINE.match(line.rstrip("\r\n"))
        level, message = match.groups() if match else ("info", line.rstrip("\r\n"))
        if level in ("panic", "fatal", "error"):
            self.errors.append(message)
        elif level == "warning":
            self.estimated |= "Estimating duration from bitrate" in message
        elif self.in_header:
            if message.startswith(("Stream mapping:", "Output #")):
                self.in_header = False
            elif self.duration is None and (d := _DURATION.match(message)):
                hours, minutes, seconds = d.groups()
                self.duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
            elif stream := _STREAM.match(message):
                self.has_audio |= stream.group(1) == "Audio"
                self.video |= stream.group(1) == "Video" and "(attached pic)" not in message

    def check_complete(self, name: str, samples: int, sample_rate: int, wav_seconds: float | None = None) -> None:
        """Raise AudioError when clearly fewer samples came out than an audio file's header declares.

        `wav_seconds`: the length a WAV header declares (`wav_declared_seconds`); ffmpeg only estimates a WAV's
        duration from its bitrate, which turns its own check off, so this is checked, exactly, instead.
        """
        declared, tolerance = wav_seconds, WAV_TOLERANCE_S
        if declared is None:
            if self.duration is None or self.estimated or self.video:
                return
            declared, tolerance = self.duration, max(TRUNCATION_TOLERANCE_S, 0.01 * self.duration)
        got = samples / sample_rate
        if declared - got > tolerance:
            why = f" ({self.errors[-1].strip()})" if self.errors else ""
            raise AudioError(f"{name}: truncated or damaged: the header declares {declared:.2f} s of audio, "
                             f"only {got:.2f} s could be decoded{why}; re-encode it (e.g. ffmpeg -i) to "
                             "transcribe the part that is there")


def _wav_chunks(f) -> Iterator[tuple[bytes, int, bytes]]:
    """(id, declared size, body) of each RIFF chunk up to and including `data` (its body not read)."""
    while len(head := f.read(8)) == 8:
        chunk, size = head[:4], struct.unpack("<I", head[4:])[0]
        if chunk == b"data":
            yield chunk, size, b""
            return
        body = f.read(min(size, 1 << 16)) if chunk in (b"fmt ", b"ds64") else b""
        f.seek(size + (size & 1) - len(body), os.SEEK_CUR)  # chunks are padded to an even size
        yield chunk, size, body


def wav_declared_seconds(path: str | Path) -> float | None:
    """The seconds of audio a WAV (RIFF or RF64) header declares: its data chunk's size over the frame size.

    None when `path` is not such a WAV, when its codec has no fixed frame size, or when the size is unknown
    (0 or 0xFFFFFFFF, left by a streaming writer, without an RF64 `ds64` size).
    """
    try:
        with open(path, "rb") as f:
            riff = f.read(12)
            if len(riff) < 12 or riff[:4] not in (b"RIFF", b"RF64", b"BW64") or riff[8:] != b"WAVE":
                return None
            fmt, ds64_size, data_size = b"", None, None
            for chunk, size, body in _wav_chunks(f):
                if chunk == b"fmt ":
                    fmt = body
                elif chunk == b"ds64" and len(body) >= 16:
                    ds64_size = struct.unpack("<Q", body[8:16])[0]
                elif chunk == b"data":
                    data_size = ds64_size if size == 0xFFFFFFFF and ds64_size is not None else size
    except OSError:
        return None
    if len(fmt) < 16 or data_size is None or data_size in _WAV_UNSET:
        return None
    tag, _, rate, _, block_align = struct.unpack("<HHIIH", fmt[:14])
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the codec is the sub-format's first two bytes
        tag = struct.unpack("<H", fmt[24:26])[0]
    if tag not in _WAV_FRAMED or not block_align or not rate:
        return None
    return data_size // block_align / rate


def _pump(name: str, dst, failed: list[OSError]) -> None:
    """Forward our stdin, or the FIFO `name`, into ffmpeg's stdin, in pieces (runs in a thread).

    Reads file descriptors, not buffered file objects: a daemon thread blocked inside a buffered reader
    holds its lock, and Python aborts at exit ("could not acquire lock ... at interpreter shutdown") when
    the run is interrupted while the pump waits for input.
    """
    fd = None
    try:
        if name == STDIN:
            try:
                fd = sys.stdin.buffer.fileno()
                read = lambda: os.read(fd, 1 << 16)  # noqa: E731
            except (AttributeError, OSError, ValueError):  # an in-memory stdin (tests)
                read = lambda: sys.stdin.buffer.read(1 << 16)  # noqa: E731
        else:
            fd = os.open(name, os.O_RDONLY)
            read = lambda: os.read(fd, 1 << 16)  # noqa: E731
        while piece := read():
            dst.write(piece)
    except (BrokenPipeError, ValueError):
        pass  # ffmpeg stopped reading (it failed, or we closed it)
    except OSError as e:
        failed.append(e)
    finally:
        if fd is not None and name != STDIN:
            os.close(fd)
        try:
            dst.close()
        except OSError:
            pass


def _drain(src, log: _FfmpegLog) -> None:
    """Read ffmpeg's stderr as it comes, so the pipe never fills up (runs in a thread)."""
    for line in iter(src.readline, b""):
        log.add(line.decode("utf-8", "replace"))


def check_finite(samples: np.ndarray, name: str = "", offset: int = 0, sample_rate: int = SAMPLE_RATE) -> None:
    """Raise AudioError when `samples` (starting `offset` samples into `name`) hold a NaN or an infinity."""
    if not np.isfinite(samples).all():
        first = offset + int(np.flatnonzero(~np.isfinite(samples))[0])
        where = f"{name}: " if name else ""
        raise AudioError(f"{where}audio contains NaN/Inf samples (the first at {first / sample_rate:.2f} s)")


def stream_audio(
    path: str | Path, block_seconds: float = 30.0, sample_rate: int = SAMPLE_RATE, processes: set | None = None
) -> Iterator[np.ndarray]:
    """Yield the media's audio as mono float32 blocks of `block_seconds` (the last one shorter).

    Only one block is in memory at a time; closing the iterator early stops ffmpeg. A missing, empty or
    directory path raises AudioError here; what ffmpeg finds (no audio stream, not media) raises it on the
    first `next()`; NaN or infinite samples at the block that holds them; a file that ends well short of
    the duration its header declares (truncated), at the end. The running ffmpeg process is kept in
    `processes` (when given), so that another thread can kill it to stop a read blocked on a pipe.
    """
    return _stream(_check_path(path), block_seconds, sample_rate, processes)


def _stream(source: tuple[str, bool], block_seconds: float, sample_rate: int,
            processes: set | None = None) -> Iterator[np.ndarray]:
    name, piped = source
    wav_seconds = None if piped else wav_declared_seconds(name)
    block_bytes = max(1, int(round(block_seconds * sample_rate))) * 4
    proc = subprocess.Popen(
        _decode_command(name, piped, sample_rate),
        stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if processes is not None:
        processes.add(proc)
    log = _FfmpegLog()
    unreadable: list[OSError] = []
    threads = [threading.Thread(target=_drain, args=(proc.stderr, log), daemon=True)]
    if piped:
        threads.append(threading.Thread(target=_pump, args=(name, proc.stdin, unreadable), daemon=True))
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
            # a short last block gets its own small buffer rather than pinning a whole block's bytes
            block = np.frombuffer(buf if n == block_bytes else buf[: n - n % 4], dtype="<f4")
            check_finite(block, name, total, sample_rate)
            total += len(block)
            yield block
        proc.wait()
        threads[0].join()
        if unreadable:
            raise AudioError(f"{name}: cannot read: {unreadable[0].strerror or unreadable[0]}")
        if proc.returncode != 0 and any("Format not on whitelist" in e for e in log.errors):
            raise AudioError(f"{name}: {refused_format(name, piped)}")
        if proc.returncode != 0:
            raise AudioError(f"{name}: {_reason(list(log.errors))}")
        if total == 0:
            raise AudioError(f"{name}: zero-length audio (the audio stream holds no samples)")
        log.check_complete(name, total, sample_rate, wav_seconds)
    finally:
        if processes is not None:
            processes.discard(proc)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        threads[0].join(timeout=5)  # the stdin pump may sit in a read of our stdin: it is a daemon, leave it
        if not threads[0].is_alive():
            proc.stderr.close()


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The whole audio of a media file (or "-" for stdin) as 16 kHz mono float32, nominally in [-1, 1]."""
    blocks = list(stream_audio(path, block_seconds=60.0, sample_rate=sample_rate))
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def audio_duration(path: str | Path) -> float | None:
    """Duration in seconds from the container header (cheap, may be approximate); None when unknown."""
    name = str(path)
    if name == STDIN or not Path(path).is_file():
        return None
    log = _FfmpegLog()
    probe = subprocess.run(_open_command(name, "level+info"), capture_output=True, stdin=subprocess.DEVNULL)
    for line in probe.stderr.splitlines():
        log.add(line.decode("utf-8", "replace"))
    return log.duration if log.has_audio else None
