"""LoRA fine-tuning (peft on transformers' Trainer) with geometric guards plugged in.

``finetune(model, data, out, guard=..., guard_concepts=..., atlas=..., config=TrainConfig())``
trains a LoRA adapter on chat / prompt-completion JSONL with the loss on assistant tokens only,
adds the guards' penalties and post-step projections, logs the geometry per step and writes
the adapter (peft format), ``geometry_log.jsonl`` and ``run.json`` to ``out``. Because it
runs on the Trainer, ``accelerate launch -m geomsafe.cli finetune ...`` scales it to many
GPUs unchanged. ``train_steps`` times guarded vs plain steps for benchmarks.
:class:`GuardCallback` puts the guards into a user's own ``Trainer`` or TRL ``SFTTrainer``;
:func:`pilot_directions` runs the short pilot fine-tune of ``GuardConfig(source="pilot")``.
"""

from __future__ import annotations

from geomsafe.train.callback import GuardCallback
from geomsafe.train.config import TrainConfig
from geomsafe.train.run import FinetuneResult, finetune
from geomsafe.train.trainer import GuardedTrainer

__all__ = [
    "FinetuneResult",
    "GuardCallback",
    "GuardedTrainer",
    "TrainConfig",
    "finetune",
]
