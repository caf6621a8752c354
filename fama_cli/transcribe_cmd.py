"""`fama transcribe` and `fama translate` (registered on the app in fama_cli.main).

This module parses and prints; what to read, what to write and how is decided in fama_core (`inputs`,
`outputs.plan_outputs`, `pipeline.Pipeline`). Results come from one place, `_results`, so that another
executor yielding the same `FileResult`s can replace the local pipeline.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from fama_cli.main import app, err, fail, set_threads

if TYPE_CHECKING:
    from fama_core.hotwords import Hotword
    from fama_core.model import FamaModel
    from fama_core.outputs import OutputPlan
    from fama_core.pipeline import FileResult, Pipeline, RunProgress, TranscribeOptions
    from fama_core.subtitles import SubtitleOptions
    from fama_core.tokenizer import Tokenizer

Inputs = Annotated[list[str], typer.Argument(help="Media files, folders, glob patterns, or - for stdin",
                                             show_default=False)]
Model = Annotated[str, typer.Option("--model", "-m", help="Alias, Hugging Face repo id, model folder or .pt")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda (every visible GPU), cuda:1, or a list such as "
                                                 "cuda:0,cuda:2 (default: every GPU, else the CPU)")]
Dtype = Annotated[str, typer.Option(help="auto (GPU: bfloat16 or float16; CPU: the fastest of float32, bfloat16 "
                                         "and int8 on this machine), float32 (exact), bfloat16, float16 or int8 "
                                         "(or fp32, bf16, fp16, half)")]
OutputDir = Annotated[str | None, typer.Option("--output-dir", "--output_dir", "-o",
                                               help="Folder for the outputs (default: beside each input); - writes "
                                                    "the one chosen format to stdout")]
Formats = Annotated[list[str] | None, typer.Option("--format", "--output_format", "-f",
                                                   help="txt, srt, vtt, tsv, json, ass (karaoke) or all (all but "
                                                        "ass); repeatable or comma-separated")]
TxtOpt = Annotated[bool, typer.Option("--txt", help="Write .txt (one segment per line)")]
SrtOpt = Annotated[bool, typer.Option("--srt", help="Write .srt subtitles")]
VttOpt = Annotated[bool, typer.Option("--vtt", help="Write .vtt subtitles")]
TsvOpt = Annotated[bool, typer.Option("--tsv", help="Write .tsv (start, end in ms, text)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Write .json (segments, words, times, language, model, "
                                                      "options)")]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Walk subfolders of folder inputs")]
SkipExistingOpt = Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose outputs all exist; "
                                                                       "write only the missing ones of the others")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (never an input)")]
BeamSizeOpt = Annotated[int, typer.Option(help="Beam width")]
CtcWeightOpt = Annotated[float, typer.Option(help="Weight of the CTC prefix score in joint decoding")]
NoRepeatNgramSizeOpt = Annotated[int, typer.Option(help="Forbid repeating n-grams of this size (0: off)")]
GreedyOpt = Annotated[bool, typer.Option("--greedy", help="Fast mode: greedy CTC, no attention decoder")]
MaxTokensOpt = Annotated[int, typer.Option(help="Most output tokens per speech chunk")]
BatchSizeOpt = Annotated[int, typer.Option(help="Most speech chunks decoded at once")]
MaxChunkSecondsOpt = Annotated[float, typer.Option(help="Longest speech chunk fed to the model (1 to 120)")]
MaxLineWidthOpt = Annotated[int, typer.Option("--max-line-width", "--max_line_width",
                                              help="Characters per subtitle line")]
MaxLineCountOpt = Annotated[int, typer.Option("--max-line-count", "--max_line_count", help="Lines per subtitle cue")]
MaxCueSecondsOpt = Annotated[float, typer.Option(help="Longest subtitle cue, in seconds")]
MinCueSecondsOpt = Annotated[float, typer.Option(help="Shortest subtitle cue, in seconds")]
MaxCpsOpt = Annotated[float, typer.Option(help="Reading speed: most characters per second in a cue")]
ThreadsOpt = Annotated[int | None, typer.Option(help="CPU threads for computing (default: torch's choice; at most "
                                                     "the usable cores)",
                                                show_default=False)]
LocalFilesOnlyOpt = Annotated[bool, typer.Option("--local-files-only", help="Never download the model")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, notes or summary")]
RayOpt = Annotated[bool, typer.Option("--ray", help="Run on Ray (pip install 'fama-speech\\[ray]'): the cluster in "
                                      "$RAY_ADDRESS, else a new local Ray; docs/scale.md")]
HighlightWordsOpt = Annotated[bool, typer.Option("--highlight-words", "--highlight_words",
                                                help="SRT/VTT: underline each word as it is spoken (karaoke style)")]
MarkBelowOpt = Annotated[float | None, typer.Option("--mark-below", help="SRT/VTT/ASS: words whose probability is "
                                                    "below this (0-1) in italics", show_default=False)]
HotwordsOpt = Annotated[str | None, typer.Option("--hotwords", help='Terms to favour (names, jargon), comma-'
                                             'separated: "FBK, Trento, Bentivogli"', show_default=False)]
HotwordsFileOpt = Annotated[str | None, typer.Option("--hotwords-file", help="Terms to favour, one per line, "
                                                     "optionally term<TAB>weight", show_default=False)]
HotwordWeightOpt = Annotated[float | None, typer.Option("--hotword-weight", help="Bonus per token of a term that "
                                                        "has no weight of its own (default 1.5; up to 20)",
                                                        show_default=False)]
RayAddressOpt = Annotated[str | None, typer.Option("--ray-address", help="Ray cluster for --ray (implies it): auto "
                                                   "or HOST:PORT (its GCS)")]

LANGUAGES = ("en", "it")


@dataclass
class _Tally:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0  # audio read


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _line(kind: str, message: str) -> None:
    """One line on stderr: `failed: ...`, `warning: ...`, `note: ...`."""
    style = {"failed": "red", "warning": "yellow", "note": "cyan"}[kind]
    err.print(f"[{style}]{kind}:[/] {escape(message)}", soft_wrap=True, highlight=False)


def _usage(fn, *args, **kwargs):
    """`fn(...)`, with a ValueError turned into a usage error (exit 2)."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise fail(str(e), 2) from None


