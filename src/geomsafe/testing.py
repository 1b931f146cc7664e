"""Tiny random-init models with an offline character tokenizer, for tests and examples.

Every family the test-suite covers (Llama, Qwen2, Gemma, GPT-2) is built from its
transformers config class, so nothing is downloaded.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from geomsafe.layers import guess_layer_template
from geomsafe.models import LoadedModel

FAMILIES = ("llama", "qwen2", "gemma", "gpt2")
_SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def char_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII plus chat specials (vocab < 128)."""
    chars = [c for c in string.printable if c not in "\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + chars + ["<unk>"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.add_special_tokens(_SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(family: str, n_layers: int = 3, width: int = 32) -> PretrainedConfig:
    common = dict(vocab_size=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "llama":
        return LlamaConfig(
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **common,
        )
    if family == "qwen2":
        return Qwen2Config(
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **common,
        )
    if family == "gemma":
        return GemmaConfig(
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=width // 4,
            max_position_embeddings=512,
            **common,
        )
    if family == "gpt2":
        return GPT2Config(n_embd=width, n_layer=n_layers, n_head=4, n_positions=512, **common)
    raise ValueError(f"unknown family {family!r}; use one of {FAMILIES}")


def tiny_model(
    family: str = "llama",
    n_layers: int = 3,
    width: int = 32,
    seed: int = 0,
    chat_template: bool = True,
) -> LoadedModel:
    """A random-init causal LM of ``family`` wrapped as a :class:`LoadedModel`."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, n_layers, width))
    model.eval()
    model.requires_grad_(False)
    tok = char_tokenizer(chat_template)
    return LoadedModel(model, tok, f"tiny-{family}", "random-init", guess_layer_template(model))


def tiny_atlas(
    width: int = 32,
    n_layers: int = 3,
    seed: int = 0,
    kinds: dict[str, str] | None = None,
    best_layers: dict[str, int] | None = None,
):
    """A :class:`~geomsafe.atlas.FeatureAtlas` of random unit directions (default: harmful
    ``toxicity`` and ``deception``, target ``helpfulness``) for tiny models."""
    from geomsafe.atlas import FeatureAtlas

    g = torch.Generator().manual_seed(seed)
    kinds = kinds or {"toxicity": "harmful", "deception": "harmful", "helpfulness": "target"}
    best = best_layers or {"toxicity": 1 % n_layers, "deception": 0}
    dirs = {}
    for name in kinds:
        d = torch.randn(n_layers, width, generator=g)
        dirs[name] = d / d.norm(dim=-1, keepdim=True)
    stats = {name: {"best_layer": layer} for name, layer in best.items()}
    return FeatureAtlas(list(range(n_layers)), dirs, kinds, stats, {"model_spec": "random"})


def tiny_firewall(width: int = 32, tau: float = 0.0, layer: int = 0, seed: int = 1):
    """A :class:`~geomsafe.firewall.Firewall` of random directions for tiny models, all with
    threshold ``tau``: a request check at ``layer``, two response checks there (cosine about
    0.7, so that clamping needs the joint solution) and one at ``layer + 1``."""
    from geomsafe.firewall import Check, Firewall

    g = torch.Generator().manual_seed(seed)

    def unit() -> torch.Tensor:
        v = torch.randn(width, generator=g)
        return v / v.norm()

    a, b, request = unit(), unit(), unit()
    b = (a + b) / (a + b).norm()
    return Firewall(
        [
            Check("harmful_request", layer, request, "last_prompt", "request", tau),
            Check("tox", layer, a, threshold=tau),
            Check("dec", layer, b, threshold=tau),
            Check("pow", layer + 1, unit(), threshold=tau),
        ],
        refusal="No.",
    )
