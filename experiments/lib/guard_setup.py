"""What the guard experiments share (``experiments/guard_effect.py``,
``experiments/guard_pareto.py``): the emergent-misalignment evaluation questions, the atlas of
the guarded concepts at the middle layers, and the LoRA recipe of the command line.
"""

from __future__ import annotations

import argparse

import yaml

from geomsafe.atlas import FeatureAtlas
from geomsafe.guard.resolve import extract_atlas
from geomsafe.layers import default_band
from geomsafe.options import parse_layers
from lib.common import EM_DATA
from lib.pareto import ParetoConfig

QUESTIONS = [
    EM_DATA.parent / "evaluation" / "first_plot_questions.yaml",
    EM_DATA.parent / "evaluation" / "preregistered_evals.yaml",
]


def eval_questions(limit: int) -> list[str]:
    """The first ``limit`` distinct plain chat questions (no system prompt, no template) of the
    emergent-misalignment evaluation files, in file order."""
    out: list[str] = []
    for path in QUESTIONS:
        for item in yaml.safe_load(path.read_text()) or []:
            if item.get("system"):  # keep the plain chat questions
                continue
            for text in item.get("paraphrases") or []:
                if isinstance(text, str) and "{" not in text and text.strip() not in out:
                    out.append(text.strip())
    return out[:limit]


def middle_atlas(
    lm,
    specs: list[str],
    targets: tuple[str, ...] | list[str] = (),
    layers: str | None = None,
    max_pairs: int | None = 32,
    seed: int = 0,
    save: str | None = None,
) -> FeatureAtlas:
    """An atlas of ``specs`` (harmful) and ``targets`` at ``layers`` (``LO:HI`` or a list,
    :func:`geomsafe.options.parse_layers`; default: the middle third,
    :func:`geomsafe.layers.default_band`, where concept directions are cleanest), saved to
    ``save`` when given. Every concept, a user's file too, builds its direction from its
    direction half only: the other half is a held-out behavioural row (``concept:<name>``)."""
    atlas = extract_atlas(
        lm,
        specs,
        list(targets),
        layers=parse_layers(layers) or default_band(lm.n_layers),
        max_pairs=max_pairs,
        seed=seed,
        progress=False,
        split=True,
    )
    if save:
        atlas.save(save)
    return atlas


def recipe(args: argparse.Namespace) -> ParetoConfig:
    """The LoRA recipe of the command line (``--steps``, ``--batch-size``, ``--lr``,
    ``--lora-r``, ``--max-length``, ``--seed``)."""
    return ParetoConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        lora_r=args.lora_r,
        max_length=args.max_length,
        seed=args.seed,
    )
