"""geomsafe.diff: activation differences tuned − base as an atlas (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
from click.testing import CliRunner

import geomsafe
import geomsafe.adapters
from geomsafe.artefacts import ATLAS_DIR, DIFF_JSON, read_json
from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import capture
from geomsafe.cli import main
from geomsafe.diff import DiffConfig, DiffResult, diff
from geomsafe.diff.inputs import load_examples
from geomsafe.diff.run import MEAN, pc_name
from geomsafe.diff.shifts import common_basis
from geomsafe.errors import GeomsafeError
from geomsafe.firewall.calibration import atlas_checks
from geomsafe.guard import GuardConfig, build_guards
from geomsafe.projection import project
from geomsafe.testing import save_tiny, tiny_model

LAYER = 1  # the block whose down_proj the planted adapter writes through
SMALL = dict(max_examples=8, max_length=48, batch_size=4)


def planted_adapter(folder: Path, direction: torch.Tensor | None, width: int = 32) -> Path:
    """A rank-1 LoRA on block LAYER's down_proj that writes ``direction`` (times a per-token
    scalar) into the residual stream; ``None``: a zero adapter (peft's init, B = 0)."""
    lm = tiny_model(width=width)
    config = peft.LoraConfig(r=1, lora_alpha=1, target_modules=["down_proj"])
    config.layers_to_transform = [LAYER]
    model = peft.get_peft_model(lm.model, config)
    if direction is not None:
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_A" in name:
                    p.copy_(torch.randn(p.shape, generator=g))
                if "lora_B" in name:
                    p.copy_(4.0 * direction.reshape(-1, 1))
    model.save_pretrained(str(folder))
    return folder


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def off_common(examples, n: int = 8, seed: int = 5) -> torch.Tensor:
    """A random unit direction orthogonal to the base's top ``n`` uncentred principal
    directions of the response tokens at LAYER."""
    acts = capture(
        tiny_model(), examples, layers=[LAYER], per_token=True, max_length=48, progress=False
    )
    x = torch.cat(acts.tokens)[:, 0].double()
    basis, _ = common_basis(x.T @ x, n)
    v = torch.randn(32, generator=torch.Generator().manual_seed(seed)).double()
    v = v - basis.double().T @ (basis.double() @ v)
    return unit(v).float()


@pytest.fixture(scope="module")
def examples():
    return load_examples(DiffConfig(**SMALL))[0]


@pytest.mark.parametrize("remove", ["none", "base_pcs"])
def test_a_planted_drift_is_recovered(tmp_path, examples, remove):
    u = off_common(examples)
    adapter = planted_adapter(tmp_path / "a", u)
    result = diff(tiny_model(), adapter, progress=False, remove=remove, **SMALL)
    atlas = result.atlas
    assert atlas is not None and atlas.provenance["kind"] == "diff"
    for name in (MEAN, pc_name(0)):
        cos = float(atlas.direction(name, LAYER) @ u)
        assert abs(cos) > 0.9, (name, cos)
        assert atlas.best_layer(name) >= LAYER
    row = result.rows[LAYER]
    assert row["explained"][0] > 0.9
    # below the adapted block nothing moves: exact zeros, zero rows
    assert result.rows[0]["diff_rms_raw"] == 0.0
    assert float(atlas.direction(MEAN, 0).norm()) == 0.0


def test_base_pcs_removes_the_common_directions(tmp_path, examples):
    u = unit(torch.randn(32, generator=torch.Generator().manual_seed(1)))
    adapter = planted_adapter(tmp_path / "a", u)
    result = diff(tiny_model(), adapter, progress=False, base_pcs=4, **SMALL)
    acts = capture(
        tiny_model(), examples, layers=[LAYER], per_token=True, max_length=48, progress=False
    )
    x = torch.cat(acts.tokens)[:, 0].double()
    basis, share = common_basis(x.T @ x, 4)
    mean = result.atlas.direction(MEAN, LAYER)
    assert float((basis @ mean).abs().max()) < 1e-4  # orthogonal to the common directions
    assert abs(result.rows[LAYER]["base_share_removed"] - share) < 1e-4
    raw = diff(tiny_model(), adapter, progress=False, remove="none", **SMALL)
    assert raw.rows[LAYER]["diff_share_removed"] == 0.0
    assert result.rows[LAYER]["mean_norm"] <= raw.rows[LAYER]["mean_norm_raw"] + 1e-6


def test_a_zero_adapter_gives_zero_differences(tmp_path):
    adapter = planted_adapter(tmp_path / "a", None)
    with pytest.warns(UserWarning, match="changes no activation there"):
        result = diff(tiny_model(), adapter, out=tmp_path / "out", progress=False, **SMALL)
    assert result.atlas is None
    assert all(r["diff_rms_raw"] == 0.0 and r["mean_norm_raw"] == 0.0 for r in result.rows)
    assert not (tmp_path / "out" / ATLAS_DIR).exists()
    assert DiffResult.load(tmp_path / "out").atlas is None


def test_same_seed_same_numbers_and_provenance(tmp_path, examples):
    adapter = planted_adapter(tmp_path / "a", off_common(examples))
    one = diff(tiny_model(), adapter, out=tmp_path / "one", progress=False, **SMALL)
    two = diff(tiny_model(), adapter, out=tmp_path / "two", progress=False, **SMALL)
    assert one.rows == two.rows
    other = diff(tiny_model(), adapter, progress=False, seed=1, **SMALL)
    assert other.provenance["data_sha256"] != one.provenance["data_sha256"]
    payload = read_json(tmp_path / "one" / DIFF_JSON, "diff")
    assert payload["format"] == "geomsafe.diff/1"
    prov = payload["provenance"]
    assert len(prov["adapter_sha256"]) == 64 and len(prov["data_sha256"]) == 64
    assert prov["adapter_sha256"] == geomsafe.adapters.adapter_sha256(adapter)
    assert prov["layers"] == [0, 1, 2] and prov["hook_site"] == "decoder_layer_output"
    assert prov["token_rule"] == "response" and prov["model_spec"] == "tiny-llama"
    assert payload["config"]["max_examples"] == 8
    a, b = FeatureAtlas.load(tmp_path / "one"), FeatureAtlas.load(tmp_path / "two")
    assert all(torch.equal(a.directions[n], b.directions[n]) for n in a.directions)


def test_the_atlas_feeds_the_guards(tmp_path, examples):
    adapter = planted_adapter(tmp_path / "a", off_common(examples))
    diff(tiny_model(), adapter, out=tmp_path / "out", progress=False, components=2, **SMALL)
    atlas = FeatureAtlas.load(tmp_path / "out")
    assert atlas.harmful == [MEAN, pc_name(0), pc_name(1)]
    guards = build_guards(["ablate", "orthogonal"], atlas, GuardConfig(concepts=[MEAN]))
    assert len(guards) == 2
    # the firewall's checks and the projection of evaluate / predict take them by default
    checks = atlas_checks(atlas, width=32, n_layers=3)
    assert [c.concept for c in checks] == atlas.harmful
    assert all(c.layer == atlas.best_layer(c.concept) for c in checks)
    projections = project(tiny_model(), examples[:4], atlas)
    assert sorted(projections) == sorted(atlas.harmful)
    assert all(p.shape == (4,) for p in projections.values())


def test_python_face():
    assert geomsafe.diff.diff is diff and callable(geomsafe.diff)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(max_examples=0), "max_examples must be >= 1"),
        (dict(components=0), "components must be >= 1"),
        (dict(remove="whiten"), "remove must be one of"),
    ],
)
def test_bad_config_fails_before_the_model(tmp_path, options, message):
    adapter = planted_adapter(tmp_path / "a", None)
    with pytest.raises(GeomsafeError, match=message):
        diff("no-such-model", adapter, **options)


