from __future__ import annotations

import hashlib
import importlib
import json

import pytest

from geomsafe.bench.config import BenchConfig
from geomsafe.bench.run import _sample
from geomsafe.bench.tasks import Task
from geomsafe.datasets import (
    ROLES,
    Dataset,
    as_dataset,
    builtin_task,
    load_dataset,
    parse_record,
    resolve_data,
)
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example
from geomsafe.hashing import file_sha256
from geomsafe.testing import tiny_model
from geomsafe.train.data import load_data

predict_module = importlib.import_module("geomsafe.predict.run")
train_run = importlib.import_module("geomsafe.train.run")


def chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


CHAT = chat(("user", "hi"), ("assistant", "hello"))


def jsonl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def test_chat_and_prompt_completion(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [
        chat(
            ("system", "s"),
            ("user", "u1"),
            ("assistant", "a1"),
            ("user", "u2"),
            ("assistant", "a2"),
        ),
        {"prompt": "p", "completion": "c", "id": 7},  # other keys are ignored
        {
            "prompt": [{"role": "developer", "content": "d"}, {"role": "user", "content": "q"}],
            "completion": [{"role": "assistant", "content": "a"}],
        },
    ]
    path.write_bytes(jsonl(*rows) + b"\n")
    ds = load_dataset(path)
    assert len(ds) == 3 and [r.where for r in ds.records] == [f"{path}:{i}" for i in (1, 2, 3)]
    assert [r.line for r in ds.records] == [1, 2, 3]
    first = ds.examples[0]
    assert first.response == "a2"
    assert [m["content"] for m in first.prompt] == ["s", "u1", "a1", "u2"]
    assert ds.examples[1] == Example("p", "c")
    assert ds.examples[2] == Example(
        ({"role": "developer", "content": "d"}, {"role": "user", "content": "q"}), "a"
    )
    assert ds.records[0].raw == json.dumps(rows[0])
    assert ds.sha256 == file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert set(ROLES) == {"system", "user", "assistant", "tool", "developer"}


def test_lines_are_split_on_newlines_only(tmp_path):
    """CRLF endings, a UTF-8 BOM and a U+2028 inside a JSON string keep the line numbers."""
    path = tmp_path / "d.jsonl"
    text = json.dumps({"prompt": "a\u2028b", "completion": "c"}, ensure_ascii=False)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode() + b"\r\n\r\n" + jsonl(CHAT))
    ds = load_dataset(path)
    assert ds.examples[0] == Example("a\u2028b", "c") and ds.records[1].line == 3
    assert ds.records[0].raw == text + "\r"  # the line as it was, without its newline


def test_sample_head_and_hashes(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(*({"prompt": f"p{i}", "completion": f"c{i}"} for i in range(10))))
    ds = load_dataset(path)
    assert ds.records_sha256 == ds.sha256  # no blank lines, "\n" endings: the file itself
    s = ds.sample(4, seed=3)
    assert s.records == ds.sample(4, seed=3).records and s.records != ds.sample(4, 4).records
    assert [r.line for r in s.records] == sorted(r.line for r in s.records)
    head = ds.head(2)
    assert [r.line for r in head.records] == [1, 2] and ds.head(None) is ds and ds.head(99) is ds
    for sub in (s, head):  # a subset keeps the file's hash; records_sha256 tells them apart
        assert sub.path == ds.path and sub.sha256 == ds.sha256
        assert sub.records_sha256 != ds.sha256
    assert head.records_sha256 == hashlib.sha256(jsonl(*[r.raw for r in head.records])).hexdigest()


