"""DiffConfig: the settings of model diffing, checked when the config is made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from geomsafe.config import at_least, option, require, with_options
from geomsafe.options import parse_layers

BUILTIN_DATA = "tasks"  # the four built-in task sets, interleaved (see geomsafe.diff.run)
REMOVALS = ("base_pcs", "none")
TOKEN_RULES = ("response", "all")


@dataclass(frozen=True)
class DiffConfig:
    """Settings of :func:`geomsafe.diff` (what each computes: :mod:`geomsafe.diff.run`).

    Args:
        data: prompts and responses the two models read: ``tasks`` (the built-in task sets,
            interleaved), ``task:NAME`` or a JSONL file in the fine-tuning format.
        max_examples: examples drawn (a fixed random sample per set, by ``seed``).
        components: principal components of the per-token differences kept per layer.
        remove: ``base_pcs`` (project the base model's top ``base_pcs`` uncentred principal
            directions out of every difference) or ``none`` (the raw differences).
        base_pcs: how many of the base's principal directions ``base_pcs`` removes.
        tokens: the tokens compared: ``response`` (the assistant's tokens) or ``all``.
        layers: decoder layers (default: all).
        seed: seed of the example sample.
        batch_size: examples per forward pass.
        max_length: tokens per example (longer ones are cut).
        threads: torch CPU threads.
    """

    data: str = option(BUILTIN_DATA, "'tasks' (built-in task sets), task:NAME or a JSONL file.")
    max_examples: int = option(64, "Examples compared (a fixed random sample).")
    components: int = option(3, "Principal components of the differences per layer.")
    remove: str = option("base_pcs", "Common component removed: base_pcs or none (raw).")
    base_pcs: int = option(4, "Base principal directions removed by --remove base_pcs.")
    tokens: str = option("response", "Tokens compared: response or all.")
    layers: tuple[int, ...] | None = option(None, "Layers, e.g. '0,5,10' or '4:20' (default: all).")
    seed: int = option(0, "Seed of the example sample.")
    batch_size: int = option(8, "Examples per forward pass.")
    max_length: int = option(256, "Tokens per example (longer ones are cut).")
    threads: int | None = option(
        None, "torch CPU threads (default: torch's choice; on a busy machine 1 helps)."
    )

    def __post_init__(self) -> None:
        if self.layers is not None:
            parsed = parse_layers(self.layers)
            if parsed is not None:
                require(all(x >= 0 for x in parsed), f"layers must be >= 0: {self.layers!r}")
            object.__setattr__(self, "layers", tuple(parsed) if parsed is not None else None)
        require(bool(str(self.data).strip()), "data must name a data set")
        at_least(self, 1, "max_examples", "components", "batch_size", "max_length")
        at_least(self, 0, "base_pcs")
        at_least(self, 1, "threads", allow_none=True)
        require(
            self.remove in REMOVALS,
            f"remove must be one of {', '.join(REMOVALS)}, not {self.remove!r}",
        )
        require(
            self.tokens in TOKEN_RULES,
            f"tokens must be one of {', '.join(TOKEN_RULES)}, not {self.tokens!r}",
        )

    def with_options(self, **options: Any) -> DiffConfig:
        """A copy with fields replaced (checked again); unknown names are an error."""
        return with_options(self, "diff", **options)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }
