from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest
import torch
import trl
from datasets import Dataset
from transformers import Trainer

from geomsafe.errors import GeomsafeError
from geomsafe.guard import GUARDS
from geomsafe.guard.base import needs_atlas
from geomsafe.layers import decoder_blocks
from geomsafe.testing import tiny_model
from geomsafe.train import GuardCallback, GuardedTrainer
from geomsafe.train.callback import micro_batches
from geomsafe.train.data import load_data
from geomsafe.train.trainer import GeometryCallback, PadCollator, quiet, training_arguments
from guard_helpers import hooks, randomise_lora_b
from train_helpers import (
    CHECKPOINTING,
    KINDS,
    REPEAT,
    GradCapture,
    assert_same_step_under_checkpointing,
    cfg,
    checkpoint_around_call,
    checkpointing_args,
    guarded,
    lm_atlas,
    lora,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "trl_guard.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def sft_data(pairs=REPEAT) -> Dataset:
    """Prompt-completion chat rows for TRL."""
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": p}],
                "completion": [{"role": "assistant", "content": c}],
            }
            for p, c in pairs
        ]
    )


def sft_config(out, **kw) -> trl.SFTConfig:
    """A quiet CPU SFTConfig (batch 4, no clipping, no saving) with ``kw`` on top."""
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    return trl.SFTConfig(**{**base, **kw})


def sft_step(tmp_path, kinds: str, mode: str):
    """One SFTTrainer step (batch 4) of a tiny peft model (random LoRA B, so the penalty moves
    A too) with ``kinds`` in a GuardCallback under checkpointing ``mode``: the callback's row,
    the gradients before the optimiser step and the first block's attention calls."""
    lm, model, guards = guarded(kinds=kinds)
    randomise_lora_b(model)
    callback, capture = GuardCallback(guards), GradCapture()
    args = sft_config(
        tmp_path / f"{kinds}-{mode}", max_steps=1, max_grad_norm=0.0, **checkpointing_args(mode)
    )
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft_data(REPEAT[:4]),
        processing_class=lm.tokenizer,
        callbacks=[callback, capture],
    )
    trainer.train()
    assert not model._forward_hooks and hooks(model) == [0, 0, 0]
    return callback.rows[0], capture.grads[0], capture.attention_calls


def run(tmp_path, how: str, grad_accum: int, scaled: bool, weight: float = 50.0):
    """Train 2 epochs of 6 examples (batch 2: 3 micro-batches per epoch) with the guards,
    through GuardedTrainer or a plain Trainer + GuardCallback; the LoRA weights and rows."""
    lm, model, guards = guarded(weight)
    features = load_data(REPEAT[:6], lm.tokenizer).features
    config = cfg(batch_size=2, grad_accum=grad_accum, epochs=2, max_grad_norm=0.0)
    args = training_arguments(config, tmp_path / how, save=False)
    common = dict(model=model, args=args, train_dataset=features, data_collator=PadCollator(0))
    if how == "guarded":
        geometry = GeometryCallback()
        trainer = GuardedTrainer(**common, callbacks=[geometry], guards=guards)
        geometry.trainer = trainer
    else:
        callback = GuardCallback(guards)
        trainer = Trainer(**common, callbacks=[callback])
    trainer.model_accepts_loss_kwargs = scaled  # False: the Trainer divides the loss itself
    quiet(trainer)
    n_hooks = hooks(model)
    trainer.train()
    assert hooks(model) == n_hooks and not model._forward_hooks and not model._forward_pre_hooks
    rows = geometry.rows if how == "guarded" else callback.rows
    return lora(model), rows


def test_micro_batches_follow_the_trainer():
    assert [micro_batches(s, 2, 3) for s in range(4)] == [2, 1, 2, 1]  # 3 batches an epoch
    assert [micro_batches(s, 2, 4) for s in range(3)] == [2, 2, 2]
    assert [micro_batches(s, 4, 3) for s in range(2)] == [3, 3]
    assert micro_batches(5, 3, None) == 3


@pytest.mark.parametrize(("grad_accum", "scaled"), [(1, True), (2, True), (2, False)])
def test_callback_in_a_plain_trainer_matches_guarded_trainer(tmp_path, grad_accum, scaled):
    want, want_rows = run(tmp_path, "guarded", grad_accum, scaled)
    got, got_rows = run(tmp_path, "callback", grad_accum, scaled)
    steps = 6 if grad_accum == 1 else 4
    assert len(want_rows) == len(got_rows) == steps
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=1e-5, msg=name)
    for a, b in zip(want_rows, got_rows, strict=True):
        assert b["step"] == a["step"]
        assert b["penalty"] == pytest.approx(a["penalty"], rel=1e-5, abs=1e-9)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["strength"] == a["strength"] and b["proj/toxicity"] == a["proj/toxicity"]
    assert got_rows[-1]["penalty"] > 0 and got_rows[-1]["strength"] < 1.0
    if grad_accum == 2 and scaled:  # the penalty moved the weights: the test can fail
        unpenalised, _ = run(tmp_path, "callback", grad_accum, scaled, weight=0.0)
        assert any(not torch.allclose(unpenalised[n], got[n], atol=1e-4) for n in got)


