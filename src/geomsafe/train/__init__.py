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
from geomsafe.train.data import IGNORE_INDEX, TrainData, load_data
from geomsafe.train.lora import make_peft_model, peft_layer_template
from geomsafe.train.pilot import pilot_directions
from geomsafe.train.run import FinetuneResult, finetune
from geomsafe.train.steps import heldout_loss, train_steps
from geomsafe.train.trainer import GeometryCallback, GuardedTrainer, PadCollator

__all__ = [
    "IGNORE_INDEX",
    "FinetuneResult",
    "GeometryCallback",
    "GuardCallback",
    "GuardedTrainer",
    "PadCollator",
    "TrainConfig",
    "TrainData",
    "finetune",
    "heldout_loss",
    "load_data",
    "make_peft_model",
    "peft_layer_template",
    "pilot_directions",
    "train_steps",
]
