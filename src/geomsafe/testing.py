"""Tiny random-init models with an offline character tokenizer, for tests and examples.

Every family the test-suite covers (Llama, Qwen2, Gemma, GPT-2) is built from its
transformers config class, so nothing is downloaded.
"""

from __future__ import annotations

import string
from pathlib import Path

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


def tiny_gguf(path: str | Path, n_layers: int = 2, width: int = 16, seed: int = 0) -> Path:
    """Write a random-init Llama GGUF file (float32 tensors, byte-level BPE tokenizer over the
    256 byte symbols plus ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` and two merges,
    the chat template of :func:`char_tokenizer`) that transformers loads like a real GGUF."""
    import gguf
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path = Path(path)
    rng = np.random.default_rng(seed)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + list(bytes_to_unicode().values()) + ["Ġt", "he"]
    d, ff, heads, kv_heads = width, 2 * width, 4, 2
    kv = d // heads * kv_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(n_layers)
    writer.add_context_length(512)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(d // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))
    writer.add_token_merges(["Ġ t", "h e"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)

    def rand(*shape: int):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    ones = np.ones(d, dtype=np.float32)
    writer.add_tensor("token_embd.weight", rand(len(tokens), d))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", rand(len(tokens), d))
    for i in range(n_layers):
        for name, tensor in (
            ("attn_norm", ones),
            ("ffn_norm", ones),
            ("attn_q", rand(d, d)),
            ("attn_k", rand(kv, d)),
            ("attn_v", rand(kv, d)),
            ("attn_output", rand(d, d)),
            ("ffn_gate", rand(ff, d)),
            ("ffn_up", rand(ff, d)),
            ("ffn_down", rand(d, ff)),
        ):
            writer.add_tensor(f"blk.{i}.{name}.weight", tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def save_tiny(folder: str | Path, family: str = "llama", **kw) -> Path:
    """Save :func:`tiny_model` (``**kw``: its arguments) as a Hugging Face model folder."""
    lm = tiny_model(family, **kw)
    folder = Path(folder)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


_CUSTOM_CODE = {
    "configuration_custom.py": "from transformers import LlamaConfig\n\n\n"
    "class CustomConfig(LlamaConfig):\n    model_type = 'geomsafe_custom'\n",
    "modeling_custom.py": "from transformers import LlamaForCausalLM\n\n"
    "from .configuration_custom import CustomConfig\n\n\n"
    "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n",
}


def remote_code_folder(folder: str | Path, marker_dir: str | Path) -> Path:
    """A tiny Llama folder that needs its own Python code to load: ``model_type``
    ``geomsafe_custom`` (unknown to transformers) and an ``auto_map`` to
    ``configuration_custom.py`` / ``modeling_custom.py``. Importing either file creates
    ``marker_dir/RAN_<file stem>``, so a test can tell whether the code ran."""
    import json

    from geomsafe.artefacts import write_plain_json

    folder = save_tiny(folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "geomsafe_custom"
    config["architectures"] = ["CustomForCausalLM"]
    config["auto_map"] = {
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
    }
    write_plain_json(folder / "config.json", config)
    for name, code in _CUSTOM_CODE.items():
        marker = Path(marker_dir).absolute() / f"RAN_{name.removesuffix('.py')}"
        marker_dir_text = repr(str(marker.parent))
        touch = (
            "import pathlib\n\n"
            f"pathlib.Path({marker_dir_text}).mkdir(parents=True, exist_ok=True)\n"
            f"pathlib.Path({str(marker)!r}).touch()\n"
        )
        (folder / name).write_text(touch + code)
    return folder
