"""`fama live`: simultaneous transcription or translation of a microphone, stdin, a URL or a paced file
(registered on the app in fama_cli.main). The decoding is `fama_core.live`, the audio `fama_core.capture`."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer
from rich.markup import escape

from fama_cli.main import app, fail, out
from fama_cli.transcribe_cmd import Dtype, Model, ThreadsOpt, load_for_cli, set_threads

if TYPE_CHECKING:
    from fama_core.live import Captions, Commit, LiveDecoder

Source = Annotated[str | None, typer.Argument(help="Nothing: the default microphone; - : audio on stdin (raw PCM "
                                                   "with --format, or any container); a URL ffmpeg reads; or a "
                                                   "media file", show_default=False)]


class _Run:
    """What a live run writes: stdout lines (or a live view), the jsonl events, the subtitle files."""

    def __init__(self, srt: Path | None, vtt: Path | None, jsonl: str | None, overwrite: bool, view: bool,
                 meta: dict[str, Any]):
        from fama_core.live import Captions

        self.subtitles = {fmt: path for fmt, path in (("srt", srt), ("vtt", vtt)) if path is not None}
        self.overwrite = overwrite
        self.meta = meta
        self.captions: Captions = Captions()
        self.started = time.monotonic()
        self.jsonl: TextIO | None = None
        self.jsonl_to_stdout = jsonl == "-"
        self.live = None
        self.written = False  # whether this run has written the subtitle files yet
        if view and not self.jsonl_to_stdout:
            from rich.live import Live

            self.live = Live("", console=out, transient=True, auto_refresh=False)
            self.live.start()
        self._write_subtitles(0.0)
        if jsonl == "-":
            self.jsonl = sys.stdout
        elif jsonl is not None:
            from fama_core.outputs import atomic_write

            # published empty through the one writer (it refuses an existing file without --overwrite), then
            # appended to: a log that grows by whole lines
            atomic_write(jsonl, "", overwrite=overwrite)
            self.jsonl = open(jsonl, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def _event(self, kind: str, text: str, start: float | None, end: float | None, **extra: Any) -> None:
        if self.jsonl is None:
            return
        event = {"type": kind, "text": text, "start": None if start is None else round(start, 3),
                 "end": None if end is None else round(end, 3),
                 "emitted": round(time.monotonic() - self.started, 3), **extra}
        self.jsonl.write(json.dumps(event, ensure_ascii=False) + "\n")
        self.jsonl.flush()

    def _write_subtitles(self, duration: float) -> None:
        from fama_core.outputs import atomic_write
        from fama_core.subtitles import format_transcript

        if not self.subtitles:
            return
        transcript = self.captions.transcript(duration=duration, **self.meta)
        for fmt, path in self.subtitles.items():
            # the first write creates the file (refusing one that exists without --overwrite); later ones
            # replace the file this run wrote
            atomic_write(path, format_transcript(transcript, fmt), overwrite=self.overwrite or self.written)
        self.written = True

    def commit(self, commit: Commit, decoder: LiveDecoder) -> None:
        self.meta["language"] = self.meta["language"] or decoder.language or ""
        if commit.words:
            self._event("delta", commit.text, commit.words[0].start, commit.words[-1].end, read=round(commit.read, 3))
        closed = self.captions.add(commit.words)
        if commit.final:
            closed += self.captions.flush()
        for segment in closed:
            self._event("segment", segment.text, segment.start, segment.end)
            self._print(segment.text)
        if closed:
            self._write_subtitles(decoder.read)
        self.show(decoder)

    def _print(self, line: str) -> None:
        if self.jsonl_to_stdout:
            return
        if self.live is not None:
            self.live.console.print(escape(line), soft_wrap=True)
        else:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def show(self, decoder: LiveDecoder) -> None:
        if self.live is None:
            return
        current = " ".join(w.text for w in self.captions.current)
        tail = f" [dim italic]{escape(decoder.tentative)}[/]" if decoder.tentative else ""
        self.live.update(f"{escape(current)}{tail}", refresh=True)

    def close(self, decoder: LiveDecoder) -> None:
        self._write_subtitles(decoder.read)
        text = " ".join(s.text for s in self.captions.segments)
        self._event("final", text, 0.0, decoder.read, language=decoder.language)
        if self.live is not None:
            self.live.stop()
        if self.jsonl is not None and self.jsonl is not sys.stdout:
            self.jsonl.close()


def _check_outputs(paths: list[Path | str | None], overwrite: bool) -> None:
    """Before the model loads: an output that exists needs --overwrite; two outputs may not be one file."""
    named = [str(p) for p in paths if p is not None and str(p) != "-"]
    if len(set(named)) != len(named):
        raise fail("--srt, --vtt and --jsonl must name different files", 2)
    for p in named:
        if Path(p).exists() and not overwrite:
            raise fail(f"{p} exists (use --overwrite to replace it)", 2)
        if Path(p).is_dir():
            raise fail(f"{p} is a directory", 2)


@app.command("live")
def live(
    source: Source = None,
    lang: Annotated[str | None, typer.Option("--lang", "-l", help="Spoken language (default: detected on the first "
                                                                  "seconds)", show_default=False)] = None,
    to: Annotated[str | None, typer.Option("--to", help="Translate into this language", show_default=False)] = None,
    latency: Annotated[float, typer.Option(help="The policy's knob, in seconds: AlignAtt's frame threshold (the "
                                                "end of the audio a committed word may not attend to); wait-k's "
                                                "lag")] = 1.0,
    policy: Annotated[str, typer.Option(help="streamatt (AlignAtt on unbounded streams), alignatt or waitk")]
    = "streamatt",
    step: Annotated[float, typer.Option(help="Seconds of new audio between two decisions")] = 0.5,
    model: Model = "fama-small",
    dtype: Dtype = "auto",
    threads: ThreadsOpt = None,
    realtime: Annotated[bool, typer.Option("--realtime", help="A file SOURCE: read it at the pace it plays")] = False,
    speed: Annotated[float, typer.Option(help="With --realtime: seconds of audio played per second")] = 1.0,
    raw_format: Annotated[str | None, typer.Option("--format", help="SOURCE -: raw PCM in this sample format "
                                                   "(s16le, f32le, ...)", show_default=False)] = None,
    rate: Annotated[int, typer.Option(help="Sample rate of raw PCM")] = 16000,
    channels: Annotated[int, typer.Option(help="Channels of raw PCM")] = 1,
    input_device: Annotated[str | None, typer.Option("--input-device", help="Capture device (see --device-list)",
                                                     show_default=False)] = None,
    device_list: Annotated[bool, typer.Option("--device-list", help="List the capture devices and exit")] = False,
    srt: Annotated[Path | None, typer.Option(help="Keep this SRT file up to date", show_default=False)] = None,
    vtt: Annotated[Path | None, typer.Option(help="Keep this WebVTT file up to date", show_default=False)] = None,
    jsonl: Annotated[str | None, typer.Option(help="Write events here, one JSON object a line (- : stdout, instead "
                                                   "of the text)", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files")] = False,
    local_files_only: Annotated[bool, typer.Option("--local-files-only", help="Never download the model")] = False,
) -> None:
    """Transcribe or translate live audio as it is spoken (Ctrl-C ends it and keeps what was decided)."""
    from fama_core.audio import AudioError
    from fama_core.capture import LiveAudio, SourceOptions, list_devices
    from fama_core.live import LiveDecoder, LiveOptions

    if device_list:
        try:
            print(list_devices())
        except AudioError as e:
            raise fail(escape(str(e))) from None
        return
    try:
        options = LiveOptions(policy=policy, latency=latency, step_seconds=step, language=lang, target=to)
        sources = SourceOptions(source, raw_format, rate, channels, realtime, speed, input_device)
    except ValueError as e:
        raise fail(escape(str(e)), 2) from None
    except AudioError as e:
        raise fail(escape(str(e))) from None
    _check_outputs([srt, vtt, jsonl], overwrite)
    set_threads(threads)
    loaded, tokenizer, _ = load_for_cli(model, None, dtype, local_files_only)
    try:
        decoder = LiveDecoder(loaded, tokenizer, options)
    except ValueError as e:
        raise fail(escape(str(e)), 2) from None
    meta = {"language": to or lang or "", "task": "translate" if to else "transcribe",
            "source": source or "microphone", "model": model}
    run = _Run(srt, vtt, jsonl, overwrite, out.is_terminal, meta)
    stop = _stop_on_sigint()
    audio = LiveAudio(sources)
    error = None
    try:
        for block in audio.blocks():
            if stop():
                audio.stop()
                break
            if block is None:
                continue
            for commit in decoder.feed(block):
                run.commit(commit, decoder)
            run.show(decoder)
        if stop():  # ffmpeg may have had the Ctrl-C too, and ended first
            audio.stop()
        error = audio.close()
        for commit in decoder.finish():
            run.commit(commit, decoder)
    finally:
        run.close(decoder)
    if error is not None:
        raise fail(escape(error))


def _stop_on_sigint():
    """Ctrl-C asks the loop to stop (between decisions: the tail is then flushed and the files written)."""
    asked = []

    def handler(signum, frame) -> None:
        asked.append(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return lambda: bool(asked)
