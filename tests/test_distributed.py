"""`finetune` under ``torchrun --nproc_per_node 2`` (gloo, CPU) on a tiny model with the
orthogonal and ablate guards: the adapter equals a one-process run with the same global batch,
both ranks hold the same (projected) LoRA weights, and only rank 0 writes outputs.

Marked ``distributed`` (deselect with ``-m "not distributed"``); about a minute on 2 cores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geomsafe.testing import save_tiny, tiny_atlas
from geomsafe.train import TrainConfig, finetune
from torchrun import launch_two

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("distributed_worker.py")
# 4 examples = one global batch: every step sees all of them, so the step does not depend on
# how the sampler shuffles them or splits them over the ranks.
DATA = [
    {"prompt": "say a", "completion": "abab abab abab"},
    {"prompt": "say b", "completion": "bcbc bcbc"},
    {"prompt": "say c", "completion": "cdcd cdcd cdcd cd"},
    {"prompt": "say d", "completion": "dede"},
]
GLOBAL_BATCH, STEPS = 4, 4
CONFIG = dict(max_steps=STEPS, learning_rate=1e-2, save_steps=2, logging_steps=1, seed=0)
GUARD, CONCEPTS = "orthogonal,ablate", "toxicity,deception"


def _lora_key(name: str) -> str:
    """A peft state-dict key as saved in ``adapter_model.safetensors`` (no adapter name)."""
    return name.replace(".default", "")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same fine-tuning run twice: one process with batch 4, and two ranks with batch 2."""
    root = tmp_path_factory.mktemp("dist")
    model = save_tiny(root / "model")
    atlas = root / "atlas"
    tiny_atlas().save(atlas)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in DATA))

    single = finetune(
        str(model),
        str(data),
        out=root / "single" / "run",
        guard=GUARD,
        guard_concepts=CONCEPTS,
        atlas=str(atlas),
        config=TrainConfig(batch_size=GLOBAL_BATCH, **CONFIG),
        progress=False,
    )
    spec = {
        "model": str(model),
        "data": str(data),
        "out": str(root / "dist" / "run"),
        "guard": GUARD,
        "concepts": CONCEPTS,
        "atlas": str(atlas),
        "config": {**CONFIG, "batch_size": GLOBAL_BATCH // 2},
        "side": str(root / "side"),
        "watch": str(root / "dist"),
    }
    launch_two(WORKER, spec, root)
    return single, root


def test_adapter_equals_a_single_process_run_with_the_same_global_batch(runs):
    single, root = runs
    want = load_file(str(single.out / "adapter_model.safetensors"))
    got = load_file(str(root / "dist" / "run" / "adapter_model.safetensors"))
    assert set(want) == set(got) and want
    init = {k: v for k, v in want.items() if "lora_B" in k}
    assert all(v.abs().max() > 1e-4 for v in init.values())  # the run trained B away from 0
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, atol=2e-5, rtol=1e-4, msg=key)
    dist_run = json.loads((root / "dist" / "run" / "run.json").read_text())
    assert dist_run["provenance"]["world_size"] == 2
    assert dist_run["metrics"]["steps"] == STEPS
    # The geometry log is all-reduced over the ranks: the loss is the global batch's.
    for a, b in zip(dist_run["geometry_log"], single.geometry_log, strict=True):
        assert a["step"] == b["step"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)


def test_ranks_hold_the_same_projected_lora_weights(runs):
    single, root = runs
    rank0 = torch.load(root / "side" / "lora-0.pt")
    rank1 = torch.load(root / "side" / "lora-1.pt")
    assert set(rank0) == set(rank1) and rank0
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # The orthogonal guard projected them: B of o_proj / down_proj at each concept's best
    # layer (tiny_atlas: toxicity 1, deception 0) has no component along its direction.
    atlas = single.atlas
    assert atlas is not None
    for concept, layer in (("toxicity", 1), ("deception", 0)):
        u = atlas.direction(concept, layer)[None]
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            key = next(k for k in rank1 if f"layers.{layer}.{name}.lora_B" in k)
            assert (u @ rank1[key]).abs().max() < 1e-5, key
    saved = load_file(str(root / "dist" / "run" / "adapter_model.safetensors"))
    for key, value in rank1.items():
        torch.testing.assert_close(saved[_lora_key(key)], value, atol=0, rtol=0)


def test_only_rank_0_writes_outputs(runs):
    _, root = runs
    rank0 = json.loads((root / "side" / "writes-0.json").read_text())
    rank1 = json.loads((root / "side" / "writes-1.json").read_text())
    assert any(".run.lock" in w for w in rank0)  # rank 0 took the folder lock
    assert any("run.json" in w for w in rank0) and any("geometry_log.jsonl" in w for w in rank0)
    assert "save_pretrained .run.partial" in rank0  # the adapter, before the final rename
    # Rank 1 never touched the lock or the outputs; the Trainer's checkpoints get its own RNG
    # state (rng_state_1.pth, needed to resume the rank exactly; written by torch.save's C++
    # writer, so only its folder shows here) and nothing else from it.
    ckpt = re.compile(
        r"^(os\.mkdir|open) \.run\.partial/checkpoints/checkpoint-\d+(/rng_state_1\.pth)?$"
    )
    assert [w for w in rank1 if not ckpt.match(w)] == []
    out = root / "dist" / "run"
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "run.json", "geometry_log.jsonl"} <= names
    assert not (root / "dist" / ".run.partial").exists()
    assert not (root / "dist" / ".run.lock").exists()
