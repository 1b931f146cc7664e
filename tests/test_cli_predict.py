from __future__ import annotations

import pytest
from click.testing import CliRunner

from geomsafe.cli import main


def test_cli_predict_bad_data(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    result = CliRunner().invoke(main, ["predict", "--data", str(bad)])
    assert result.exit_code == 2 and f"{bad}:1" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-examples", "-1"], "max_examples must be"),
        (["--max-new-tokens", "0"], "max_new_tokens must be"),
        (["--filter", "-2", "--out", "o"], "filter (K) must be"),
        (["--attack", "-1", "--out", "o"], "attack (K) must be"),
        (["--concepts", "nosuch"], "unknown harmful concept 'nosuch'"),
        (["--threads", "0"], "threads must be"),
        (["--filter", "3"], "give --out"),
        (["--atlas", "/no/such/atlas"], "no atlas in /no/such/atlas"),
    ],
)
def test_cli_bad_options_are_one_line_before_any_model_work(tmp_path, args, message):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "hi", "completion": "there"}\n')
    result = CliRunner().invoke(
        main, ["predict", "--model", str(tmp_path / "no-model"), "--data", str(data), *args]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_cli_out_is_a_file(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "hi", "completion": "there"}\n')
    (tmp_path / "f").write_text("x")
    result = CliRunner().invoke(
        main, ["predict", "--model", "nope", "--data", str(data), "--out", str(tmp_path / "f")]
    )
    assert result.exit_code == 2 and "is a file" in result.output
    assert len(result.output.strip().splitlines()) == 1
