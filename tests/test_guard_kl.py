from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from transformers import Trainer

from geomsafe.cli import main
from geomsafe.errors import GeomsafeError
from geomsafe.guard import GuardConfig, KLGuard, build_guards
from geomsafe.guard.base import total_penalty
from geomsafe.guard.kl import BUILTIN_REFERENCE, token_kl
from geomsafe.guard.resolve import resolve_guards
from geomsafe.testing import tiny_model
from geomsafe.train import GuardCallback, GuardedTrainer, finetune
from geomsafe.train.data import load_data
from geomsafe.train.trainer import GeometryCallback, PadCollator, quiet, training_arguments
from guard_helpers import make_batch, peft_llama, randomise_lora_b
from train_helpers import CHECKPOINTING, REPEAT, GradCapture, cfg, checkpointing_args, lora

pytestmark = pytest.mark.usefixtures("one_thread")


def kl_guard(kl_data: str = "builtin", weight: float = 1.0, seed: int = 0) -> KLGuard:
    guard = build_guards(
        "kl",
        None,
        GuardConfig(kl_data=kl_data, weight=weight),
        tokenizer=tiny_model("llama").tokenizer,
        seed=seed,
    )[0]
    assert isinstance(guard, KLGuard)
    return guard


def test_token_kl_is_the_mean_kl_of_the_response_tokens():
    g = torch.Generator().manual_seed(0)
    base, tuned = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    want = []
    for b, t in [(0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]:  # positions predicting labelled tokens
        p, q = F.softmax(base[b, t], -1), F.softmax(tuned[b, t], -1)
        want.append(float((p * (p.log() - q.log())).sum()))
    assert float(token_kl(base, tuned, labels)) == pytest.approx(sum(want) / 5, rel=1e-5)
    assert float(token_kl(base, base, labels)) == 0.0
    assert float(token_kl(base, tuned, torch.full_like(labels, -100))) == 0.0


@pytest.mark.parametrize("kl_data", ["builtin", "training"])
def test_kl_is_zero_with_zero_lora_b_and_positive_after(kl_data):
    model, batch = peft_llama(), make_batch()
    guard = kl_guard(kl_data)
    penalty = total_penalty([guard], model, batch)
    assert penalty is not None and float(penalty.detach()) == 0.0  # B = 0: tuned == base exactly
    randomise_lora_b(model)
    penalty = total_penalty([guard], model, batch)
    assert penalty is not None and float(penalty.detach()) > 0
    penalty.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_" in n}
    assert grads and all(g is not None for g in grads.values())
    assert any(float(g.abs().max()) > 0 for n, g in grads.items() if "lora_A" in n)
    guard.after_step(model)
    log = guard.log()
    # the step's two micro-batches (0, then penalty): the log holds their mean
    assert log["kl"] == pytest.approx(float(penalty.detach()) / 2) and log["strength"] == 1.0


def test_weight_strength_and_the_training_batch():
    model, batch = peft_llama(), make_batch()
    randomise_lora_b(model)
    one = float(kl_guard("training").penalty(model, batch).detach())
    heavy = kl_guard("training", weight=3.0)
    heavy.set_strength(0.5)
    assert float(heavy.penalty(model, batch).detach()) == pytest.approx(1.5 * one, rel=1e-6)
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    tuned = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want = float(token_kl(base, tuned, batch["labels"]).detach())
    assert one == pytest.approx(want, rel=1e-6)


def test_reference_batches_cycle_the_builtin_set_in_a_seeded_order():
    guard, again, other = kl_guard(seed=0), kl_guard(seed=0), kl_guard(seed=1)
    n = len(guard.reference)
    tokenizer = tiny_model("llama").tokenizer
    assert n == len(load_data(BUILTIN_REFERENCE, tokenizer, max_length=256, truncate=True))
    assert guard.reference == again.reference and guard.reference != other.reference
    inputs = {"input_ids": torch.zeros((3, 4), dtype=torch.long)}
    seen = []
    for _ in range(n // 3 + 2):  # past the end of the set: it wraps around
        batch = guard.reference_batch(inputs)
        assert batch["input_ids"].shape[0] == 3
        assert (batch["labels"] != -100).any(dim=1).all()  # every row has response tokens
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            seen.append(ids[mask.bool()].tolist())
    order = [row["input_ids"] for row in guard.reference]
    assert seen[:n] == order and seen[n:] == order[: len(seen) - n]


def test_no_atlas_needed_and_bad_input():
    lm = tiny_model("llama")
    setup = resolve_guards(lm, "kl", guard_config=GuardConfig(kl_data="training"))
    assert setup.names == ["kl"] and setup.atlas is None and setup.concepts == []
    assert not setup.extracted and setup.monitor is None
    with pytest.raises(GeomsafeError, match="guard projection needs an atlas"):
        build_guards("projection,kl", None)
    with pytest.raises(GeomsafeError, match="not tokenised; pass tokenizer="):
        build_guards("kl", None)[0].penalty(peft_llama(), make_batch())
    with pytest.raises(GeomsafeError, match="kl_data is empty"):
        GuardConfig(kl_data=" ")
    with pytest.raises(GeomsafeError, match="needs a peft model"):
        kl_guard("training").penalty(lm.model, make_batch())
    with pytest.raises(GeomsafeError, match="data file not found"):
        kl_guard("missing.jsonl")


def step(tmp_path, how: str, mode: str = "off", weight: float = 5.0):
    """One optimiser step (batch 4, random LoRA B) with the kl guard on the built-in reference,
    through GuardedTrainer or a plain Trainer + GuardCallback: the row and the gradients."""
    lm, model = tiny_model("llama"), peft_llama()
    randomise_lora_b(model)
    guards = build_guards("kl", None, GuardConfig(weight=weight), tokenizer=lm.tokenizer)
    features = load_data(REPEAT[:4], lm.tokenizer).features
    config = cfg(max_steps=1, max_grad_norm=0.0, extra_args=checkpointing_args(mode))
    args = training_arguments(config, tmp_path / f"{how}-{mode}-{weight}", save=False)
    capture = GradCapture()
    common = dict(model=model, args=args, train_dataset=features, data_collator=PadCollator(0))
    if how == "guarded":
        geometry = GeometryCallback()
        trainer = GuardedTrainer(**common, callbacks=[geometry, capture], guards=guards)
        geometry.trainer = trainer
    else:
        callback = GuardCallback(guards)
        trainer = Trainer(**common, callbacks=[callback, capture])
    quiet(trainer)
    trainer.train()
    rows = geometry.rows if how == "guarded" else callback.rows
    return rows[0], capture.grads[0], lora(model)


def test_guarded_trainer_and_callback_give_the_same_step(tmp_path):
    row, grads, _ = step(tmp_path, "guarded")
    free_row, free, _ = step(tmp_path, "guarded", weight=0.0)
    assert row["penalty"] > 0 and row["kl/kl"] > 0 and free_row["penalty"] == 0.0
    assert row["penalty"] == pytest.approx(5.0 * row["kl/kl"], rel=1e-5)
    assert any(not torch.allclose(grads[n], free[n], atol=1e-5) for n in grads)  # can fail
    for how, mode in [("callback", "off"), *(("guarded", m) for m in CHECKPOINTING[1:])]:
        other, other_grads, _ = step(tmp_path, how, mode)
        assert other["penalty"] == pytest.approx(row["penalty"], rel=1e-5), (how, mode)
        for name, value in grads.items():
            torch.testing.assert_close(other_grads[name], value, atol=1e-5, rtol=1e-5)


def test_finetune_and_cli_with_the_kl_guard(tmp_path):
    lm = tiny_model("llama")
    res = finetune(
        lm,
        REPEAT,
        out=tmp_path / "run",
        guard="kl",
        guard_config=GuardConfig(weight=2.0),
        config=cfg(max_steps=3),
        progress=False,
    )
    rows = res.geometry_log
    assert res.guards == ["kl"] and res.concepts == [] and len(rows) == 3
    assert rows[0]["penalty"] == 0.0  # the first step starts from LoRA B = 0
    assert rows[-1]["penalty"] > 0 and rows[-1]["kl/kl"] > 0
    prov = json.loads((tmp_path / "run" / "run.json").read_text())["provenance"]
    assert prov["guard_config"]["kl_data"] == "builtin" and prov["atlas"] is None
    assert prov["kl_reference"]["source"].endswith("factual_qa.jsonl")
    assert len(prov["kl_reference"]["sha256"]) == 64 and prov["kl_reference"]["seed"] == 0
    folder = tmp_path / "model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "completion": c}) for p, c in REPEAT))
    args = ["finetune", "--model", str(folder), "--data", str(data), "--max-steps", "2"]
    args += ["--no-progress", "--guard", "kl", "--kl-data", "training"]
    out = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "cli")])
    assert out.exit_code == 0, out.output
    prov = json.loads((tmp_path / "cli" / "run.json").read_text())["provenance"]
    assert prov["guards"] == ["kl"] and prov["kl_reference"] == {
        "kl_data": "training",
        "source": "training batch",
    }
    bad = CliRunner().invoke(main, [*args[:-1], "nope.jsonl", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "data file not found" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "bad").exists()
