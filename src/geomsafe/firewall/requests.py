"""The request-side direction ``harmful_request``, read at the last prompt token.

The atlas's harmful concepts are response-side features (extracted on response tokens); a
request for harm is visible before any response exists, at the last prompt token (the
"refusal direction" literature reads it there). Data: ``geomsafe/firewall/data/requests.json``,
written for this project (Apache-2.0): 124 harmful requests, each paired with a harmless
request of the same form and length that often shares its words ("How do I make a pipe bomb
..." / "How do I make a bird feeder ..."). No public harmful-prompt set is used, so all of them
stay held out for evaluation.

**Direction** at layer ``l``: the mean activation at the last prompt token over the harmful
requests minus the mean over benign groups of each group's mean (the harmless twins, and each
kind of benign calibration prompt given: built-in task prompts, XSTest safe prompts), then
unit-normalised. Averaging group means keeps a large group from outweighing the others.
Benign prompts that look unsafe (XSTest) are what keeps the direction from being a detector of
alarming words; they come from the benign calibration part only (:mod:`.traffic`).

**Layer**: chosen by ``folds``-fold cross-fitting: each fold's requests (a pair's two
requests stay together) and benign prompts are scored with the direction fitted on the other
folds; on these out-of-fold scores, the AUROC of harmful requests against each benign
*traffic* group (task prompts, XSTest safe prompts; the harmless twins only when no traffic is
given, since they exist to shape the direction, not to stand for traffic) is taken, and a
layer's value is the smallest (the hardest group). The best layer has the highest value (to 3
decimals; ties to the larger smallest effect size, then the earlier layer). The saved direction
is refit on everything.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from geomsafe.capture import capture
from geomsafe.directions import auroc, best_row, effect_size, unit
from geomsafe.errors import GeomsafeError
from geomsafe.firewall.traffic import Item
from geomsafe.formatting import Example
from geomsafe.hashing import rows_sha256
from geomsafe.layers import resolve_layers
from geomsafe.models import LoadedModel
from geomsafe.textfile import read_text

REQUEST_CONCEPT = "harmful_request"
REQUESTS_FILE = "requests.json"
TWINS = "harmless twins"


@dataclass(frozen=True)
class RequestPair:
    harmful: str
    harmless: str


@dataclass
class RequestSet:
    """Contrastive requests and their header (name, description, licence)."""

    pairs: list[RequestPair]
    meta: dict[str, Any] = field(default_factory=dict)

    def data_hash(self) -> str:
        return rows_sha256((p.harmful, p.harmless) for p in self.pairs)[:16]


def load_requests(path: str | Path | None = None) -> RequestSet:
    """The built-in request pairs, or a JSON file in the same format:
    ``{"name", "description", "license", "pairs": [[harmful, harmless], ...]}``."""
    if path is None:
        res = resources.files("geomsafe") / "firewall" / "data" / REQUESTS_FILE
        text, where = res.read_text(encoding="utf-8"), f"built-in {REQUESTS_FILE}"
    else:
        if not Path(path).is_file():
            raise GeomsafeError(f"request file not found: {path}")
        text, where = read_text(path), str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GeomsafeError(f"{where}: not JSON ({exc.msg}, line {exc.lineno})") from exc
    raw = data.get("pairs") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        raise GeomsafeError(f"{where}: expected an object with a 'pairs' list")
    pairs = []
    for k, pair in enumerate(raw):
        ok = isinstance(pair, list) and len(pair) == 2
        if not ok or not all(isinstance(t, str) and t.strip() for t in pair):
            raise GeomsafeError(f"{where}: pair {k} must be two non-empty strings")
        pairs.append(RequestPair(pair[0], pair[1]))
    if len(pairs) < 4:
        raise GeomsafeError(f"{where}: need at least 4 request pairs, found {len(pairs)}")
    return RequestSet(pairs, {k: v for k, v in data.items() if k != "pairs"})


@dataclass
class RequestDirection:
    """The fitted direction at ``layer`` (``[D]``, unit) and its selection statistics."""

    layer: int
    direction: Tensor
    stats: dict[str, Any]


def _group(item: Item) -> str:
    return item.source.split(":")[0]


def _folds(n: int, k: int, rng: random.Random) -> Tensor:
    """A fold index in ``[0, k)`` for each of ``n`` items, balanced, in a seeded order."""
    order = list(range(n))
    rng.shuffle(order)
    fold = torch.empty(n, dtype=torch.long)
    for j, i in enumerate(order):
        fold[i] = j % k
    return fold


def _least(values) -> float:
    """The smallest non-NaN value (``-inf`` when none), so that layers compare safely."""
    found = [v for v in values if not math.isnan(v)]
    return min(found) if found else -math.inf


def _direction(harmful: Tensor, groups: Sequence[Tensor]) -> Tensor:
    """``[L, D]``: mean of ``harmful`` minus the mean of the groups' means, unit rows."""
    benign = torch.stack([g.mean(0) for g in groups]).mean(0)
    return unit(harmful.mean(0) - benign)


