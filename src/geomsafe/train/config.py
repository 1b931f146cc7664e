"""TrainConfig: every knob of a LoRA fine-tuning run, with defaults that suit small models."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from geomsafe.config import with_options
from geomsafe.errors import GeomsafeError

ALL_LINEAR = "all-linear"


@dataclass
class TrainConfig:
    """LoRA and optimiser settings of a fine-tuning run.

    ``target_modules="all-linear"`` adapts every linear projection of attention and MLP
    blocks (peft's shorthand; the LM head is excluded). ``max_steps > 0`` overrides
    ``epochs``. Examples longer than ``max_length`` tokens are an error unless ``truncate``.
    """

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: str | list[str] = ALL_LINEAR
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 512
    truncate: bool = False
    add_eos: bool = True  # append EOS to every response (trained: the model learns to stop)
    max_examples: int | None = None  # use the first N examples of the file
    seed: int = 0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    save_steps: int = 50
    save_total_limit: int = 1
    logging_steps: int = 10
    bf16: bool = False
    mix_safe: float = 0.0  # share of safe examples interleaved into the data, in [0, 1)
    # (geomsafe.train.mix: n_safe = floor(frac * n / (1 - frac) + 1/2))
    mix_safe_data: str = "builtin"  # the safe set: builtin or a JSONL file / task:NAME
    extra_args: dict[str, Any] = field(default_factory=dict)  # passed to TrainingArguments

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
