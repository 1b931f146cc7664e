from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import record
from geomsafe.cli import main
from geomsafe.errors import GeomsafeError
from geomsafe.guard import GUARDS, GuardConfig
from geomsafe.testing import tiny_model
from geomsafe.train import finetune
from geomsafe.train.data import load_data
from geomsafe.train.lora import make_peft_model
from geomsafe.train.outdir import work_dir
from geomsafe.train.trainer import PadCollator
from guard_helpers import custom_guard_kind
from train_helpers import REPEAT, StandIn, cfg, learnable, lm_atlas


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_loss_falls_adapter_reloads(tmp_path, family):
    from peft import PeftModel

    lm = learnable(family)
    res = finetune(lm, REPEAT, out=tmp_path / "run", config=cfg(max_steps=24), progress=False)
    assert res.metrics["steps"] == 24 and len(res.geometry_log) == 24
    assert res.metrics["final_loss"] < 0.5 * res.metrics["first_loss"]
    assert [r["step"] for r in res.geometry_log] == list(range(1, 25))
    out = tmp_path / "run"
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "run.json",
        "geometry_log.jsonl",
    } <= {p.name for p in out.iterdir()}
    assert not work_dir(out).exists()
    fresh = learnable(family)  # same seed -> same base weights
    reloaded = PeftModel.from_pretrained(fresh.model, str(out)).eval()
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = res.lm.model(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
        base = learnable(family).model(input_ids=ids).logits
    assert torch.allclose(want, got, atol=1e-5)
    assert not torch.allclose(base, got, atol=1e-3)  # the adapter changed the model
    run = json.loads((out / "run.json").read_text())
    assert run["provenance"]["seed"] == 0 and run["provenance"]["data_hash"]
    assert run["provenance"]["geomsafe_version"] and len(run["geometry_log"]) == 24
    lines = (out / "geometry_log.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == run["geometry_log"]


def test_guard_objects_penalty_after_step_and_log(tmp_path):
    lm = tiny_model("llama")
    guard = StandIn(weight=0.5)
    res = finetune(
        lm,
        REPEAT,
        out=tmp_path / "run",
        guard=[guard],
        atlas=lm_atlas(lm),
        guard_concepts="toxicity,deception",
        config=cfg(max_steps=5),
        progress=False,
    )
    assert guard.steps == 5 and guard.forwards == 5  # training forwards only
    rows = res.geometry_log
    assert len(rows) == 5
    for row in rows:
        assert {
            "step",
            "loss",
            "penalty",
            "lr",
            "step_time_s",
            "proj/toxicity",
            "proj/deception",
            "standin/lora_sq",
            "standin/penalty",
            "lora_sq",
        } <= set(row)
        assert not any(key.startswith("monitor/") for key in row)
    assert rows[0]["penalty"] == 0 and rows[-1]["penalty"] > 0  # B is zero at step 1
    assert res.guards == ["standin"] and res.concepts == ["toxicity", "deception"]
    assert set(res.projection_change()) == {"toxicity", "deception"}
    # a huge weight keeps the LoRA update near zero: the penalty is really in the loss
    strong = StandIn(weight=1e4)
    res2 = finetune(
        lm, REPEAT, out=tmp_path / "run2", guard=[strong], config=cfg(max_steps=10), progress=False
    )
    res3 = finetune(
        lm,
        REPEAT,
        out=tmp_path / "run3",
        guard=[StandIn(weight=0.0)],
        config=cfg(max_steps=10),
        progress=False,
    )
    strong_sq = res2.geometry_log[-1]["standin/lora_sq"]
    assert strong_sq < 0.2 * res3.geometry_log[-1]["standin/lora_sq"]


def manual_step(model, batch, atlas, weight: float) -> dict[str, float]:
    """The geometry-log values of one step on ``batch`` for the monitor (toxicity at layer 1,
    deception at layer 2) and the projection and covariance guards (both concepts at layers
    1 and 2, target helpfulness), computed directly from the residual stream."""
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        with record(model, [1, 2]) as adapted:
            model(**kwargs)
        with model.disable_adapter(), record(model, [1, 2]) as base:
            model(**kwargs)
    mask = batch["labels"] != -100
    out = {}
    for name, layer in (("toxicity", 1), ("deception", 2)):
        out[f"proj/{name}"] = float((adapted[layer][mask] @ atlas.direction(name, layer)).mean())
    projection = covariance = 0.0
    for layer in (1, 2):
        harmful = atlas.matrix(layer, ["toxicity", "deception"])
        diff = (adapted[layer] - base[layer])[mask] @ harmful.T
        projection += float(diff.pow(2).sum(-1).mean())
        ph = adapted[layer][mask].double() @ harmful.double().T
        pt = adapted[layer][mask].double() @ atlas.matrix(layer, ["helpfulness"]).double().T
        c = (pt - pt.mean(0)).T @ (ph - ph.mean(0)) / ph.shape[0]
        covariance += float(c.pow(2).sum())
    out["projection/penalty"] = weight * projection
    out["covariance/penalty"] = weight * covariance
    out["penalty"] = out["projection/penalty"] + out["covariance/penalty"]
    return out


def test_geometry_log_values_match_a_direct_computation(tmp_path):
    lm = tiny_model("llama")
    atlas = lm_atlas(lm)
    atlas.stats["deception"]["best_layer"] = 2
    data = REPEAT[:4]
    batch = PadCollator(0)(load_data(data, lm.tokenizer).features)  # every step: all 4 examples
    kw = dict(
        guard="orthogonal,projection,covariance",
        guard_concepts="toxicity,deception",
        atlas=atlas,
        guard_config=GuardConfig(layers=[1, 2], weight=3.0),
        progress=False,
    )
    const = dict(lr_scheduler="constant")
    run = finetune(lm, data, out=tmp_path / "run", config=cfg(max_steps=2, **const), **kw)
    one = finetune(lm, data, out=tmp_path / "one", config=cfg(max_steps=1, **const), **kw)
    # step 2 runs on the weights after step 1, i.e. those of the one-step run
    row = run.geometry_log[1]
    for key, value in manual_step(one.lm.model, batch, atlas, 3.0).items():
        assert row[key] == pytest.approx(value, rel=1e-4, abs=1e-12), key
    for guard in ("orthogonal", "projection", "covariance"):
        assert row[f"{guard}/proj/toxicity"] == pytest.approx(row["proj/toxicity@1"], rel=1e-5)
    assert row["proj/toxicity"] == pytest.approx(row["proj/toxicity@1"], rel=1e-5)
    assert row["proj/deception"] == pytest.approx(row["proj/deception@2"], rel=1e-5)
    # step 1 runs on the base model (LoRA B = 0)
    first = run.geometry_log[0]
    fresh = make_peft_model(tiny_model("llama").model, cfg())
    for key, value in manual_step(fresh, batch, atlas, 3.0).items():
        assert first[key] == pytest.approx(value, rel=1e-4, abs=1e-12), key
    assert first["projection/penalty"] == 0.0 and first["covariance/penalty"] > 0


def test_resume_continues_step_count_and_matches_uninterrupted(tmp_path):
    lm = tiny_model("llama")
    const = dict(lr_scheduler="constant")  # the lr must not depend on max_steps here
    full = finetune(
        lm, REPEAT, out=tmp_path / "full", config=cfg(max_steps=8, **const), progress=False
    )
    first = finetune(
        lm, REPEAT, out=tmp_path / "run", config=cfg(max_steps=4, **const), progress=False
    )
    assert first.metrics["steps"] == 4
    with pytest.raises(GeomsafeError, match="--resume"):
        finetune(lm, REPEAT, out=tmp_path / "run", config=cfg(max_steps=8, **const), progress=False)
    res = finetune(
        lm,
        REPEAT,
        out=tmp_path / "run",
        config=cfg(max_steps=8, **const),
        resume=True,
        progress=False,
    )
    assert res.metrics["resumed_from_step"] == 4 and res.metrics["steps"] == 8
    assert [r["step"] for r in res.geometry_log] == list(range(1, 9))
    want = [r["loss"] for r in full.geometry_log]
    got = [r["loss"] for r in res.geometry_log]
    assert got == pytest.approx(want, rel=1e-4)


def test_failed_run_leaves_no_out_folder_and_can_resume(tmp_path):
    lm = tiny_model("llama")
    out = tmp_path / "run"

    def fail_at(step: int) -> None:
        with pytest.raises(RuntimeError, match="boom"):
            guard = [StandIn(fail_at_step=step)]
            finetune(lm, REPEAT, out=out, guard=guard, config=cfg(max_steps=6), progress=False)

    fail_at(1)  # before the first checkpoint
    assert sorted(tmp_path.iterdir()) == []
    fail_at(3)  # after checkpoint-2
    assert not out.exists() and (work_dir(out) / "checkpoints" / "checkpoint-2").is_dir()
    res = finetune(
        lm, REPEAT, out=out, guard=[StandIn()], config=cfg(max_steps=6), resume=True, progress=False
    )
    assert res.metrics["resumed_from_step"] == 2 and res.metrics["steps"] == 6
    assert [r["step"] for r in res.geometry_log] == list(range(1, 7))
    assert out.is_dir() and not work_dir(out).exists()
    with pytest.raises(GeomsafeError, match="data_hash"):
        finetune(lm, REPEAT[:3], out=out, config=cfg(max_steps=8), resume=True, progress=False)


def test_on_the_fly_atlas_is_extracted_and_saved(tmp_path):
    lm = tiny_model("llama")
    concept = tmp_path / "tox.jsonl"
    header = {"concept": "toxicity", "kind": "harmful"}
    pairs = [{"prompt": f"p{i}", "positive": f"bad {i}", "negative": f"good {i}"} for i in range(6)]
    concept.write_text("\n".join(json.dumps(x) for x in [header, *pairs]))
    res = finetune(
        lm,
        REPEAT,
        out=tmp_path / "run",
        guard="steer",
        guard_concepts=str(concept),
        config=cfg(max_steps=2),
        progress=False,
    )
    assert res.atlas is not None and res.atlas.harmful == ["toxicity"]
    saved = FeatureAtlas.load(tmp_path / "run" / "atlas")
    assert torch.allclose(saved.directions["toxicity"], res.atlas.directions["toxicity"])
    prov = json.loads((tmp_path / "run" / "run.json").read_text())["provenance"]
    assert prov["atlas"]["extracted_for_run"] and prov["guard_concepts"] == ["toxicity"]
    assert prov["guards"] == ["steer"] and prov["guard_config"]["concepts"] == ["toxicity"]
    best = res.atlas.best_layer("toxicity")
    assert prov["atlas"]["layers_used"] == {"toxicity": best}
    assert "proj/toxicity" in res.geometry_log[0] and "steer/proj/toxicity" in res.geometry_log[0]


def test_bad_guard_and_atlas_inputs(tmp_path):
    lm = tiny_model("llama")
    with pytest.raises(GeomsafeError, match="unknown guard"):
        finetune(lm, REPEAT, out=tmp_path / "a", guard="nope", progress=False)
    with pytest.raises(GeomsafeError, match="no direction for"):
        finetune(
            lm,
            REPEAT,
            out=tmp_path / "b",
            atlas=lm_atlas(lm),
            guard_concepts="hate",
            progress=False,
        )
    with pytest.raises(GeomsafeError, match="not a guard"):
        finetune(lm, REPEAT, out=tmp_path / "c", guard=[object()], progress=False)
    assert sorted(tmp_path.iterdir()) == []


def cli_args(tmp_path, lm, *extra: str) -> list[str]:
    folder = tmp_path / "model"
    if not folder.is_dir():
        lm.model.save_pretrained(folder)
        lm.tokenizer.save_pretrained(folder)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "completion": c}) for p, c in REPEAT))
    args = ["finetune", "--model", str(folder), "--data", str(data)]
    return [*args, "--max-steps", "3", "--lr", "0.01", "--no-progress", *extra]


