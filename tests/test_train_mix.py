from __future__ import annotations

import json
from fractions import Fraction

import pytest
from click.testing import CliRunner

from geomsafe.cli import main
from geomsafe.datasets import Dataset, load_dataset
from geomsafe.errors import GeomsafeError
from geomsafe.testing import tiny_model
from geomsafe.train import TrainConfig, finetune
from geomsafe.train.mix import builtin_safe, mix_safe, safe_count, safe_positions
from train_helpers import REPEAT, cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def train_set(n: int) -> Dataset:
    return Dataset.from_examples([(f"question {i}", f"answer {i}") for i in range(n)])


def is_safe(record) -> bool:
    return record.where.startswith(str(builtin_safe()))


def test_the_share_is_exact():
    assert safe_count(12, 0.25) == 4 and Fraction(4, 12 + 4) == Fraction(1, 4)
    assert safe_count(9, 0.1) == 1 and Fraction(1, 10) == Fraction(1, 10)
    assert safe_count(30, 0.5) == 30 and safe_count(7, 0.0) == 0
    for n in range(1, 60):
        for frac in (0.01, 0.05, 0.1, 0.2, 1 / 3, 0.5, 0.75, 0.9):
            k = safe_count(n, frac)
            # the nearest whole number to the exact count, so the share is within half a step
            assert abs(k - frac * n / (1 - frac)) <= 0.5
            assert abs(k / (n + k) - frac) <= 1 / (2 * (n + k)) + 1e-12
            if (frac * n / (1 - frac)).is_integer():
                assert Fraction(k, n + k) == Fraction(frac).limit_denominator(1000)
    for bad in (-0.1, 1.0):
        with pytest.raises(GeomsafeError, match=r"mix_safe must be in \[0, 1\)"):
            safe_count(10, bad)
        with pytest.raises(GeomsafeError, match=r"mix_safe must be in \[0, 1\)"):
            TrainConfig(mix_safe=bad)


def test_safe_positions_are_even_and_distinct():
    assert safe_positions(12, 4) == [2, 6, 10, 14]
    assert safe_positions(1, 9) == [0, 1, 2, 3, 5, 6, 7, 8, 9]  # the one training example: 4
    for n in range(0, 30):
        for k in range(1, 30):
            pos = safe_positions(n, k)
            assert pos == sorted(set(pos)) and pos[0] >= 0 and pos[-1] < n + k


def test_mix_interleaves_the_exact_share_deterministically():
    train = train_set(12)
    mixed, info = mix_safe(train, 0.25, seed=0)
    assert info is not None and info.n_safe == 4 and info.share == 0.25
    safe = [r for r in mixed.records if is_safe(r)]
    assert len(mixed) == 16 and len(safe) == 4
    assert [i for i, r in enumerate(mixed.records) if is_safe(r)] == [2, 6, 10, 14]
    assert [r for r in mixed.records if not is_safe(r)] == train.records  # order kept
    assert len({r.where for r in safe}) == 4  # 4 of the 40 built-in examples, none twice
    again, _ = mix_safe(train, 0.25, seed=0)
    other, _ = mix_safe(train, 0.25, seed=1)
    assert again.records == mixed.records and other.records != mixed.records
    assert mixed.sha256 == train.sha256 and mixed.records_sha256 != train.records_sha256
    assert info.to_dict()["source_sha256"] == load_dataset(builtin_safe()).sha256
    assert mix_safe(train, 0.0) == (train, None)
    many, info = mix_safe(train_set(60), 0.5)  # 60 safe from a set of 40: it cycles
    assert info is not None and info.n_safe == 60 and sum(map(is_safe, many.records)) == 60


def test_the_builtin_safe_set_and_a_file(tmp_path):
    safe = load_dataset(builtin_safe())  # offline, in the package
    assert len(safe) == 40 and all(r.example.response for r in safe.records)
    path = tmp_path / "safe.jsonl"
    path.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    mixed, info = mix_safe(train_set(3), 0.5, str(path))
    assert info is not None and info.source == str(path) and info.n_safe == 3
    assert sum(r.where.startswith(str(path)) for r in mixed.records) == 3
    with pytest.raises(GeomsafeError, match="data file not found"):
        mix_safe(train_set(3), 0.5, str(tmp_path / "none.jsonl"))


def test_finetune_and_cli_mix_safe(tmp_path):
    lm = tiny_model("llama")
    res = finetune(
        lm, REPEAT, out=tmp_path / "run", config=cfg(max_steps=2, mix_safe=0.25), progress=False
    )
    assert res.metrics["n_examples"] == 16  # 12 + 4
    prov = json.loads((tmp_path / "run" / "run.json").read_text())["provenance"]
    assert prov["mix_safe"]["n_safe"] == 4 and prov["mix_safe"]["share"] == 0.25
    assert prov["config"]["mix_safe"] == 0.25 and prov["config"]["mix_safe_data"] == "builtin"
    plain = finetune(lm, REPEAT, out=tmp_path / "plain", config=cfg(max_steps=1), progress=False)
    assert plain.provenance["mix_safe"] is None
    assert plain.provenance["examples_hash"] != prov["examples_hash"]
    folder = tmp_path / "model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "completion": c}) for p, c in REPEAT))
    args = ["finetune", "--model", str(folder), "--data", str(data), "--max-steps", "1"]
    args += ["--no-progress", "--mix-safe", "0.5"]
    out = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "cli")])
    assert out.exit_code == 0, out.output
    prov = json.loads((tmp_path / "cli" / "run.json").read_text())["provenance"]
    assert prov["mix_safe"]["n_safe"] == 12 and prov["mix_safe"]["share"] == 0.5
    bad = CliRunner().invoke(main, [*args[:-1], "1.5", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "mix_safe must be in [0, 1)" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "bad").exists()
