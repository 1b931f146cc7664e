from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from geomsafe.atlas import FeatureAtlas
from geomsafe.directions import unit
from geomsafe.errors import GeomsafeError
from geomsafe.geometry import overlap_score
from geomsafe.sae import import_sae, sae_layer


def _sae(tmp_path, hook="blocks.1.hook_resid_post", d_in=8, d_sae=5, nested=False):
    w_dec = torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(0))
    cfg = {"d_in": d_in, "d_sae": d_sae}
    cfg.update({"metadata": {"hook_name": hook}} if nested else {"hook_name": hook})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {"W_dec": w_dec, "W_enc": w_dec.T.contiguous()}, str(tmp_path / "sae_weights.safetensors")
    )
    return w_dec


def test_sae_layer_mapping():
    assert sae_layer("blocks.3.hook_resid_post") == 3
    assert sae_layer("blocks.3.hook_resid_pre") == 2
    with pytest.raises(GeomsafeError):
        sae_layer("blocks.3.hook_mlp_out")
    with pytest.raises(GeomsafeError):
        sae_layer("blocks.0.hook_resid_pre")


@pytest.mark.parametrize("nested", [False, True])
def test_import_rows_as_features(tmp_path, nested):
    w_dec = _sae(tmp_path, nested=nested)
    t = torch.zeros(3, 8)
    t[1] = unit(w_dec[2])
    atlas = FeatureAtlas([0, 1, 2], {"t": t}, {"t": "target"})
    import_sae(atlas, tmp_path, {"sae_2": 2, "sae_4": 4})
    torch.testing.assert_close(atlas.direction("sae_2", 1), unit(w_dec[2]))
    assert atlas.direction("sae_2", 0).abs().sum() == 0 and atlas.best_layer("sae_2") == 1
    score, nearest, _ = overlap_score(atlas, "t", [1])
    assert nearest == "sae_2" and score == pytest.approx(1.0, abs=1e-6)


def test_import_errors(tmp_path):
    atlas = FeatureAtlas([0, 1], {"t": torch.zeros(2, 6)}, {"t": "target"})
    with pytest.raises(GeomsafeError, match="cfg.json"):
        import_sae(atlas, tmp_path, {"a": 0})
    _sae(tmp_path)
    with pytest.raises(GeomsafeError, match="width"):
        import_sae(atlas, tmp_path, {"a": 0})
    atlas8 = FeatureAtlas([0, 1], {"t": torch.zeros(2, 8)}, {"t": "target"})
    with pytest.raises(GeomsafeError, match="out of range"):
        import_sae(atlas8, tmp_path, {"a": 99})
