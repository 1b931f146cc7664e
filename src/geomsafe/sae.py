"""Import SAELens-format SAE decoder rows as features of a FeatureAtlas.

An SAELens SAE folder holds ``cfg.json`` (``d_in``, ``d_sae``, ``hook_name`` such as
``blocks.12.hook_resid_post``, possibly under ``metadata``) and ``sae_weights.safetensors``
with ``W_dec`` ``[d_sae, d_in]``. ``blocks.l.hook_resid_post`` is the output of decoder
layer l (geomsafe's hook site); ``blocks.l.hook_resid_pre`` is the output of layer l-1.
An imported feature has its unit decoder row at that layer and zeros at the other layers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from geomsafe.atlas import FeatureAtlas
from geomsafe.directions import unit
from geomsafe.errors import GeomsafeError

WEIGHTS = ("sae_weights.safetensors", "model.safetensors")


def sae_layer(hook_name: str) -> int:
    """The geomsafe layer index of an SAELens residual-stream hook name."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", hook_name)
    if not m:
        raise GeomsafeError(
            f"SAE hook {hook_name!r} is not on the residual stream (blocks.N.hook_resid_post/pre)"
        )
    layer = int(m.group(1)) - (1 if m.group(2) == "pre" else 0)
    if layer < 0:
        raise GeomsafeError("blocks.0.hook_resid_pre is the embedding output, not a layer output")
    return layer


def read_sae(folder: str | Path) -> tuple[dict, torch.Tensor]:
    folder = Path(folder)
    cfg_path = folder / "cfg.json"
    if not cfg_path.is_file():
        raise GeomsafeError(f"no SAELens cfg.json in {folder}")
    cfg = json.loads(cfg_path.read_text())
    weights = next((folder / w for w in WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        raise GeomsafeError(f"no {' or '.join(WEIGHTS)} in {folder}")
    w_dec = load_file(str(weights)).get("W_dec")
    if w_dec is None:
        raise GeomsafeError(f"{weights} has no W_dec tensor")
    return cfg, w_dec


def import_sae(
    atlas: FeatureAtlas,
    folder: str | Path,
    features: Mapping[str, int],
    kind: str = "harmful",
) -> FeatureAtlas:
    """Add SAE decoder rows ``features`` (name -> latent index) to ``atlas`` in place."""
    cfg, w_dec = read_sae(folder)
    hook = cfg.get("hook_name") or cfg.get("metadata", {}).get("hook_name")
    if not hook:
        raise GeomsafeError(f"{folder}/cfg.json has no hook_name")
    layer = sae_layer(hook)
    width = atlas.directions[next(iter(atlas.directions))].shape[1] if atlas.directions else None
    if width is not None and w_dec.shape[1] != width:
        raise GeomsafeError(f"SAE width {w_dec.shape[1]} != atlas width {width}")
    row = atlas.row(layer)
    for name, idx in features.items():
        if not 0 <= idx < w_dec.shape[0]:
            raise GeomsafeError(f"SAE latent {idx} out of range (d_sae={w_dec.shape[0]})")
        full = torch.zeros(len(atlas.layers), w_dec.shape[1])
        full[row] = unit(w_dec[idx].float())
        atlas.directions[name] = full
        atlas.kinds[name] = kind
        atlas.stats[name] = {
            "best_layer": layer,
            "valid_layers": [layer],
            "source": str(folder),
            "sae_latent": idx,
            "hook_name": hook,
        }
    return atlas
