"""Live audio for `fama live`: the default microphone, stdin, a URL or a file, through ffmpeg, as 16 kHz mono
float32 blocks while they arrive.

The microphone is ffmpeg's capture device of the platform: PulseAudio (else ALSA, else OSS) on Linux,
AVFoundation on macOS, DirectShow on Windows, whichever the ffmpeg in use was built with. A file is read as
fast as ffmpeg decodes it, or, with `realtime`, released at the pace of its audio (times `speed`).
"""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, STDIN, AudioError, ffmpeg_exe

RAW_FORMATS = ("s16le", "s16be", "s32le", "f32le", "f64le", "u8", "s24le", "mulaw", "alaw")
BLOCK_SECONDS = 0.1  # audio handed over at a time


def is_url(source: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", source) is not None


@dataclass
class SourceOptions:
    """Where live audio comes from. `source` None: the default microphone (or `input_device`)."""

    source: str | None = None
    raw_format: str | None = None  # stdin only: raw PCM in this ffmpeg sample format (else any container)
    rate: int = 16000  # of raw PCM
    channels: int = 1  # of raw PCM
    realtime: bool = False  # a file: release its audio at the pace it plays
    speed: float = 1.0  # with realtime: this many seconds of audio per second
    input_device: str | None = None  # capture device name (default: the backend's default device)

    def __post_init__(self) -> None:
        if self.raw_format is not None:
            if self.raw_format not in RAW_FORMATS:
                raise ValueError(f"unknown raw format {self.raw_format!r}; choose from {', '.join(RAW_FORMATS)}")
            if self.source != STDIN:
                raise ValueError("a raw PCM format is for audio on stdin (SOURCE -) only")
        if not 8000 <= self.rate <= 192000:
            raise ValueError(f"the raw sample rate must be between 8000 and 192000, not {self.rate}")
        if not 1 <= self.channels <= 8:
            raise ValueError(f"the raw channel count must be between 1 and 8, not {self.channels}")
        if not self.speed > 0:
            raise ValueError(f"speed must be greater than 0, not {self.speed!r}")
        if self.realtime and (self.source is None or self.source == STDIN or is_url(self.source)):
            raise ValueError("realtime pacing is for a file SOURCE (a microphone, stdin or a stream is live already)")
        if self.source not in (None, STDIN) and not is_url(self.source):
            path = Path(self.source)
            if not path.exists():
                raise AudioError(f"{self.source}: no such file")
            if path.is_dir():
                raise AudioError(f"{self.source}: is a directory, not a media file")

    @property
    def kind(self) -> str:
        if self.source is None:
            return "microphone"
        return "stdin" if self.source == STDIN else "url" if is_url(self.source) else "file"


@cache
def capture_backend() -> str:
    """The ffmpeg capture device format for this platform's microphone."""
    if sys.platform == "darwin":
        return "avfoundation"
    if sys.platform == "win32":
        return "dshow"
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-devices"], capture_output=True, text=True).stdout
    have = {m.group(1) for m in re.finditer(r"^\s*D\S*\s+(\S+)", out, re.M)}
    for backend in ("pulse", "alsa", "oss"):
        if any(backend in name.split(",") for name in have):
            return backend
    raise AudioError(f"this ffmpeg ({ffmpeg_exe()}) has no audio capture device (pulse, alsa or oss)")


def device_list_command(backend: str) -> list[str]:
    """The ffmpeg command that lists the capture devices of `backend`."""
    exe = ffmpeg_exe()
    if backend == "avfoundation":
        return [exe, "-hide_banner", "-f", "avfoundation", "-list_devices", "true", "-i", ""]
    if backend == "dshow":
        return [exe, "-hide_banner", "-list_devices", "true", "-f", "dshow", "-i", "dummy"]
    return [exe, "-hide_banner", "-sources", backend]


def list_devices() -> str:
    """What ffmpeg says about the capture devices (its own words: the formats differ per platform)."""
    backend = capture_backend()
    done = subprocess.run(device_list_command(backend), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    text = (done.stdout + done.stderr).strip()
    return f"{backend}:\n{text}" if text else f"{backend}: no devices listed"


def input_args(options: SourceOptions) -> list[str]:
    """ffmpeg's input options for the source."""
    kind = options.kind
    if kind == "microphone":
        backend = capture_backend()
        device = options.input_device
        if device is None:
            device = {"avfoundation": ":default", "dshow": "audio=default"}.get(backend, "default")
        elif backend == "dshow" and not device.startswith("audio="):
            device = f"audio={device}"
        elif backend == "avfoundation" and not device.startswith(":"):
            device = f":{device}"
        return ["-f", backend, "-i", device]
    if kind == "stdin":
        raw = [] if options.raw_format is None else ["-f", options.raw_format, "-ar", str(options.rate),
                                                     "-ac", str(options.channels)]
        return raw + ["-i", "pipe:0"]
    return ["-i", options.source if kind == "url" else f"file:{options.source}"]


class LiveAudio:
    """16 kHz mono float32 blocks of the source as they arrive (`blocks`); `stop()` ends them early.

    ffmpeg runs in its own process and a thread reads it, so that a decoder which falls behind gets all the
    audio that arrived meanwhile at once (`blocks` yields everything queued as one array)."""

    def __init__(self, options: SourceOptions):
        self.options = options
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "error"]
        cmd += input_args(options)
        cmd += ["-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
        self.proc = subprocess.Popen(cmd, stdin=sys.stdin.buffer if options.kind == "stdin" else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.queue: queue.Queue[np.ndarray | None] = queue.Queue()
        self.errors: list[str] = []
        self.samples = 0
        self.stopped = False
        self._threads = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._log, daemon=True)]
        for t in self._threads:
            t.start()

    def _log(self) -> None:
        for line in self.proc.stderr:
            text = line.decode("utf-8", "replace").strip()
            if text:
                self.errors = (self.errors + [text])[-5:]

    def _read(self) -> None:
        block = int(BLOCK_SECONDS * SAMPLE_RATE) * 4
        start = time.monotonic()
        pace = self.options.realtime
        try:
            while True:
                data = self.proc.stdout.read(block)
                if not data:
                    break
                samples = np.frombuffer(data[: len(data) - len(data) % 4], dtype="<f4")
                if pace:  # release the block when its audio would have been heard
                    due = start + (self.samples + len(samples)) / SAMPLE_RATE / self.options.speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                self.samples += len(samples)
                self.queue.put(samples)
        finally:
            self.queue.put(None)

    def blocks(self, timeout: float = 0.05) -> Iterator[np.ndarray | None]:
        """Yield what arrived (all queued blocks as one array), or None after `timeout` seconds without audio
        (so that the caller can check for a stop); ends with the source."""
        while True:
            try:
                first = self.queue.get(timeout=timeout)
            except queue.Empty:
                yield None
                continue
            parts = [first]
            while parts[-1] is not None:
                try:
                    parts.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            ended = parts[-1] is None
            parts = [p for p in parts if p is not None]
            if parts:
                yield np.concatenate(parts) if len(parts) > 1 else parts[0]
            if ended:
                return

    def stop(self) -> None:
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.terminate()

    def close(self) -> str | None:
        """Wait for ffmpeg; the error to report (one line), if it failed and was not stopped."""
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._threads[1].join(timeout=2)
        if self.stopped or code == 0:
            return None
        where = self.options.source or f"the microphone ({capture_backend()})"
        reason = self.errors[-1] if self.errors else f"ffmpeg exited with status {code}"
        return f"{where}: {reason}"