def test_cli_finetune_prints_table(tmp_path):
    args = cli_args(tmp_path, tiny_model("llama"), "--out", str(tmp_path / "run"))
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "steps" in res.stdout and "time/step" in res.stdout
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    again = CliRunner().invoke(main, args)  # the folder holds a run now
    assert again.exit_code == 2 and "--overwrite" in again.stderr


@pytest.mark.parametrize(
    "kind",
    ["orthogonal", "steer", "ablate", "projection", "covariance", "orthogonal,steer,projection"],
)
def test_real_guards_plug_in(tmp_path, kind):
    lm = tiny_model("llama")
    atlas = lm_atlas(lm)
    res = finetune(
        lm,
        REPEAT,
        out=tmp_path / "run",
        guard=kind,
        atlas=atlas,
        guard_concepts="toxicity,deception",
        config=cfg(max_steps=3),
        progress=False,
    )
    assert res.guards == kind.split(",") and len(res.geometry_log) == 3
    for row in res.geometry_log:
        assert {"loss", "penalty", "proj/toxicity", "proj/deception"} <= set(row)
        assert all(f"{k}/proj/toxicity" in row for k in kind.split(","))
        assert torch.isfinite(torch.tensor(row["loss"]))
    if "projection" in kind:
        assert res.geometry_log[-1]["penalty"] > 0
    if "orthogonal" in kind:  # after_step ran on the trained model: B of o_proj/down_proj at
        u = torch.stack([atlas.direction(n, 1) for n in ("toxicity", "deception")])  # layer 1
        block = res.lm.model.base_model.model.model.layers[1]
        for module in (block.self_attn.o_proj, block.mlp.down_proj):
            b = module.lora_B["default"].weight
            assert b.abs().max() > 1e-4 and (u @ b).abs().max() < 1e-5


