"""Every option of every `fama` command has help text, and boolean flags are shown without a type."""

import typer.main
from typer.testing import CliRunner

from fama_cli.main import app


def _commands(group, path=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_option_of_every_command_has_help() -> None:
    missing = [f"{' '.join(p)} {param.opts[0]}" for p, cmd in _commands(typer.main.get_command(app))
               for param in cmd.params if param.param_type_name == "option" and not (param.help or "").strip()]
    assert missing == []


def test_help_shows_flags_without_bool() -> None:
    runner = CliRunner()
    for path, _ in _commands(typer.main.get_command(app)):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
        assert result.exit_code == 0, path
        assert "<bool>" not in result.output, path
