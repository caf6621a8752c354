"""The documentation checked against the code's own lists, so that it cannot go stale: every `fama` command
line in a doc parses, every option a doc names exists, every option of the commands a doc documents is named
there, the Ray Data class's documented arguments and columns are its own, and every install hint names the
distribution (`fama-speech`; `fama` on the package index is an unrelated project) and extras that exist."""

from __future__ import annotations

import inspect
import re
import shlex
import subprocess

import click
import pytest
import typer.main

from fama_cli.main import app

from conftest import ROOT

CLI = typer.main.get_command(app)


def command(path: str) -> click.Command:
    cmd = CLI
    for name in path.split():
        cmd = cmd.commands[name]
    return cmd


def options(path: str) -> set[str]:
    """Every spelling of every option of `fama PATH` (`--help` and `-h` included)."""
    cmd = command(path)
    ctx = click.Context(cmd, info_name=path, **CLI.context_settings)  # as a child of `fama` (-h/--help)
    return {o for p in cmd.get_params(ctx) for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


def code_blocks(text: str, languages: tuple[str, ...] = ("bash", "sh", "console", "")) -> list[str]:
    """The fenced blocks in `languages` (a bare fence is shell), fences read in order (a closing fence is never
    taken for an opening one)."""
    blocks, current, language = [], None, ""
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                if language in languages:
                    blocks.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def fama_args(line: str) -> list[str] | None:
    """The arguments after `fama` in a shell line (comments, `<(...)` / `$(...)` and what comes before `fama`,
    such as `ray job submit --`, left out), or None without `fama`."""
    words = shlex.split(re.sub(r"[<$]\([^)]*\)", "X", line), comments=True)
    if "fama" not in words:
        return None
    args = words[words.index("fama") + 1:]
    return args[:args.index("&&")] if "&&" in args else args


def command_lines(text: str) -> list[list[str]]:
    """The arguments of every `fama ...` command line in the doc's shell blocks."""
    lines = [line for block in code_blocks(text) for line in block.replace("\\\n", " ").splitlines()]
    return [args for args in map(fama_args, lines) if args is not None]


def spans(text: str) -> list[str]:
    """The prose's `code spans` (outside shell blocks, which command_lines reads)."""
    prose = re.sub(r"^```[^\n]*\n.*?^```[^\n]*$", "", text, flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", prose)


def command_of(args: list[str]) -> str:
    """`transcribe`, or `data manifest` for a group's command."""
    first = CLI.commands.get(args[0]) if args else None
    return " ".join(args[:2]) if hasattr(first, "commands") else args[0] if first else ""


def flags(words: list[str]) -> set[str]:
    return {w.split("=")[0] for w in words if re.fullmatch(r"--?[a-z][\w-]*(=.*)?", w)}


def named_options(text: str) -> set[str]:
    """Options the prose names on their own (`--threads 0`), not those of a `fama ...` span or another tool's."""
    return {o for span in spans(text) if span.startswith("-") for o in flags(re.split(r"[\s/,]+", span))}


def check_doc(doc: str, commands: list[str], complete: bool) -> None:
    """The checks every doc of fama's commands gets: its command lines parse, the options it names exist
    (on `commands` when named on their own), and (`complete`) every option of those commands is named."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    for args in command_lines(text):
        path = command_of(args)
        assert path, f"{doc}: fama {' '.join(args)}: no such command"
        command(path).make_context(path, args[len(path.split()):])  # click's usage error for a bad option
    in_spans = [args for args in map(fama_args, spans(text)) if args]
    for args in in_spans:
        path = command_of(args)
        assert path and flags(args) <= options(path), f"{doc}: `fama {' '.join(args)}`"
    known = set().union(*(options(c) for c in commands))
    unknown = named_options(text) - known
    assert unknown == set(), f"{doc} names options that {', '.join(commands)} do not have"
    if complete:
        named = named_options(text) | {o for a in command_lines(text) + in_spans if command_of(a) in commands
                                       for o in flags(a)}
        missing = {o for o in known if o.startswith("--") and o != "--help"} - named
        assert missing == set(), f"{doc} does not document these options of {', '.join(commands)}"


def test_scale_md_matches_the_cli():
    check_doc("docs/scale.md", ["transcribe", "translate"], complete=False)
    text = (ROOT / "docs" / "scale.md").read_text(encoding="utf-8")
    assert {"--ray", "--ray-address"} <= named_options(text) | {o for a in command_lines(text) for o in flags(a)}


def test_usage_md_documents_every_option_of_transcribe_and_translate():
    check_doc("docs/usage.md", ["transcribe", "translate"], complete=True)


def test_readme_command_lines_parse():
    check_doc("README.md", list(CLI.commands), complete=False)


def bullet(text: str, label: str) -> set[str]:
    """The `names` in the bullet of docs/scale.md that starts with `label`."""
    m = re.search(rf"^- {re.escape(label)}(.*?)(?=^- |^\S|\Z)", text, flags=re.S | re.M)
    assert m, label
    return set(re.findall(r"`(\w+)`", m.group(1)))


def test_scale_md_lists_the_ray_data_class_arguments_and_columns(tmp_path):
    from fama_core.cluster import FamaTranscriber
    from fama_core.decoding import DecodeOptions

    text = (ROOT / "docs" / "scale.md").read_text(encoding="utf-8")
    arguments = {n for n, p in inspect.signature(FamaTranscriber.__init__).parameters.items()
                 if n != "self" and p.kind is not p.VAR_KEYWORD}
    assert bullet(text, "Constructor:") - {"DecodeOptions", "SharedModel", "TranscribeOptions"} - {
        f.name for f in DecodeOptions.__dataclass_fields__.values()} == arguments

    import numpy as np

    from fama_core.checkpoints import BUNDLED

    clip = str(BUNDLED["fama-demo"] / "clips" / "en_bag.wav")
    transcriber = FamaTranscriber("fama-demo", device="cpu", beam_size=1)
    inputs = {"path": np.array([clip], dtype=object), "bytes": np.array([None], dtype=object),
              "language": np.array(["en"], dtype=object), "task": np.array(["transcribe"], dtype=object)}
    out = transcriber(inputs)
    assert bullet(text, "Input columns:") == set(inputs) | {"en", "it", "auto", "transcribe", "translate"}  # values
    added = bullet(text, "Output columns:") - {"bytes"} - {"start", "end", "words"}
    assert set(out) == set(inputs) - {"bytes"} | added
    assert out["error"][0] == "" and out["text"][0] == "Your bag is yellow."


def text_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    return [f for f in listed.stdout.splitlines() if f.endswith((".py", ".md", ".sh", ".toml", ".txt", ".cfg"))
            and (ROOT / f).is_file() and "/work/" not in f]


def test_install_hints_name_the_distribution_and_extras_that_exist():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    wrong, unknown = [], []
    for name in text_files():
        for n, line in enumerate((ROOT / name).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if re.search(r"(?<![\w-])fama\[", line) and name != "tests/test_docs.py":
                wrong.append(f"{name}:{n}: {line.strip()}")
            for group in re.findall(r"fama-speech\\*\[([\w,\s]+)\]", line):
                unknown += [f"{name}:{n}: {e}" for e in group.split(",") if e.strip() not in extras]
    assert wrong == [] and unknown == []
