"""``kl``: penalise the KL divergence of the tuned model's next-token distribution from the base
model's, a peer of the geometric guards (Azarbal et al. 2025: a plain KL penalty to the base
model on alignment data is a strong baseline).

Each training forward, :meth:`KLGuard.penalty` runs the *reference batch* twice through the
same peft model: with the adapter disabled (``model.disable_adapter()``, ``torch.no_grad()``: the
base model ``p``) and with it (with gradients: the tuned model ``q``), and returns

    s * weight * mean over the reference batch's response tokens of KL(p || q)

(``s``: the scheduled strength, :mod:`geomsafe.guard.schedule`; ``weight``:
``GuardConfig.weight``). A token's KL is that of the two distributions over the vocabulary that
predict it (the logits one position earlier); response tokens are those whose label is not
``-100``, or every non-pad token of a batch without labels. KL is exactly 0 while the adapter
adds nothing (LoRA ``B`` = 0, as at initialisation), and its gradient reaches the LoRA weights
through ``q`` only.

The reference batch (``GuardConfig.kl_data``):

- ``builtin`` (default): the built-in ``task:factual_qa`` set (:data:`BUILTIN_REFERENCE`),
  short general-knowledge questions with plain correct answers: benign text on which the base
  model's behaviour is the one to keep, not one of the behaviour sets that ``evaluate`` scores,
  and short, so the two extra forwards are cheap. Its examples are shuffled once with the run's
  seed and cycled in that order, as many per batch as the training micro-batch has rows;
- ``training``: the training micro-batch itself;
- any data spec (a chat / prompt-completion JSONL file or ``task:NAME``), used as ``builtin``.

A file reference needs the tokenizer: ``finetune`` passes it (``build_guards(...,
tokenizer=, seed=)`` elsewhere, or :meth:`KLGuard.prepare`). The guard needs no atlas and no
concepts and installs no hooks. Cost per micro-batch: one forward without gradients and one
with them on the reference batch.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geomsafe.errors import GeomsafeError
from geomsafe.guard.base import Guard, GuardConfig, register

if TYPE_CHECKING:
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    from geomsafe.atlas import FeatureAtlas

BUILTIN_REFERENCE = "task:factual_qa"
KL_DATA_CHOICES = ("builtin", "training")  # or a data spec (a JSONL file, task:NAME)
REFERENCE_MAX_LENGTH = 256  # reference examples are cut to this many tokens
_IGNORE = -100


def reference_spec(kl_data: str) -> str | None:
    """The data spec of a ``kl_data`` setting (None: the training batch)."""
    if kl_data == "training":
        return None
    return BUILTIN_REFERENCE if kl_data == "builtin" else kl_data


def token_kl(base_logits: Tensor, tuned_logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over the tokens with ``labels != -100`` (from the second position on) of
    KL(softmax(base) || softmax(tuned)) of the logits that predict them (one position earlier).
    ``[B, T, V]`` logits, ``[B, T]`` labels; 0 when no token counts."""
    mask = (labels[:, 1:] != _IGNORE).to(tuned_logits.device)
    # only the counted positions are normalised: [N, V] rather than [B, T, V] float32 copies
    base = F.log_softmax(base_logits[:, :-1].to(tuned_logits.device)[mask].float(), dim=-1)
    tuned = F.log_softmax(tuned_logits[:, :-1][mask].float(), dim=-1)
    total = F.kl_div(tuned, base, log_target=True, reduction="sum")
    return total / max(int(mask.sum()), 1)


