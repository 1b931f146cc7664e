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
from geomsafe.config import at_least, in_range, option, require, with_options
from geomsafe.errors import GeomsafeError
from geomsafe.firewall.adapter import adapter_provenance, check_adapter, maybe_adapter
from geomsafe.firewall.config import DEFAULT_REFUSAL, Check, Firewall
from geomsafe.firewall.hooks import install
from geomsafe.firewall.requests import (
    REQUEST_CONCEPT,
    RequestSet,
    fit_request_direction,
    load_requests,
)
from geomsafe.firewall.traffic import Item, benign_split, sample, split
from geomsafe.formatting import encode_all
from geomsafe.layers import resolve_layers
from geomsafe.models import LoadedModel, load, pad_token_id


@dataclass(frozen=True)
class CalibrationConfig:
    """How a firewall is calibrated (each field's ``metadata["help"]`` says what it sets)."""

    fpr: float = option(
        0.01, "Target share of benign calibration sequences the firewall flags (0-1)."
    )
    share: float = option(
        0.5, "Share of each benign source used for calibration; the rest is for evaluation."
    )
    fit_share: float = option(
        1 / 3,
        "Share of the calibration part whose prompts fit the request direction; thresholds are "
        "set on the rest (everything without --request).",
    )
    seed: int = option(0, "Seed of every split.")
    concepts: tuple[str, ...] | None = option(
        None, "Atlas concepts to watch, comma-separated (default: harmful)."
    )
    layers: tuple[int, ...] | None = option(
        None, "Layers to watch them at (default: each one's best layer)."
    )
    request: bool = option(
        True, "Watch the request-side direction harmful_request at the last prompt token."
    )
    request_layer: int | None = option(
        None, "Its layer (default: chosen on held-out data, see firewall.requests)."
    )
    requests: str | None = option(None, "JSON file of request pairs (default: built-in).")
    max_per_source: int | None = option(
        None, "Threshold sequences per source (default: all)."
    )
    xstest: bool = option(True, "Use XSTest safe prompts (needs the data root).")
    batch_size: int = option(8, "Sequences per forward pass.")
    max_length: int = option(512, "Longer sequences are truncated.")
    skip_first: int = option(1, "Positions never read (attention sinks).")
    refusal: str = option(DEFAULT_REFUSAL, "The text a blocked request gets.")

    def __post_init__(self) -> None:
        in_range(self, "fpr", 0, 1, open_low=True, open_high=True)
        in_range(self, "share", 0, 1, open_low=True, open_high=True)
        in_range(self, "fit_share", 0, 1, open_low=True, open_high=True)
        at_least(self, 1, "batch_size")
        at_least(self, 2, "max_length")
        at_least(self, 0, "skip_first")
        at_least(self, 2, "max_per_source", allow_none=True)
        require(bool(self.refusal.strip()), "the refusal text must not be empty")

    def with_options(self, **options: Any) -> CalibrationConfig:
        """A copy with fields replaced (checked again); unknown names are an error."""
        return with_options(self, "calibration", **options)

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
    pad = pad_token_id(lm.tokenizer)
    batches = list(make_batches(encoded, batch_size, pad, "right"))
    device = lm.device
    with install(lm.model, firewall, "monitor", layer_template=lm.layer_template) as session:
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