def test_fp16_and_a_loss_that_ignores_the_outputs_are_errors(tmp_path):
    _, _, guards = guarded()
    fp16 = types.SimpleNamespace(fp16=True, gradient_accumulation_steps=1)
    with pytest.raises(GeomsafeError, match="fp16"):
        GuardCallback(guards).on_train_begin(fp16, None, None, model=torch.nn.Linear(1, 1))

    class Detached(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            model(**inputs)
            return sum(p.sum() for n, p in model.named_parameters() if "lora_A" in n)

    lm, model, guards = guarded()
    features = load_data(REPEAT[:4], lm.tokenizer).features
    args = training_arguments(cfg(max_steps=2, batch_size=2), tmp_path / "d", save=False)
    callback = GuardCallback(guards)
    trainer = Detached(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=PadCollator(0),
        callbacks=[callback],
    )
    with pytest.raises(GeomsafeError, match="penalty's gradient never reached"):
        trainer.train()  # step 1 has no penalty gradient (B = 0); step 2 has


def test_sft_trainer_with_the_callback(tmp_path):
    out = {}
    for weight in (0.0, 50.0):
        lm, model, guards = guarded(weight)
        callback = GuardCallback(guards)
        args = sft_config(tmp_path / f"sft{weight}", max_steps=3)
        trainer = trl.SFTTrainer(
            model=model,
            args=args,
            train_dataset=sft_data(),
            processing_class=lm.tokenizer,
            callbacks=[callback],
        )
        trainer.train()
        assert [r["step"] for r in callback.rows] == [1, 2, 3]
        assert not model._forward_hooks and hooks(model) == [0, 0, 0]
        out[weight] = (lora(model), callback.rows)
    rows = out[50.0][1]
    assert rows[-1]["penalty"] > 0 and rows[-1]["strength"] == pytest.approx(1 / 3)
    assert all(f"{k}/proj/toxicity" in rows[-1] for k in KINDS.split(","))
    weights, free = out[50.0][0], out[0.0][0]
    assert any(not torch.allclose(weights[n], free[n], atol=1e-4) for n in weights)


@pytest.fixture(scope="module")
def unguarded_sft(tmp_path_factory, one_thread):
    """The gradients of :func:`sft_step` without guards."""
    return sft_step(tmp_path_factory.mktemp("unguarded"), "", "off")[1]


@pytest.mark.parametrize("kind", [k for k in GUARDS if needs_atlas(k)])  # kl: test_guard_kl
def test_sft_trainer_gives_the_same_step_with_gradient_checkpointing(tmp_path, kind, unguarded_sft):
    assert_same_step_under_checkpointing(
        lambda mode: sft_step(tmp_path, kind, mode), kind, unguarded_sft
    )


def test_hooks_inside_the_checkpoint_are_refused_in_one_line(tmp_path, monkeypatch):
    _, model, _ = guarded()
    block_class = type(decoder_blocks(model)[0])
    _, want, _ = sft_step(tmp_path, "ablate", "off")
    monkeypatch.setattr(block_class, "__call__", checkpoint_around_call, raising=False)
    _, grads, _ = sft_step(tmp_path, "ablate", "off")  # no checkpointing: served
    torch.testing.assert_close(grads, want)
    for mode in CHECKPOINTING[1:]:
        with pytest.raises(GeomsafeError, match=f"^GuardCallback: {mode} activation") as err:
            sft_step(tmp_path, "ablate", mode)
        assert "\n" not in str(err.value) and block_class.__name__ in str(err.value)
    # what the refusal prevents: the recomputation runs without the ablation's hook
    monkeypatch.setattr("geomsafe.train.callback.check_checkpointing", lambda *a: None)
    _, silent, _ = sft_step(tmp_path, "ablate", "reentrant")
    assert any(not torch.allclose(silent[n], want[n], atol=1e-4) for n in want)


def test_the_readme_example_trains_with_gradient_checkpointing(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("trl_guard", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    missing = ["--atlas", str(tmp_path / "none"), "--data", "x.jsonl", "--out", str(tmp_path)]
    assert example.main(missing) == 2  # bad input: one line, no traceback
    assert capsys.readouterr().err.startswith("error: no atlas in ")
    lm = tiny_model("llama")
    trainer, callback = example.guarded_sft(
        lm,
        lm_atlas(lm),
        sft_data(REPEAT[:4]),
        str(tmp_path / "example"),
        guard="projection",
        concepts=["toxicity"],
        max_steps=2,
        per_device_train_batch_size=2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    assert trainer.args.gradient_checkpointing
    assert [r["step"] for r in callback.rows] == [1, 2]
    assert callback.rows[-1]["penalty"] > 0 and "proj/toxicity" in callback.rows[-1]
