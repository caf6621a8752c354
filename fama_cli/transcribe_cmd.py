"""`fama transcribe` and `fama translate` (registered on the app in fama_cli.main)."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fama_cli.main import app, err, fail

FORMAT_NAMES = ("txt", "srt", "vtt", "tsv", "json")

Inputs = Annotated[list[str], typer.Argument(help="Media files, folders, glob patterns, or - for stdin",
                                             show_default=False)]
Model = Annotated[str, typer.Option("--model", "-m", help="Alias, Hugging Face repo id, model folder or .pt")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda (every visible GPU), cuda:1, or a list such as "
                                                 "cuda:0,cuda:2 (default: every GPU, else the CPU)")]
Dtype = Annotated[str, typer.Option(help="float32, float16 or bfloat16")]
OutputDir = Annotated[str | None, typer.Option("--output-dir", "-o", help="Folder for the outputs (default: beside "
                                               "each input); - writes the one chosen format to stdout")]
Formats = Annotated[list[str] | None, typer.Option("--format", "-f", help="txt, srt, vtt, tsv, json or all; "
                                                   "repeatable")]
# Options shared by `transcribe` and `translate`, declared once.
TxtOpt = Annotated[bool, typer.Option("--txt", help="Write .txt (one segment per line)")]
SrtOpt = Annotated[bool, typer.Option("--srt", help="Write .srt subtitles")]
VttOpt = Annotated[bool, typer.Option("--vtt", help="Write .vtt subtitles")]
TsvOpt = Annotated[bool, typer.Option("--tsv", help="Write .tsv (start, end in ms, text)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Write .json (segments, words, times, language, model, "
                                                      "options)")]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Walk subfolders of folder inputs")]
SkipExistingOpt = Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose outputs all exist")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs")]
BeamSizeOpt = Annotated[int, typer.Option(help="Beam width")]
CtcWeightOpt = Annotated[float, typer.Option(help="Weight of the CTC prefix score in joint decoding")]
NoRepeatNgramSizeOpt = Annotated[int, typer.Option(help="Forbid repeating n-grams of this size (0: off)")]
GreedyOpt = Annotated[bool, typer.Option("--greedy", help="Fast mode: greedy CTC, no attention decoder")]
MaxTokensOpt = Annotated[int, typer.Option(help="Most output tokens per speech chunk")]
BatchSizeOpt = Annotated[int, typer.Option(help="Most speech chunks decoded at once")]
MaxChunkSecondsOpt = Annotated[float, typer.Option(help="Longest speech chunk fed to the model")]
MaxLineWidthOpt = Annotated[int, typer.Option(help="Characters per subtitle line")]
MaxLineCountOpt = Annotated[int, typer.Option(help="Lines per subtitle cue")]
MaxCueSecondsOpt = Annotated[float, typer.Option(help="Longest subtitle cue")]
LocalFilesOnlyOpt = Annotated[bool, typer.Option("--local-files-only", help="Never download the model")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary")]
RayOpt = Annotated[bool, typer.Option("--ray", help="Run on Ray (pip install 'fama\\[ray]'): the cluster in "
                                      "$RAY_ADDRESS, else a new local Ray; docs/scale.md")]
RayAddressOpt = Annotated[str | None, typer.Option("--ray-address", help="Ray cluster for --ray (implies it): auto "
                                                   "or ray://HOST:PORT")]


@dataclasses.dataclass
class _Run:
    task: str
    inputs: list[str]
    language: str
    model: str
    device: str | None
    dtype: str
    output_dir: str | None
    formats: list[str]
    recursive: bool
    skip_existing: bool
    overwrite: bool
    beam_size: int
    ctc_weight: float
    no_repeat_ngram_size: int
    greedy: bool
    max_tokens: int
    batch_size: int
    max_chunk_seconds: float
    max_line_width: int
    max_line_count: int
    max_cue_seconds: float
    local_files_only: bool
    quiet: bool
    ray: bool = False
    ray_address: str | None = None


def _formats(fmt: list[str] | None, **flags: bool) -> list[str]:
    chosen = [name for name, on in flags.items() if on]
    for f in fmt or []:
        for name in f.split(","):
            name = name.strip().lower()
            if name == "all":
                chosen += FORMAT_NAMES
            elif name in FORMAT_NAMES:
                chosen.append(name)
            else:
                raise fail(f"unknown format {name!r}; choose from {', '.join(FORMAT_NAMES)} or all", 2)
    return [f for f in FORMAT_NAMES if f in chosen]


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _failed(message: str) -> None:
    """One line per failed input, naming it and the reason."""
    err.print(f"[red]failed:[/] {escape(message)}", soft_wrap=True, highlight=False)


def _execute(r: _Run) -> None:
    from fama_core.checkpoints import CheckpointError, load_model
    from fama_core.decoding import DecodeOptions
    from fama_core.inputs import assign_output_stems, expand_inputs, shard, torchrun_rank
    from fama_core.pipeline import Pipeline, TranscribeOptions, resolve_devices
    from fama_core.subtitles import SubtitleOptions, format_transcript, write_transcript
    from fama_core.vad import VadOptions

    if r.skip_existing and r.overwrite:
        raise fail("--skip-existing and --overwrite exclude each other", 2)
    if r.dtype not in ("float32", "float16", "bfloat16"):
        raise fail(f"unknown dtype {r.dtype!r}; choose float32, float16 or bfloat16", 2)
    for name, value in (("--beam-size", r.beam_size), ("--batch-size", r.batch_size),
                        ("--max-line-width", r.max_line_width), ("--max-line-count", r.max_line_count)):
        if value < 1:
            raise fail(f"{name} must be at least 1", 2)
    if not 0.0 <= r.ctc_weight <= 1.0:
        raise fail("--ctc-weight must be between 0 and 1", 2)
    if not 1.0 <= r.max_chunk_seconds <= 120.0:
        raise fail("--max-chunk-seconds must be between 1 and 120", 2)

    on_ray = r.ray or r.ray_address is not None
    if on_ray:
        from fama_core.cluster import RayUnavailable, require_ray

        try:
            require_ray()
        except RayUnavailable as e:
            raise fail(escape(str(e))) from None
    items = expand_inputs(r.inputs, recursive=r.recursive)
    if not items:
        raise fail(f"no media files found in {' '.join(r.inputs)}" + ("" if r.recursive else
                                                                       " (use --recursive for subfolders)"), 2)
    if [it.path for it in items].count("-") and len(items) > 1:
        raise fail("stdin (-) cannot be combined with other inputs", 2)
    to_stdout = r.output_dir == "-" or (not r.formats and r.output_dir is None and len(items) == 1
                                        and not Path(r.inputs[0]).is_dir())
    if r.output_dir == "-" and (len(items) > 1 or len(r.formats) > 1):
        raise fail("-o - writes one input in one format to stdout", 2)
    formats = r.formats or ["txt"]
    assign_output_stems(items, None if to_stdout else r.output_dir)
    rank, world = torchrun_rank()
    items = shard(items, rank, world)
    device = r.device
    if device is None and world > 1 and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    try:
        devices = ["cpu"] if on_ray else resolve_devices(device)  # under Ray, --device is the replicas'
    except (RuntimeError, ValueError) as e:
        raise fail(f"--device: {e}", 2) from None
    who = f"[rank {rank}/{world}] " if world > 1 else ""

    todo, skipped, failed, done = [], 0, 0, 0
    for it in items:
        existing = [p for f in formats if (p := Path(f"{it.stem}.{f}")).exists()] if not to_stdout else []
        if r.skip_existing and len(existing) == len(formats):
            skipped += 1
        elif existing and not r.overwrite and not r.skip_existing:
            failed += 1
            _failed(f"{it.name}: output exists: {existing[0]} (use --overwrite or --skip-existing)")
        else:
            todo.append(it)

    seconds, started = 0.0, time.perf_counter()
    if todo:
        try:
            model, tokenizer = load_model(r.model, device=devices[0], dtype=r.dtype,
                                          local_files_only=r.local_files_only or None)
        except (CheckpointError, ValueError, OSError) as e:
            raise fail(f"cannot load model {r.model}: {e}") from None
        options = TranscribeOptions(
            task=r.task, language=r.language,
            decode=DecodeOptions(beam_size=r.beam_size, ctc_weight=r.ctc_weight,
                                 no_repeat_ngram_size=r.no_repeat_ngram_size, greedy=r.greedy,
                                 max_len_b=r.max_tokens),
            vad=VadOptions(max_chunk_s=r.max_chunk_seconds),
            batch_size=r.batch_size,
        )
        try:
            pipeline = Pipeline(model, tokenizer, options, model_name=r.model, devices=devices)
            run = pipeline.run
            if on_ray:
                from fama_core.cluster import RayExecutor

                run = RayExecutor(pipeline, r.ray_address, r.device).run
        except ValueError as e:
            raise fail(str(e), 2) from None
        except ConnectionError as e:  # --ray: no cluster at that address
            raise fail(escape(f"cannot join Ray: {e}")) from None
        subs = SubtitleOptions(r.max_line_width, r.max_line_count, r.max_cue_seconds)
        progress = None
        if not r.quiet and err.is_terminal and not to_stdout:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("files · {task.fields[audio]}"), TimeElapsedColumn(), console=err,
                                transient=True)
            bar = progress.add_task(f"{who}{r.task}", total=len(todo), audio="0s audio")
            progress.start()
        decoded = 0.0

        def on_batch(s: float) -> None:
            nonlocal decoded
            decoded += s
            if progress:
                progress.update(bar, audio=f"{_hms(decoded)} speech")

        try:
            for res in run(todo, progress=on_batch):
                seconds += res.seconds
                error = res.error
                if error is None:
                    try:
                        if to_stdout:
                            fmt = r.formats[0] if r.formats else "txt"
                            sys.stdout.write(format_transcript(res.transcript, fmt, subs))
                            sys.stdout.flush()
                        else:
                            write_transcript(res.transcript, res.item.stem, formats, subs)
                    except OSError as e:
                        error = f"cannot write output: {e}"
                if error is None:
                    done += 1
                else:
                    failed += 1
                    _failed(f"{res.item.name}: {error}")
                if progress:
                    progress.advance(bar)
        finally:
            if progress:
                progress.stop()
    wall = time.perf_counter() - started
    if not r.quiet:
        rtf = f" · RTF {wall / seconds:.3f}" if seconds > 0 else ""
        err.print(f"{who}{done} done, {skipped} skipped, {failed} failed · {seconds / 3600:.3f} h audio in "
                  f"{_hms(wall)}{rtf}", markup=False, highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def _common(task: str, language: str, fmt: list[str] | None, txt: bool, srt: bool, vtt: bool, tsv: bool,
            json_: bool, **options) -> None:
    formats = _formats(fmt, txt=txt, srt=srt, vtt=vtt, tsv=tsv, json=json_)
    _execute(_Run(task=task, language=language, formats=formats, **options))


@app.command()
def transcribe(
    inputs: Inputs,
    lang: Annotated[str, typer.Option("--lang", "-l", help="Spoken language: en, it, or auto (detected per file "
                                      "from its first speech)")] = "auto",
    model: Model = "fama-small",
    device: Device = None,
    dtype: Dtype = "float32",
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
    local_files_only: LocalFilesOnlyOpt = False,
    quiet: QuietOpt = False,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
) -> None:
    """Speech recognition: media in, text and subtitles out."""
    if lang not in ("en", "it", "auto"):
        raise fail(f"--lang must be en, it or auto, not {lang!r}", 2)
    options = dict(locals())
    _common("transcribe", options.pop("lang"), **options)


@app.command()
def translate(
    inputs: Inputs,
    to: Annotated[str, typer.Option("--to", "-t", help="Target language: en or it (the speech is the other)")]
    = "en",
    model: Model = "fama-small",
    device: Device = None,
    dtype: Dtype = "float32",
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
    local_files_only: LocalFilesOnlyOpt = False,
    quiet: QuietOpt = False,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
) -> None:
    """Speech translation English <-> Italian: media in, translated text and subtitles out."""
    if to not in ("en", "it"):
        raise fail(f"--to must be en or it, not {to!r}", 2)
    options = dict(locals())
    _common("translate", options.pop("to"), **options)
