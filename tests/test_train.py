from __future__ import annotations

import contextlib
import importlib.util
import json

import pytest
import torch
from click.testing import CliRunner

from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import record
from geomsafe.cli import main
from geomsafe.errors import GeomsafeError
from geomsafe.testing import tiny_model
from geomsafe.train import (
    TrainConfig,
    finetune,
    heldout_loss,
    load_data,
    peft_layer_template,
    train_steps,
)
from geomsafe.train import guards as guardlib
from geomsafe.train.outdir import work_dir

HAS_GUARD = importlib.util.find_spec("geomsafe.guard") is not None
REPEAT = [("say a", "abab abab abab"), ("say b", "bcbc bcbc bcbc"), ("say c", "cdcd cdcd")] * 4
FAST = dict(batch_size=4, learning_rate=1e-2, save_steps=2, logging_steps=1)


def random_atlas(lm, names=("toxicity", "deception"), targets=("helpfulness",), seed=0):
    gen = torch.Generator().manual_seed(seed)
    layers = list(range(lm.n_layers))
    dirs, kinds, stats = {}, {}, {}
    for name, kind in [(n, "harmful") for n in names] + [(t, "target") for t in targets]:
        d = torch.randn(len(layers), lm.d_model, generator=gen)
        dirs[name] = d / d.norm(dim=-1, keepdim=True)
        kinds[name] = kind
        stats[name] = {"best_layer": 1}
    return FeatureAtlas(layers, dirs, kinds, stats, {"model_spec": lm.spec})


class StandIn:
    """A guard with the geomsafe.guard interface: penalises the squared norm of the LoRA B
    weights (zero at init), counts its hook calls and its after_step calls."""

    name = "standin"

    def __init__(self, weight=1.0, fail_at_step=None):
        self.weight, self.fail_at_step = weight, fail_at_step
        self.forwards = self.steps = 0
        self.active = False
        self.last = 0.0

    @contextlib.contextmanager
    def install(self, model):
        self.active = True
        handle = model.register_forward_hook(
            lambda *a: setattr(self, "forwards", self.forwards + 1)
        )
        try:
            yield
        finally:
            handle.remove()
            self.active = False

    def penalty(self, model, inputs):
        assert not self.active and "labels" in inputs and "attention_mask" in inputs
        p = sum((p**2).sum() for n, p in model.named_parameters() if "lora_B" in n)
        self.last = float(p.detach())
        return self.weight * p

    def after_step(self, model):
        self.steps += 1
        if self.fail_at_step is not None and self.steps >= self.fail_at_step:
            raise RuntimeError("boom")

    def log(self):
        return {"penalty": self.weight * self.last, "lora_sq": self.last}


def learnable(family="llama"):
    """A tiny model whose LM head is sharp enough for LoRA to fit the data in a few steps
    (random-init heads give near-uniform logits that no residual change can sharpen)."""
    lm = tiny_model(family)
    with torch.no_grad():
        lm.model.get_output_embeddings().weight.mul_(30)
    return lm


