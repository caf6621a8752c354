"""Check a document's option tables against a `fama` command's own options (names, aliases, defaults), so that
the docs cannot go stale. Shared by the tests of every document with such a table (docs/serve.md, ...).

A table counts when its header's first cell is `option`. Its first column names options in backticks (`--x`,
`-m/--model`, or several: `--a`, `--b`); its second column, when the header calls it `default`, gives the
default: a value (`fama-small`, 8000, 0.2), `off`/`on` for flags, `$VAR` for an option read from that
environment variable, `as \\`fama CMD\\`` for options whose default is CMD's, or words for an option without a
default value (None).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import typer.main

from fama_cli.main import app

_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
_AS_COMMAND = re.compile(r"^as `fama ([\w -]+)`$")


@dataclass
class Row:
    names: list[str]  # every option spelling in the first cell
    default: str | None  # the default cell, when the table has a default column


def documented_options(markdown: str) -> dict[str, Row]:
    """Each long option of the document's option tables -> its row (a row naming several, e.g. `--a`, `--b`,
    gives each of them)."""
    rows: dict[str, Row] = {}
    default_column = None
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            default_column = None
            continue
        if cells[0] == "option":
            default_column = cells.index("default") if "default" in cells else -1
            continue
        if default_column is None or set(cells[0]) <= set("-: "):
            continue
        names = [n for code in re.findall(r"`([^`]*)`", cells[0]) for n in _OPTION.findall(code)]
        row = Row(names, cells[default_column] if default_column > 0 else None)
        rows.update({n: row for n in names if n.startswith("--")})
    return rows


def command_options(*path: str) -> dict[str, Any]:
    """The options of `fama PATH...`, by every long spelling."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {opt: p for p in command.params if p.param_type_name == "option" for opt in p.opts if opt.startswith("--")}


def default_problem(cell: str, option: Any) -> str | None:
    """Why `cell` does not state `option`'s default, or None when it does (`as \\`fama CMD\\`` is checked
    by `table_problems`)."""
    value = option.default
    literal = cell[1:-1] if re.fullmatch(r"`[^`]*`", cell) else cell if re.fullmatch(r"-?[\d.]+", cell) else None
    if option.is_flag:
        ok = cell == ("on" if value else "off")
    elif literal is not None and literal.startswith("$"):
        ok = value is None and option.envvar == literal[1:]
    elif value is None:
        ok = literal is None  # words, such as "torch's choice"
    elif literal is None:
        ok = False
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = re.fullmatch(r"-?[\d.]+", literal) is not None and float(literal) == value
    else:
        ok = literal == str(value)
    return None if ok else f"documented default {cell!r}, the code's is {value!r}"


def table_problems(markdown: str, *path: str) -> list[str]:
    """Every difference between the document's option tables and `fama PATH...`: an option missing from
    either side, an alias the command lacks, a default the command does not have."""
    rows, options = documented_options(markdown), command_options(*path)
    primary = {p.opts[0] if p.opts[0].startswith("--") else next(o for o in p.opts if o.startswith("--"))
               for p in options.values()}
    problems = [f"{name}: not documented" for name in sorted(primary - set(rows))]
    for name, row in sorted(rows.items()):
        option = options.get(name)
        if option is None:
            problems.append(f"{name}: documented, but `fama {' '.join(path)}` has no such option")
            continue
        longs = [options[n] for n in row.names if n in options]  # each long name is an option of its own;
        problems += [f"{name}: documented alias {n}, which the command lacks" for n in row.names  # a short one
                     if not n.startswith("--") and not any(n in o.opts for o in longs)]  # is an alias of one
        if row.default is None:
            continue
        if m := _AS_COMMAND.match(row.default):
            other = command_options(*m.group(1).split()).get(name)
            problem = (f"no such option in `fama {m.group(1)}`" if other is None else None if
                       (other.default, other.is_flag) == (option.default, option.is_flag) else
                       f"default {option.default!r}, `fama {m.group(1)}`'s is {other.default!r}")
        else:
            problem = default_problem(row.default, option)
        if problem:
            problems.append(f"{name}: {problem}")
    return problems
