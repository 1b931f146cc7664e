from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from geomsafe.cli import main
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example, encode
from geomsafe.testing import tiny_model
from geomsafe.train import IGNORE_INDEX, PadCollator, load_data, read_jsonl

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


def test_max_examples_reads_first_n(tmp_path, tok):
    path = write(tmp_path / "d.jsonl", [CHAT, MULTI, "{broken"])
    assert len(load_data(path, tok, max_examples=2)) == 2
    with pytest.raises(GeomsafeError, match=r"d\.jsonl:3"):
        load_data(path, tok)


BAD = [
    ("malformed", [CHAT, '{"messages": [', CHAT], 2, "not valid JSON"),
    ("not_object", [CHAT, "[1, 2]"], 2, "expected a JSON object"),
    ("no_assistant", [{"messages": [{"role": "user", "content": "x"}]}], 1, "no assistant turn"),
    (
        "trailing_user",
        [{"messages": [*CHAT["messages"], {"role": "user", "content": "?"}]}],
        1,
        "after the last assistant",
    ),
    ("empty_response", [{"prompt": "p", "completion": "  "}], 1, "empty assistant response"),
    ("bad_role", [{"messages": [{"role": "bot", "content": "x"}]}], 1, "role 'bot'"),
    (
        "no_content",
        [{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}],
        1,
        "no string 'content'",
    ),
    ("unknown_keys", [{"text": "hello"}], 1, "expected 'messages' or 'prompt'"),
    ("empty_file", [], 1, "empty file"),
    ("blank_file", ["", "  "], 1, "empty file"),
    ("too_long", [CHAT, {"prompt": "p", "completion": "x" * 200}], 2, "longer than max_length"),
]


@pytest.mark.parametrize(("case", "lines", "line", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_data_names_file_and_line(tmp_path, tok, case, lines, line, message):
    path = write(tmp_path / f"{case}.jsonl", lines)
    with pytest.raises(GeomsafeError, match=message) as err:
        load_data(path, tok, max_length=64)
    text = str(err.value)
    assert f"{path}:{line}:" in text and "\n" not in text


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
        read_jsonl(tmp_path / "nope.jsonl")


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
