"""The command group: lazy commands, one-line usage errors."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from geomsafe.cli import COMMANDS, main


def test_every_listed_command_loads():
    for name, (_, _, short) in COMMANDS.items():
        command = main.get_command(click.Context(main), name)
        assert isinstance(command, click.Command) and command.name == name, name
        assert short and len(short) < 80


@pytest.mark.parametrize(
    "args",
    [
        ["report", "/tmp", "--out", "/tmp"],  # R10: --out is a folder
        ["evaluate", "--out", __file__],  # E13: --out is a file
        ["finetune", "--data", "x.jsonl", "--out", __file__],  # F14
        ["audit", "--n-perm", "many"],
        ["audit", "--bogus"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors_are_one_line(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geomsafe: error: "), result.output


def test_help_and_version():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and all(name in result.output for name in COMMANDS)
    assert CliRunner().invoke(main, ["--version"]).exit_code == 0
