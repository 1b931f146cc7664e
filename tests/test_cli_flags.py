"""The common flags (--overwrite, --seed, --threads, --no-progress): on every command that does
the work they control, with one help text each, and doing their job end to end."""

from __future__ import annotations

import json

import click
import pytest
import torch
from click.testing import CliRunner

from geomsafe.cli import main
from geomsafe.cli.common import COMMON_HELP
from geomsafe.testing import save_tiny

FLAGS = {name: "--" + name.replace("_", "-") for name in COMMON_HELP}

# The commands that legitimately lack a common flag, and why. Every other command has all four.
WITHOUT: dict[str, set[str]] = {
    # reads a model's config and prints it: no output folder, no randomness, no long work
    "info": {"overwrite", "seed", "threads", "no_progress"},
    # renders JSON already on disk into one HTML file (--out names that file, always written)
    "report": {"overwrite", "seed", "threads", "no_progress"},
    # a server: no output folder and no progress bars (it runs until stopped)
    "serve": {"overwrite", "no_progress"},
    # the toy models always train on one torch thread (toy.train.single_thread: exact and fast)
    "toy": {"threads"},
}


def _commands() -> dict[str, click.Command]:
    """Every leaf command by its path ("firewall calibrate")."""
    found: dict[str, click.Command] = {}

    def walk(group: click.Group, prefix: str) -> None:
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None, name
            path = f"{prefix} {name}".strip()
            if isinstance(command, click.Group):
                walk(command, path)
            else:
                found[path] = command

    walk(main, "")
    return found


COMMANDS = _commands()


def test_the_tree_is_walked():
    assert {"audit", "predict", "finetune", "evaluate", "bench", "toy"} <= set(COMMANDS)
    assert {"firewall calibrate", "firewall run", "serve", "info", "report"} <= set(COMMANDS)
    assert set(WITHOUT) <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_has_the_common_flags_with_the_shared_help(path):
    params = {p.name: p for p in COMMANDS[path].params if isinstance(p, click.Option)}
    wanted = set(COMMON_HELP) - WITHOUT.get(path, set())
    missing = sorted(FLAGS[n] for n in wanted if n not in params)
    assert not missing, f"{path} lacks {', '.join(missing)}"
    for name in wanted:
        option = params[name]
        assert option.opts == [FLAGS[name]], (path, option.opts)
        assert option.help == COMMON_HELP[name], (path, name, option.help)
    for name in WITHOUT.get(path, set()):  # the table stays true: remove a line when it is not
        assert name not in params, f"{path} has {FLAGS[name]}: drop it from WITHOUT"


@pytest.mark.parametrize(
    "args",
    [
        ["audit"],
        ["predict", "--data", "d.jsonl"],
        ["finetune", "--data", "d.jsonl", "--out", "o"],
        ["evaluate"],
        ["bench"],
        ["firewall", "calibrate", "--out", "o"],
        ["firewall", "run", "--firewall", "f", "--out", "o"],
        ["serve", "--firewall", "f"],
    ],
)
def test_bad_threads_is_one_line_before_any_work(args):
    result = CliRunner().invoke(main, [*args, "--threads", "0"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "threads must be >= 1, not 0" in lines[0], result.output


def test_predict_threads_and_no_progress_end_to_end(tmp_path, monkeypatch):
    """On the tiny model: --threads sets torch's threads for the command (and is recorded),
    --no-progress silences every bar; without it the bars are there."""
    model = save_tiny(tmp_path / "model", "llama")
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(4)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    seen: list[int] = []
    import geomsafe.predict.run as predict_run

    real = predict_run.load

    def load(spec):  # the threads torch has while the command works
        seen.append(torch.get_num_threads())
        return real(spec)

    monkeypatch.setattr(predict_run, "load", load)
    before = torch.get_num_threads()
    args = ["predict", "--model", str(model), "--data", str(data), "--method", "behavioural"]
    args += ["--max-examples", "4", "--pairs-per-concept", "2", "--concepts", "toxicity"]
    args += ["--no-generate", "--sketch-rank", "2"]
    out = tmp_path / "out"
    quiet = CliRunner().invoke(
        main, [*args, "--threads", "1", "--no-progress", "--out", str(out)]
    )
    assert quiet.exit_code == 0, quiet.output
    assert seen == [1] and torch.get_num_threads() == before  # restored after
    assert "it/s" not in quiet.stderr and "%|" not in quiet.stderr
    risk = json.loads((out / "risk.json").read_text())
    assert risk["provenance"]["config"]["threads"] == 1
    loud = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "loud")])
    assert loud.exit_code == 0, loud.output
    assert "%|" in loud.stderr