@register
class KLGuard(Guard):
    """KL(base || tuned) of the next-token distributions on a reference batch (module
    docstring). Built as the other kinds, ``KLGuard(atlas, config, layer_template)``; the atlas
    and the layer template are not used."""

    name = "kl"
    needs_atlas = False  # build_guards / resolve_guards need no atlas or concepts for it
    keep_graph = True  # its penalty carries gradients to the LoRA weights
    modifies = False  # it changes no training forward

    def __init__(
        self,
        atlas: FeatureAtlas | None = None,
        config: GuardConfig | None = None,
        layer_template: str | None = None,
    ) -> None:
        self.config = (config or GuardConfig()).validate()
        self.spec = reference_spec(self.config.kl_data)
        self.reference: list[dict[str, list[int]]] = []  # tokenised, in the cycling order
        self._next = 0
        self._source: dict[str, Any] = {"source": self.spec}
        self._last: dict[str, float] = {}
        self._kls: list[float] = []
        self._penalties: list[float] = []

    def prepare(self, tokenizer: PreTrainedTokenizerBase | None, seed: int = 0) -> None:
        """Tokenise the reference set and fix its order (shuffled with ``seed``); nothing for
        ``kl_data="training"``. A bad file is a one-line GeomsafeError."""
        if self.spec is None or tokenizer is None:
            return
        from geomsafe.datasets import load_dataset
        from geomsafe.train.data import build

        dataset = load_dataset(self.spec)
        data = build(tokenizer, dataset, max_length=REFERENCE_MAX_LENGTH, truncate=True)
        order = list(range(len(data)))
        random.Random(seed).shuffle(order)
        self.reference = [data.features[i] for i in order]
        self._next = 0
        self._source = {
            "source": dataset.path,
            "sha256": dataset.sha256,
            "n_examples": len(data),
            "seed": seed,
        }

    def reference_provenance(self) -> dict[str, Any]:
        """Where the reference batch comes from (the run's ``run.json`` records it)."""
        if self.spec is None:
            return {"source": "training batch"}
        return dict(self._source)

    def reference_batch(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch the KL is measured on: ``inputs`` itself (``training``), or the next
        ``len(inputs["input_ids"])`` reference examples, right-padded (pad id 0, masked)."""
        if self.spec is None:
            labels = inputs.get("labels")
            mask = inputs.get("attention_mask")
            if labels is None:
                ids = inputs["input_ids"]
                labels = ids.masked_fill(mask == 0, _IGNORE) if mask is not None else ids
            out = {"input_ids": inputs["input_ids"], "labels": labels}
            if mask is not None:
                out["attention_mask"] = mask
            return out
        if not self.reference:
            raise GeomsafeError(
                f"kl guard: reference data {self.spec} is not tokenised; pass tokenizer= to "
                "build_guards or call KLGuard.prepare(tokenizer, seed)"
            )
        n = int(inputs["input_ids"].shape[0])
        rows = [self.reference[(self._next + i) % len(self.reference)] for i in range(n)]
        self._next = (self._next + n) % len(self.reference)
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), _IGNORE, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, row in enumerate(rows):
            k = len(row["input_ids"])
            ids[i, :k] = torch.tensor(row["input_ids"])
            labels[i, :k] = torch.tensor(row["labels"])
            mask[i, :k] = 1
        device = inputs["input_ids"].device
        return {
            "input_ids": ids.to(device),
            "attention_mask": mask.to(device),
            "labels": labels.to(device),
        }

    def kl(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """KL(base || tuned) of ``batch`` (:func:`token_kl`), with gradients through tuned."""
        disable = getattr(model, "disable_adapter", None)
        if not callable(disable):
            raise GeomsafeError(
                "the kl guard needs a peft model (one with disable_adapter()) to get the base "
                "model's distribution"
            )
        kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "use_cache": False}
        if batch.get("attention_mask") is not None:
            kwargs["attention_mask"] = batch["attention_mask"]
        with torch.no_grad(), disable():
            base = model(**kwargs).logits
        tuned = model(**kwargs).logits
        return token_kl(base, tuned, batch["labels"])

    def penalty(self, model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
        value = self.kl(model, self.reference_batch(inputs))
        weighted = self.strength * self.config.weight * value
        self._kls.append(float(value.detach()))
        self._penalties.append(float(weighted.detach()))
        return weighted

    def after_step(self, model: nn.Module) -> None:
        if self._kls:
            n = len(self._kls)
            self._last = {
                "kl": sum(self._kls) / n,
                "penalty": sum(self._penalties) / n,
                "strength": self.strength,
            }
        self._kls, self._penalties = [], []

    def log(self) -> dict[str, float]:
        """``kl`` (mean over the step's micro-batches, unweighted), ``penalty`` (weighted) and
        ``strength`` of the last optimiser step."""
        return dict(self._last)