def hotword_terms(hotwords: str | None, hotwords_file: str | None, weight: float | None = None) -> tuple[Hotword, ...]:
    """The terms of --hotwords and --hotwords-file (`hotwords.Hotword`s); a bad value exits 2 with one line,
    before the model loads."""
    from fama_core.hotwords import DEFAULT_WEIGHT, Hotword, parse_hotwords, read_hotwords_file

    if weight is not None:
        try:
            Hotword("x", weight)
        except ValueError as e:
            raise fail(f"--hotword-weight: {e}", 2) from None
        if hotwords is None and hotwords_file is None:
            raise fail("--hotword-weight goes with --hotwords or --hotwords-file", 2)
    default = DEFAULT_WEIGHT if weight is None else weight
    terms = []
    if hotwords is not None:
        terms += _usage(parse_hotwords, hotwords, default)
    if hotwords_file is not None:
        terms += _usage(read_hotwords_file, hotwords_file, default)
    return tuple(terms)


def decode_options(task: str, language: str, *, beam_size: int, ctc_weight: float, no_repeat_ngram_size: int,
                    greedy: bool, max_tokens: int, batch_size: int, max_chunk_seconds: float,
                    detect_source: bool = True, hotwords: tuple[Hotword, ...] = ()) -> TranscribeOptions:
    """The library's options, checked by the library (what needs the model is checked once it is loaded)."""
    from fama_core.decoding import DecodeOptions
    from fama_core.pipeline import TranscribeOptions, check_options
    from fama_core.vad import VadOptions

    decode = DecodeOptions(beam_size=beam_size, ctc_weight=ctc_weight, no_repeat_ngram_size=no_repeat_ngram_size,
                           greedy=greedy, max_len_b=max_tokens, hotwords=hotwords)
    options = TranscribeOptions(task=task, language=language, decode=decode,
                                vad=_usage(VadOptions, max_chunk_s=max_chunk_seconds), batch_size=batch_size,
                                detect_source=detect_source)
    _usage(check_options, options)
    return options


def subtitle_options(max_line_width: int, max_line_count: int, max_cue_seconds: float, min_cue_seconds: float,
                      max_cps: float, highlight_words: bool = False,
                      mark_below: float | None = None) -> SubtitleOptions:
    from fama_core.subtitles import SubtitleOptions

    try:
        return SubtitleOptions(max_line_width, max_line_count, max_cue_seconds, min_cue_seconds=min_cue_seconds,
                               max_cps=max_cps, highlight_words=highlight_words, mark_below=mark_below)
    except ValueError as e:  # the library names its fields; say which option
        message = str(e)
        for field, flag in (("max_duration", "--max-cue-seconds"), ("min_cue_seconds", "--min-cue-seconds"),
                            ("max_cps", "--max-cps"), ("max_line_width", "--max-line-width"),
                            ("max_line_count", "--max-line-count"), ("mark_below", "--mark-below")):
            message = message.replace(field, flag)
        raise fail(message, 2) from None