def cfg(**kw):
    return TrainConfig(**{**FAST, **kw})


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_loss_falls_adapter_reloads(tmp_path, family):
    from peft import PeftModel

    lm = learnable(family)
    res = finetune(lm, REPEAT, tmp_path / "run", config=cfg(max_steps=24), progress=False)
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


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_logged_loss_is_the_mean_response_loss(tmp_path, grad_accum):
    lm = tiny_model("llama")
    data = load_data(REPEAT[:6], lm.tokenizer)
    expected = heldout_loss(lm, data)  # token-mean CE of the base model on the 6 examples
    guard = StandIn(weight=0.0)
    config = cfg(batch_size=6 // grad_accum, grad_accum=grad_accum, max_steps=1)
    res = finetune(lm, REPEAT[:6], tmp_path / "run", guard=[guard], config=config, progress=False)
    assert guard.forwards == grad_accum and guard.steps == 1
    assert res.geometry_log[0]["loss"] == pytest.approx(expected, rel=1e-4)


def test_guard_hooks_penalty_after_step_and_log(tmp_path):
    lm = tiny_model("llama")
    atlas = random_atlas(lm)
    guard = StandIn(weight=0.5)
    res = finetune(
        lm,
        REPEAT,
        tmp_path / "run",
        guard=[guard],
        atlas=atlas,
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
        } <= set(row)
    assert rows[0]["penalty"] == 0 and rows[-1]["penalty"] > 0  # B is zero at step 1
    assert res.guards == ["standin"] and res.concepts == ["toxicity", "deception"]
    assert set(res.projection_change()) == {"toxicity", "deception"}
    # a huge weight keeps the LoRA update near zero: the penalty is really in the loss
    strong = StandIn(weight=1e4)
    res2 = finetune(
        lm, REPEAT, tmp_path / "run2", guard=[strong], config=cfg(max_steps=10), progress=False
    )
    res3 = finetune(
        lm,
        REPEAT,
        tmp_path / "run3",
        guard=[StandIn(weight=0.0)],
        config=cfg(max_steps=10),
        progress=False,
    )
    strong_sq = res2.geometry_log[-1]["standin/lora_sq"]
    assert strong_sq < 0.2 * res3.geometry_log[-1]["standin/lora_sq"]


def test_projection_monitor_matches_manual_measurement(tmp_path):
    lm = tiny_model("llama")
    atlas = random_atlas(lm)
    data = load_data(REPEAT[:4], lm.tokenizer)
    res = finetune(
        lm, REPEAT[:4], tmp_path / "run", atlas=atlas, config=cfg(max_steps=1), progress=False
    )
    # step 1 runs on the base model (LoRA B starts at zero) over the whole data (one batch)
    from geomsafe.train import PadCollator

    batch = PadCollator(0)(data.features)
    with record(lm.model, [1], lm.layer_template) as store:
        lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    mask = batch["labels"] != -100
    hidden = store[1][mask]
    for name in ("toxicity", "deception"):
        want = float((hidden @ atlas.direction(name, 1)).mean())
        assert res.geometry_log[0][f"proj/{name}"] == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_resume_continues_step_count_and_matches_uninterrupted(tmp_path):
    lm = tiny_model("llama")
    const = dict(lr_scheduler="constant")  # the lr must not depend on max_steps here
    full = finetune(lm, REPEAT, tmp_path / "full", config=cfg(max_steps=8, **const), progress=False)
    first = finetune(lm, REPEAT, tmp_path / "run", config=cfg(max_steps=4, **const), progress=False)
    assert first.metrics["steps"] == 4
    with pytest.raises(GeomsafeError, match="--resume"):
        finetune(lm, REPEAT, tmp_path / "run", config=cfg(max_steps=8, **const), progress=False)
    res = finetune(
        lm, REPEAT, tmp_path / "run", config=cfg(max_steps=8, **const), resume=True, progress=False
    )
    assert res.metrics["resumed_from_step"] == 4 and res.metrics["steps"] == 8
    assert [r["step"] for r in res.geometry_log] == list(range(1, 9))
    want = [r["loss"] for r in full.geometry_log]
    got = [r["loss"] for r in res.geometry_log]
    assert got == pytest.approx(want, rel=1e-4)


def test_failed_run_leaves_no_out_folder_and_can_resume(tmp_path):
    lm = tiny_model("llama")
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):  # fails before the first checkpoint
        finetune(
            lm,
            REPEAT,
            out,
            guard=[StandIn(fail_at_step=1)],
            config=cfg(max_steps=6),
            progress=False,
        )
    assert sorted(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="boom"):  # fails after checkpoint-2
        finetune(
            lm,
            REPEAT,
            out,
            guard=[StandIn(fail_at_step=3)],
            config=cfg(max_steps=6),
            progress=False,
        )
    assert not out.exists() and (work_dir(out) / "checkpoints" / "checkpoint-2").is_dir()
    res = finetune(
        lm, REPEAT, out, guard=[StandIn()], config=cfg(max_steps=6), resume=True, progress=False
    )
    assert res.metrics["resumed_from_step"] == 2 and res.metrics["steps"] == 6
    assert [r["step"] for r in res.geometry_log] == list(range(1, 7))
    assert out.is_dir() and not work_dir(out).exists()
    with pytest.raises(GeomsafeError, match="data_hash"):
        finetune(lm, REPEAT[:3], out, config=cfg(max_steps=8), resume=True, progress=False)


