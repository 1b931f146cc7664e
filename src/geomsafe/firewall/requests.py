"""The request-side direction ``harmful_request``, read at the last prompt token.

The atlas's harmful concepts are response-side features (extracted on response tokens); a
request for harm is visible before any response exists, at the last prompt token (the
"refusal direction" literature reads it there). Data: ``geomsafe/firewall/data/requests.jsonl``,
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

**Layer**: the direction is fitted on a seeded ``1 − holdout`` share of the pairs and of each
benign group; on the rest, the AUROC of harmful requests against each benign group is taken,
and a layer's value is the smallest of these (the hardest group). The best layer has the highest
value (to 3 decimals; ties to the larger smallest effect size, then the earlier layer). The
saved direction is refit on everything.
"""

from __future__ import annotations

import hashlib
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
from geomsafe.layers import resolve_layers
from geomsafe.models import LoadedModel

REQUEST_CONCEPT = "harmful_request"
REQUESTS_FILE = "requests.jsonl"
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
        h = hashlib.sha256()
        for p in self.pairs:
            h.update(json.dumps([p.harmful, p.harmless]).encode())
        return h.hexdigest()[:16]


def load_requests(path: str | Path | None = None) -> RequestSet:
    """The built-in request pairs, or a JSONL file in the same format: an optional header
    line without ``harmful`` (``{"name", "description", "license"}``), then
    ``{"harmful", "harmless"}`` per line."""
    if path is None:
        res = resources.files("geomsafe") / "firewall" / "data" / REQUESTS_FILE
        text, where = res.read_text(encoding="utf-8"), f"built-in {REQUESTS_FILE}"
    else:
        if not Path(path).is_file():
            raise GeomsafeError(f"request file not found: {path}")
        text, where = Path(path).read_text(encoding="utf-8"), str(path)
    pairs, meta = [], {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GeomsafeError(f"{where}:{n}: not JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise GeomsafeError(f"{where}:{n}: expected an object")
        if "harmful" not in obj and not pairs and not meta:
            meta = obj
            continue
        h, b = obj.get("harmful"), obj.get("harmless")
        if not isinstance(h, str) or not isinstance(b, str) or not h.strip() or not b.strip():
            raise GeomsafeError(f"{where}:{n}: needs non-empty strings 'harmful' and 'harmless'")
        pairs.append(RequestPair(h, b))
    if len(pairs) < 4:
        raise GeomsafeError(f"{where}: need at least 4 request pairs, found {len(pairs)}")
    return RequestSet(pairs, meta)


@dataclass
class RequestDirection:
    """The fitted direction at ``layer`` (``[D]``, unit) and its selection statistics."""

    layer: int
    direction: Tensor
    stats: dict[str, Any]


def _group(item: Item) -> str:
    return item.source.split(":")[0]


def _split(n: int, holdout: float, rng: random.Random) -> tuple[list[int], list[int]]:
    idx = list(range(n))
    rng.shuffle(idx)
    k = min(n - 1, max(1, round(n * holdout))) if n > 1 else 0
    return sorted(idx[k:]), sorted(idx[:k])


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
    holdout: float = 0.25,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> RequestDirection:
    """Fit ``harmful_request`` on ``lm`` (see the module docstring); ``benign`` are benign
    calibration items, whose prompts (not responses) are used; ``layer`` fixes the layer."""
    if not 0 < holdout < 1:
        raise GeomsafeError(f"holdout must be in (0, 1), not {holdout}")
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
    h_fit, h_val = _split(n, holdout, rng)
    parts = {g: _split(a.shape[0], holdout, rng) for g, a in groups.items()}
    direction = _direction(harmful[h_fit], [groups[g][parts[g][0]] for g in names])
    h_scores = torch.einsum("nld,ld->nl", harmful[h_val], direction)
    aucs: dict[str, list[float]] = {}
    effects: dict[str, list[float]] = {}
    for g in names:
        val = groups[g][parts[g][1]]
        if val.shape[0] == 0:
            continue
        s = torch.einsum("nld,ld->nl", val, direction)
        aucs[g] = [auroc(h_scores[:, j], s[:, j]) for j in range(len(layers))]
        effects[g] = [effect_size(h_scores[:, j], s[:, j]) for j in range(len(layers))]
    worst_auc = [_least(a[j] for a in aucs.values()) for j in range(len(layers))]
    worst_d = [_least(e[j] for e in effects.values()) for j in range(len(layers))]
    chosen = layer if layer is not None else layers[best_row(worst_auc, worst_d)]
    full = _direction(harmful, list(groups.values()))
    stats = {
        "layer": chosen,
        "selected": "given" if layer is not None else "best held-out worst-group AUROC",
        "heldout_worst_auroc": worst_auc,
        "heldout_worst_effect_size": worst_d,
        "heldout_auroc_by_group": aucs,
        "n_pairs": n,
        "n_benign": {g: int(a.shape[0]) for g, a in groups.items() if g != TWINS},
        "holdout": holdout,
        "seed": seed,
        "tokens": "last_prompt",
        "data_hash": reqs.data_hash(),
        "license": reqs.meta.get("license", ""),
        "method": "mean difference vs the mean of benign group means",
    }
    return RequestDirection(chosen, full[layers.index(chosen)].clone(), stats)
