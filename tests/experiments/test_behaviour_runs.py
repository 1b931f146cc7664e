"""experiments/behaviour_runs.py: mixtures, data set specs and a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest

import behaviour_runs as br
from geomsafe.concepts import load_builtin, load_for_direction
from geomsafe.errors import GeomsafeError
from geomsafe.testing import tiny_model


def test_mix_records_sizes_seeded_and_all_levels_same_size():
    a, b = [f"a{i}" for i in range(20)], [f"b{i}" for i in range(30)]
    for frac, k in [(0.0, 0), (0.25, 4), (0.5, 8), (0.75, 12), (1.0, 16)]:
        items, n_a = br.mix_records(a, b, frac, 16, seed=0)
        assert len(items) == 16 and n_a == k == sum(x.startswith("a") for x in items)
        assert len(set(items)) == 16
    assert br.mix_records(a, b, 0.5, 16, 0) == br.mix_records(a, b, 0.5, 16, 0)
    assert br.mix_records(a, b, 0.5, 16, 0) != br.mix_records(a, b, 0.5, 16, 1)
    with pytest.raises(GeomsafeError, match="mixture needs"):
        br.mix_records(a[:2], b, 0.5, 16, 0)


def test_parse_mix_and_names():
    assert br.parse_mix("mix:insecure:task:code:0.25") == ("insecure", "task:code", 0.25)
    assert br.parse_mix("mix:task:code:task:summarisation:1") == (
        "task:code",
        "task:summarisation",
        1.0,
    )
    for bad, match in [("mix:insecure:task:code:x", "not a number"), ("mix:a:b:0.5", "known")]:
        with pytest.raises(GeomsafeError, match=match):
            br.parse_mix(bad)
    with pytest.raises(GeomsafeError, match=r"\[0, 1\]"):
        br.parse_mix("mix:insecure:task:code:1.5")
    assert br.safe_name("mix:insecure:task:code:0.25") == "mix_insecure_task_code_0.25"
    assert br.safe_name("mine=/x/y.jsonl") == "mine"


def test_build_dataset_mixture_and_advice_from_the_direction_half():
    ds = br.build_dataset("mix:task:code:task:summarisation:0.5", 40, seed=0)
    code = {r.raw for r in br.base_dataset("task:code", None).records}
    assert len(ds) == 40 and sum(r.raw in code for r in ds.records) == 20
    assert ds.sha256 == ds.records_sha256
    harmful = br.build_dataset("advice_harmful", 1000, seed=0)
    direction = load_for_direction("dangerous_advice")
    assert len(harmful) == len(direction.pairs) < len(load_builtin("dangerous_advice").pairs)
    assert [e.response for e in harmful.examples] == [p.positive for p in direction.pairs]
    sound = br.build_dataset("advice_sound", 1000, seed=0)
    assert [e.response for e in sound.examples] == [p.negative for p in direction.pairs]


def test_end_to_end_on_a_tiny_model_resumable(tmp_path):
    lm = tiny_model("llama", seed=0)
    argv = [
        "--datasets",
        "task:code,mix:task:code:task:summarisation:0.5",
        "--rows",
        "advice,concept:dangerous_advice",
        "--pairs",
        "6",
        "--steps",
        "2",
        "--lr",
        "5e-2",
        "--train-examples",
        "8",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    s = br.main(argv, lm=lm)
    assert s["datasets"] == ["task:code", "mix:task:code:task:summarisation:0.5"]
    assert s["rows"] == ["logodds:advice", "logodds:concept:dangerous_advice"]
    one = json.loads((tmp_path / "task_code" / "behaviour.json").read_text())
    row = one["rows"]["logodds:concept:dangerous_advice"]
    assert row["n_paired"] == 6 and row["concept"] == "dangerous_advice"
    assert row["ci_low"] <= row["change"] <= row["ci_high"] and row["change"] != 0
    assert row["change"] == pytest.approx(row["after"] - row["before"], abs=1e-9)
    assert (tmp_path / "task_code" / "adapter" / "adapter_config.json").is_file()
    assert len(list((tmp_path / br.BASE_DIR).iterdir())) == 1  # one cached base evaluation
    assert "task:code" in (tmp_path / "summary.md").read_text()
    # resumable: without --rows a finished data set is skipped (nothing is rewritten) ...
    path = tmp_path / "task_code" / "behaviour.json"
    stamp = path.stat().st_mtime_ns
    weights = tmp_path / "task_code" / "adapter" / "adapter_model.safetensors"
    adapter = weights.read_bytes()
    rows_at = argv.index("--rows")
    br.main(argv[:rows_at] + argv[rows_at + 2 :], lm=lm)
    assert path.stat().st_mtime_ns == stamp
    # ... and --rows adds rows to it on the existing adapter, without training again
    argv[rows_at + 1] = "concept:toxicity"
    br.main(argv, lm=lm)
    again = json.loads(path.read_text())
    assert set(again["rows"]) == set(one["rows"]) | {"logodds:concept:toxicity"}
    assert again["rows"]["logodds:advice"] == one["rows"]["logodds:advice"]
    assert weights.read_bytes() == adapter
