"""The `fama` command line: parse options, call fama_core, print. No computation lives here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="fama",
    help="Run and train the FAMA speech models: English/Italian speech recognition and EN<->IT translation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Prepare training data: manifests and SentencePiece models.", no_args_is_help=True)
app.add_typer(data_app, name="data")

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error and return the exit to raise."""
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@app.command()
def pull(
    name: Annotated[str, typer.Argument(help="Alias (fama-small, fama-medium, fama-small-asr, fama-medium-asr) "
                                             "or Hugging Face repo id")],
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit")] = None,
    local_files_only: Annotated[bool, typer.Option("--local-files-only", help="Use the cache only")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Download a model into the Hugging Face cache (HF_HOME) and check that it loads."""
    from fama_core.checkpoints import CheckpointError, load_hub_folder
    from fama_core.checkpoints import pull as pull_model

    if quiet or as_json:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    try:
        path = pull_model(name, revision=revision, local_files_only=local_files_only)
        model, tok = load_hub_folder(path)
    except CheckpointError as e:
        raise fail(str(e)) from None
    info = {"name": name, "path": str(path), "parameters": model.num_parameters(), "languages": tok.languages}
    if as_json:
        print(json.dumps(info))
    elif not quiet:
        out.print(f"{name}: {model.num_parameters():,} parameters, languages {', '.join(tok.languages)}\n{path}")


@app.command()
def convert(
    checkpoint: Annotated[Path, typer.Argument(help="FBK fairseq checkpoint (.pt)")],
    output: Annotated[Path, typer.Argument(help="fama model folder to write")],
    spm: Annotated[Path | None, typer.Option(help="SentencePiece model (default: the *.model beside the checkpoint)")]
    = None,
    dict_path: Annotated[Path | None, typer.Option("--dict", help="fairseq dictionary .txt")] = None,
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16 weights")] = "float32",
) -> None:
    """Turn a fairseq checkpoint (+ its SentencePiece model) into a fama model folder."""
    from fama_core.checkpoints import DTYPES, CheckpointError, load_fairseq, save_model

    if dtype not in DTYPES:
        raise fail(f"unknown dtype {dtype!r}; choose float32, float16 or bfloat16", 2)
    try:
        model, tok = load_fairseq(checkpoint, spm, dict_path)
        save_model(model, tok, output, dtype=DTYPES[dtype])
    except (CheckpointError, ValueError) as e:
        raise fail(str(e)) from None
    out.print(f"wrote {output} ({model.num_parameters():,} parameters, {dtype})")


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the model aliases and what is in the local cache, with sizes."""
    from fama_core.checkpoints import HF_ALIASES, cached_models

    cached = {r["repo"]: r for r in cached_models()}
    rows = [{"alias": a, "repo": r, "cached": r in cached, "size_bytes": cached.get(r, {}).get("size_bytes", 0)}
            for a, r in HF_ALIASES.items()]
    rows += [{"alias": None, "repo": r, "cached": True, "size_bytes": c["size_bytes"]}
             for r, c in cached.items() if r not in HF_ALIASES.values()]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("alias", "repository", "cached", "size")
    for r in rows:
        table.add_row(r["alias"] or "", r["repo"], "yes" if r["cached"] else "no",
                      human_size(r["size_bytes"]) if r["cached"] else "")
    out.print(table)
    out.print(f"cache: {os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}")


def main() -> None:  # pragma: no cover
    sys.exit(app())


# Command groups that live in their own modules register themselves on `app` when imported.
from fama_cli import evaluate_cmd, serve_cmd, train_cmd, transcribe_cmd  # noqa: E402,F401