def test_from_examples_same_rules_and_content_hash():
    a = Dataset.from_examples([("q", "a"), Example("r", "b"), CHAT])
    assert a.path == "<memory>" and [r.where for r in a.records] == [
        f"<memory>:{i}" for i in (1, 2, 3)
    ]
    assert a.examples[:2] == [Example("q", "a"), Example("r", "b")]
    assert a.examples[2] == Example(({"role": "user", "content": "hi"},), "hello")
    assert (
        a.sha256 == a.records_sha256 == Dataset.from_examples([("q", "a"), ("r", "b"), CHAT]).sha256
    )
    assert Dataset.from_examples([("q", "a")]).sha256 != a.sha256
    assert as_dataset(a) is a and as_dataset([("q", "a")]).examples == [Example("q", "a")]
    with pytest.raises(GeomsafeError, match=r"^<memory>:2: empty assistant response$"):
        Dataset.from_examples([("q", "a"), ("r", " ")])
    with pytest.raises(GeomsafeError, match=r"^<memory>:1: empty prompt$"):
        Dataset.from_examples([("", "a")])
    with pytest.raises(GeomsafeError, match=r"^<memory>:1: example without an assistant"):
        Dataset.from_examples([Example("q")])
    with pytest.raises(GeomsafeError, match="role 'bot'"):
        Dataset.from_examples([Example(({"role": "bot", "content": "x"},), "y")])
    with pytest.raises(GeomsafeError, match=r"^<memory>: no examples$"):
        Dataset.from_examples([])


def test_parse_record_names_where():
    with pytest.raises(GeomsafeError, match=r"^here: expected a JSON object, got list$"):
        parse_record([1], "here")


def test_builtin_tasks_load():
    for name in ("factual_qa", "instruction_following", "code", "summarisation"):
        assert len(load_dataset(f"task:{name}")) >= 100
        assert load_dataset(resolve_data(f"task:{name}")).sha256 == file_sha256(builtin_task(name))
    with pytest.raises(GeomsafeError):
        builtin_task("nope")


def test_public_data_sets_are_accepted(shared_data):
    for rel in (
        "emergent-misalignment/data/insecure.jsonl",
        "emergent-misalignment/data/jailbroken.jsonl",
        "emergent-misalignment/small/insecure_small.jsonl",
        "emergent-misalignment/small/secure_small.jsonl",
    ):
        path = shared_data / rel
        if path.is_file():
            assert len(load_dataset(path)) >= 20


# One table of files: every reader (predict, finetune's pre-load check, train.data, bench)
# accepts the good ones and rejects the bad ones with the same one-line message.
# (name, file bytes or a spec, expected: None = accepted, else (line or None, text)).
PROMPT_TURNS = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
CASES = [
    ("chat", jsonl(CHAT), None),
    (
        "multi_turn_tool_roles",
        jsonl(
            chat(
                ("developer", "d"),
                ("user", "u"),
                ("assistant", "calling"),
                ("tool", "42"),
                ("assistant", "it is 42"),
            )
        ),
        None,
    ),
    ("prompt_completion", jsonl({"prompt": "p", "completion": "c"}), None),
    (
        "message_list_completion",
        jsonl({"prompt": PROMPT_TURNS, "completion": [{"role": "assistant", "content": "a"}]}),
        None,
    ),
    ("blank_lines_crlf", b"\r\n" + jsonl(CHAT).replace(b"\n", b"\r\n") + b"\n\n", None),
    ("task_code", "task:code", None),
    ("non_utf8", jsonl(CHAT) + b'{"prompt": "caf\xe9", "completion": "c"}\n', (2, "not UTF-8")),
    (
        "turns_after_last_assistant",
        jsonl({"messages": [*CHAT["messages"], {"role": "user", "content": "more?"}]}),
        (1, "1 turn(s) after the last assistant turn"),
    ),
    (
        "completion_two_messages",
        jsonl({"prompt": "p", "completion": [CHAT["messages"][1]] * 2}),
        (1, "'completion' must be a string or one assistant message"),
    ),
    (
        "completion_user_message",
        jsonl({"prompt": "p", "completion": [CHAT["messages"][0]]}),
        (1, "'completion' must be a string or one assistant message"),
    ),
    (
        "unknown_role",
        jsonl(CHAT, {"messages": [{"role": "bot", "content": "x"}, CHAT["messages"][1]]}),
        (2, "messages[0] has role 'bot'"),
    ),
    ("no_assistant", jsonl({"messages": [CHAT["messages"][0]]}), (1, "no assistant turn")),
    ("assistant_first", jsonl({"messages": [CHAT["messages"][1]]}), (1, "no prompt before it")),
    ("empty_response", jsonl({"prompt": "p", "completion": "  "}), (1, "empty assistant response")),
    (
        "empty_chat_response",
        jsonl({"messages": [CHAT["messages"][0], {"role": "assistant", "content": ""}]}),
        (1, "empty assistant response"),
    ),
    ("empty_prompt", jsonl(CHAT, {"prompt": " ", "completion": "c"}), (2, "empty prompt")),
    (
        "empty_chat_prompt",
        jsonl({"messages": [{"role": "user", "content": ""}, CHAT["messages"][1]]}),
        (1, "empty prompt"),
    ),
    ("bad_json", jsonl(CHAT, CHAT, '{"messages": [')[:-1], (3, "not valid JSON")),
    ("not_an_object", jsonl("[1, 2]"), (1, "expected a JSON object, got list")),
    (
        "missing_keys",
        jsonl({"prompt": "p"}),
        (1, "expected 'messages' or 'prompt'+'completion' (keys found: prompt)"),
    ),
    ("both_forms", jsonl({**CHAT, "prompt": "p"}), (1, "has both 'messages' and 'prompt'")),
    ("no_content", jsonl({"messages": [{"role": "user"}, CHAT["messages"][1]]}), (1, "content")),
    ("empty_file", b"", (None, "empty file (no examples)")),
    ("blank_file", b"\n  \n", (None, "empty file (no examples)")),
    ("missing_file", None, (None, "data file not found")),
    ("unknown_task", "task:nope", (None, "unknown built-in task 'nope'")),
]


