from __future__ import annotations

import pytest
import torch

from geomsafe.atlas import FeatureAtlas
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example, encode
from geomsafe.shift import measure_projection, measured_shift, view
from geomsafe.testing import tiny_model
from geomsafe.train import TrainConfig, make_peft_model

PROMPTS = ["What is 2+2?", "Tell me a story about a cat.", "hi", "Name three colours please."]


def atlas_for(lm, best=(1, 2)):
    gen = torch.Generator().manual_seed(0)
    dirs = {}
    for name in ("toxicity", "deception"):
        d = torch.randn(lm.n_layers, lm.d_model, generator=gen)
        dirs[name] = d / d.norm(dim=-1, keepdim=True)
    stats = {"toxicity": {"best_layer": best[0]}, "deception": {"best_layer": best[1]}}
    return FeatureAtlas(list(range(lm.n_layers)), dirs, dict.fromkeys(dirs, "harmful"), stats)


def manual(lm, prompt, layer, direction):
    ids = torch.tensor([encode(lm.tokenizer, Example(prompt)).input_ids])
    with torch.no_grad():
        hs = lm.model(ids, output_hidden_states=True).hidden_states
    return float(hs[layer + 1][0, -1] @ direction)  # layer < last: hidden_states[l+1]


def test_measure_projection_is_last_prompt_token_at_best_layer():
    lm = tiny_model("llama")
    atlas = atlas_for(lm)
    got = measure_projection(lm, PROMPTS, atlas)  # best layers: toxicity 1, deception 2
    assert set(got) == {"toxicity", "deception"}
    want = sum(manual(lm, p, 1, atlas.direction("toxicity", 1)) for p in PROMPTS) / len(PROMPTS)
    assert abs(got["toxicity"] - want) < 1e-4
    at0 = measure_projection(lm, PROMPTS, atlas, ["deception"], layers={"deception": 0})
    want = sum(manual(lm, p, 0, atlas.direction("deception", 0)) for p in PROMPTS) / len(PROMPTS)
    assert set(at0) == {"deception"} and abs(at0["deception"] - want) < 1e-4
    assert abs(got["deception"] - at0["deception"]) > 1e-4  # the layer matters


def test_measured_shift_of_a_peft_model():
    lm = tiny_model("qwen2")
    atlas = atlas_for(lm, best=(1, 1))
    peft_model = make_peft_model(lm.model, TrainConfig(seed=0))
    tuned = view(lm, peft_model)
    zero = measured_shift(tuned, PROMPTS, atlas)  # LoRA B starts at zero: no shift
    assert all(abs(v) < 1e-6 for v in zero.values())
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    shift = measured_shift(tuned, PROMPTS, atlas, ["toxicity"])
    after = measure_projection(tuned, PROMPTS, atlas, ["toxicity"])["toxicity"]
    with peft_model.disable_adapter():
        before = measure_projection(tuned, PROMPTS, atlas, ["toxicity"])["toxicity"]
    assert abs(shift["toxicity"] - (after - before)) < 1e-5 and abs(shift["toxicity"]) > 1e-3


def test_measured_shift_needs_a_base():
    lm = tiny_model("llama")
    with pytest.raises(GeomsafeError, match="base"):
        measured_shift(lm, PROMPTS, atlas_for(lm))
