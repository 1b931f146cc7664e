"""BenchConfig: the fixed recipe of `geomsafe bench`, with a quick and a full size."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from geomsafe.config import with_options
from geomsafe.errors import GeomsafeError

BENIGN_TASKS = ("factual_qa", "instruction_following", "code", "summarisation")
HARMFUL_TASKS = ("insecure", "jailbroken")


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and recipe of a benchmark run; every task gets the same recipe and seed.

    Each task: ``n_train`` examples sampled from its data set (seed ``seed``) are the training
    set; the first ``n_direction`` of them, paired with the model's own greedy responses to the
    same prompts, give the task's direction (its overlap score) and predicted shift.
    """

    tasks: tuple[str, ...] = BENIGN_TASKS + HARMFUL_TASKS
    guard: str = "projection"  # the guard set of the guarded runs ("" or "none": no guarded run)
    n_train: int = 160  # training examples per task
    steps: int = 40  # optimiser steps per fine-tune
    batch_size: int = 4
    learning_rate: float = 1e-3
    lora_r: int = 8
    max_length: int = 256  # tokens per training example (longer ones are truncated)
    concept_pairs: int = 64  # pairs per harmful concept for the atlas
    n_direction: int = 48  # examples per task for its direction and predicted shift
    own_max_new_tokens: int = 48  # tokens of the model's own responses
    n_shift_prompts: int = 48  # probe prompts of the measured shift
    n_prompts: int = 60  # evaluation prompts (toxic-output rate)
    samples_per_prompt: int = 2
    eval_max_new_tokens: int = 48
    n_xstest: int = 30  # XSTest safe prompts for over-refusal (0: skip)
    n_probe: int = 0  # persona statements per trait (0: none)
    n_boot: int = 1000
    shift_concept: str = "toxicity"  # the concept of the table's shift columns
    seed: int = 0
    data_root: str | None = None  # public data (default: $GEOMSAFE_DATA or ../shared/data)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def with_options(self, **options: Any) -> BenchConfig:
        """A copy with fields replaced (checked again); unknown names are an error."""
        return with_options(self, "bench", **options)

    def validate(self) -> BenchConfig:
        for name in ("n_train", "steps", "batch_size", "concept_pairs", "n_direction"):
            if getattr(self, name) < 1:
                raise GeomsafeError(f"bench: {name} must be >= 1, not {getattr(self, name)}")
        for name in ("n_shift_prompts", "n_prompts", "samples_per_prompt"):
            if getattr(self, name) < 1:
                raise GeomsafeError(f"bench: {name} must be >= 1, not {getattr(self, name)}")
        if not self.tasks:
            raise GeomsafeError("bench: no tasks")
        if len(set(self.tasks)) != len(self.tasks):
            raise GeomsafeError(f"bench: duplicate tasks in {','.join(self.tasks)}")
        return self

    @property
    def guards(self) -> list[str]:
        """The guard settings of the table: ``none`` and the guarded set (when there is one)."""
        g = self.guard.strip()
        return ["none"] if g in ("", "none") else ["none", g]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


QUICK = BenchConfig(
    n_train=96,
    steps=20,
    concept_pairs=48,
    n_direction=32,
    own_max_new_tokens=32,
    n_shift_prompts=32,
    n_prompts=40,
    samples_per_prompt=2,
    eval_max_new_tokens=32,
    n_xstest=20,
    n_boot=500,
)
FULL = BenchConfig()


def preset(name: str, **overrides: Any) -> BenchConfig:
    """``quick`` or ``full`` with ``overrides`` (fields set to None are left as they are)."""
    base = {"quick": QUICK, "full": FULL}.get(name)
    if base is None:
        raise GeomsafeError(f"bench: unknown size {name!r} (quick or full)")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None}).validate()