def test_train_steps_times_each_step():
    lm = tiny_model("qwen2")
    guard = StandIn()
    times = train_steps(lm, REPEAT, [guard], cfg(), n_steps=3)
    assert len(times) == 3 and all(t > 0 for t in times) and guard.steps == 3


def test_on_the_fly_atlas_is_extracted_and_saved(tmp_path, monkeypatch):
    lm = tiny_model("llama")
    concept = tmp_path / "tox.jsonl"
    header = {"concept": "toxicity", "kind": "harmful"}
    pairs = [{"prompt": f"p{i}", "positive": f"bad {i}", "negative": f"good {i}"} for i in range(6)]
    concept.write_text("\n".join(json.dumps(x) for x in [header, *pairs]))
    built = {}

    def fake_build(kinds, atlas, config, layer_template):
        built.update(kinds=list(kinds), atlas=atlas, template=layer_template)
        return [StandIn()]

    monkeypatch.setattr(guardlib, "build", fake_build)
    monkeypatch.setattr(guardlib, "default_guard_config", lambda names: None)
    res = finetune(
        lm,
        REPEAT,
        tmp_path / "run",
        guard="orthogonal",
        guard_concepts=str(concept),
        config=cfg(max_steps=2),
        progress=False,
    )
    assert built["kinds"] == ["orthogonal"] and built["template"] == peft_layer_template(lm)
    assert built["atlas"].harmful == ["toxicity"]
    saved = FeatureAtlas.load(tmp_path / "run" / "atlas")
    assert torch.allclose(saved.directions["toxicity"], built["atlas"].directions["toxicity"])
    prov = json.loads((tmp_path / "run" / "run.json").read_text())["provenance"]
    assert prov["atlas"]["extracted_for_run"] and prov["guard_concepts"] == ["toxicity"]
    assert "proj/toxicity" in res.geometry_log[0]


def test_bad_guard_and_atlas_inputs(tmp_path):
    lm = tiny_model("llama")
    with pytest.raises(GeomsafeError, match="unknown guard"):
        finetune(lm, REPEAT, tmp_path / "a", guard="nope", progress=False)
    with pytest.raises(GeomsafeError, match="no direction for"):
        finetune(
            lm,
            REPEAT,
            tmp_path / "b",
            atlas=random_atlas(lm),
            guard_concepts="hate",
            progress=False,
        )
    assert sorted(tmp_path.iterdir()) == []


def test_cli_finetune_prints_table(tmp_path):
    lm = tiny_model("llama")
    folder = tmp_path / "model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "completion": c}) for p, c in REPEAT))
    args = [
        "finetune",
        "--model",
        str(folder),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "3",
        "--lr",
        "0.01",
        "--no-progress",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "steps" in res.stdout and "time/step" in res.stdout
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    again = CliRunner().invoke(main, args)  # the folder holds a run now
    assert again.exit_code == 2 and "--overwrite" in again.stderr


@pytest.mark.skipif(not HAS_GUARD, reason="geomsafe.guard not written yet")
@pytest.mark.parametrize(
    "kind", ["orthogonal", "steer", "projection", "covariance", "orthogonal,steer,projection"]
)
def test_real_guards_plug_in(tmp_path, kind):
    lm = tiny_model("llama")
    atlas = random_atlas(lm)
    res = finetune(
        lm,
        REPEAT,
        tmp_path / "run",
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
