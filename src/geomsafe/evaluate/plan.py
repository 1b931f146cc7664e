"""The data an evaluation runs on: prompts, probes and response pairs, loaded and sampled once,
so that the models compared see exactly the same items."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomsafe.datasets import resolve_data_root
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.config import EvalConfig
from geomsafe.evaluate.logodds import PairSet
from geomsafe.evaluate.pairsets import EXTERNAL, NAMED_SETS, load_pair_set
from geomsafe.evaluate.probes import ChoiceProbe, PersonaItem, load_em_probes, load_persona_items
from geomsafe.evaluate.prompts import (
    EvalPrompt,
    load_prompt_set,
    load_xstest,
    prompts_hash,
    select,
)

MISSING = "public data not found (pass --data-root or set GEOMSAFE_DATA)"


@dataclass
class EvalPlan:
    """Prompts for sampled generation, XSTest safe prompts, persona items, EM probes and the
    response-pair sets of the log-odds rows, with a sha256 of each; ``skipped`` names the parts
    left out and why."""

    prompts: list[EvalPrompt]
    xstest: list[EvalPrompt]
    persona: list[PersonaItem]
    em: list[ChoiceProbe]
    hashes: dict[str, str]
    skipped: dict[str, str] = field(default_factory=dict)
    data_root: str | None = None
    logodds: list[PairSet] = field(default_factory=list)

    @property
    def data_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.hashes, sort_keys=True).encode()).hexdigest()


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _pair_sets(cfg: EvalConfig, root: Path | None, skipped: dict[str, str]) -> list[PairSet]:
    """The log-odds pair sets of ``cfg``, each sampled to ``logodds_pairs``, then the style
    control of every loaded set (once each); sets whose public data is absent are skipped."""
    if cfg.logodds_pairs == 0:
        return []
    sets: dict[str, PairSet] = {}
    specs = list(dict.fromkeys(cfg.logodds))
    controls: dict[str, str] = {}  # control name -> the first set that names it
    for spec in specs:
        if spec in sets and spec in controls:  # a control already given as a file
            continue
        if spec in EXTERNAL and (root is None or not (root / EXTERNAL[spec]).exists()):
            skipped[f"logodds:{spec}"] = MISSING
            continue
        if spec in controls and spec not in NAMED_SETS:
            raise GeomsafeError(
                f"style control {spec!r} of pair set {controls[spec]!r} is not a named set; "
                "list its file among the log-odds sets"
            )
        ps = load_pair_set(spec, root)
        if ps.name in sets:
            raise GeomsafeError(f"two log-odds pair sets are named {ps.name!r}")
        sets[ps.name] = ps.subset(cfg.logodds_pairs, cfg.seed)
        if ps.style_control and ps.style_control not in controls:
            controls[ps.style_control] = ps.name
            specs.append(ps.style_control)
    return list(sets.values())


def make_plan(cfg: EvalConfig) -> EvalPlan:
    """Load and sample every prompt, probe and response pair. Parts that need the public data
    are skipped (and say so) when the data root or their folder is absent."""
    root = resolve_data_root(cfg.data_root)
    prompts = (
        select(load_prompt_set(cfg.prompts, root), cfg.n_prompts, cfg.seed)
        if cfg.n_prompts != 0
        else []
    )
    skipped: dict[str, str] = {}
    xs: list[EvalPrompt] = []
    persona: list[PersonaItem] = []
    em: list[ChoiceProbe] = []
    if cfg.n_xstest:
        folder = root / "xstest" if root is not None else None
        if folder is not None and folder.is_dir():
            xs = select(load_xstest(folder, "safe"), cfg.n_xstest, cfg.seed)
        else:
            skipped["xstest"] = MISSING
    if cfg.n_probe and cfg.traits:
        folder = root / "anthropic-evals" / "persona" if root is not None else None
        if folder is not None and folder.is_dir():
            persona = load_persona_items(folder, cfg.traits, cfg.n_probe, cfg.seed)
        else:
            skipped["persona"] = MISSING
    if cfg.em_probes:
        folder = root / "emergent-misalignment" / "logprob_probes" if root is not None else None
        if folder is not None and folder.is_dir():
            em = load_em_probes(folder)
        else:
            skipped["em_probes"] = MISSING
    logodds = _pair_sets(cfg, root, skipped)
    hashes = {
        "prompts": prompts_hash(prompts),
        "xstest": prompts_hash(xs),
        "persona": _hash([dataclasses.astuple(p) for p in persona]),
        "em_probes": _hash([dataclasses.astuple(p) for p in em]),
        **{ps.metric: ps.sha256() for ps in logodds},
    }
    return EvalPlan(prompts, xs, persona, em, hashes, skipped, str(root) if root else None, logodds)


__all__ = ["EvalPlan", "make_plan"]
