"""The data an evaluation runs on: prompts and probes, loaded and sampled once, so that the
models compared see exactly the same items."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from geomsafe.evaluate.config import EvalConfig
from geomsafe.evaluate.probes import ChoiceProbe, PersonaItem, load_em_probes, load_persona
from geomsafe.evaluate.prompts import (
    EvalPrompt,
    load_prompt_set,
    load_xstest,
    prompts_hash,
    resolve_data_root,
    select,
)

MISSING = "public data not found (pass --data-root or set GEOMSAFE_DATA)"


@dataclass
class EvalPlan:
    """Prompts for sampled generation, XSTest safe prompts, persona items and EM probes, with a
    sha256 of each; ``skipped`` names the parts left out and why."""

    prompts: list[EvalPrompt]
    xstest: list[EvalPrompt]
    persona: list[PersonaItem]
    em: list[ChoiceProbe]
    hashes: dict[str, str]
    skipped: dict[str, str] = field(default_factory=dict)
    data_root: str | None = None

    @property
    def data_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.hashes, sort_keys=True).encode()).hexdigest()


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def make_plan(cfg: EvalConfig) -> EvalPlan:
    """Load and sample every prompt and probe. Parts that need the public data are skipped (and
    say so) when the data root or their folder is absent."""
    root = resolve_data_root(cfg.data_root)
    prompts = select(load_prompt_set(cfg.prompts, root), cfg.n_prompts, cfg.seed)
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
            persona = load_persona(folder, cfg.traits, cfg.n_probe, cfg.seed)
        else:
            skipped["persona"] = MISSING
    if cfg.em_probes:
        folder = root / "emergent-misalignment" / "logprob_probes" if root is not None else None
        if folder is not None and folder.is_dir():
            em = load_em_probes(folder)
        else:
            skipped["em_probes"] = MISSING
    hashes = {
        "prompts": prompts_hash(prompts),
        "xstest": prompts_hash(xs),
        "persona": _hash([dataclasses.astuple(p) for p in persona]),
        "em_probes": _hash([dataclasses.astuple(p) for p in em]),
    }
    return EvalPlan(prompts, xs, persona, em, hashes, skipped, str(root) if root else None)


__all__ = ["EvalPlan", "make_plan"]
