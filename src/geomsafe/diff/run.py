"""`diff`: what a fine-tune moves, measured as activation differences tuned − base.

The same tokens (a fixed set of prompts and responses) run through the base model (the
adapter disabled: peft's ``disable_adapter()``) and the tuned model (the adapter on). At every
chosen decoder layer's output (the hook site of :mod:`geomsafe.capture`) and every response
token ``t`` the difference ``δ_t = h_tuned(t) − h_base(t)`` is taken; per layer, over all
``n`` tokens (accumulated batch by batch, never held at once):

- **common component removed** (``remove="base_pcs"``, the default): the raw mean drift of a
  fine-tune is dominated by the residual stream's large common components (the mean
  activation and the outlier dimensions that are large in *every* base activation); guarding
  it projects those out and wrecks benign behaviour (on the default model: benign loss ×11.7,
  same-norm random directions ×1.22). So the ``base_pcs`` top uncentred principal directions
  ``U`` of the base activations (the eigenvectors of ``Σ_t h_base(t) h_base(t)ᵀ``: the
  directions large in every activation) are projected out of every difference,
  ``δ'_t = (I − UᵀU) δ_t``. Everything below is computed on ``δ'``; what remains is
  orthogonal to the common directions, so projecting it out leaves them alone. Unlike
  whitening by the base covariance, it does not inflate the base's low-variance directions
  (noisy with a few thousand tokens in hundreds of dimensions) and keeps the result a
  residual-stream direction. ``remove="none"`` keeps the raw differences.
- **mean**: ``m = mean_t δ'_t``; the atlas feature ``drift_mean`` is ``m / ‖m‖``.
- **principal components**: the top ``components`` uncentred principal directions of the
  ``δ'_t`` (:func:`geomsafe.diff.shifts.gram_shifts`, the computation the pilot guard uses),
  oriented along ``m``; features ``drift_pc1``, ``drift_pc2``, ...; ``explained`` is each one's
  share of ``Σ_t ‖δ'_t‖²``.
- **norms** (``diff.json``): ``‖mean δ‖`` (raw) and ``‖m‖``, the rms of ``δ`` and of
  ``δ'`` per token, the base's rms activation norm, the share of the base's energy in ``U``
  and the share of the differences' energy removed with it.

A direction whose drift is exactly zero at a layer (an adapter that writes nothing there, e.g.
below its first adapted block) is a zero row. Each feature's ``best_layer`` is the layer where
its drift (``‖m‖``, or the rms along the component) is largest relative to the base's rms
activation norm, so guards with ``layers=None`` guard it there.

**Default data** (``data="tasks"``): the four built-in benign task sets (code, factual QA,
instruction following, summarisation; ``geomsafe/data/tasks``), ``max_examples / 4`` drawn
from each by ``seed`` and interleaved: ordinary assistant responses, the tokens the model
produces in use, so the drift found is what a user of the tuned model would meet; none of the
evaluation's sets (prompts, pair sets), so an evaluation of a guard built from the directions
is not scored on the data they came from. A tune on one of the task sets has seen a quarter of
the examples' kind of data (not necessarily the same lines); pass ``data`` to use a held-out
set instead.

Output (``out``): ``atlas/`` (a :class:`~geomsafe.atlas.FeatureAtlas` at the diffed layers,
features of kind ``harmful`` so that every atlas consumer guards, calibrates on or projects on
them by default; ``provenance.kind`` is ``diff``) and ``diff.json`` (``geomsafe.diff/1``: the
config, the per-layer norms and shares, provenance with the adapter's and the data's sha256).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from geomsafe.adapters import ADAPTER_CONFIG, adapter_disabled, adapter_sha256, attach_adapter, view
from geomsafe.artefacts import ATLAS_DIR, DIFF_JSON, prepare_out, read_json, write_json
from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import HOOK_SITE, capture
from geomsafe.diff.config import DiffConfig
from geomsafe.diff.inputs import check_adapter_fits, check_adapter_folder, load_examples
from geomsafe.diff.shifts import common_basis, gram_shifts
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example
from geomsafe.layers import resolve_layers
from geomsafe.models import LoadedModel, load
from geomsafe.threads import torch_threads

DIFF_KIND = "diff"  # FeatureAtlas.provenance["kind"] of a diff's atlas
MEAN = "drift_mean"


def pc_name(i: int) -> str:
    """The atlas feature of the ``i``-th principal component (0-based): ``drift_pc<i+1>``."""
    return f"drift_pc{i + 1}"


@dataclass
class DiffResult:
    """Per-layer drift of an adapter: ``rows`` (one dict per layer: norms, shares,
    ``explained``), the directions as ``atlas`` (None when the adapter moves nothing),
    ``provenance`` and the ``config``. ``means`` / ``pcs`` hold the unnormalised mean
    difference ``[D]`` and the ``[k, D]`` components per layer (not saved)."""

    rows: list[dict[str, Any]]
    atlas: FeatureAtlas | None
    config: dict[str, Any]
    provenance: dict[str, Any]
    seconds: float = 0.0
    means: dict[int, Tensor] = field(default_factory=dict, repr=False)
    pcs: dict[int, Tensor] = field(default_factory=dict, repr=False)

    @property
    def layers(self) -> list[int]:
        return [row["layer"] for row in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "layers": self.rows,
            "features": list(self.atlas.directions) if self.atlas is not None else [],
            "provenance": self.provenance,
            "seconds": self.seconds,
        }

    def save(self, folder: str | Path) -> Path:
        """``atlas/`` (when there is one) and ``diff.json`` in ``folder``, each atomic."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.atlas is not None:
            self.atlas.save(folder / ATLAS_DIR)
        write_json(folder / DIFF_JSON, self.to_dict(), DIFF_KIND)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> DiffResult:
        folder = Path(folder)
        if not (folder / DIFF_JSON).is_file():
            raise GeomsafeError(f"no diff in {folder} (expected {DIFF_JSON})")
        payload = read_json(folder / DIFF_JSON, DIFF_KIND)
        atlas = FeatureAtlas.load(folder / ATLAS_DIR) if payload.get("features") else None
        return cls(
            payload["layers"],
            atlas,
            payload["config"],
            payload["provenance"],
            payload.get("seconds", 0.0),
        )


# ---- the computation -------------------------------------------------------------------------
@dataclass
class _Moments:
    """Sums over tokens at each layer: ``Σδ``, ``Σδδᵀ`` and the base's ``Σhhᵀ`` (float64)."""

    n_layers: int
    width: int
    n: int = 0
    diff_sum: Tensor = field(init=False)
    diff_gram: Tensor = field(init=False)
    base_gram: Tensor = field(init=False)

    def __post_init__(self) -> None:
        shape = (self.n_layers, self.width)
        self.diff_sum = torch.zeros(shape, dtype=torch.float64)
        self.diff_gram = torch.zeros(*shape, self.width, dtype=torch.float64)
        self.base_gram = torch.zeros(*shape, self.width, dtype=torch.float64)

    def add(self, base: Tensor, tuned: Tensor) -> None:
        """Add tokens ``[T, L, D]`` of the base and the tuned model."""
        self.n += base.shape[0]
        for i in range(self.n_layers):  # one layer in float64 at a time (memory)
            b = base[:, i].double().cpu()
            d = tuned[:, i].double().cpu() - b
            self.diff_sum[i] += d.sum(0)
            self.diff_gram[i] += d.T @ d
            self.base_gram[i] += b.T @ b


def _unit(v: Tensor) -> Tensor:
    norm = v.norm()
    return v / norm if norm > 0 else torch.zeros_like(v)


