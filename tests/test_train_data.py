from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from geomsafe.cli import main
from geomsafe.datasets import Dataset, builtin_task, load_dataset
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example, encode
from geomsafe.hashing import file_sha256
from geomsafe.testing import tiny_model
from geomsafe.train import TrainConfig, finetune
from geomsafe.train.data import IGNORE_INDEX, build, load_data
from geomsafe.train.trainer import PadCollator

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
MULTI = {
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a?"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "b?"},
        {"role": "assistant", "content": "second"},
    ]
}


def write(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


@pytest.fixture(scope="module")
def tok():
    return tiny_model("llama").tokenizer


def test_labels_mask_only_assistant_tokens(tmp_path, tok):
    path = write(tmp_path / "d.jsonl", [CHAT, MULTI, {"prompt": "2+2?", "completion": "4"}])
    data = load_data(path, tok, max_length=512)
    assert len(data) == 3 and data.where[1].endswith("d.jsonl:2")
    for ex, feats, plen in zip(data.examples, data.features, data.prompt_lens, strict=True):
        enc = encode(tok, ex)
        ids, labels = feats["input_ids"], feats["labels"]
        assert plen == enc.prompt_len
        assert ids[:-1] == list(enc.input_ids) and ids[-1] == tok.eos_token_id  # EOS is trained
        assert labels[:plen] == [IGNORE_INDEX] * plen
        assert labels[plen:] == ids[plen:]
        assert ids[plen:-1] == tok(ex.response, add_special_tokens=False)["input_ids"]
    # multi-turn: the last assistant turn is the response, the earlier turns are the prompt
    assert data.examples[1].response == "second"
    assert [m["content"] for m in data.examples[1].messages()] == ["be brief", "a?", "first", "b?"]
    assert data.examples[2] == Example("2+2?", "4")
    assert data.data_hash and len(data.data_hash) == 64


def test_prompt_completion_with_messages(tmp_path, tok):
    rec = {
        "prompt": [{"role": "user", "content": "q"}],
        "completion": [{"role": "assistant", "content": "a"}],
    }
    data = load_data(write(tmp_path / "d.jsonl", [rec, "", CHAT]), tok)
    assert data.examples[0] == Example(({"role": "user", "content": "q"},), "a")
    assert data.where[1].endswith(":3")  # blank lines are skipped but counted


def test_max_examples_keeps_first_n_of_a_checked_file(tmp_path, tok):
    path = write(tmp_path / "d.jsonl", [CHAT, MULTI, CHAT])
    data = load_data(path, tok, max_examples=2)
    assert len(data) == 2 and data.where[-1].endswith("d.jsonl:2")
    # the whole file is read by the one reader: a bad line after the first N is still an error
    write(path, [CHAT, MULTI, "{broken"])
    with pytest.raises(GeomsafeError, match=r"d\.jsonl:3: not valid JSON"):
        load_data(path, tok, max_examples=2)


def test_file_dataset_task_and_memory_give_the_same_features(tmp_path, tok):
    rows = [{"prompt": "2+2?", "completion": "4"}, CHAT]
    path = write(tmp_path / "d.jsonl", rows)
    from_file = load_data(path, tok)
    from_dataset = load_data(load_dataset(path), tok)
    from_memory = load_data([("2+2?", "4"), CHAT], tok)
    assert from_file.features == from_dataset.features == from_memory.features
    assert from_file.data_hash == file_sha256(path) and from_file.source == str(path)
    # in-memory examples hash as the JSONL they would write: here the same bytes as the file
    assert from_memory.source == "<memory>" and from_memory.data_hash == from_file.data_hash
    assert load_data([("2+2?", "5"), CHAT], tok).data_hash != from_file.data_hash
    task = load_data("task:factual_qa", tok, max_length=10_000, max_examples=3)
    assert len(task) == 3 and task.data_hash == file_sha256(builtin_task("factual_qa"))


def test_build_keeps_records_aligned_with_features(tmp_path, tok):
    path = write(
        tmp_path / "d.jsonl",
        [{"prompt": "q" * 100, "completion": "y"}, CHAT, {"prompt": "p", "completion": "x"}],
    )
    ds = load_dataset(path)
    data = build(tok, ds, max_length=64, truncate=True)
    assert data.dataset is ds and data.skipped == [f"{path}:1"]
    assert data.records == ds.records[1:] and data.where == [f"{path}:2", f"{path}:3"]
    for rec, feats in zip(data.records, data.features, strict=True):
        assert feats == build(tok, Dataset.from_examples([rec.example])).features[0]


BAD = [  # the parsing rules are tested for every command in test_datasets.py
    ("malformed", [CHAT, '{"messages": [', CHAT], 2, "not valid JSON"),
    ("no_assistant", [{"messages": [{"role": "user", "content": "x"}]}], 1, "no assistant turn"),
    ("empty_file", [], None, "empty file"),
    ("too_long", [CHAT, {"prompt": "p", "completion": "x" * 200}], 2, "longer than max_length"),
]


@pytest.mark.parametrize(("case", "lines", "line", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_data_names_file_and_line(tmp_path, tok, case, lines, line, message):
    path = write(tmp_path / f"{case}.jsonl", lines)
    with pytest.raises(GeomsafeError, match=message) as err:
        load_data(path, tok, max_length=64)
    text = str(err.value)
    assert text.startswith(f"{path}:{line}:" if line else f"{path}:") and "\n" not in text


def test_truncate_cuts_and_skips_prompts_that_fill_max_length(tmp_path, tok):
    path = write(
        tmp_path / "d.jsonl",
        [CHAT, {"prompt": "p", "completion": "x" * 200}, {"prompt": "q" * 100, "completion": "y"}],
    )
    data = load_data(path, tok, max_length=64, truncate=True)
    assert len(data) == 2 and data.n_truncated == 1
    assert data.skipped == [f"{path}:3"]
    assert all(len(f["input_ids"]) <= 64 for f in data.features)
    assert data.features[1]["labels"][-1] != IGNORE_INDEX
    with pytest.raises(GeomsafeError, match="every prompt"):
        load_data(
            write(tmp_path / "e.jsonl", [{"prompt": "q" * 100, "completion": "y"}]),
            tok,
            max_length=64,
            truncate=True,
        )


def test_missing_file(tmp_path, tok):
    with pytest.raises(GeomsafeError, match="not found"):
        load_data(tmp_path / "nope.jsonl", tok)


def test_pad_collator_pads_right():
    batch = PadCollator(pad_id=0)(
        [
            {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
            {"input_ids": [5], "labels": [5]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long


@pytest.mark.parametrize("case", ["malformed", "no_assistant", "empty_file", "too_long"])
def test_cli_bad_data_exit_2_one_line_nothing_written(tmp_path, case, tiny_folder):
    lines = {b[0]: b[1] for b in BAD}[case]
    path = write(tmp_path / "bad.jsonl", lines)
    out = tmp_path / "run"
    res = CliRunner().invoke(
        main,
        [
            "finetune",
            "--model",
            str(tiny_folder),
            "--data",
            str(path),
            "--out",
            str(out),
            "--max-length",
            "64",
            "--no-progress",
        ],
    )
    assert res.exit_code == 2, res.output
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("geomsafe: error: ")
    assert f"{path}:" in errors[0] and "Traceback" not in res.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]  # no .partial folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny Llama saved as a model folder, so the CLI can load it by path."""
    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    lm = tiny_model("llama")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def test_finetune_on_a_dataset_trains_as_on_its_file_and_records_the_file(tmp_path):
    lm = tiny_model("llama")
    path = write(tmp_path / "d.jsonl", [CHAT, MULTI, {"prompt": "2+2?", "completion": "4"}, CHAT])
    ds = load_dataset(path)
    config = TrainConfig(max_steps=2, batch_size=2, save_steps=10, logging_steps=1)
    by_file = finetune(lm, path, out=tmp_path / "a", config=config, progress=False)
    by_dataset = finetune(lm, ds, out=tmp_path / "b", config=config, progress=False)
    assert [r["loss"] for r in by_dataset.geometry_log] == [r["loss"] for r in by_file.geometry_log]
    for prov in (by_file.provenance, by_dataset.provenance):
        assert prov["data"] == str(path.resolve()) and prov["data_hash"] == file_sha256(path)
        assert prov["examples_hash"] == ds.records_sha256
    sample = ds.sample(2, seed=1)  # what bench passes: a sample of the task's file
    prov = finetune(lm, sample, out=tmp_path / "c", config=config, progress=False).provenance
    assert prov["data"] == str(path.resolve()) and prov["data_hash"] == ds.sha256
    assert prov["examples_hash"] == sample.records_sha256 != ds.records_sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "d.jsonl"]
