"""geomsafe.diff.inputs: the examples both models read, the adapter's fit to the model."""

from __future__ import annotations

import json

import pytest

from geomsafe.datasets import builtin_task, load_dataset
from geomsafe.diff.config import DiffConfig
from geomsafe.diff.inputs import TASKS, check_adapter_folder, load_examples
from geomsafe.errors import GeomsafeError


def test_the_default_data_interleaves_the_task_sets():
    examples, sha = load_examples(DiffConfig(max_examples=10))
    assert len(examples) == 10
    firsts = [load_dataset(builtin_task(name)).sample(3, 0).examples[0] for name in TASKS]
    assert examples[:4] == firsts  # one of each set, in turn
    again, sha2 = load_examples(DiffConfig(max_examples=10))
    assert again == examples and sha2 == sha and len(sha) == 64
    assert load_examples(DiffConfig(max_examples=10, seed=1))[1] != sha


def test_a_data_file_is_sampled(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, _ = load_examples(DiffConfig(data=str(path), max_examples=4))
    assert len(examples) == 4
    with pytest.raises(GeomsafeError):
        load_examples(DiffConfig(data=str(tmp_path / "missing.jsonl")))


def test_the_adapter_folder_is_checked(tmp_path):
    with pytest.raises(GeomsafeError, match="adapter folder not found"):
        check_adapter_folder(tmp_path / "missing")
    with pytest.raises(GeomsafeError, match="not a peft adapter folder"):
        check_adapter_folder(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    assert check_adapter_folder(tmp_path) == tmp_path
