"""Data-parallel ``audit`` and ``predict`` under ``torchrun --nproc_per_node 2`` (gloo, CPU) on
a tiny model: both ranks return the one-process results (atlas directions and stats, the audit
report, each prediction's risks and per-example scores in order), rank 0's files hold the same
numbers, and rank 1 writes nothing.

Marked ``distributed`` (deselect with ``-m "not distributed"``); under a minute on 2 cores."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from geomsafe.audit import audit
from geomsafe.predict import predict
from geomsafe.testing import save_tiny, tiny_atlas
from torchrun import launch_two

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("distributed_scoring_worker.py")
WORDS = ["apple", "river", "cloud", "stone", "music", "paper", "garden", "window", "light"]
CONCEPTS = [  # (name, kind, positive opening, negative opening)
    ("rude", "harmful", "You idiot, shut up about", "Sure, here is"),
    ("lies", "harmful", "The moon is cheese and", "The moon is rock and"),
    ("helpful", "target", "Here are three facts on", "I do not know"),
]
# Small batches, so that each rank runs several of them (and some run none of a short loop).
AUDIT = {"n_perm": 50, "n_boot": 50, "batch_size": 4}
PREDICT = {
    "gradient": {"max_new_tokens": 4, "batch_size": 4, "grad_batch_size": 2, "n_boot": 100},
    "behavioural": {
        "method": "behavioural",
        "concepts": ["toxicity", "deception"],
        "pairs_per_concept": 4,
        "grad_batch_size": 2,
        "n_boot": 100,
    },
}
SKIP = {"seconds", "phases"}  # wall times


def _concept_file(folder: Path, name: str, kind: str, pos: str, neg: str) -> str:
    rng = random.Random(name)
    rows: list[dict[str, str]] = [{"concept": name, "kind": kind, "description": name}]
    for _ in range(10):
        w = " ".join(rng.sample(WORDS, 3))
        rows.append(
            {"prompt": f"Tell me about {w}.", "positive": f"{pos} {w}", "negative": f"{neg} {w}"}
        )
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _data(path: Path, n: int = 14) -> Path:
    def reply(i: int) -> str:
        return ("you idiot " if i % 2 else "thanks ") * (1 + i % 4)

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"hello {i} {WORDS[i % len(WORDS)]}"},
                {"role": "assistant", "content": reply(i)},
            ]
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def assert_same(got: Any, want: Any, where: str = "") -> None:
    """Equal JSON-like values, numbers to ``atol 1e-5`` (wall times skipped)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for k in want:
            if k not in SKIP:
                assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        if math.isnan(want):
            assert math.isnan(got), where
        else:
            assert got == pytest.approx(want, abs=1e-5, rel=1e-4), where
    else:
        assert got == want, where


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same audit and predictions in one process and under torchrun with 2 ranks."""
    root = tmp_path_factory.mktemp("dp")
    model = str(save_tiny(root / "model"))
    atlas = root / "atlas"
    tiny_atlas().save(atlas)
    data = str(_data(root / "data.jsonl"))
    concepts = [_concept_file(root, *c) for c in CONCEPTS]
    audit_options = {**AUDIT, "concepts": concepts}
    predict_options = {k: dict(v) for k, v in PREDICT.items()}
    predict_options["gradient"]["atlas"] = str(atlas)

    single_out = root / "single"
    single_audit = audit(model, out=single_out / "audit", progress=False, **audit_options)
    single = {
        "audit": json.loads(json.dumps(single_audit.report)),
        "directions": {n: d.tolist() for n, d in single_audit.atlas.directions.items()},
        "stats": json.loads(json.dumps(single_audit.atlas.stats)),
        "predict": {
            name: json.loads(
                json.dumps(
                    predict(model, data, out=single_out / name, progress=False, **options).to_dict()
                )
            )
            for name, options in predict_options.items()
        },
    }
    spec = {
        "model": model,
        "data": data,
        "out": str(root / "dist" / "out"),
        "audit": audit_options,
        "predict": predict_options,
        "side": str(root / "side"),
        "watch": str(root / "dist"),
    }
    launch_two(WORKER, spec, root)
    return single, single_out, root


@pytest.mark.parametrize("rank", [0, 1])
def test_every_rank_returns_the_one_process_results(runs, rank):
    single, _, root = runs
    got = json.loads((root / "side" / f"result-{rank}.json").read_text())
    assert_same(got["directions"], single["directions"], "directions")
    assert_same(got["stats"], single["stats"], "stats")
    assert_same(got["audit"], single["audit"], "audit")
    for name, want in single["predict"].items():
        # per-example scores included, riskiest first: the same examples in the same order
        assert [r["line"] for r in got["predict"][name]["examples"]] == [
            r["line"] for r in want["examples"]
        ]
        assert_same(got["predict"][name], want, name)
    assert single["predict"]["behavioural"]["overall_ci"] is not None  # a per-example CI


def test_rank_0_files_hold_the_one_process_numbers(runs):
    _, single_out, root = runs
    out = root / "dist" / "out"
    want = load_file(str(single_out / "audit" / "atlas" / "atlas.safetensors"))
    got = load_file(str(out / "audit" / "atlas" / "atlas.safetensors"))
    assert set(got) == set(want)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-4, msg=key)
    for rel in ("audit/audit.json", "gradient/risk.json", "behavioural/risk.json"):
        got_json = json.loads((out / rel).read_text())
        want_json = json.loads((single_out / rel).read_text())
        assert_same(got_json, want_json, rel)


def test_only_rank_0_writes(runs):
    _, _, root = runs
    rank0 = json.loads((root / "side" / "writes-0.json").read_text())
    rank1 = json.loads((root / "side" / "writes-1.json").read_text())
    assert any(w.endswith("audit.json") for w in rank0)
    assert sum(w.endswith("risk.json") for w in rank0) >= 2
    assert rank1 == []
    names = {p.name for p in (root / "dist" / "out").iterdir()}
    assert names == {"audit", "gradient", "behavioural"}
