"""A TRL ``SFTTrainer`` LoRA fine-tune with a geomsafe guard and gradient checkpointing.

This is the README's example; tests/test_train_callback.py runs :func:`guarded_sft` on a tiny
model. From the command line (the default model, an atlas from ``geomsafe audit``, a JSONL
file of ``{"prompt": [...], "completion": [...]}`` or ``{"messages": [...]}`` rows)::

    python docs/examples/trl_guard.py --atlas runs/audit --data train.jsonl --out runs/trl

The guards' penalty, strength and projections are in ``callback.rows`` (one row per optimiser
step). Gradient checkpointing (reentrant or not) gives the same penalty and gradients as
without it; a layout it cannot serve is refused at train start, in one line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from peft import LoraConfig, get_peft_model
from trl import SFTConfig, SFTTrainer

from geomsafe.atlas import FeatureAtlas
from geomsafe.errors import GeomsafeError
from geomsafe.guard import GuardConfig, build_guards
from geomsafe.models import LoadedModel
from geomsafe.train import GuardCallback


def guarded_sft(
    lm: LoadedModel,
    atlas: FeatureAtlas,
    dataset: Any,
    output_dir: str,
    guard: str = "projection",
    concepts: list[str] | None = None,
    **sft_args: Any,
) -> tuple[SFTTrainer, GuardCallback]:
    """LoRA fine-tune ``lm`` on ``dataset`` with TRL, guarded by ``guard`` on ``concepts`` of
    ``atlas``; ``sft_args`` go to ``SFTConfig``. Returns the trainer and the callback."""
    model = get_peft_model(lm.model, LoraConfig(r=8, target_modules="all-linear"))
    guards = build_guards(guard, atlas, GuardConfig(concepts=concepts), lm.layer_template)
    callback = GuardCallback(guards)
    args = SFTConfig(output_dir=output_dir, gradient_checkpointing=True, **sft_args)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=lm.tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    return trainer, callback


def main(argv: list[str] | None = None) -> int:
    from datasets import load_dataset

    from geomsafe.models import load

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--atlas", required=True, help="an atlas folder (geomsafe audit)")
    parser.add_argument("--data", required=True, help="a JSONL file of chat rows")
    parser.add_argument("--out", required=True)
    parser.add_argument("--guard", default="projection")
    parser.add_argument("--concepts", default=None, help="comma-separated; default: all harmful")
    parser.add_argument("--max-steps", type=int, default=100)
    opts = parser.parse_args(argv)
    try:
        atlas = FeatureAtlas.load(opts.atlas)
        lm = load(opts.model)
        data = load_dataset("json", data_files=opts.data, split="train")
        concepts = opts.concepts.split(",") if opts.concepts else None
        _, callback = guarded_sft(
            lm, atlas, data, opts.out, opts.guard, concepts, max_steps=opts.max_steps
        )
    except (GeomsafeError, OSError, ValueError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    last = callback.rows[-1] if callback.rows else {}
    print(f"{len(callback.rows)} steps; last penalty {last.get('penalty')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
