"""`fama pull`, `fama inspect`, `fama convert`, `fama models` (registered on the app in fama_cli.main)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fama_cli.main import app, err, fail, human_size, out


def _print_sanity(report: dict) -> None:
    """The sanity check's clips, transcripts and verdict (`fama_core.sanity`)."""
    out.print("sanity check (the demo clips that ship with fama):")
    for c in report["clips"]:
        detected = f", detected {c['detected']}" if c["detected"] else ""
        out.print(f"  {c['clip']} ({c['language']}{detected}): {c['transcript']!r}", soft_wrap=True)
        if c["ctc_transcript"] is not None:
            out.print(f"    {report['ctc_head']} CTC: {c['ctc_transcript']!r}", soft_wrap=True)
    facts = [f"WER against the clips' texts {report['wer']:.1f} %"]
    if report["detected_right"] is not None:
        facts.insert(0, f"language detected right on {report['detected_right'] * 100:.0f} % of the clips")
    else:
        facts.insert(0, "no language detection (no intermediate CTC head)")
    if report["disagreement"] is not None:
        facts.append(f"CTC vs attention CER {report['disagreement']:.1f} %")
    out.print("  " + "; ".join(facts), soft_wrap=True)
    if report["passed"]:
        out.print("  passed")
    for problem in report["problems"]:
        err.print(f"[red]failed:[/] sanity check: {problem}", soft_wrap=True, highlight=False)


@app.command()
def pull(
    name: Annotated[str, typer.Argument(help="Alias (fama-small, fama-medium, fama-small-asr, fama-medium-asr; "
                                             "fama-demo ships with fama) or Hugging Face repo id")],
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit")] = None,
    local_files_only: Annotated[bool, typer.Option("--local-files-only", help="Use the cache only")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Decode the demo clips (sanity check)")] = True,
) -> None:
    """Download a model into the Hugging Face cache (HF_HOME), check that it loads and that it decodes the demo
    clips sanely (a warning when it does not: see `fama inspect`)."""
    from fama_core.checkpoints import CheckpointError, load_hub_folder
    from fama_core.checkpoints import pull as pull_model
    from fama_core.sanity import check_model

    if quiet or as_json:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    try:
        path = pull_model(name, revision=revision, local_files_only=local_files_only)
        model, tok = load_hub_folder(path)
    except CheckpointError as e:
        raise fail(str(e)) from None
    info = {"name": name, "path": str(path), "parameters": model.num_parameters(), "languages": tok.languages}
    report = check_model(model, tok).to_dict() if check else None
    if report is not None:
        info["sanity"] = report
    if as_json:
        print(json.dumps(info))
    elif not quiet:
        out.print(f"{name}: {model.num_parameters():,} parameters, languages {', '.join(tok.languages)}\n{path}")
        if report is not None:
            _print_sanity(report)
    if report is not None and not report["passed"] and not as_json:
        err.print("[yellow]warning:[/] the model loaded but fails the sanity check; `fama inspect "
                  f"{name}` shows the details", soft_wrap=True, highlight=False)


@app.command()
def inspect(
    name: Annotated[str, typer.Argument(help="Model folder, checkpoint, alias or Hugging Face repo id")],
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON")] = False,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Decode the demo clips (sanity check)")] = True,
    local_files_only: Annotated[bool, typer.Option("--local-files-only", help="Use the cache only")] = False,
) -> None:
    """What a model is: its format, where each file came from, dimensions, parameters, vocabulary, languages, CTC
    heads, the name mapping applied, the dtype on disk, and the sanity check on the demo clips (exit 1 when it
    fails)."""
    from fama_core.checkpoints import CheckpointError
    from fama_core.inspection import inspect_model

    try:
        info = inspect_model(name, check=check, local_files_only=local_files_only or None)
    except (CheckpointError, ValueError) as e:
        raise fail(str(e)) from None
    if as_json:
        print(json.dumps(info))
    else:
        _print_info(info)
    if check and not info["sanity"]["passed"]:
        raise typer.Exit(1)


