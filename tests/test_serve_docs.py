"""docs/serve.md's option table against `fama serve`'s own options (no server, no extra needed)."""

from __future__ import annotations

import re

from doc_options import documented_options, table_problems

from fama_core.precision import PRECISIONS

from conftest import ROOT

SERVE_MD = ROOT / "docs" / "serve.md"


def test_serve_md_option_table_matches_the_command() -> None:
    assert table_problems(SERVE_MD.read_text(encoding="utf-8"), "serve") == []


def test_serve_md_names_every_dtype() -> None:
    text = SERVE_MD.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `--dtype`"))
    assert set(PRECISIONS) <= set(re.findall(r"`([\w]+)`", row)), row


def test_the_checker_finds_a_stale_table() -> None:
    """The check can fail: an option missing, an unknown one, a wrong default, a wrong alias."""
    stale = ("| option | default | meaning |\n|---|---|---|\n| `--model`, `-x` | `fama-small` | |\n"
             "| `--port` | `8080` | |\n| `--greedy` | on | |\n| `--no-such` | 1 | |\n"
             "| `--beam-size` | as `fama transcribe` | |\n| `--api-key` | `$OTHER_KEY` | |\n")
    assert set(documented_options(stale)) == {"--model", "--port", "--greedy", "--no-such", "--beam-size",
                                              "--api-key"}
    problems = table_problems(stale, "serve")
    assert "--port: documented default '`8080`', the code's is 8000" in problems
    assert "--greedy: documented default 'on', the code's is False" in problems
    assert "--model: documented alias -x, which the command lacks" in problems
    assert "--no-such: documented, but `fama serve` has no such option" in problems
    assert "--api-key: documented default '`$OTHER_KEY`', the code's is None" in problems
    assert "--host: not documented" in problems and not any(p.startswith("--beam-size") for p in problems)
