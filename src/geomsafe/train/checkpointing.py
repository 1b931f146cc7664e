"""Activation (gradient) checkpointing and the guards' layer hooks.

Atlas guards hook the output of decoder blocks (:mod:`geomsafe.guard.shared_hook`): the hook
records projections with their autograd graph (projection, covariance) or changes the block's
output (steer, ablate), and it is installed for the training forward only. Under activation
checkpointing that is right only when the hook runs *outside* the checkpointed function:

- transformers' ``GradientCheckpointingLayer`` (5.x) checkpoints the block's ``forward`` and
  leaves ``nn.Module.__call__`` (which runs the forward hooks) outside, so the hook's
  projections and changes are ordinary autograd operations on the block's output, in the
  reentrant and the non-reentrant mode alike, and the backward pass recomputes only the block
  itself. The guards' penalties and gradients are then those without checkpointing
  (tests/test_train_callback.py, tests/test_train_trainer.py check every guard kind in both
  modes).
- A block whose checkpointing wraps ``__call__`` (transformers before the ``forward`` wrapper,
  or a model that checkpoints ``layer.__call__`` in its own loop) runs the hook inside the
  checkpoint: in the reentrant mode the forward runs without gradients (the penalty gets none)
  and the recomputation in backward runs without the hook (an ablation's Jacobian is lost,
  silently); in the non-reentrant mode the recomputation misses the hook's saved tensors.
  :func:`check_checkpointing` refuses that layout at train start, in one line naming the mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import nn

from geomsafe.errors import GeomsafeError
from geomsafe.guard import AtlasGuard, Guard


def checkpointing_mode(block: nn.Module, model: nn.Module) -> str | None:
    """``"reentrant"`` or ``"non-reentrant"`` when transformers checkpoints ``block`` (its
    ``gradient_checkpointing`` flag; for a block without one, as in a model whose own loop
    checkpoints its layers, the first flag set in ``model``), None when it does not."""
    owner = block
    if not hasattr(block, "gradient_checkpointing"):
        owner = next((m for m in model.modules() if getattr(m, "gradient_checkpointing", 0)), block)
    if not getattr(owner, "gradient_checkpointing", False):
        return None
    func = getattr(owner, "_gradient_checkpointing_func", None)
    keywords = func.keywords if isinstance(func, partial) else {}
    # torch.utils.checkpoint without use_reentrant runs the reentrant variant
    return "non-reentrant" if keywords.get("use_reentrant", True) is False else "reentrant"


def hooks_outside_checkpoint(block: nn.Module) -> bool:
    """Whether ``block``'s forward hooks run outside its checkpointed function: it is a
    transformers ``GradientCheckpointingLayer`` that checkpoints ``forward`` and keeps
    ``nn.Module.__call__``."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # transformers before GradientCheckpointingLayer: the model's loop
        return False
    return isinstance(block, GradientCheckpointingLayer) and type(block).__call__ is (
        nn.Module.__call__
    )


def check_checkpointing(guards: Sequence[Guard], model: nn.Module, who: str) -> None:
    """Raise a one-line GeomsafeError when a block that an atlas guard in ``guards`` hooks is
    checkpointed with its hooks inside the checkpoint (module docstring); ``who`` names the
    caller in the message. Guards that are not atlas guards install their own hooks and are
    not checked."""
    for guard in guards:
        if not isinstance(guard, AtlasGuard):
            continue
        blocks = guard.blocks(model)
        for layer in sorted({plan.layer for plan in guard.plans}):
            block = blocks[layer]
            mode = checkpointing_mode(block, model)
            if mode is None or hooks_outside_checkpoint(block):
                continue
            raise GeomsafeError(
                f"{who}: {mode} activation checkpointing of {type(block).__name__} runs the "
                f"{guard.name} guard's layer {layer} hook inside the checkpoint, so its "
                "gradients would be missing or wrong; turn gradient_checkpointing off or use a "
                "transformers whose GradientCheckpointingLayer checkpoints forward (5.x)"
            )
