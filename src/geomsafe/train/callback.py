"""``GuardCallback``: geomsafe guards in a user's own transformers ``Trainer`` or TRL
``SFTTrainer``::

    from geomsafe.guard import GuardConfig, build_guards
    from geomsafe.train import GuardCallback

    guards = build_guards("ablate,projection", atlas, GuardConfig(concepts=["toxicity"]))
    trainer = Trainer(model=peft_model, args=args, train_dataset=data,
                      callbacks=[GuardCallback(guards)])
    trainer.train()

A callback cannot change the loss that the Trainer computes, so it works through the model:

- ``on_train_begin`` registers a forward pre-hook and a forward hook on the model that the
  Trainer trains (removed at ``on_train_end``). In a training forward (``model.training``,
  gradients enabled) the pre-hook installs the guards (:func:`~geomsafe.guard.base.combined`: one
  hook per guarded layer that steers, ablates and records); the forward hook removes them,
  computes the guards' penalty on the forward's own inputs (labels != -100 mark the
  assistant tokens) and attaches it to the outputs.
- Attaching: every output tensor with a gradient and at most two dimensions (the loss,
  per-token log-probabilities; not the ``[B, T, V]`` logits, which are left alone rather than
  copied) passes through an identity autograd function that returns a copy; the first of them
  that the micro-batch's backward pass reaches also sends gradient 1 into ``penalty / m``,
  with ``m`` the number of micro-batches of the optimiser step. The LoRA weights thus get the
  gradient of ``penalty / m`` on top of the trainer's own loss, whatever output the trainer
  builds that loss from (``loss`` in ``Trainer``, the per-token log-probabilities in TRL's
  ``SFTTrainer``). :class:`GuardedTrainer` adds ``penalty / m`` to a loss that is already
  divided over the accumulated batch, or ``penalty`` to a loss that the Trainer then divides
  by ``m``: the penalty's gradient is ``1/m`` times its own in both, as here, so the
  penalty's weight does not depend on gradient accumulation. The outputs' values (and so the
  trainer's logged loss) are unchanged; the penalty is logged in this callback's rows. A
  penalty that no backward pass reached is an error at the end of the step (e.g. a
  ``compute_loss_func`` that reads only the logits: use :class:`GuardedTrainer` there).
- ``m`` is what the Trainer accumulates: ``gradient_accumulation_steps``, or the remainder for
  the last step of an epoch whose number of batches is not a multiple of it (from
  ``len(train_dataloader)``, as the Trainer computes it).
- ``on_step_begin`` sets the guards' scheduled strengths (``begin_step``); ``on_step_end`` calls
  their ``after_step`` (the orthogonal projection of the LoRA weights) and appends a row to
  :attr:`GuardCallback.rows`: ``step``, ``loss`` (the model's own ``loss`` output, summed over
  the micro-batches like the Trainer's), ``penalty`` (sum over the micro-batches of
  ``penalty / m``), and every guard's log as ``<guard>/<key>`` and ``<key>``.

Activation checkpointing (``gradient_checkpointing``, reentrant or not) is served where the
guards' layer hooks run outside the checkpoint (transformers 5's ``GradientCheckpointingLayer``):
the penalty and the gradients are those without it. Other layouts are refused at train start
(:mod:`geomsafe.train.checkpointing`).

Limits: mixed precision ``fp16`` (a loss scaler, whose scale the injected gradient would miss)
is refused: use bf16 or :class:`GuardedTrainer`. Forwards without gradients (evaluation, a
second metrics-only forward) are left alone. If a training forward raises, its guard hooks
are removed at the next forward or at the end of training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import TrainerCallback

from geomsafe import hooks
from geomsafe.errors import GeomsafeError
from geomsafe.guard import Guard, MonitorGuard
from geomsafe.guard.base import begin_steps, combined, step_logs, total_penalty
from geomsafe.train.checkpointing import check_checkpointing


def micro_batches(step: int, accumulation: int, n_batches: int | None) -> int:
    """The number of micro-batches that the Trainer accumulates into optimiser step ``step``
    (0-based) with ``n_batches`` batches per epoch (None: unknown, every step is full)."""
    if not n_batches:
        return accumulation
    per_epoch = max(n_batches // accumulation + int(n_batches % accumulation > 0), 1)
    if step % per_epoch == per_epoch - 1:
        return n_batches % accumulation or accumulation
    return accumulation


@dataclass
class _Token:
    """Shared by the outputs of one forward: the penalty's gradient is sent once."""

    fired: bool = False


class _AddPenaltyGradient(torch.autograd.Function):
    """A copy of ``carrier`` whose backward also gives ``penalty`` gradient 1, once per token
    (a copy, not a view: the Trainer scales the loss in place)."""

    @staticmethod
    def forward(ctx, carrier: Tensor, penalty: Tensor, token: _Token) -> Tensor:  # type: ignore[override]
        ctx.token = token
        ctx.penalty_meta = (penalty.dtype, penalty.device)
        return carrier.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if ctx.token.fired:
            return grad, None, None
        ctx.token.fired = True
        dtype, device = ctx.penalty_meta
        return grad, torch.ones((), dtype=dtype, device=device), None


