"""The help and the README stay true to the commands."""

from __future__ import annotations

import itertools
import re

import typer.main
from conftest import REPO

from resnet_cli.cli import app


def _commands() -> dict[str, object]:
    return typer.main.get_command(app).commands  # type: ignore[attr-defined,no-any-return]


def test_every_command_and_option_has_help() -> None:
    for name, command in _commands().items():
        assert command.help and command.help.strip(), name
        assert "Example:" in command.help, f"{name}: no Example line in its docstring"
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert getattr(param, "help", None), f"{name} {param.opts}: no help"


def test_readme_shows_every_command() -> None:
    readme = (REPO / "README.md").read_text()
    for name in _commands():
        assert re.search(rf"^\$ resnet {name}\b", readme, re.MULTILINE), \
            f"README has no example of `resnet {name}`"
        assert f"### {name}" in readme, f"README has no section for {name}"


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    command = "pip install '.[test]' && ruff check && pytest"
    assert command in readme and command in ci


def test_help_reads_as_paragraphs_at_80_columns(runner) -> None:  # type: ignore[no-untyped-def]
    """Rich keeps a docstring's single line breaks: every line of a command's description
    but the last of its paragraph must be full, or a sentence was broken by the source's own
    wrapping."""
    width = 80
    for name in _commands():
        result = runner.invoke(app, [name, "--help"], env={"COLUMNS": str(width)},
                               terminal_width=width)
        assert result.exit_code == 0, name
        text = result.stdout.split("╭")[0].split("Usage:")[1].splitlines()[1:]
        lines = [line.rstrip() for line in text]
        for line, after in itertools.pairwise(lines):
            if not line or not after or line.lstrip().startswith("Example") or \
                    after.startswith("   "):
                continue
            room = width - 2 - len(line.strip())  # one space of margin on either side
            assert len(after.split()[0]) + 1 > room, \
                f"resnet {name} --help breaks a sentence after '{line.strip()[-30:]}'"
