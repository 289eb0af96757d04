"""Docs that cannot rot: every command and every option is documented in docs/cli.md."""

from pathlib import Path

import click

from lebench_cli.cli import main

CLI_DOC = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()


def commands(group: click.Group, prefix="lebench"):
    yield prefix, group
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", command


def test_every_command_and_option_is_documented():
    missing = []
    for name, command in commands(main):
        if f"## `{name}`" not in CLI_DOC:
            missing.append(f"section for `{name}`")
        for parameter in command.params:
            for option in getattr(parameter, "opts", []):
                if isinstance(parameter, click.Option) and f"`{option}`" not in CLI_DOC:
                    missing.append(f"{name} {option}")
    assert not missing, f"undocumented in docs/cli.md: {missing}"


def test_every_exit_code_is_documented():
    from lebench_cli import cli

    codes = {value for key, value in vars(cli).items() if key.startswith("EXIT_")}
    for code in codes:
        assert f"| {code} |" in CLI_DOC, f"exit code {code} undocumented"
