"""AuditConfig: the settings of an audit, checked when the config is made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from geomsafe.capture import TOKEN_RULES
from geomsafe.config import at_least, option, require, with_options
from geomsafe.options import parse_layers, split_csv


@dataclass(frozen=True)
class AuditConfig:
    """Settings of :func:`geomsafe.audit`.

    Args:
        target: target concepts to report (default: every target among ``concepts``).
        concepts: concept specs: built-in names, ``.jsonl`` files, ``persona:PATH``,
            ``toxigen:PATH`` (default: every built-in concept).
        layers: layers to extract (default: all); ``"0,5,10"`` or a band ``"4:20"``.
        layer: report every target at this layer instead of its best one.
        band: the layer band the band overlap averages over (default: the middle third).
        max_pairs: contrast pairs per concept, a fixed random sample (None: all).
        tokens: which tokens are pooled: response, prompt, last or all.
        n_perm: label permutations of the overlap's null distribution (p-value, null q95).
        n_boot: bootstrap resamples of the overlap's 95% CI.
        control: add the label-shuffled control concept ``random_labels``.
        heads: attribute the overlap to attention heads.
        seed: seed of pair sampling, permutations and bootstrap.
        batch_size: examples per forward pass.

    Text values (``"a,b"``, ``"4:8"``) are parsed as the CLI gives them; a bad number is a
    one-line :class:`~geomsafe.errors.GeomsafeError` here, before any model is loaded.
    """

    target: tuple[str, ...] | None = option(None, "Target concept(s) (default: all targets).")
    concepts: tuple[str, ...] | None = option(
        None,
        "Concepts: built-in names, .jsonl files, persona:PATH, toxigen:PATH "
        "(default: all built-in).",
    )
    layers: tuple[int, ...] | None = option(
        None, "Layers to extract, e.g. '0,5,10' or '4:20' (default: all)."
    )
    layer: int | None = option(None, "Report every target at this layer (default: its best).")
    band: tuple[int, ...] | None = option(
        None, "Layer band to average over, e.g. '10:20' (default: middle third)."
    )
    max_pairs: int | None = option(64, "Pairs per concept (a fixed random sample).")
    tokens: str = option("response", "Tokens pooled per example.")
    n_perm: int = option(200, "Label permutations of the null (p-value, null q95).")
    n_boot: int = option(200, "Bootstrap resamples of the 95% CI.")
    control: bool = option(True, "Add the label-shuffled control concept.")
    heads: bool = option(True, "Attribute the overlap to attention heads.")
    seed: int = option(0, "Seed of sampling, permutations and bootstrap.")
    batch_size: int = option(16, "Examples per forward pass.")
    threads: int | None = option(
        None, "torch CPU threads (default: torch's choice; on a busy machine 1 helps)."
    )

    def __post_init__(self) -> None:
        for name in ("target", "concepts"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(split_csv(value)) or None)
        for name in ("layers", "band"):
            value = getattr(self, name)
            parsed = parse_layers(value) if value is not None else None
            if parsed is not None:
                require(all(x >= 0 for x in parsed), f"{name} must be >= 0: {value!r}")
            object.__setattr__(self, name, tuple(parsed) if parsed is not None else None)
        at_least(self, 0, "layer", allow_none=True)
        at_least(self, 2, "max_pairs", allow_none=True)
        at_least(self, 1, "n_perm", "n_boot", "batch_size")
        at_least(self, 1, "threads", allow_none=True)
        require(
            self.tokens in TOKEN_RULES,
            f"tokens must be one of {', '.join(TOKEN_RULES)}, not {self.tokens!r}",
        )

    def with_options(self, **options: Any) -> AuditConfig:
        """A copy with fields replaced (checked again); unknown names are an error."""
        return with_options(self, "audit", **options)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }
