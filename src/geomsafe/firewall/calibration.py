"""Calibrate a firewall on benign traffic for a target false-positive rate.

Steps (:func:`calibrate`):

1. **Checks.** Each harmful concept of the atlas (all by default) at its best layer (or at each
   of ``layers``), read at every position that predicts a response token; and, unless
   ``request=False``, the request-side direction ``harmful_request`` (:mod:`.requests`) at the
   last prompt token.
2. **Traffic** (:mod:`.traffic`): the benign calibration part (built-in task examples with
   their responses, XSTest safe prompts; the other part is left for evaluation) is cut again,
   per source and seeded, into a **fit** share (``fit_share``; its prompts are the benign
   groups the request direction is fitted against) and a **threshold** share. No harmful data
   other than the project's own request pairs is read.
3. **Statistics.** Every threshold-share sequence (prompt and, where there is one, its
   response; teacher-forced, batched) is run under the firewall in ``monitor`` mode, so the
   scores are exactly those seen at inference, and each check's statistic is taken
   (:meth:`Firewall.statistic`, span ``sequence``).
4. **Thresholds.** Every check gets the same quantile ``q`` of its benign statistic (the
   ``higher`` rule: an observed value), and ``q`` is the smallest value, found by bisection on
   ``[1 − fpr, 1]``, at which the share of benign sequences on which *any* check fires is at
   most ``fpr``: the firewall as a whole, not each check, flags at most ``fpr`` of the
   calibration traffic. σ is each statistic's standard deviation.

Same model, atlas, data and seed give the same firewall.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from geomsafe.artefacts import geomsafe_version, prepare_out
from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import make_batches
from geomsafe.errors import GeomsafeError
from geomsafe.firewall.adapter import adapter_provenance, check_adapter, maybe_adapter
from geomsafe.firewall.config import DEFAULT_REFUSAL, Check, Firewall
from geomsafe.firewall.requests import (
    REQUEST_CONCEPT,
    RequestSet,
    fit_request_direction,
    load_requests,
)
from geomsafe.firewall.traffic import Item, benign_split, sample, split
from geomsafe.formatting import encode_all
from geomsafe.layers import resolve_layers
from geomsafe.models import LoadedModel, load


@dataclass(frozen=True)
class CalibrationConfig:
    """How a firewall is calibrated.

    Args:
        fpr: target share of benign calibration sequences the firewall flags (0–1).
        share: share of each benign source used for calibration; the rest is for evaluation.
        fit_share: share of the calibration part whose prompts fit the request direction;
            thresholds are set on the rest (everything when ``request`` is False).
        seed: seeds every split.
        concepts: atlas concepts to watch (None: every harmful one).
        layers: layers to watch them at (None: each concept's best layer).
        request: add the request-side direction ``harmful_request``.
        request_layer: its layer (None: chosen on held-out data, see :mod:`.requests`).
        requests: a JSON file of request pairs (None: the built-in set).
        max_per_source: at most this many threshold sequences per source (None: all).
        xstest: use XSTest safe prompts (needs the data root).
        batch_size: sequences per forward pass.
        max_length: longer sequences are truncated (see :func:`geomsafe.formatting.encode`).
        skip_first: positions never read (attention sinks).
        refusal: the text a blocked request gets.
    """

    fpr: float = 0.01
    share: float = 0.5
    fit_share: float = 1 / 3
    seed: int = 0
    concepts: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None
    request: bool = True
    request_layer: int | None = None
    requests: str | None = None
    max_per_source: int | None = None
    xstest: bool = True
    batch_size: int = 8
    max_length: int = 512
    skip_first: int = 1
    refusal: str = DEFAULT_REFUSAL

    def __post_init__(self) -> None:
        checks = [
            (0 < self.fpr < 1, f"fpr must be in (0, 1), not {self.fpr}"),
            (0 < self.share < 1, f"share must be in (0, 1), not {self.share}"),
            (0 < self.fit_share < 1, f"fit_share must be in (0, 1), not {self.fit_share}"),
            (self.batch_size >= 1, f"batch size must be >= 1, not {self.batch_size}"),
            (self.max_length >= 2, f"max_length must be >= 2, not {self.max_length}"),
            (self.skip_first >= 0, f"skip_first must be >= 0, not {self.skip_first}"),
            (bool(self.refusal.strip()), "the refusal text must not be empty"),
            (
                self.max_per_source is None or self.max_per_source >= 2,
                f"max_per_source must be >= 2, not {self.max_per_source}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise GeomsafeError(message)

    def with_options(self, **options: Any) -> CalibrationConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise GeomsafeError(f"unknown calibration option(s): {', '.join(unknown)}")
        return replace(self, **options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def atlas_checks(
    atlas: FeatureAtlas,
    width: int,
    n_layers: int,
    concepts: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
) -> list[Check]:
    """Uncalibrated ``response`` checks for atlas concepts (default: its harmful ones) at each
    concept's best layer or at each of ``layers``."""
    names = list(concepts) if concepts is not None else atlas.harmful
    if not names:
        raise GeomsafeError("the atlas has no harmful concepts; name concepts to watch")
    missing = [n for n in names if n not in atlas.directions]
    if missing:
        raise GeomsafeError(f"not in the atlas: {', '.join(missing)}; have {atlas.names()}")
    dim = next(iter(atlas.directions.values())).shape[-1]
    if dim != width:
        raise GeomsafeError(f"the atlas has width {dim} but the model has {width}")
    chosen = resolve_layers(n_layers, list(layers)) if layers is not None else None
    out = []
    for name in names:
        for layer in chosen if chosen is not None else [atlas.best_layer(name)]:
            out.append(Check(name, layer, atlas.direction(name, layer).float().clone()))
    return out


def _forward(model: Any, **inputs: Tensor) -> None:
    """A forward pass that computes the logits of the last position only when it can."""
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        inputs["logits_to_keep"] = 1  # type: ignore[assignment]
    model(**inputs, use_cache=False)


@torch.no_grad()
def sequence_statistics(
    lm: LoadedModel,
    firewall: Firewall,
    items: Sequence[Item],
    spans: Sequence[str] = ("sequence",),
    *,
    batch_size: int = 8,
    max_length: int = 512,
    progress: bool = True,
    desc: str = "firewall scores",
) -> dict[str, Tensor]:
    """``{span: [N, K]}`` statistics of ``items`` (prompt plus response when given;
    teacher-forced) under ``firewall`` in monitor mode (:meth:`Firewall.statistic`)."""
    if not items:
        raise GeomsafeError("no sequences to score")
    encoded = encode_all(lm.tokenizer, [i.example for i in items], max_length)
    out = {s: torch.full((len(items), len(firewall.checks)), math.nan) for s in spans}
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    batches = list(make_batches(encoded, batch_size, pad, "right"))
    device = lm.device
    with firewall.apply(lm.model, "monitor", layer_template=lm.layer_template) as session:
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
            _forward(
                lm.model,
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                position_ids=batch.position_ids.to(device),
            )
            for row, i in zip(session.rows(), batch.index, strict=True):
                for s in spans:
                    out[s][i] = firewall.statistic(row.scores, encoded[i].prompt_len, s)
    return out


def choose_thresholds(stats: Tensor, fpr: float, iters: int = 60) -> tuple[float, Tensor]:
    """The shared quantile ``q`` and per-check thresholds ``[K]`` (see the module docstring);
    NaN statistics (a check that cannot read a sequence) never fire."""
    cols = [stats[:, k][~torch.isnan(stats[:, k])].double() for k in range(stats.shape[1])]
    for k, c in enumerate(cols):
        if c.numel() < 2:
            raise GeomsafeError(f"check {k} has fewer than 2 benign calibration values")

    def taus(q: float) -> Tensor:
        return torch.stack([torch.quantile(c, q, interpolation="higher") for c in cols])

    def rate(t: Tensor) -> float:
        fires = (stats.double() > t).any(-1)  # NaN > t is False
        return float(fires.double().mean())

    lo, hi = 1.0 - fpr, 1.0
    if rate(taus(lo)) <= fpr:
        return lo, taus(lo).float()
    for _ in range(iters):
        mid = (lo + hi) / 2
        if rate(taus(mid)) <= fpr:
            hi = mid
        else:
            lo = mid
    return hi, taus(hi).float()


def _summary(values: Tensor) -> list[float]:
    return [round(float(v), 5) for v in values if not math.isnan(float(v))]


def _measure(
    lm: LoadedModel,
    atlas: FeatureAtlas | None,
    cfg: CalibrationConfig,
    requests: RequestSet | None,
    fit: list[Item],
    rest: list[Item],
    progress: bool,
) -> tuple[list[Check], Tensor, dict[str, Any] | None]:
    """The uncalibrated checks (request direction fitted on ``fit``) and their statistics on
    ``rest``."""
    checks: list[Check] = []
    watched = (
        []
        if atlas is None
        else atlas_checks(atlas, lm.d_model, lm.n_layers, cfg.concepts, cfg.layers)
    )
    request_stats: dict[str, Any] | None = None
    if requests is not None:
        rd = fit_request_direction(
            lm,
            fit,
            requests,
            layer=cfg.request_layer,
            seed=cfg.seed,
            batch_size=max(cfg.batch_size, 16),
            progress=progress,
        )
        checks.append(Check(REQUEST_CONCEPT, rd.layer, rd.direction, "last_prompt", "request"))
        request_stats = rd.stats
    checks += watched
    raw = Firewall(checks, cfg.fpr, cfg.skip_first, cfg.refusal)
    stats = sequence_statistics(
        lm,
        raw,
        rest,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        progress=progress,
        desc="calibrate",
    )["sequence"]
    return checks, stats, request_stats


def calibrate(
    model: str | LoadedModel = "default",
    *,
    out: str | Path | None = None,
    atlas: str | Path | FeatureAtlas | None = None,
    adapter: str | Path | None = None,
    config: CalibrationConfig | None = None,
    data_root: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **options: Any,
) -> Firewall:
    """Calibrate a firewall for ``model`` (with ``adapter``, a peft folder, when given) from
    ``atlas`` (see the module docstring); ``options`` override :class:`CalibrationConfig`
    fields. Saves to ``out`` when given (a non-empty ``out`` only with ``overwrite``)."""
    t0 = time.perf_counter()
    cfg = (config or CalibrationConfig()).with_options(**options)
    fatlas = FeatureAtlas.load(atlas) if isinstance(atlas, str | Path) else atlas
    if fatlas is None and not cfg.request:
        raise GeomsafeError("nothing to watch: give an atlas or keep the request direction")
    folder = prepare_out(out, "firewall", overwrite=overwrite) if out is not None else None
    check_adapter(adapter)
    requests = load_requests(cfg.requests) if cfg.request else None
    benign = benign_split(data_root, cfg.share, cfg.seed, cfg.xstest)
    if cfg.request:
        fit, rest = split(benign.calibration, cfg.fit_share, cfg.seed)
    else:
        fit, rest = [], list(benign.calibration)
    rest = sample(rest, cfg.max_per_source, cfg.seed)

    lm = model if isinstance(model, LoadedModel) else load(model)
    with maybe_adapter(lm, adapter):
        checks, stats, request_stats = _measure(lm, fatlas, cfg, requests, fit, rest, progress)
    q, taus = choose_thresholds(stats, cfg.fpr)
    calibrated = []
    for k, c in enumerate(checks):
        col = stats[:, k][~torch.isnan(stats[:, k])]
        std = float(col.std()) if col.numel() > 1 else 1.0
        calibrated.append(
            replace(
                c,
                threshold=float(taus[k]),
                benign_mean=float(col.mean()),
                benign_std=std if std > 0 else 1.0,
            )
        )
    fires = (stats > taus).any(-1)
    calibration = {
        "q": q,
        "fpr_target": cfg.fpr,
        "fpr_achieved": float(fires.float().mean()),
        "n_sequences": len(rest),
        "sources": {s: sum(i.source == s for i in rest) for s in sorted({i.source for i in rest})},
        "threshold_ids": [f"{i.source}/{i.id}" for i in rest],
        "fit_ids": [f"{i.source}/{i.id}" for i in fit],
        "stats": {c.key: _summary(stats[:, k]) for k, c in enumerate(checks)},
        "request": request_stats,
        "notes": benign.notes,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    provenance = {
        **lm.provenance(),
        **adapter_provenance(adapter),
        "geomsafe_version": geomsafe_version(),
        "hook_site": "decoder_layer_output",
        "config": cfg.to_dict(),
        "atlas": None
        if fatlas is None
        else {
            "path": str(Path(atlas).resolve()) if isinstance(atlas, str | Path) else None,
            "provenance": fatlas.provenance,
        },
        "requests": None
        if requests is None
        else {"data_hash": requests.data_hash(), "n_pairs": len(requests.pairs), **requests.meta},
    }
    fw = Firewall(calibrated, cfg.fpr, cfg.skip_first, cfg.refusal, calibration, provenance)
    if folder is not None:
        with folder.writing() as work:
            fw.save(work)
    return fw


def rethreshold(firewall: Firewall, fpr: float) -> Firewall:
    """The same checks with thresholds for another target false-positive rate ``fpr``, chosen
    (:func:`choose_thresholds`) from the benign statistics the calibration kept
    (``calibration["stats"]``, rounded to 5 decimals), without running a model: a looser
    (higher ``fpr``) or stricter clamp or block from one calibration. The calibration record
    gets the new ``q``, target and achieved rate, and ``rethresholded_from`` (the old target).
    Needs every check's statistics on the same sequences (no check skipped one); otherwise
    re-run :func:`calibrate` with ``fpr``."""
    if not 0 < fpr < 1:
        raise GeomsafeError(f"fpr must be in (0, 1), not {fpr}")
    stats = firewall.calibration.get("stats") or {}
    cols = [stats.get(c.key) for c in firewall.checks]
    if any(not c for c in cols) or len({len(c) for c in cols}) != 1:
        raise GeomsafeError(
            "this firewall cannot be re-thresholded: its calibration statistics are missing or "
            "cover different sequences per check; calibrate again with the new --fpr"
        )
    table = torch.tensor(cols, dtype=torch.float32).T  # [sequences, checks], as calibrated
    q, taus = choose_thresholds(table, fpr)
    checks = [replace(c, threshold=float(taus[k])) for k, c in enumerate(firewall.checks)]
    fires = (table > taus.double()).any(-1)
    calibration = {
        **firewall.calibration,
        "q": q,
        "fpr_target": fpr,
        "fpr_achieved": float(fires.double().mean()),
        "rethresholded_from": firewall.fpr,
    }
    return replace(firewall, checks=checks, fpr=fpr, calibration=calibration)
