"""BenchConfig: the fixed recipe of `geomsafe bench`, with a quick and a full size."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from geomsafe.config import at_least, option, require, with_options
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

    tasks: tuple[str, ...] = option(
        BENIGN_TASKS + HARMFUL_TASKS,
        "Comma-separated tasks (built-in: factual_qa, instruction_following, code, "
        "summarisation; public: insecure, jailbroken, insecure_small, secure_small; or "
        "NAME=FILE.jsonl).",
    )
    guard: str = option(
        "projection",
        "Guard set of the guarded runs, e.g. projection or orthogonal,steer; 'none' for "
        "unguarded runs only.",
    )
    n_train: int = option(160, "Training examples per task.")
    steps: int = option(40, "Optimiser steps per fine-tune.")
    batch_size: int = option(4, "Training examples per step.")
    learning_rate: float = option(1e-3, "Learning rate.")
    lora_r: int = option(8, "LoRA rank.")
    max_length: int = option(256, "Tokens per training example (longer ones are truncated).")
    concept_pairs: int = option(64, "Pairs per harmful concept for the atlas.")
    n_direction: int = option(48, "Examples per task for its direction and predicted shift.")
    own_max_new_tokens: int = option(48, "Tokens of the model's own responses.")
    n_shift_prompts: int = option(48, "Probe prompts of the measured shift.")
    n_prompts: int = option(60, "Evaluation prompts for the toxic-output rate.")
    samples_per_prompt: int = option(2, "Samples per prompt.")
    eval_max_new_tokens: int = option(48, "Tokens per sampled evaluation response.")
    n_xstest: int = option(30, "XSTest safe prompts for over-refusal (0: skip).")
    n_probe: int = option(0, "Persona statements per trait (0: none).")
    n_boot: int = option(1000, "Bootstrap resamples of every CI.")
    shift_concept: str = option("toxicity", "The concept of the table's shift columns.")
    seed: int = option(0, "Seed of sampling, training and evaluation.")
    data_root: str | None = option(
        None, "Public data folder (default: $GEOMSAFE_DATA or ../shared/data)."
    )
    extra: dict[str, Any] = option({}, "Extra settings recorded with the run.")

    def __post_init__(self) -> None:
        self.validate()

    def with_options(self, **options: Any) -> BenchConfig:
        """A copy with fields replaced (checked again); unknown names are an error."""
        return with_options(self, "bench", **options)

    def validate(self) -> BenchConfig:
        at_least(self, 1, "n_train", "steps", "batch_size", "concept_pairs", "n_direction")
        at_least(self, 1, "n_shift_prompts", "n_prompts", "samples_per_prompt")
        require(bool(self.tasks), "bench: no tasks")
        require(
            len(set(self.tasks)) == len(self.tasks),
            f"bench: duplicate tasks in {','.join(self.tasks)}",
        )
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
