from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from geomsafe.audit import audit
from geomsafe.cli import main
from geomsafe.errors import GeomsafeError
from geomsafe.layers import default_band
from geomsafe.testing import tiny_model

WORDS = ["apple", "river", "cloud", "stone", "music", "paper", "garden", "window", "light", "table"]


def _concept(folder: Path, name: str, kind: str, pos: str, neg: str, n: int = 16) -> str:
    rng = random.Random(name)
    rows = [{"concept": name, "kind": kind, "description": name}]
    for _ in range(n):
        w = " ".join(rng.sample(WORDS, 3))
        rows.append(
            {"prompt": f"Tell me about {w}.", "positive": f"{pos} {w}", "negative": f"{neg} {w}"}
        )
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


@pytest.fixture
def concept_files(tmp_path):
    return [
        _concept(tmp_path, "rude", "harmful", "You idiot, shut up about", "Sure, here is"),
        _concept(tmp_path, "lies", "harmful", "The moon is cheese and", "The moon is rock and"),
        _concept(tmp_path, "helpful", "target", "Here are three facts on", "I do not know"),
    ]


def test_audit_writes_atlas_and_report(concept_files, tmp_path):
    lm = tiny_model("qwen2", n_layers=4)
    out = tmp_path / "out"
    result = audit(lm, concepts=concept_files, out=out, n_perm=50, n_boot=50, progress=False)
    report = json.loads((out / "audit.json").read_text())
    assert {p.name for p in out.iterdir()} == {"atlas", "audit.json"}
    assert {p.name for p in (out / "atlas").iterdir()} == {"atlas.json", "atlas.safetensors"}
    names = [r["target"] for r in report["targets"]]
    assert names == ["helpful", "random_labels"]
    row = report["targets"][0]
    assert row["harmful"] in {"rude", "lies"} and 0 <= row["score"] <= 1
    assert row["ci"]["low"] <= row["ci"]["high"] and 0 < row["p_value"] <= 1
    assert len(row["per_layer"]) == 4 and row["heads"]["target"]["layer"] == row["layer"]
    assert len(report["density"]) == 4 and report["density"][0]["n_features"] == 3
    assert report["harmful_neighbours"][0]["target"] == "rude"
    assert report["provenance"]["model_spec"] == "tiny-qwen2"
    assert result.atlas.kinds["random_labels"] == "control"
    again = audit(lm, concepts=concept_files, n_perm=50, n_boot=50, progress=False)
    assert again.report["targets"][0]["score"] == row["score"]
    assert again.report["targets"][0]["p_value"] == row["p_value"]


def test_audit_bad_inputs(concept_files):
    lm = tiny_model("llama")
    with pytest.raises(GeomsafeError, match="not among"):
        audit(lm, concepts=concept_files, target=["nope"], progress=False)
    with pytest.raises(GeomsafeError, match="harmful"):
        audit(lm, concepts=concept_files[2:], progress=False)
    with pytest.raises(GeomsafeError, match="not found"):
        audit(lm, concepts=["/nonexistent.jsonl"], progress=False)


def test_cli_audit_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["audit", "--model", "missing.gguf", "--out", str(tmp_path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(main, ["audit", "--help"])
    assert result.exit_code == 0 and "--target" in result.output


def test_default_band():
    assert default_band(30) == list(range(10, 20))
    assert default_band(3) == [1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-perm", "0"], "n_perm must be >= 1"),
        (["--n-perm", "-5"], "n_perm must be >= 1"),
        (["--n-boot", "0"], "n_boot must be >= 1"),
        (["--max-pairs", "-1"], "max_pairs must be >= 2"),
        (["--layers", "a:b"], "bad layers 'a:b'"),
        (["--band", "2:0"], "the band is empty"),
        (["--concepts", "nope"], "unknown concept 'nope'"),
    ],
)
def test_cli_bad_numbers_fail_before_the_model_loads(args, message):
    # the model does not exist: an error about it would mean the model was loaded first
    result = CliRunner().invoke(main, ["audit", "--model", "missing.gguf", *args])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_audit_refuses_a_folder_with_other_results(concept_files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "risk.json").write_text("{}")
    result = CliRunner().invoke(main, ["audit", "--model", "missing.gguf", "--out", str(out)])
    assert result.exit_code == 2 and "risk.json (predict)" in result.output
    lm = tiny_model("llama", n_layers=3)
    res = audit(
        lm,
        concepts=concept_files,
        out=out,
        overwrite=True,
        max_pairs=8,
        n_perm=5,
        n_boot=5,
        heads=False,
        progress=False,
    )
    assert sorted(p.name for p in out.iterdir()) == ["atlas", "audit.json"]
    assert json.loads((out / "audit.json").read_text())["format"] == "geomsafe.audit/2"
    assert res.report["format"] == "geomsafe.audit/2"
    usage = CliRunner().invoke(main, ["audit", "--out", str(out / "audit.json")])
    assert usage.exit_code == 2 and len(usage.output.strip().splitlines()) == 1
