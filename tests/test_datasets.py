from __future__ import annotations

import json

import pytest

from geomsafe.datasets import builtin_task, load_dataset, resolve_data
from geomsafe.errors import GeomsafeError


def test_chat_and_prompt_completion(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "u2"},
                {"role": "assistant", "content": "a2"},
            ]
        },
        {"prompt": "p", "completion": "c"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_dataset(path)
    assert len(ds) == 2 and ds.records[1].line == 2
    first = ds.examples[0]
    assert first.response == "a2" and [m["content"] for m in first.prompt] == [
        "s",
        "u1",
        "a1",
        "u2",
    ]
    assert ds.examples[1].prompt == "p" and ds.records[0].raw == json.dumps(rows[0])
    assert ds.sample(1, seed=0).records[0] in ds.records and len(ds.sha256) == 64


@pytest.mark.parametrize(
    "line, message",
    [
        ("{bad", "not valid JSON"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant turn"),
        ('{"messages": []}', "non-empty list"),
        ('{"text": "x"}', "needs 'messages'"),
        ('{"prompt": "p", "completion": "  "}', "empty"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "completion": "fine"}\n' + line + "\n")
    with pytest.raises(GeomsafeError, match=message) as info:
        load_dataset(path)
    assert f"{path}:2" in str(info.value)


def test_empty_and_missing(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(GeomsafeError, match="empty file"):
        load_dataset(tmp_path / "e.jsonl")
    with pytest.raises(GeomsafeError, match="not found"):
        load_dataset(tmp_path / "missing.jsonl")


def test_builtin_tasks_load():
    for name in ("factual_qa", "instruction_following", "code", "summarisation"):
        assert len(load_dataset(resolve_data(f"task:{name}"))) >= 100
    with pytest.raises(GeomsafeError):
        builtin_task("nope")
