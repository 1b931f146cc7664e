"""LoRA adapters (peft) on a geomsafe model."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from geomsafe.adapters import peft_layer_template as peft_layer_template
from geomsafe.errors import GeomsafeError
from geomsafe.train.config import TrainConfig


def make_peft_model(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Wrap ``model`` (in place) with fresh LoRA adapters; only they are trainable."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():  # peft probes a transformers attribute deprecated in v5
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")  # GPT-2 Conv1D
            peft_model = get_peft_model(model, lora)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0]
        raise GeomsafeError(f"could not add LoRA adapters: {first[:300]}") from exc
    peft_model.train()
    return peft_model