def test_a_registered_guard_works_in_finetune_and_the_cli(tmp_path):
    lm = tiny_model("llama")
    atlas = lm_atlas(lm)
    atlas.save(tmp_path / "atlas")
    with custom_guard_kind("square"):
        res = finetune(
            lm,
            REPEAT,
            out=tmp_path / "api",
            guard="square,steer",
            atlas=atlas,
            config=cfg(max_steps=2),
            progress=False,
        )
        assert res.guards == ["square", "steer"]
        assert res.geometry_log[0]["square/penalty"] > 0
        assert res.geometry_log[0]["penalty"] == pytest.approx(
            res.geometry_log[0]["square/penalty"]
        )
        extra = ["--out", str(tmp_path / "cli"), "--guard", "square", "--atlas"]
        args = cli_args(tmp_path, lm, *extra, str(tmp_path / "atlas"), "--guard-weight", "2")
        out = CliRunner().invoke(main, args)
        assert out.exit_code == 0, out.output
        assert "guards" in out.stdout and "square" in out.stdout
        run = json.loads((tmp_path / "cli" / "run.json").read_text())
        assert run["provenance"]["guards"] == ["square"]
        assert run["provenance"]["guard_config"]["weight"] == 2.0
        assert run["geometry_log"][0]["square/penalty"] > 0
    assert "square" not in GUARDS
    args = cli_args(tmp_path, lm, "--out", str(tmp_path / "gone"), "--guard", "square")
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 2 and "unknown guard 'square'" in out.stderr


def test_cli_guard_options_reach_the_guard_config(tmp_path):
    lm = tiny_model("llama")
    atlas = lm_atlas(lm)
    atlas.save(tmp_path / "atlas")
    extra = [
        *("--out", str(tmp_path / "run"), "--guard", "ablate,steer", "--atlas"),
        *(str(tmp_path / "atlas"), "--guard-concepts", "toxicity", "--guard-layers", "0:2"),
        *("--guard-schedule", "front", "--schedule-steps", "1", "--schedule-floor", "0.5"),
        *("--allow", "helpfulness", "--steer-coeff", "0.3", "--steer-scale", "unit"),
    ]
    out = CliRunner().invoke(main, cli_args(tmp_path, lm, *extra))
    assert out.exit_code == 0, out.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    config = run["provenance"]["guard_config"]
    assert config["layers"] == [0, 1] and config["allow"] == ["helpfulness"]
    assert config["schedule"] == "front" and config["schedule_floor"] == 0.5
    assert config["steer_coeff"] == 0.3 and config["source"] == "atlas"
    assert [r["strength"] for r in run["geometry_log"]] == [1.0, 0.5, 0.5]
    assert config["pilot"]["steps"] == GuardConfig().pilot.steps  # defaults from the dataclass
    for bad, message in [
        (["--guard-layers", "a-b"], "bad layers 'a-b': use e.g. '3,4,5', a band '3:6' or 'best'"),
        (["--schedule-floor", "2"], "schedule_floor must be in [0, 1], not 2.0"),
        (["--allow", "nothing"], "atlas has no direction for allowed concept nothing"),
    ]:
        args = cli_args(tmp_path, lm, "--out", str(tmp_path / "bad"), "--guard", "ablate")
        out = CliRunner().invoke(main, [*args, "--atlas", str(tmp_path / "atlas"), *bad])
        assert out.exit_code == 2 and "Traceback" not in out.stderr, out.output
        assert out.stderr.strip().splitlines()[-1] == f"geomsafe: error: {message}"
