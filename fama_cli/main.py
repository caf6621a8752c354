"""The `fama` command line: parse options, call fama_core, print. No computation lives here."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

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


def main() -> None:  # pragma: no cover
    sys.exit(app())


# Command groups that live in their own modules register themselves on `app` when imported.
from fama_cli import evaluate_cmd, model_cmd, train_cmd, transcribe_cmd  # noqa: E402,F401