def _layer_stats(
    m: _Moments, i: int, layer: int, cfg: DiffConfig
) -> tuple[dict[str, Any], Tensor, Tensor]:
    """(the row of ``diff.json``, the mean ``[D]``, the components ``[k, D]``) at one layer."""
    n = max(m.n, 1)
    gram, raw_mean, base = m.diff_gram[i], m.diff_sum[i] / n, m.base_gram[i]
    base_share = 0.0
    if cfg.remove == "base_pcs":
        basis, base_share = common_basis(base, cfg.base_pcs)
        keep = torch.eye(gram.shape[0], dtype=torch.float64) - basis.double().T @ basis.double()
        gram, mean = keep @ gram @ keep, keep @ raw_mean
    else:
        mean = raw_mean
    pcs, explained = gram_shifts(gram, mean, cfg.components)
    kept_energy = float(gram.trace().clamp(min=0.0))
    pcs = torch.stack(
        [p if e > 0 else torch.zeros_like(p) for p, e in zip(pcs, explained, strict=True)]
    )
    total = float(m.diff_gram[i].trace().clamp(min=0.0))
    row = {
        "layer": layer,
        "n_tokens": m.n,
        "base_rms": math.sqrt(float(base.trace().clamp(min=0.0)) / n),
        "diff_rms_raw": math.sqrt(total / n),
        "diff_rms": math.sqrt(kept_energy / n),
        "mean_norm_raw": float(raw_mean.norm()),
        "mean_norm": float(mean.norm()),
        "base_share_removed": base_share,
        "diff_share_removed": 1.0 - kept_energy / total if total > 0 else 0.0,
        "explained": [float(e) for e in explained],
        "pc_rms": [math.sqrt(float(e) * kept_energy / n) for e in explained],
    }
    return row, mean.float(), pcs


def _best(values: list[float], layers: list[int]) -> int:
    return layers[max(range(len(values)), key=values.__getitem__)]


def _atlas(
    rows: list[dict[str, Any]],
    means: dict[int, Tensor],
    pcs: dict[int, Tensor],
    provenance: dict[str, Any],
) -> FeatureAtlas | None:
    """The directions as an atlas (module docstring); None when every difference is zero."""
    layers = [row["layer"] for row in rows]
    if all(row["diff_rms"] == 0 for row in rows):
        return None
    rel = [max(row["base_rms"], 1e-30) for row in rows]
    directions = {MEAN: torch.stack([_unit(means[layer]) for layer in layers])}
    stats: dict[str, dict[str, Any]] = {
        MEAN: {
            "best_layer": _best(
                [r["mean_norm"] / s for r, s in zip(rows, rel, strict=True)], layers
            ),
            "norm": [r["mean_norm"] for r in rows],
            "source": DIFF_KIND,
        }
    }
    k = min(p.shape[0] for p in pcs.values())
    for j in range(k):
        name = pc_name(j)
        directions[name] = torch.stack([pcs[layer][j] for layer in layers])
        stats[name] = {
            "best_layer": _best(
                [r["pc_rms"][j] / s for r, s in zip(rows, rel, strict=True)], layers
            ),
            "explained": [r["explained"][j] for r in rows],
            "source": DIFF_KIND,
        }
    kinds = dict.fromkeys(directions, "harmful")
    return FeatureAtlas(layers, directions, kinds, stats, {**provenance, "kind": DIFF_KIND})


def compare(
    lm: LoadedModel,
    peft_model: Any,
    examples: list[Example],
    cfg: DiffConfig,
    layers: list[int],
    *,
    progress: bool = False,
) -> _Moments:
    """The token sums of ``peft_model`` (adapter on) against itself with the adapter disabled,
    over ``examples`` at ``layers``, a few batches at a time."""
    tuned = view(lm, peft_model)
    moments = _Moments(len(layers), lm.d_model)
    kwargs = dict(
        layers=layers,
        tokens=cfg.tokens,
        per_token=True,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        progress=False,
    )
    chunk = cfg.batch_size * 4
    bar = tqdm(total=len(examples), desc="diff", disable=not progress, unit="ex")
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        after = capture(tuned, part, **kwargs).tokens
        with adapter_disabled(peft_model):
            before = capture(tuned, part, **kwargs).tokens
        assert after is not None and before is not None
        moments.add(torch.cat(before), torch.cat(after))
        bar.update(len(part))
    bar.close()
    return moments