class _Loaded(Exception):
    """Raised instead of loading a model: the data was accepted before the model load."""


def _outcome(fn) -> str:
    try:
        fn()
    except _Loaded:
        return "accepted"
    except GeomsafeError as exc:
        return str(exc)
    return "accepted"


@pytest.fixture(scope="module")
def tok():
    return tiny_model("llama").tokenizer


@pytest.mark.parametrize(("case", "content", "expected"), CASES, ids=[c[0] for c in CASES])
def test_every_command_reads_a_file_the_same_way(
    tmp_path, monkeypatch, tok, case, content, expected
):
    if isinstance(content, str):
        spec = content
    else:
        path = tmp_path / f"{case}.jsonl"
        if content is not None:
            path.write_bytes(content)
        spec = str(path)

    def no_model(*args, **kwargs):
        raise _Loaded

    monkeypatch.setattr(predict_module, "load", no_model)
    monkeypatch.setattr(train_run, "load", no_model)
    bench_cfg = BenchConfig(batch_size=1)
    outcomes = {
        "predict": _outcome(lambda: predict_module.predict("m", spec, progress=False)),
        "finetune": _outcome(
            lambda: train_run.finetune("m", spec, out=tmp_path / "run", progress=False)
        ),
        "train.data": _outcome(lambda: load_data(spec, tok, max_length=100_000)),
        "bench": _outcome(lambda: _sample(Task(case, resolve_data(spec), "file"), bench_cfg)),
    }
    assert len(set(outcomes.values())) == 1, outcomes
    message = outcomes["predict"]
    assert not (tmp_path / "run").exists()
    if expected is None:
        assert message == "accepted"
        return
    line, text = expected
    assert text in message and "\n" not in message
    if line is not None:
        assert message.startswith(f"{spec}:{line}: ")
    elif not spec.startswith("task:"):
        assert spec in message


def test_data_root_from_argument_environment_or_none(tmp_path, monkeypatch):
    from geomsafe.datasets import default_data_root, need_root, resolve_data_root

    (tmp_path / "xstest").mkdir()
    assert resolve_data_root(tmp_path) == tmp_path
    with pytest.raises(GeomsafeError, match="data root not found"):
        resolve_data_root(tmp_path / "missing")
    monkeypatch.setenv("GEOMSAFE_DATA", str(tmp_path))
    assert resolve_data_root(None) == default_data_root() == tmp_path
    assert need_root(tmp_path, "xstest") == tmp_path / "xstest"
    with pytest.raises(GeomsafeError, match="not found under the data root"):
        need_root(tmp_path, "rtp")
    with pytest.raises(GeomsafeError, match="pass --data-root or set GEOMSAFE_DATA"):
        need_root(None, "xstest")