def attach_penalty(output: Any, penalty: Tensor) -> tuple[Any, _Token]:
    """``output`` whose tensors with a gradient carry ``penalty`` (see the module docstring)."""
    token = _Token()

    def carry(value: Any) -> Any:
        if (
            isinstance(value, Tensor)
            and value.requires_grad
            and value.is_floating_point()
            and value.dim() <= 2
        ):
            return _AddPenaltyGradient.apply(value, penalty, token)
        return value

    if isinstance(output, dict):  # ModelOutput: item assignment also sets the attribute
        for key in list(output.keys()):
            output[key] = carry(output[key])
        return output, token
    if isinstance(output, tuple):
        return tuple(carry(v) for v in output), token
    return carry(output), token


class GuardCallback(TrainerCallback):
    """Runs geomsafe guards inside any transformers ``Trainer`` (module docstring).

    ``guards``: built guards (``build_guards``, any :class:`~geomsafe.guard.Guard`);
    ``monitor``: an optional :class:`~geomsafe.guard.MonitorGuard` whose ``proj/<concept>`` go
    into the rows. Rows of the steps run are in :attr:`rows`.
    """

    def __init__(self, guards: Sequence[Guard], monitor: MonitorGuard | None = None) -> None:
        self.guards = list(guards)
        self.monitor = monitor
        self.rows: list[dict[str, Any]] = []
        self._handles = contextlib.ExitStack()  # the hooks on the model
        self._stack: contextlib.ExitStack | None = None
        self._busy = False
        self._accumulation = 1
        self._n_batches: int | None = None
        self._micro = 1
        self._loss: list[Tensor] = []
        self._penalty: list[Tensor] = []
        self._tokens: list[_Token] = []

    @property
    def installed(self) -> list[Guard]:
        """What the training forward carries: the monitor (if any), then the guards."""
        return ([self.monitor] if self.monitor is not None else []) + self.guards

    # ---- Trainer events ----------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        if getattr(args, "fp16", False):
            raise GeomsafeError(
                "GuardCallback does not support fp16 mixed precision (its loss scaler); use bf16 "
                "or geomsafe.train.GuardedTrainer"
            )
        if model is None:
            raise GeomsafeError("GuardCallback: the Trainer passed no model to the callback")
        check_checkpointing(self.installed, model, "GuardCallback")
        self._remove_hooks()
        self._accumulation = int(args.gradient_accumulation_steps)
        try:
            self._n_batches = len(train_dataloader) if train_dataloader is not None else None
        except TypeError:  # an iterable dataset without a length
            self._n_batches = None
        self._handles.enter_context(
            hooks.on_modules(
                [
                    hooks.Hook(model, self._before, pre=True, with_kwargs=True),
                    hooks.Hook(model, self._after, with_kwargs=True),
                ]
            )
        )

    def on_step_begin(self, args, state, control, **kwargs):
        self._micro = micro_batches(state.global_step, self._accumulation, self._n_batches)
        begin_steps(self.installed, state.global_step, state.max_steps)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        missed = [t for t in self._tokens if not t.fired]
        self._tokens = []
        if missed:
            raise GeomsafeError(
                "GuardCallback: the guard penalty's gradient never reached the parameters (the "
                "trainer's loss does not depend on the model's outputs); use GuardedTrainer"
            )
        for guard in self.installed:
            guard.after_step(model)
        row: dict[str, Any] = {"step": int(state.global_step)}
        row["loss"] = float(torch.stack(self._loss).sum()) if self._loss else float("nan")
        row["penalty"] = float(torch.stack(self._penalty).sum()) if self._penalty else 0.0
        self._loss, self._penalty = [], []
        if self.monitor is not None:
            row.update(self.monitor.log())
        for key, value in step_logs(self.guards, bare=True).items():
            row.setdefault(key, value)
        self.rows.append(row)

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hooks()

    # ---- hooks -------------------------------------------------------------------------
    def _remove_hooks(self) -> None:
        self._close()
        self._handles.close()

    def _close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _before(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self._close()  # a previous forward that raised left its guard hooks installed
        if self._busy or not module.training or not torch.is_grad_enabled():
            return
        stack = contextlib.ExitStack()
        stack.enter_context(combined(self.installed, module))
        self._stack = stack

    def _after(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if self._stack is None:
            return None
        self._close()
        inputs = dict(kwargs)
        if args and "input_ids" not in inputs:
            inputs["input_ids"] = args[0]
        micro = self._micro
        loss = output.get("loss") if isinstance(output, dict) else None
        if isinstance(loss, Tensor):
            scaled = inputs.get("num_items_in_batch") is not None
            self._loss.append(loss.detach() if scaled else loss.detach() / micro)
        self._busy = True
        try:
            penalty = total_penalty(self.installed, module, inputs)
        finally:
            self._busy = False
        if penalty is None:
            return None
        share = penalty / micro
        self._penalty.append(share.detach())
        if not share.requires_grad:
            return None
        output, token = attach_penalty(output, share)
        self._tokens.append(token)
        return output