def diff_model(
    lm: LoadedModel,
    peft_model: Any,
    examples: list[Example],
    cfg: DiffConfig,
    provenance: dict[str, Any],
    *,
    progress: bool = False,
) -> DiffResult:
    """The drift of ``peft_model`` (a peft model wrapping ``lm.model``) over ``examples``."""
    t0 = time.perf_counter()
    if cfg.components > lm.d_model:
        raise GeomsafeError(
            f"components must be <= the model width {lm.d_model}, not {cfg.components}"
        )
    if cfg.remove == "base_pcs" and cfg.base_pcs >= lm.d_model:
        raise GeomsafeError(f"base_pcs must be < the model width {lm.d_model}, not {cfg.base_pcs}")
    layers = resolve_layers(lm.n_layers, list(cfg.layers) if cfg.layers is not None else None)
    peft_model.eval()
    with torch.no_grad():
        moments = compare(lm, peft_model, examples, cfg, layers, progress=progress)
    rows, means, pcs = [], {}, {}
    for i, layer in enumerate(layers):
        row, means[layer], pcs[layer] = _layer_stats(moments, i, layer, cfg)
        rows.append(row)
    provenance = {
        **provenance,
        "layers": layers,
        "hook_site": HOOK_SITE,
        "token_rule": cfg.tokens,
        "n_examples": len(examples),
        "n_tokens": moments.n,
        "remove": cfg.remove,
        "seed": cfg.seed,
    }
    atlas = _atlas(rows, means, pcs, provenance)
    if atlas is None:
        moved = any(row["diff_rms_raw"] > 0 for row in rows)
        why = (
            "all of its drift lies in the base's common directions (try --remove none)"
            if moved
            else "it changes no activation there"
        )
        warnings.warn(f"geomsafe: no drift directions at the diffed layers: {why}", stacklevel=2)
    return DiffResult(rows, atlas, cfg.to_dict(), provenance, time.perf_counter() - t0, means, pcs)


def diff(
    model: str | LoadedModel = "default",
    adapter: str | Path | None = None,
    *,
    out: str | Path | None = None,
    config: DiffConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **options: Any,
) -> DiffResult:
    """Activation differences of ``model`` with the peft ``adapter`` against ``model`` without
    it (module docstring). ``options`` override :class:`DiffConfig` fields
    (``max_examples=32``, ...). Writes ``atlas/`` and ``diff.json`` to ``out`` when given (a
    non-empty ``out`` only with ``overwrite``). Every input is checked before the model loads;
    the adapter's fit to the model right after, before any forward pass."""

    t0 = time.perf_counter()
    cfg = (config or DiffConfig()).with_options(**options)
    if adapter is None:
        raise GeomsafeError("diff needs an adapter folder (the fine-tune to compare)")
    folder = check_adapter_folder(adapter)
    handle = prepare_out(out, DIFF_KIND, overwrite=overwrite) if out is not None else None
    examples, data_sha = load_examples(cfg)
    with torch_threads(cfg.threads):
        lm = model if isinstance(model, LoadedModel) else load(model)
        check_adapter_fits(lm, folder)
        adapter_cfg = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        provenance = {
            **lm.provenance(),
            "adapter": str(folder.resolve()),
            "adapter_sha256": adapter_sha256(folder),
            "adapter_base_model": adapter_cfg.get("base_model_name_or_path"),
            "data": cfg.data,
            "data_sha256": data_sha,
        }
        with attach_adapter(lm, folder) as peft_model:
            result = diff_model(lm, peft_model, examples, cfg, provenance, progress=progress)
    result.seconds = time.perf_counter() - t0
    if handle is not None:
        with handle.writing() as work:
            result.save(work)
    return result


__all__ = ["DiffResult", "diff", "diff_model", "pc_name"]