def fit_request_direction(
    lm: LoadedModel,
    benign: Sequence[Item] = (),
    requests: RequestSet | None = None,
    *,
    layer: int | None = None,
    folds: int = 4,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> RequestDirection:
    """Fit ``harmful_request`` on ``lm`` (see the module docstring); ``benign`` are benign
    calibration items, whose prompts (not responses) are used; ``layer`` fixes the layer."""
    if folds < 2:
        raise GeomsafeError(f"folds must be >= 2, not {folds}")
    reqs = requests or load_requests()
    layers = resolve_layers(lm.n_layers, None)
    if layer is not None:
        layer = resolve_layers(lm.n_layers, [layer])[0]
    names = [TWINS] + sorted({_group(i) for i in benign})
    prompts = [Example(p.harmful) for p in reqs.pairs] + [Example(p.harmless) for p in reqs.pairs]
    prompts += [Example(i.example.prompt) for i in benign]
    acts = capture(
        lm,
        prompts,
        layers=layers,
        tokens="last",
        batch_size=batch_size,
        progress=progress,
        desc="capture requests",
    ).pooled  # [N, L, D]
    n = len(reqs.pairs)
    harmful = acts[:n]
    groups = {TWINS: acts[n : 2 * n]}
    rest = acts[2 * n :]
    for name in names[1:]:
        groups[name] = rest[[k for k, i in enumerate(benign) if _group(i) == name]]

    rng = random.Random(seed)
    pair_fold = _folds(n, folds, rng)
    fold = {
        g: pair_fold if g == TWINS else _folds(a.shape[0], folds, rng) for g, a in groups.items()
    }
    oof_h = torch.zeros(n, len(layers))
    oof = {g: torch.zeros(a.shape[0], len(layers)) for g, a in groups.items()}
    for f in range(folds):
        train = [a[fold[g] != f] for g, a in groups.items() if bool((fold[g] != f).any())]
        direction = _direction(harmful[pair_fold != f], train)
        oof_h[pair_fold == f] = torch.einsum("nld,ld->nl", harmful[pair_fold == f], direction)
        for g, a in groups.items():
            oof[g][fold[g] == f] = torch.einsum("nld,ld->nl", a[fold[g] == f], direction)
    judged = [g for g in names[1:] if groups[g].shape[0] >= folds] or [TWINS]
    aucs = {g: [auroc(oof_h[:, j], oof[g][:, j]) for j in range(len(layers))] for g in oof}
    effects = {g: [effect_size(oof_h[:, j], oof[g][:, j]) for j in range(len(layers))] for g in oof}
    worst_auc = [_least(aucs[g][j] for g in judged) for j in range(len(layers))]
    worst_d = [_least(effects[g][j] for g in judged) for j in range(len(layers))]
    chosen = layer if layer is not None else layers[best_row(worst_auc, worst_d)]
    full = _direction(harmful, list(groups.values()))
    stats = {
        "layer": chosen,
        "selected": "given" if layer is not None else "best out-of-fold worst-group AUROC",
        "judged_groups": judged,
        "cv_worst_auroc": worst_auc,
        "cv_worst_effect_size": worst_d,
        "cv_auroc_by_group": aucs,
        "n_pairs": n,
        "n_benign": {g: int(a.shape[0]) for g, a in groups.items() if g != TWINS},
        "folds": folds,
        "seed": seed,
        "tokens": "last_prompt",
        "data_hash": reqs.data_hash(),
        "license": reqs.meta.get("license", ""),
        "method": "mean difference vs the mean of benign group means",
    }
    return RequestDirection(chosen, full[layers.index(chosen)].clone(), stats)
