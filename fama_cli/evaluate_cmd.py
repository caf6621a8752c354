"""`fama eval` (registered on the app in fama_cli.main): decode a manifest and score it, or score outputs.

Exit codes: 0 ok, 1 a --max-wer/--min-bleu gate failed or a row could not be decoded (the other rows are
scored), 2 usage error (bad options, unreadable manifest or model).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fama_cli.main import app, err, fail, out, set_threads
from fama_cli.transcribe_cmd import HotwordsFileOpt, HotwordsOpt, HotwordWeightOpt, hotword_terms


def _opt(text: str, *names: str) -> typer.Option:
    return typer.Option(*names, help=text, show_default=False)


def _check_report(report: Path | None, inputs: list, overwrite: bool) -> None:
    """Fail before decoding, not after an hour of it, when the report would replace an input or an existing
    file (without --overwrite), or cannot be written."""
    from fama_core.outputs import PlanError, check_output

    if report is not None:
        try:
            check_output(report, inputs=[p for p in inputs if p is not None], overwrite=overwrite, what="--report")
        except PlanError as e:
            raise fail(str(e), 2) from None


@app.command("eval")
def eval_cmd(
    manifest: Annotated[Path | None, typer.Argument(help="Manifest TSV to decode and score: id, audio, tgt_text "
                                                    "and optional n_frames, speaker, src_text, src_lang, tgt_lang",
                                                    show_default=False)] = None,
    model: Annotated[str | None, _opt("Alias, Hugging Face repo id, model folder or .pt (default: fama-small)",
                                      "--model", "-m")] = None,
    task: Annotated[str, typer.Option(help="asr (WER/CER) or st (BLEU/chrF)")] = "asr",
    to: Annotated[str | None, _opt("ST target language (default: each row's tgt_lang); rows of other "
                                   "directions are skipped", "--to", "-t")] = None,
    lang: Annotated[str | None, _opt("Language of the text, for the normaliser and groups (--hyp/--ref); "
                                     "with a manifest: spoken language of rows without src_lang",
                                     "--lang", "-l")] = None,
    hyp: Annotated[Path | None, _opt("Hypotheses to score instead of decoding: TSV, JSON, folder or lines",
                                     "--hyp")] = None,
    ref: Annotated[Path | None, _opt("References for --hyp (matched by id)", "--ref")] = None,
    beam_size: Annotated[int | None, _opt("Beam width (default: 5)")] = None,
    ctc_weight: Annotated[float | None, _opt("Weight of the CTC prefix score in joint decoding (default: 0.2)")]
    = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="Fast mode: greedy CTC, no attention decoder")] = False,
    batch_size: Annotated[int | None, _opt("Most utterances decoded at once (default: 16)")] = None,
    device: Annotated[str | None, _opt("cpu, cuda (every GPU), cuda:1 or a list such as cuda:0,cuda:2 "
                                       "(default: every GPU, else the CPU)")] = None,
    dtype: Annotated[str | None, _opt("auto (the fastest on this machine; the default), float32 (exact), "
                                      "bfloat16, float16 or int8")] = None,
    report: Annotated[Path | None, _opt("Write the JSON report here (per-utterance scores worst first, options, "
                                        "model, RTF)", "--report", "-o")] = None,
    max_wer: Annotated[float | None, _opt("Exit 1 when the overall WER (%) is above this", "--max-wer")] = None,
    min_bleu: Annotated[float | None, _opt("Exit 1 when the overall BLEU is below this", "--min-bleu")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --report file (never an "
                                                                "input)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch (default: torch's choice)",
                                                show_default=False)] = None,
    hotwords: HotwordsOpt = None,
    hotwords_file: HotwordsFileOpt = None,
    hotword_weight: HotwordWeightOpt = None,
) -> None:
    """Score a model the way papers do: WER/CER (+ raw WER) for ASR, BLEU/chrF (+ signature) for ST.

    Decode a manifest: fama eval test.tsv --model fama-small --task asr --report report.json --max-wer 15

    Score existing outputs: fama eval --hyp hyp.json --ref test.tsv --task st --min-bleu 25

    A row whose audio cannot be read or decoded is reported on stderr and left out of the scores; the
    others are scored. Exit codes: 0 ok, 1 a --max-wer/--min-bleu gate failed or a row failed, 2 usage error.
    """
    _check_task_options(task, max_wer, min_bleu, to)
    set_threads(threads)

    if hyp is not None or ref is not None:
        decoding = {"a MANIFEST": manifest, "--model": model, "--to": to, "--beam-size": beam_size,
                    "--ctc-weight": ctc_weight, "--greedy": greedy or None, "--batch-size": batch_size,
                    "--device": device, "--dtype": dtype, "--hotwords": hotwords, "--hotwords-file": hotwords_file,
                    "--hotword-weight": hotword_weight}
        extra = [name for name, value in decoding.items() if value is not None]
        if extra:
            raise fail(f"--hyp/--ref score existing outputs; {', '.join(extra)} only go with decoding a manifest", 2)
        if hyp is None or ref is None:
            raise fail("--hyp and --ref go together", 2)
        _check_report(report, [hyp, ref], overwrite)
        result = _score_files(hyp, ref, task, lang)
    elif manifest is None:
        raise fail("give a MANIFEST to decode (with --model), or --hyp and --ref to score existing outputs", 2)
    else:
        if task == "st" and lang is not None:
            raise fail("--lang is the spoken language for ASR; for --task st give the target with --to", 2)
        terms = hotword_terms(hotwords, hotwords_file, hotword_weight)
        if terms and greedy:
            raise fail("hotwords need the beam search, not --greedy", 2)
        result = _decode_and_score(manifest, model or "fama-small", task, to, lang, beam_size, ctc_weight, greedy,
                                   batch_size, device, dtype, quiet or as_json,
                                   lambda audio: _check_report(report, [manifest, *audio], overwrite), terms)
    _print_failed(getattr(result, "failed", []))
    _output(result, report, as_json, quiet, overwrite)
    _exit_code(result, max_wer, min_bleu)


def _check_task_options(task: str, max_wer: float | None, min_bleu: float | None, to: str | None) -> None:
    if task not in ("asr", "st"):
        raise fail(f"--task must be asr or st, not {task!r}", 2)
    if max_wer is not None and task != "asr":
        raise fail("--max-wer gates WER, an ASR score; use --min-bleu with --task st", 2)
    if min_bleu is not None and task != "st":
        raise fail("--min-bleu gates BLEU, a translation score; use --max-wer with --task asr", 2)
    if to is not None and task != "st":
        raise fail("--to is the target language of --task st; for ASR the spoken language is each row's "
                   "src_lang (or --lang)", 2)


def _print_failed(failed: list[dict[str, str]]) -> None:
    for row in failed:
        err.print(f"[red]failed:[/] row {escape(row['id'])} ({escape(row['audio'])}): {escape(row['error'])}",
                  soft_wrap=True)


def _output(result, report: Path | None, as_json: bool, quiet: bool, overwrite: bool) -> None:
    from fama_core.evaluation import write_report

    if report is not None:
        try:
            write_report(result, report, overwrite=overwrite)
        except OSError as e:
            raise fail(f"cannot write the report to {report}: {e}", 2) from None
    if as_json:
        print(result.to_json())
    elif not quiet:
        out.print(result.summary(), soft_wrap=True)
        if report is not None:
            out.print(f"report: {report}")


def _exit_code(result, max_wer: float | None, min_bleu: float | None) -> None:
    from fama_core.scoring import gate

    failed = len(getattr(result, "failed", []))
    if not gate(result, max_wer, min_bleu):
        if max_wer is not None:
            err.print(f"gate failed: WER {result.overall.wer:.2f} > --max-wer {max_wer:g}")
        else:
            err.print(f"gate failed: BLEU {result.overall.bleu:.2f} < --min-bleu {min_bleu:g}")
        raise typer.Exit(1)
    if failed:
        raise fail(f"{failed} row(s) failed and were not scored")


def _score_files(hyp: Path, ref: Path, task: str, lang: str | None):
    from fama_core.evaluation import evaluate_files

    for p in (hyp, ref):
        if not p.exists():
            raise fail(f"{p}: no such file or folder", 2)
    try:
        return evaluate_files(hyp, ref, task=task, lang=lang)
    except (OSError, ValueError, KeyError) as e:
        raise fail(f"{e}", 2) from None


def _decode_and_score(manifest: Path, model: str, task: str, to: str | None, lang: str | None,
                      beam_size: int | None, ctc_weight: float | None, greedy: bool, batch_size: int | None,
                      device: str | None, dtype: str | None, quiet: bool, check_report: Callable[[list], None],
                      hotwords: tuple = ()):
    from fama_core.checkpoints import CheckpointError, load_model
    from fama_core.decoding import DecodeOptions
    from fama_core.evaluation import EvalError, EvalOptions, NothingScored, evaluate, plan
    from fama_core.pipeline import resolve_devices
    from fama_core.precision import normalize

    try:
        dtype = normalize(dtype)
    except ValueError as e:
        raise fail(str(e), 2) from None
    if (beam_size is not None and beam_size < 1) or (batch_size is not None and batch_size < 1):
        raise fail("--beam-size and --batch-size must be at least 1", 2)
    if ctc_weight is not None and not 0.0 <= ctc_weight <= 1.0:
        raise fail("--ctc-weight must be between 0 and 1", 2)
    decode = DecodeOptions(greedy=greedy, hotwords=hotwords)
    if beam_size is not None:
        decode.beam_size = beam_size
    if ctc_weight is not None:
        decode.ctc_weight = ctc_weight
    options = EvalOptions(task=task, to=to, language=lang, decode=decode)
    if batch_size is not None:
        options.batch_size = batch_size
    try:
        from fama_core.manifest import read_manifest

        rows = read_manifest(manifest, require_frames=False)
        plan(rows, options)  # a bad manifest fails before the model loads
    except (OSError, ValueError) as e:
        raise fail(str(e) if isinstance(e, ValueError) else f"cannot read manifest {manifest}: {e}", 2) from None
    check_report([row.audio_path(manifest.parent) for row in rows])
    try:
        devices = resolve_devices(device)
    except ValueError as e:
        raise fail(f"--device: {e}", 2) from None
    try:
        pair = load_model(model, device=devices[0], dtype=dtype)
    except (CheckpointError, ValueError, OSError) as e:
        raise fail(f"cannot load model {model}: {e}", 2) from None

    progress = None
    if not quiet and err.is_terminal:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        total = sum(r.n_frames for r in rows) / 100  # 10 ms frames (0 where the manifest has none); for the bar
        progress = Progress(TextColumn(f"eval {task}"), BarColumn(), TextColumn("{task.completed:.0f} s audio"),
                            TimeElapsedColumn(), console=err, transient=True)
        bar = progress.add_task("eval", total=total or None)
        progress.start()
    try:
        return evaluate(rows, pair, options=options, device=",".join(devices), base=manifest.parent,
                        model_name=model,
                        progress=(lambda s: progress.advance(bar, s)) if progress else None)
    except EvalError as e:
        raise fail(str(e), 2) from None
    except NothingScored as e:
        _print_failed(e.failed)
        raise fail(f"{e}; no report written") from None
    finally:
        if progress:
            progress.stop()
