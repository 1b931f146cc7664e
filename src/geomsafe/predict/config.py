"""PredictConfig: every knob of `predict`, validated where it is made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from geomsafe.errors import GeomsafeError

METHODS = ("behavioural", "gradient_alignment", "projection_difference", "prompt_anchored")
PER_EXAMPLE_SCORES = ("behavioural", "projection_difference", "prompt_anchored")
DEFAULT_METHOD = "gradient_alignment"  # behavioural did not rank insecure above code (docs)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class PredictConfig:
    """Settings of one `predict` call. Each field's ``metadata["help"]`` is its CLI help."""

    method: str = field(
        default=DEFAULT_METHOD,
        metadata=_help(
            "Risk estimator: behavioural (gradient alignment with each concept's log-odds), "
            "gradient_alignment (with the probe projection), projection_difference, "
            "prompt_anchored."
        ),
    )
    concepts: tuple[str, ...] | None = field(
        default=None, metadata=_help("Harmful concepts to score (default: all built-in harmful).")
    )
    max_examples: int | None = field(
        default=128, metadata=_help("Score a fixed random sample of this many examples.")
    )
    generate: bool = field(
        default=True,
        metadata=_help("Generate the model's own responses for the projection difference."),
    )
    max_new_tokens: int = field(default=48, metadata=_help("Tokens per own response."))
    gradient_examples: int = field(
        default=64, metadata=_help("Examples in the gradient of method gradient_alignment.")
    )
    pairs_per_concept: int | None = field(
        default=16,
        metadata=_help("Concept pairs in each concept's log-odds gradient (behavioural)."),
    )
    sketch_rank: int = field(
        default=16,
        metadata=_help("Rank of the LoRA-shaped gradient sketch (behavioural)."),
    )
    lr: float = field(default=1e-4, metadata=_help("Step size of the first-order estimates."))
    filter_k: int | None = field(
        default=None, metadata=_help("Write filtered.jsonl without the K riskiest examples.")
    )
    filter_score: str | None = field(
        default=None,
        metadata=_help(
            "Per-example score that ranks examples for --filter/--attack: behavioural, "
            "projection_difference or prompt_anchored (default: the method's own, else "
            "projection_difference)."
        ),
    )
    attack_k: int | None = field(
        default=None,
        metadata=_help(
            "Red-team: write attack.jsonl with the K benign-looking examples that push hardest."
        ),
    )
    attack_max_toxicity: float = field(
        default=0.2, metadata=_help("Toxicity below which an attack example counts as benign.")
    )
    n_boot: int = field(default=1000, metadata=_help("Bootstrap resamples of the risk's CI."))
    ci_level: float = field(default=0.95, metadata=_help("Confidence level of the risk's CI."))
    batch_size: int = field(default=16, metadata=_help("Forward batch size."))
    grad_batch_size: int = field(default=4, metadata=_help("Backward batch size."))
    grad_tokens: int = field(
        default=256,
        metadata=_help("Most tokens (rows x longest) in one backward batch; bounds memory."),
    )
    max_length: int = field(
        default=256,
        metadata=_help(
            "Tokens per example in the gradient passes (longer: cut); the forward projection "
            "passes (prompts, data and own responses) read up to 512."
        ),
    )
    seed: int = field(default=0, metadata=_help("Seed of the sample, sketch and bootstrap."))
    threads: int | None = field(
        default=None,
        metadata=_help("torch CPU threads (default: torch's choice; on a busy machine 1 helps)."),
    )

    def __post_init__(self) -> None:
        if self.concepts is not None:
            object.__setattr__(self, "concepts", tuple(self.concepts) or None)
        checks = [
            (self.method in METHODS, f"unknown method {self.method!r}; use {', '.join(METHODS)}"),
            (
                self.filter_score is None or self.filter_score in PER_EXAMPLE_SCORES,
                f"unknown filter score {self.filter_score!r}; use {', '.join(PER_EXAMPLE_SCORES)}",
            ),
            (_pos_or_none(self.max_examples), _n("max_examples", self.max_examples)),
            (_pos(self.max_new_tokens), _n("max_new_tokens", self.max_new_tokens)),
            (_pos(self.gradient_examples), _n("gradient_examples", self.gradient_examples)),
            (_pos_or_none(self.pairs_per_concept), _n("pairs_per_concept", self.pairs_per_concept)),
            (_pos(self.sketch_rank), _n("sketch_rank", self.sketch_rank)),
            (_pos_or_none(self.filter_k), _n("filter (K)", self.filter_k)),
            (_pos_or_none(self.attack_k), _n("attack (K)", self.attack_k)),
            (_pos(self.n_boot), _n("n_boot", self.n_boot)),
            (_pos(self.batch_size), _n("batch_size", self.batch_size)),
            (_pos(self.grad_batch_size), _n("grad_batch_size", self.grad_batch_size)),
            (_pos(self.grad_tokens), _n("grad_tokens", self.grad_tokens)),
            (_pos(self.max_length, 2), _n("max_length", self.max_length, 2)),
            (_pos_or_none(self.threads), _n("threads", self.threads)),
            (_num(self.lr) and self.lr > 0, f"lr must be > 0, not {self.lr}"),
            (
                _num(self.ci_level) and 0 < self.ci_level < 1,
                f"ci_level must be in (0, 1), not {self.ci_level}",
            ),
            (
                _num(self.attack_max_toxicity) and 0 <= self.attack_max_toxicity <= 1,
                f"attack_max_toxicity must be in [0, 1], not {self.attack_max_toxicity}",
            ),
            (_int(self.seed), f"seed must be an integer, not {self.seed!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise GeomsafeError(message)
        if not self.generate and self.method == "projection_difference":
            raise GeomsafeError("method projection_difference needs generate=True")

    @property
    def per_example_score(self) -> str:
        """The per-example score that ranks examples (``filter_score`` or its default)."""
        if self.filter_score is not None:
            return self.filter_score
        if self.method in PER_EXAMPLE_SCORES:
            return self.method
        return "projection_difference" if self.generate else "prompt_anchored"

    def with_options(self, **options: Any) -> PredictConfig:
        """A copy with ``options`` replaced; unknown names are an error. The legacy
        ``gradient=False`` means method ``projection_difference`` (``prompt_anchored`` with
        ``generate=False``), ``gradient=True`` means ``gradient_alignment``."""
        if "gradient" in options:
            gradient = options.pop("gradient")
            generate = options.get("generate", self.generate)
            fallback = "projection_difference" if generate else "prompt_anchored"
            options.setdefault("method", "gradient_alignment" if gradient else fallback)
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise GeomsafeError(f"unknown predict option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _pos(v: object, least: int = 1) -> bool:
    return _int(v) and v >= least  # type: ignore[operator]


def _pos_or_none(v: object) -> bool:
    return v is None or _pos(v)


def _n(name: str, value: object, least: int = 1) -> str:
    return f"{name} must be an integer >= {least}, not {value!r}"
