"""The firewall artefact: which directions are watched, where, and their calibrated thresholds.

A :class:`Check` is one unit direction ``u`` of one concept at one decoder layer ``l`` (hook
site: the output of decoder layer ``l``, as in :mod:`geomsafe.capture`). Its **score** at a
token is the projection ``h · u`` of that token's residual stream ``h`` (raw units, not
normalised). A check reads the positions its rule names:

- ``tokens="last_prompt"``: the last prompt token only (the position whose output predicts the
  first response token); used for the request-side direction (``harmful_request``);
- ``tokens="response"``: every position that predicts a response token, i.e. the last prompt
  token and each generated token as it is fed back; used for the atlas's response-side
  directions (toxicity, deception, ...), which were extracted on response tokens.

Positions before ``skip_first`` (attention sinks) are never read. The **statistic** of a check
on a sequence is its score at the last prompt token (``last_prompt``) or the largest score over
the positions it reads (``response``). ``threshold`` (τ) is the ``q``-quantile of that statistic
over benign calibration sequences (:mod:`.calibration`); a check **fires** when a score it reads
exceeds τ. The **margin** of a score is ``(score − τ) / σ``, σ the standard deviation of the
benign statistic, so that checks of different scale compare; a sequence is flagged when any
margin is positive, and its **score** at a stage is its largest margin there.

Saved as ``firewall.json`` (stamped ``"format": "geomsafe.firewall/1"`` by
:func:`geomsafe.artefacts.write_json`; checks, thresholds, benign statistics, provenance) and
``firewall.safetensors`` (one ``[D]`` direction per check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from geomsafe.artefacts import (
    FIREWALL_JSON,
    FIREWALL_WEIGHTS,
    atomic_write,
    read_json,
    write_json,
)
from geomsafe.errors import GeomsafeError

MODES = ("monitor", "clamp", "block")
TOKEN_RULES = ("last_prompt", "response")
SPANS = ("sequence", "prompt", "response")
SOURCES = ("atlas", "request")
DEFAULT_REFUSAL = "I can't help with that request."


@dataclass
class Check:
    """One direction watched at one layer.

    Args:
        concept: the concept's name (an atlas feature or ``harmful_request``).
        layer: decoder layer index whose output is read.
        direction: ``[D]`` unit vector ``u``.
        tokens: ``"last_prompt"`` or ``"response"`` (see the module docstring).
        source: ``"atlas"`` (a response-side direction) or ``"request"``.
        threshold: τ in projection units; ``inf`` before calibration.
        benign_mean: mean of the benign calibration statistic.
        benign_std: its standard deviation (the margin's unit).
    """

    concept: str
    layer: int
    direction: Tensor
    tokens: str = "response"
    source: str = "atlas"
    threshold: float = math.inf
    benign_mean: float = 0.0
    benign_std: float = 1.0

    def __post_init__(self) -> None:
        if self.tokens not in TOKEN_RULES:
            raise GeomsafeError(f"check tokens must be one of {TOKEN_RULES}, not {self.tokens!r}")
        if self.source not in SOURCES:
            raise GeomsafeError(f"check source must be one of {SOURCES}, not {self.source!r}")
        if self.direction.dim() != 1:
            raise GeomsafeError(f"check {self.key}: direction must be a [D] vector")
        if not self.benign_std > 0:
            raise GeomsafeError(f"check {self.key}: benign_std must be > 0")

    @property
    def key(self) -> str:
        """``concept@layer``, the name of this check in scores and files."""
        return f"{self.concept}@{self.layer}"

    @property
    def clampable(self) -> bool:
        """Clamp mode caps response-side checks only: capping the request-side direction
        would remove the model's own recognition of a harmful request, the opposite of safe."""
        return self.tokens == "response"

    def margin(self, score: float) -> float:
        return (score - self.threshold) / self.benign_std

    def meta(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "concept": self.concept,
            "layer": self.layer,
            "tokens": self.tokens,
            "source": self.source,
            "threshold": _num(self.threshold),
            "benign_mean": self.benign_mean,
            "benign_std": self.benign_std,
        }


@dataclass
class Firewall:
    """Checks with calibrated thresholds, and where they came from.

    ``calibration`` holds the benign statistics per check (``stats``), the shared quantile
    ``q``, the target and achieved false-positive rates and the ids of the calibration data.
    Run a model under it with :func:`geomsafe.firewall.hooks.install`.
    """

    checks: list[Check]
    fpr: float = 0.01
    skip_first: int = 1
    refusal: str = DEFAULT_REFUSAL
    calibration: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.checks:
            raise GeomsafeError("a firewall needs at least one check")
        keys = [c.key for c in self.checks]
        if len(set(keys)) != len(keys):
            raise GeomsafeError(f"duplicate firewall checks: {keys}")
        widths = {c.direction.shape[0] for c in self.checks}
        if len(widths) != 1:
            raise GeomsafeError(f"firewall directions differ in width: {sorted(widths)}")
        if not 0 < self.fpr < 1:
            raise GeomsafeError(f"fpr must be in (0, 1), not {self.fpr}")
        if self.skip_first < 0:
            raise GeomsafeError(f"skip_first must be >= 0, not {self.skip_first}")

    @property
    def width(self) -> int:
        return int(self.checks[0].direction.shape[0])

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.checks]

    @property
    def calibrated(self) -> bool:
        return all(math.isfinite(c.threshold) for c in self.checks)

    def thresholds(self) -> dict[str, float]:
        return {c.key: c.threshold for c in self.checks}

    def statistic(self, scores: Tensor, prompt_len: int, span: str = "sequence") -> Tensor:
        """``[K]`` statistic of each check from one row's per-token ``scores`` (``[T, K]``,
        prompt tokens first), over ``span``: ``sequence`` (every position the check reads),
        ``prompt`` (the last prompt token) or ``response`` (the generated tokens fed back;
        NaN for ``last_prompt`` checks). NaN where the span holds no readable position."""
        if span not in SPANS:
            raise GeomsafeError(f"span must be one of {SPANS}, not {span!r}")
        n = scores.shape[0]
        out = torch.full((len(self.checks),), math.nan)
        last = prompt_len - 1
        for k, c in enumerate(self.checks):
            if c.tokens == "last_prompt" or span == "prompt":
                if span != "response" and self.skip_first <= last < n:
                    out[k] = scores[last, k]
                continue
            start = max(last if span == "sequence" else prompt_len, self.skip_first)
            if start < n:
                out[k] = scores[start:, k].max()
        return out

    def margins(self, statistic: Tensor) -> Tensor:
        """``(statistic − τ) / σ`` per check (NaN stays NaN)."""
        tau = torch.tensor([c.threshold for c in self.checks])
        std = torch.tensor([c.benign_std for c in self.checks])
        return (statistic.float() - tau) / std

    def score(self, statistic: Tensor) -> float:
        """The largest margin (``-inf`` when every check is NaN); positive means flagged."""
        m = self.margins(statistic)
        m = m[~torch.isnan(m)]
        return float(m.max()) if m.numel() else -math.inf

    def select(self, keys: list[str]) -> Firewall:
        """A firewall with only the checks named (by key or concept)."""
        chosen = [c for c in self.checks if c.key in keys or c.concept in keys]
        if not chosen:
            raise GeomsafeError(f"no check matches {keys}; have {', '.join(self.keys)}")
        return replace(self, checks=chosen)

    def to(self, *args, **kwargs) -> Firewall:
        checks = [replace(c, direction=c.direction.to(*args, **kwargs)) for c in self.checks]
        return replace(self, checks=checks)

    def check_width(self, width: int) -> None:
        if width != self.width:
            raise GeomsafeError(
                f"the firewall's directions have width {self.width} but the model has {width}; "
                "calibrate it on this model"
            )

    def to_dict(self) -> dict[str, Any]:
        """The ``firewall.json`` payload (:meth:`save` stamps it)."""
        return {
            "checks": [c.meta() for c in self.checks],
            "fpr": self.fpr,
            "skip_first": self.skip_first,
            "refusal": self.refusal,
            "calibration": self.calibration,
            "provenance": self.provenance,
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``firewall.safetensors`` + ``firewall.json`` atomically into ``folder``."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise GeomsafeError(f"{folder} exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {c.key: c.direction.detach().float().contiguous().cpu() for c in self.checks}
        atomic_write(folder / FIREWALL_WEIGHTS, lambda p: save_file(tensors, str(p)))
        write_json(folder / FIREWALL_JSON, self.to_dict(), "firewall")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Firewall:
        folder = Path(folder)
        if folder.is_file():
            folder = folder.parent
        meta_path, weights = folder / FIREWALL_JSON, folder / FIREWALL_WEIGHTS
        if not meta_path.is_file() or not weights.is_file():
            raise GeomsafeError(
                f"no firewall in {folder} (expected {FIREWALL_JSON} + {FIREWALL_WEIGHTS}); "
                "make one with `geomsafe firewall calibrate`"
            )
        meta = read_json(meta_path, "firewall")  # kind and version checked, one-line errors
        if "format" not in meta:
            raise GeomsafeError(f"{meta_path} is not a geomsafe firewall file (no format stamp)")
        try:
            tensors = load_file(str(weights))
        except Exception as exc:
            raise GeomsafeError(f"firewall in {folder} is unreadable: {exc}") from exc
        try:
            checks = [
                Check(
                    m["concept"],
                    int(m["layer"]),
                    tensors[m["key"]],
                    m["tokens"],
                    m["source"],
                    _float(m["threshold"]),
                    float(m["benign_mean"]),
                    float(m["benign_std"]),
                )
                for m in meta["checks"]
            ]
            return cls(
                checks,
                float(meta["fpr"]),
                int(meta["skip_first"]),
                str(meta["refusal"]),
                meta.get("calibration", {}),
                meta.get("provenance", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GeomsafeError(f"{meta_path}: malformed firewall ({exc})") from exc


def _num(x: float) -> float | str:
    """JSON has no infinity: an uncalibrated threshold is written as the string ``"inf"``."""
    return x if math.isfinite(x) else "inf"


def _float(x: float | str) -> float:
    return math.inf if x == "inf" else float(x)


def stack_directions(checks: list[Check], device: torch.device | str = "cpu") -> Tensor:
    """``[K, D]`` float32 matrix of the checks' directions."""
    return torch.stack([c.direction.float() for c in checks]).to(device)