def _has_subfolders(arg: str) -> bool:
    try:
        with os.scandir(arg) as entries:
            return any(e.is_dir() and not e.name.startswith(".") for e in entries)
    except OSError:
        return False


def _plan(inputs: list[str], recursive: bool, output_dir: str | None, formats: list[str], skip_existing: bool,
          overwrite: bool) -> tuple[OutputPlan, str]:
    """The output plan of this rank, and the rank's prefix for printed lines. Usage errors exit 2."""
    from fama_core.inputs import find_inputs, torchrun_rank
    from fama_core.outputs import OutputRequest, plan_outputs

    rank, world = _usage(torchrun_rank)
    scan = find_inputs(inputs, recursive=recursive)
    if not scan.items:
        hint = "" if recursive or not any(map(_has_subfolders, inputs)) else " (use --recursive for subfolders)"
        raise fail(f"no media files found in {' '.join(inputs)}{hint}", 2)
    for warning in scan.warnings:
        _line("warning", warning)
    request = OutputRequest(output_dir, formats, skip_existing, overwrite)
    plan = _usage(plan_outputs, inputs, scan.items, request, rank, world)
    return plan, f"[rank {rank}/{world}] " if world > 1 else ""


def load_for_cli(model: str, device: str | None, dtype: str, local_files_only: bool,
                 one_device: bool = False) -> tuple[FamaModel, Tokenizer, list]:
    """(model, tokenizer, devices): the model on the first device. A bad --dtype or --device exits 2 (checked
    before loading), a model that cannot be loaded exits 1 with one line."""
    from fama_core.checkpoints import CheckpointError, load_model
    from fama_core.pipeline import resolve_devices
    from fama_core.precision import normalize

    dtype = _usage(normalize, dtype)
    if device is None and "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    try:
        devices = resolve_devices(device)
    except (RuntimeError, ValueError) as e:
        raise fail(f"--device: {e}", 2) from None
    if one_device and device is not None and len(devices) > 1:
        raise fail("--device: fama serve decodes on one device; start one server per GPU", 2)
    try:
        loaded, tokenizer = load_model(model, device=devices[0], dtype=dtype, local_files_only=local_files_only or None)
    except (CheckpointError, ValueError, OSError) as e:
        raise fail(f"cannot load model {model}: {e}") from None
    return loaded, tokenizer, devices


def _pipeline(model: str, device: str | None, dtype: str, local_files_only: bool,
              options: TranscribeOptions) -> Pipeline:
    from fama_core.pipeline import Pipeline

    loaded, tokenizer, devices = load_for_cli(model, device, dtype, local_files_only)
    return _usage(Pipeline, loaded, tokenizer, options, model_name=model, devices=devices)


@dataclass
class _Ray:
    address: str | None  # None: $RAY_ADDRESS, else a new local Ray
    device: str | None  # the replicas' device


def _results(pipeline: Pipeline, plan: OutputPlan, progress: Callable[[RunProgress], None] | None,
             ray: _Ray | None = None) -> Iterator[FileResult]:
    """Every input's FileResult: the one place results come from (this process's pipeline, or Ray)."""
    if ray is None:
        return pipeline.run(plan.todo, progress=progress)
    from fama_core.cluster import RayExecutor
    from fama_core.pipeline import RunProgress

    try:
        executor = RayExecutor(pipeline, ray.address, ray.device)
    except ConnectionError as e:  # no cluster at that address
        raise fail(escape(f"cannot join Ray: {e}")) from None
    state = RunProgress(files=len(plan.todo))

    def advance(seconds: float) -> None:
        state.speech_done += seconds
        if progress:
            progress(state)

    return executor.run(plan.todo, progress=advance)


class _Progress:
    """A progress bar on a terminal that moves with the speech decoded (estimated total, ETA)."""

    def __init__(self, label: str, files: int, enabled: bool):
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err,
                            transient=True)
        self.task = self.bar.add_task(label, total=None, info=f"0/{files} files")
        self.bar.start()

    def __call__(self, p: RunProgress) -> None:
        if self.bar is None:
            return
        total = p.speech_total()
        info = (f"{_hms(p.speech_done)}/{_hms(total) if total is not None else '?'} speech · "
                f"{p.files_done}/{p.files} files · {_hms(p.audio_read)} audio read")
        self.bar.update(self.task, total=total, completed=p.speech_done, info=info)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _deliver(res: FileResult, plan: OutputPlan, subs: SubtitleOptions, quiet: bool) -> str | None:
    """Write one result (or print it, for stdout); the error to report, if any."""
    from fama_core.outputs import OutputExistsError
    from fama_core.subtitles import format_transcript

    if res.error is not None:
        return res.error
    t = res.transcript
    if not t.segments and not quiet:
        _line("note", f"{res.item.name}: no speech found")
    for warning in t.warnings():
        _line("warning", f"{res.item.name}: {warning}")
    try:
        if plan.to_stdout:
            sys.stdout.write(format_transcript(t, plan.formats[0], subs))
            sys.stdout.flush()
        else:
            plan.write(res.item, t, subs)
    except OutputExistsError as e:
        return f"{e} (appeared during the run; use --overwrite or --skip-existing)"
    except OSError as e:
        return f"cannot write output: {e}"
    return None


def _summary(who: str, tally: _Tally, wall: float, plan: OutputPlan) -> None:
    rtf = f" · RTF {wall / tally.seconds:.3f}" if tally.seconds > 0 else ""
    folders = plan.folders()
    where = ""
    if plan.to_stdout:
        where = " · output on stdout"
    elif folders:
        where = f" · outputs in {', '.join(folders[:3])}" + (f" and {len(folders) - 3} more" if len(folders) > 3
                                                              else "")
    err.print(f"{who}{tally.done} done, {tally.skipped} skipped, {tally.failed} failed · {tally.seconds / 3600:.3f} h "
              f"audio in {_hms(wall)}{rtf}{where}", markup=False, highlight=False, soft_wrap=True)


def _execute(plan: OutputPlan, who: str, make_pipeline: Callable[[], Pipeline], subs: SubtitleOptions,
             quiet: bool, ray: _Ray | None = None) -> None:
    """Transcribe what the plan says, report each failure on one line, then the summary; exit 1 on failures,
    130 on Ctrl-C (after an `interrupted` line and the summary)."""
    tally, started = _Tally(skipped=len(plan.skipped)), time.perf_counter()
    for item, reason in plan.refused:
        tally.failed += 1
        _line("failed", f"{item.name}: {reason}")
    interrupted = False
    try:
        if plan.todo:
            pipeline = make_pipeline()
            bar = _Progress(f"{who}{pipeline.options.task}", len(plan.todo),
                            not quiet and err.is_terminal and not plan.to_stdout)
            try:
                for res in _results(pipeline, plan, bar if bar.bar is not None else None, ray):
                    tally.seconds += res.seconds
                    error = _deliver(res, plan, subs, quiet)
                    if error is None:
                        tally.done += 1
                    else:
                        tally.failed += 1
                        _line("failed", f"{res.item.name}: {error}")
            finally:
                bar.stop()
    except KeyboardInterrupt:
        interrupted = True
        err.print(f"{who}interrupted", markup=False, highlight=False)
    if not quiet or interrupted:
        _summary(who, tally, time.perf_counter() - started, plan)
    if interrupted:
        raise typer.Exit(128 + signal.SIGINT)
    if tally.failed:
        raise typer.Exit(1)


def _main(inputs: list[str], *, formats: list[str], output_dir: str | None,
          recursive: bool, skip_existing: bool, overwrite: bool, options: TranscribeOptions,
          subs: SubtitleOptions, model: str, device: str | None, dtype: str, local_files_only: bool,
          threads: int | None, quiet: bool, ray: bool = False, ray_address: str | None = None) -> None:
    """Everything that can be checked is checked before the model is loaded; then the run."""
    set_threads(threads)
    if quiet:  # library notes (e.g. the VAD fallback) go through the `fama_core` logger
        logging.getLogger("fama_core").setLevel(logging.ERROR)
    on_ray = _Ray(ray_address, device) if ray or ray_address is not None else None
    if on_ray:
        from fama_core.cluster import RayUnavailable, require_ray, resolve_address

        try:
            require_ray()
        except RayUnavailable as e:
            raise fail(escape(str(e))) from None
        on_ray.address = _usage(resolve_address, ray_address)
        device = "cpu"  # the driver's copy; the replicas' device is --device
    try:
        plan, who = _plan(inputs, recursive, output_dir, formats, skip_existing, overwrite)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False, highlight=False)
        raise typer.Exit(130) from None

    def make_pipeline() -> Pipeline:
        if on_ray:
            _join_ray(on_ray.address)  # before the model loads: an unreachable cluster fails in seconds
        return _pipeline(model, device, dtype, local_files_only, options)

    _execute(plan, who, make_pipeline, subs, quiet, on_ray)


def _join_ray(address: str | None) -> None:
    from fama_core.cluster import connect

    try:
        connect(address)
    except ConnectionError as e:  # nothing answers at that address
        raise fail(escape(f"cannot join Ray: {e}")) from None


def _formats(fmt: list[str] | None, **flags: bool) -> list[str]:
    from fama_core.outputs import parse_formats

    return _usage(parse_formats, [name for name, on in flags.items() if on] + (fmt or []))


@app.command()
def transcribe(
    inputs: Inputs,
    lang: Annotated[str, typer.Option("--lang", "--language", "-l", help="Spoken language: en, it (or english, "
                                      "italian), or auto (detected per file from its first 30 s of speech)")] = "auto",
    task: Annotated[str, typer.Option(help="transcribe, or translate (as whisper: into English, or into --to)")]
    = "transcribe",
    to: Annotated[str | None, typer.Option("--to", "-t", help="With --task translate: target language (default "
                                           "en)", show_default=False)] = None,
    model: Model = "fama-small",
    device: Device = None,
    dtype: Dtype = "auto",
    output_dir: OutputDir = None,
    fmt: Formats = None,
    txt: TxtOpt = False,
    srt: SrtOpt = False,
    vtt: VttOpt = False,
    tsv: TsvOpt = False,
    json_: JsonOpt = False,
    recursive: RecursiveOpt = False,
    skip_existing: SkipExistingOpt = False,
    overwrite: OverwriteOpt = False,
    beam_size: BeamSizeOpt = 5,
    ctc_weight: CtcWeightOpt = 0.2,
    no_repeat_ngram_size: NoRepeatNgramSizeOpt = 5,
    greedy: GreedyOpt = False,
    max_tokens: MaxTokensOpt = 200,
    batch_size: BatchSizeOpt = 16,
    max_chunk_seconds: MaxChunkSecondsOpt = 30.0,
    max_line_width: MaxLineWidthOpt = 42,
    max_line_count: MaxLineCountOpt = 2,
    max_cue_seconds: MaxCueSecondsOpt = 7.0,
    min_cue_seconds: MinCueSecondsOpt = 0.8,
    max_cps: MaxCpsOpt = 20.0,
    threads: ThreadsOpt = None,
    local_files_only: LocalFilesOnlyOpt = False,
    quiet: QuietOpt = False,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    hotwords: HotwordsOpt = None,
    hotwords_file: HotwordsFileOpt = None,
    hotword_weight: HotwordWeightOpt = None,
    highlight_words: HighlightWordsOpt = False,
    mark_below: MarkBelowOpt = None,
) -> None:
    """Speech recognition: media in, text and subtitles out."""
    lang = _spoken(lang)
    if task not in ("transcribe", "translate"):
        raise fail(f"--task must be transcribe or translate, not {task!r}", 2)
    if to is not None and task != "translate":
        raise fail("--to goes with --task translate (or use fama translate)", 2)
    terms = hotword_terms(hotwords, hotwords_file, hotword_weight)
    if task == "translate":
        target = _target(to or "en", lang)
        options = decode_options("translate", target, detect_source=lang == "auto", beam_size=beam_size,
                                  ctc_weight=ctc_weight, no_repeat_ngram_size=no_repeat_ngram_size, greedy=greedy,
                                  max_tokens=max_tokens, batch_size=batch_size, max_chunk_seconds=max_chunk_seconds,
                                  hotwords=terms)
    else:
        options = decode_options("transcribe", lang, beam_size=beam_size, ctc_weight=ctc_weight,
                                  no_repeat_ngram_size=no_repeat_ngram_size, greedy=greedy, max_tokens=max_tokens,
                                  batch_size=batch_size, max_chunk_seconds=max_chunk_seconds, hotwords=terms)
    _main(inputs, formats=_formats(fmt, txt=txt, srt=srt, vtt=vtt, tsv=tsv, json=json_),
          output_dir=output_dir, recursive=recursive, skip_existing=skip_existing, overwrite=overwrite,
          options=options, subs=subtitle_options(max_line_width, max_line_count, max_cue_seconds, min_cue_seconds,
                                                  max_cps, highlight_words, mark_below),
          model=model, device=device, dtype=dtype, local_files_only=local_files_only, threads=threads, quiet=quiet,
          ray=ray, ray_address=ray_address)