def _print_info(info: dict) -> None:
    cfg = info["dimensions"]
    out.print(f"{info['name']}: {info['format']}\n  path: {info['path']}", soft_wrap=True)
    for f in info["files"]:
        out.print(f"  file {f['file']}: {f['from']}", soft_wrap=True)
    out.print(f"  dimensions: d_model {cfg['d_model']}, encoder {cfg['encoder_layers']} layers x "
              f"{cfg['encoder_heads']} heads, decoder {cfg['decoder_layers']} layers x {cfg['decoder_heads']} heads "
              f"(FFN {cfg['decoder_ffn_dim']}), input {cfg['input_dim']} fbank", soft_wrap=True)
    tokenizer = " + ".join(Path(t).name for t in info["tokenizer"])
    out.print(f"  parameters: {info['parameters']:,}; vocabulary {info['vocabulary']} ({tokenizer}); "
              f"languages {', '.join(info['languages'])}", soft_wrap=True)
    heads = info["ctc_heads"]
    names = ([f"intermediate (after layer {heads['intermediate']})"] if heads["intermediate"] else []) + (
        ["top"] if heads["top"] else [])
    out.print(f"  CTC heads: {', '.join(names) or 'none'}; {info['decoding']}; tokens timed by the "
              f"{info['timing']}; language detection: {info['language_detection'] or 'none (give --lang)'}",
              soft_wrap=True)
    for line in info["mapping"].get("lines", [info["mapping"]["layout"]]):
        out.print(f"  names: {line}", soft_wrap=True)
    out.print("  on disk: " + ", ".join(f"{n} x {k}" for k, n in info["dtype_on_disk"].items()))
    if "sanity" in info:
        _print_sanity(info["sanity"])


@app.command()
def convert(
    checkpoint: Annotated[Path, typer.Argument(help="FBK fairseq checkpoint (.pt)")],
    output: Annotated[Path, typer.Argument(help="fama model folder to write (new or empty)")],
    spm: Annotated[Path | None, typer.Option(help="SentencePiece model (default: the *.model beside the checkpoint)")]
    = None,
    dict_path: Annotated[Path | None, typer.Option("--dict", help="fairseq dictionary .txt")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16 weights (or fp32, bf16, fp16, half)")]
    = "float32",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty folder, replacing only its "
                                                                "model files")] = False,
) -> None:
    """Turn a fairseq checkpoint (+ its SentencePiece model) into a fama model folder."""
    from fama_core.checkpoints import CheckpointError, check_output_folder, load_fairseq, save_model
    from fama_core.precision import FLOAT_DTYPES, WEIGHT_DTYPES, normalize

    try:
        dtype = normalize(dtype, WEIGHT_DTYPES)
    except ValueError as e:
        raise fail(str(e), 2) from None
    inputs = [p for p in (checkpoint, spm, dict_path) if p is not None]
    try:
        check_output_folder(output, overwrite=overwrite, protect=inputs)
        model, tok = load_fairseq(checkpoint, spm, dict_path)
        save_model(model, tok, output, dtype=FLOAT_DTYPES[dtype], overwrite=overwrite, protect=inputs)
    except (CheckpointError, ValueError, OSError) as e:
        raise fail(str(e)) from None
    out.print(f"wrote {output} ({model.num_parameters():,} parameters, {dtype})")


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON")] = False) -> None:
    """List the models: the demo model that ships with fama, the aliases, and what is in the local cache."""
    from fama_core.checkpoints import BUNDLED, HF_ALIASES, MODEL_FILES, cached_models

    cached = {r["repo"]: r for r in cached_models()}
    rows = [{"alias": a, "repo": None, "cached": True, "path": str(p),
             "size_bytes": sum((p / f).stat().st_size for f in MODEL_FILES)} for a, p in BUNDLED.items()]
    rows += [{"alias": a, "repo": r, "cached": r in cached, "path": cached.get(r, {}).get("path"),
              "size_bytes": cached.get(r, {}).get("size_bytes", 0)} for a, r in HF_ALIASES.items()]
    rows += [{"alias": None, "repo": r, "cached": True, "path": c["path"], "size_bytes": c["size_bytes"]}
             for r, c in cached.items() if r not in HF_ALIASES.values()]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("alias", "repository", "cached", "size")
    for r in rows:
        table.add_row(r["alias"] or "", r["repo"] or "(ships with fama: tiny demo, synthetic voices only)",
                      "yes" if r["cached"] else "no", human_size(r["size_bytes"]) if r["cached"] else "")
    out.print(table)
    out.print(f"cache: {os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}")


@app.command()
def demo(
    folder: Annotated[Path, typer.Argument(help="Folder to copy the demo clips into (created if missing)")]
    = Path("fama-demo-clips"),
) -> None:
    """Copy the demo clips (short English and Italian sentences, synthetic voices) into FOLDER; never overwrites.

    Then: fama transcribe FOLDER --model fama-demo --srt --txt --skip-existing. The demo model ships with fama
    and needs no network; it knows only simple sentences in synthetic voices (it is not FAMA: use fama-small for
    real speech).
    """
    from fama_core.checkpoints import CheckpointError, copy_demo_clips

    try:
        copied, same = copy_demo_clips(folder)
    except (CheckpointError, OSError) as e:
        raise fail(str(e)) from None
    out.print(f"{folder}: {len(copied)} clips copied" + (f", {len(same)} already there" if same else ""))
    # --skip-existing: the hint works again on a second run, when the outputs of the first are there
    out.print(f"next: fama transcribe {folder} --model fama-demo --srt --txt --skip-existing")
