"""PredictConfig: every knob of `predict`, validated where it is made."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from geomsafe.config import above, in_range, integers, option, require, with_options
from geomsafe.predict.estimators import ESTIMATORS, per_example_scores

DEFAULT_METHOD = "gradient_alignment"  # behavioural did not rank insecure above code (docs)


@dataclass(frozen=True)
class PredictConfig:
    """Settings of one `predict` call. Each field's ``metadata["help"]`` is its CLI help."""

    method: str = option(
        DEFAULT_METHOD,
        "Risk estimator: behavioural (gradient alignment with each concept's log-odds), "
        "gradient_alignment (with the probe projection), projection_difference, "
        "prompt_anchored.",
    )
    concepts: tuple[str, ...] | None = option(
        None, "Harmful concepts to score (default: all built-in harmful)."
    )
    max_examples: int | None = option(128, "Score a fixed random sample of this many examples.")
    generate: bool = option(
        True, "Generate the model's own responses for the projection difference."
    )
    max_new_tokens: int = option(48, "Tokens per own response.")
    gradient_examples: int = option(64, "Examples in the gradient of method gradient_alignment.")
    pairs_per_concept: int | None = option(
        16, "Concept pairs in each concept's log-odds gradient (behavioural)."
    )
    sketch_rank: int = option(16, "Rank of the LoRA-shaped gradient sketch (behavioural).")
    lr: float = option(1e-4, "Step size of the first-order estimates.")
    filter_k: int | None = option(None, "Write filtered.jsonl without the K riskiest examples.")
    filter_score: str | None = option(
        None,
        "Per-example score that ranks examples for --filter/--attack: behavioural, "
        "projection_difference or prompt_anchored (default: the method's own, else "
        "projection_difference).",
    )
    attack_k: int | None = option(
        None, "Red-team: write attack.jsonl with the K benign-looking examples that push hardest."
    )
    attack_max_toxicity: float = option(
        0.2, "Toxicity below which an attack example counts as benign."
    )
    n_boot: int = option(1000, "Bootstrap resamples of the risk's CI.")
    ci_level: float = option(0.95, "Confidence level of the risk's CI.")
    batch_size: int = option(16, "Forward batch size.")
    grad_batch_size: int = option(4, "Backward batch size.")
    grad_tokens: int = option(
        256, "Most tokens (rows x longest) in one backward batch; bounds memory."
    )
    max_length: int = option(
        256,
        "Tokens per example in the gradient passes (longer: cut); the forward projection "
        "passes (prompts, data and own responses) read up to 512.",
    )
    seed: int = option(0, "Seed of the sample, sketch and bootstrap.")
    threads: int | None = option(
        None, "torch CPU threads (default: torch's choice; on a busy machine 1 helps)."
    )

    def __post_init__(self) -> None:
        if self.concepts is not None:
            object.__setattr__(self, "concepts", tuple(self.concepts) or None)
        require(
            self.method in ESTIMATORS,
            f"unknown method {self.method!r}; use {', '.join(ESTIMATORS)}",
        )
        scores = per_example_scores()
        require(
            self.filter_score is None or self.filter_score in scores,
            f"unknown filter score {self.filter_score!r}; use {', '.join(scores)}",
        )
        integers(self, 1, "max_examples", "pairs_per_concept", "threads", allow_none=True)
        integers(self, 1, "max_new_tokens", "gradient_examples", "sketch_rank", "n_boot")
        integers(self, 1, "batch_size", "grad_batch_size", "grad_tokens")
        integers(self, 2, "max_length")
        for name, label in (("filter_k", "filter (K)"), ("attack_k", "attack (K)")):
            value = getattr(self, name)
            ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
            require(ok and (value is None or value >= 1), f"{label} must be >= 1, not {value!r}")
        above(self, 0, "lr")
        in_range(self, "ci_level", 0, 1, open_low=True, open_high=True)
        in_range(self, "attack_max_toxicity", 0, 1)
        require(
            isinstance(self.seed, int) and not isinstance(self.seed, bool),
            f"seed must be an integer, not {self.seed!r}",
        )
        require(
            self.generate or not ESTIMATORS[self.method].needs_generate,
            f"method {self.method} needs generate=True",
        )

    @property
    def per_example_score(self) -> str:
        """The per-example score that ranks examples (``filter_score`` or its default)."""
        if self.filter_score is not None:
            return self.filter_score
        if ESTIMATORS[self.method].per_example:
            return self.method
        return "projection_difference" if self.generate else "prompt_anchored"

    def with_options(self, **options: Any) -> PredictConfig:
        """A copy with ``options`` replaced (checked again); unknown names are an error. The
        legacy ``gradient=False`` means method ``projection_difference`` (``prompt_anchored``
        with ``generate=False``), ``gradient=True`` means ``gradient_alignment``."""
        if "gradient" in options:
            gradient = options.pop("gradient")
            generate = options.get("generate", self.generate)
            fallback = "projection_difference" if generate else "prompt_anchored"
            options.setdefault("method", "gradient_alignment" if gradient else fallback)
        return with_options(self, "predict", **options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
