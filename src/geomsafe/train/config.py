"""TrainConfig: every knob of a LoRA fine-tuning run, with defaults that suit small models."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from geomsafe.config import option, with_options
from geomsafe.errors import GeomsafeError

ALL_LINEAR = "all-linear"


@dataclass
class TrainConfig:
    """LoRA and optimiser settings of a fine-tuning run.

    ``target_modules="all-linear"`` adapts every linear projection of attention and MLP
    blocks (peft's shorthand; the LM head is excluded). ``max_steps > 0`` overrides
    ``epochs``. Examples longer than ``max_length`` tokens are an error unless ``truncate``.
    """

    lora_r: int = option(8, "LoRA rank.")
    lora_alpha: int = option(16, "LoRA alpha (the CLI's default: 2 x rank).")
    lora_dropout: float = option(0.0, "LoRA dropout, in [0, 1).")
    target_modules: str | list[str] = option(
        ALL_LINEAR, "Adapted modules: 'all-linear' or a list of module names."
    )
    learning_rate: float = option(2e-4, "Learning rate.")
    epochs: float = option(1.0, "Passes over the data (unless --max-steps > 0).")
    max_steps: int = option(-1, "Optimiser steps; > 0 overrides --epochs.")
    batch_size: int = option(4, "Examples per forward pass.")
    grad_accum: int = option(1, "Accumulation steps.")
    max_length: int = option(
        512, "Longest example in tokens; longer ones are an error unless --truncate."
    )
    truncate: bool = option(False, "Cut over-long examples instead of failing.")
    add_eos: bool = option(
        True, "Append EOS to every response (trained: the model learns to stop)."
    )
    max_examples: int | None = option(None, "Use the first N examples of --data.")
    seed: int = option(0, "Seed of the run (LoRA init, data order).")
    warmup_steps: int = option(0, "Linear warm-up steps of the learning rate.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    lr_scheduler: str = option("linear", "Learning-rate schedule (transformers' names).")
    max_grad_norm: float = option(1.0, "Gradient clipping norm.")
    save_steps: int = option(50, "Checkpoint every N steps (and at the end).")
    save_total_limit: int = option(1, "Checkpoints kept.")
    logging_steps: int = option(10, "Steps between loss log lines.")
    bf16: bool = option(False, "Train in bfloat16 mixed precision.")
    mix_safe: float = option(
        0.0,
        "Share of safe examples (refusals, sound answers) interleaved into --data, in [0, 1) "
        "(geomsafe.train.mix: n_safe = floor(frac * n / (1 - frac) + 1/2)).",
    )
    mix_safe_data: str = option(
        "builtin", "The safe examples for --mix-safe: builtin or a JSONL file / task:NAME."
    )
    extra_args: dict[str, Any] = option({}, "Passed to transformers' TrainingArguments.")

    def __post_init__(self) -> None:
        self.validate()

    def with_options(self, **options: Any) -> TrainConfig:
        """A copy with fields replaced (checked again); unknown names are an error."""
        return with_options(self, "finetune", **options)

    def validate(self) -> TrainConfig:
        checks = [
            (self.lora_r >= 1, f"lora_r must be >= 1, not {self.lora_r}"),
            (self.lora_alpha > 0, f"lora_alpha must be > 0, not {self.lora_alpha}"),
            (0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1): {self.lora_dropout}"),
            (self.learning_rate > 0, f"learning rate must be > 0, not {self.learning_rate}"),
            (self.epochs > 0 or self.max_steps > 0, "give epochs > 0 or max_steps > 0"),
            (self.batch_size >= 1, f"batch size must be >= 1, not {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, not {self.grad_accum}"),
            (self.max_length >= 2, f"max_length must be >= 2, not {self.max_length}"),
            (
                self.max_examples is None or self.max_examples >= 1,
                f"max_examples must be >= 1, not {self.max_examples}",
            ),
            (self.save_steps >= 1, f"save_steps must be >= 1, not {self.save_steps}"),
            (self.save_total_limit >= 1, "save_total_limit must be >= 1"),
            (self.logging_steps >= 1, "logging_steps must be >= 1"),
            (0.0 <= self.mix_safe < 1.0, f"mix_safe must be in [0, 1), not {self.mix_safe}"),
            (bool(str(self.mix_safe_data).strip()), "mix_safe_data is empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise GeomsafeError(message)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
