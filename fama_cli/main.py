"""The `fama` command line: parse options, call fama_core, print. No computation lives here."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape


def _plain_help() -> None:
    """Help as click writes it: boolean flags as `--srt`, not `--srt <bool>`; a usage line `INPUTS...`, not
    `{inputs}...` (this version of typer's rendering)."""
    from typer.core import TyperArgument, TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is not None and not getattr(shown, "_fama", False):
        def display_type_rich(self, ctx):
            return None if getattr(self, "is_bool_flag", False) else shown(self, ctx)

        display_type_rich._fama = True
        TyperOption.display_type_rich = display_type_rich
    if hasattr(TyperArgument, "_usage_display_name"):
        def usage_name(self) -> str:
            name = self.metavar or self.name.upper()
            return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")

        TyperArgument._usage_display_name = usage_name


_plain_help()

app = typer.Typer(
    name="fama",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},  # as whisper; every subcommand inherits it
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


def warning(message: str) -> None:
    """A one-line `warning:` on stderr."""
    err.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True, highlight=False)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_threads(threads: int | None) -> None:
    """`--threads N`: torch's CPU threads (None: torch's choice). More threads than usable cores only wait for
    each other at every parallel region (many times slower), so N is capped to the cores, with a warning."""
    if threads is None:
        return
    if threads < 1:
        raise fail("--threads must be at least 1", 2)
    cores = usable_cores()
    if threads > cores:
        warning(f"--threads {threads}: this process may use {cores} CPU cores; using {cores}")
        threads = cores
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only possible before the first parallel work; then the intra-op setting stands
        pass


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"




def _show_version(value: bool) -> None:
    if value:
        from fama_core.config import package_version

        print(f"fama {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[bool, typer.Option("--version", help="Print the version and exit", is_eager=True,
                                               callback=_show_version)] = False,
) -> None:
    """Run and train the FAMA speech models: English/Italian speech recognition and EN<->IT translation."""


# The main commands first in `fama --help`: command modules register themselves on `app` when imported.
# isort: off
from fama_cli import transcribe_cmd  # noqa: E402,F401
from fama_cli import evaluate_cmd, model_cmd, serve_cmd, train_cmd  # noqa: E402,F401
from fama_cli import live_cmd  # noqa: E402,F401
# isort: on