def _named() -> list[str]:
    """The languages as the error lines list them: en (english), it (italian)."""
    from fama_core.tokenizer import LANGUAGE_NAMES

    return [f"{code} ({LANGUAGE_NAMES[code]})" for code in LANGUAGES]


def _spoken(lang: str) -> str:
    """--lang as a code ("English" -> "en", as whisper and the server take names) or auto; exit 2 otherwise."""
    from fama_core.tokenizer import language_code

    code = language_code(lang)
    if code not in (*LANGUAGES, "auto"):
        raise fail(f"--lang must be {', '.join(_named())} or auto, not {lang!r}", 2)
    return code


def _target(to: str, spoken: str) -> str:
    from fama_core.tokenizer import language_code

    code = language_code(to)
    if code not in LANGUAGES:
        raise fail(f"--to must be {' or '.join(_named())}, not {to!r}", 2)
    to = code
    if spoken == to:
        raise fail(f"the speech is already in {to}: nothing to translate (use fama transcribe, or another --to)", 2)
    return to


@app.command()
def translate(
    inputs: Inputs,
    to: Annotated[str, typer.Option("--to", "-t", help="Target language: en or it")] = "en",
    lang: Annotated[str, typer.Option("--lang", "--language", "-l", help="Spoken language: the other one of en "
                                      "and it, or auto (detected, and a warning if it is the target)")] = "auto",
    model: Model = "fama-small",
    device: Device = None,
    dtype: Dtype = "auto",
    output_dir: OutputDir = None,
    fmt: Formats = None,
    txt: TxtOpt = False,
    srt: SrtOpt = False,
    vtt: VttOpt = False,
    tsv: TsvOpt = False,
    json_: JsonOpt = False,
    recursive: RecursiveOpt = False,
    skip_existing: SkipExistingOpt = False,
    overwrite: OverwriteOpt = False,
    beam_size: BeamSizeOpt = 5,
    ctc_weight: CtcWeightOpt = 0.2,
    no_repeat_ngram_size: NoRepeatNgramSizeOpt = 5,
    greedy: GreedyOpt = False,
    max_tokens: MaxTokensOpt = 200,
    batch_size: BatchSizeOpt = 16,
    max_chunk_seconds: MaxChunkSecondsOpt = 30.0,
    max_line_width: MaxLineWidthOpt = 42,
    max_line_count: MaxLineCountOpt = 2,
    max_cue_seconds: MaxCueSecondsOpt = 7.0,
    min_cue_seconds: MinCueSecondsOpt = 0.8,
    max_cps: MaxCpsOpt = 20.0,
    threads: ThreadsOpt = None,
    local_files_only: LocalFilesOnlyOpt = False,
    quiet: QuietOpt = False,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    hotwords: HotwordsOpt = None,
    hotwords_file: HotwordsFileOpt = None,
    hotword_weight: HotwordWeightOpt = None,
    highlight_words: HighlightWordsOpt = False,
    mark_below: MarkBelowOpt = None,
) -> None:
    """Speech translation English <-> Italian: media in, translated text and subtitles out."""
    lang = _spoken(lang)
    options = decode_options("translate", _target(to, lang), detect_source=lang == "auto", beam_size=beam_size,
                              ctc_weight=ctc_weight, no_repeat_ngram_size=no_repeat_ngram_size, greedy=greedy,
                              max_tokens=max_tokens, batch_size=batch_size, max_chunk_seconds=max_chunk_seconds,
                              hotwords=hotword_terms(hotwords, hotwords_file, hotword_weight))
    _main(inputs, formats=_formats(fmt, txt=txt, srt=srt, vtt=vtt, tsv=tsv, json=json_),
          output_dir=output_dir, recursive=recursive, skip_existing=skip_existing, overwrite=overwrite,
          options=options, subs=subtitle_options(max_line_width, max_line_count, max_cue_seconds, min_cue_seconds,
                                                  max_cps, highlight_words, mark_below),
          model=model, device=device, dtype=dtype, local_files_only=local_files_only, threads=threads, quiet=quiet,
          ray=ray, ray_address=ray_address)