def test_bad_adapters_fail_before_any_forward(tmp_path):
    with pytest.raises(GeomsafeError, match="adapter folder not found"):
        diff("no-such-model", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeomsafeError, match="not a peft adapter folder"):
        diff("no-such-model", tmp_path / "empty")
    wide = planted_adapter(tmp_path / "wide", None, width=48)
    with pytest.raises(GeomsafeError, match="another base model"):
        diff(tiny_model(), wide, progress=False, **SMALL)
    adapter = planted_adapter(tmp_path / "a", None)
    with pytest.raises(GeomsafeError, match="components must be <= the model width 32"):
        diff(tiny_model(), adapter, progress=False, components=33, **SMALL)


def test_another_models_run_json_is_refused(tmp_path):
    adapter = planted_adapter(tmp_path / "a", None)
    run = {"format": "geomsafe.run/1", "provenance": {"model_class": "GPT2LMHeadModel"}}
    (adapter / "run.json").write_text(json.dumps(run))
    with pytest.raises(GeomsafeError, match="another base model .model_class"):
        diff(tiny_model(), adapter, progress=False, **SMALL)


def _cli(*args: str):
    return CliRunner().invoke(main, ["diff", *args])


def test_cli_end_to_end_and_bad_input(tmp_path, examples):
    model = str(save_tiny(tmp_path / "model"))
    adapter = str(planted_adapter(tmp_path / "a", off_common(examples)))
    out = tmp_path / "out"
    common = ["--model", model, "--max-examples", "8", "--max-length", "48", "--no-progress"]
    result = _cli(*common, "--adapter", adapter, "--out", str(out), "--seed", "0", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "drift_mean" in result.output
    assert (out / DIFF_JSON).is_file() and FeatureAtlas.load(out).harmful
    again = _cli(*common, "--adapter", adapter, "--out", str(out))
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert _cli(*common, "--adapter", adapter, "--out", str(out), "--overwrite").exit_code == 0
    wide = str(planted_adapter(tmp_path / "wide", None, width=48))
    for bad in (
        ["--adapter", str(tmp_path / "missing")],
        ["--adapter", adapter, "--max-examples", "0"],
        ["--adapter", adapter, "--components", "0"],
        ["--adapter", adapter, "--components", "33"],
        ["--adapter", wide],
    ):
        result = _cli(*common, *bad, "--out", str(tmp_path / "bad"))
        # (transformers' own "Loading weights" bar may come first when the model loads)
        errors = [line for line in result.output.splitlines() if "geomsafe: error: " in line]
        assert result.exit_code == 2, (bad, result.output)
        assert len(errors) == 1 and errors[0].startswith("geomsafe: error: "), result.output
        assert result.output.strip().endswith(errors[0]) and "Traceback" not in result.output
    assert not (tmp_path / "bad").exists()
