"""transformers' Trainer with geometric guards plugged in.

- :class:`PadCollator` pads ``input_ids`` / ``labels`` / ``attention_mask`` on the right.
- :class:`GuardedTrainer` installs its guards and its projection monitor
  (:class:`~geomsafe.guard.MonitorGuard`) around the training forward pass (atlas guards share
  one forward hook per guarded layer), adds the guards' penalties to the task loss before
  backward, and records the per-step loss and penalty. Activation checkpointing is served
  where the guards' hooks run outside the checkpoint, and refused at train start elsewhere
  (:mod:`geomsafe.train.checkpointing`).
- :class:`GeometryCallback` sets every guard's scheduled strength before each optimiser step
  (``begin_step``), calls its ``after_step`` after it, times the step and appends one row per
  step to the geometry log (and to
  ``geometry_log.jsonl`` in every checkpoint, so a resumed run keeps its history): ``loss``,
  ``penalty``, the monitor's ``proj/<concept>``, ``lr``, ``step_time_s`` and every guard's log
  as ``<guard>/<key>`` (and as ``<key>`` where the row has no such key yet).

Nothing here assumes one process: the Trainer (and so ``torchrun`` / ``accelerate launch``)
handles devices, DDP/FSDP and gradient accumulation; the guards see the unwrapped model and
run on every rank. Under several processes each row is reduced over the ranks
(:func:`reduce_row`): ``step_time_s`` is the slowest rank's, every other measured value
(``loss``, ``penalty``, ``proj/<c>``, the guards' logs) the mean of the ranks' values. The
``loss`` is then exactly the global batch's mean token loss (the Trainer's token averaging
across devices makes each rank's value ``world_size * its token-loss sum / global tokens``);
``proj/<c>`` is the mean of the ranks' per-batch means (equal to the global batch's mean when
the ranks hold the same number of assistant tokens).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from geomsafe import distributed
from geomsafe.artefacts import GEOMETRY_LOG, atomic_write
from geomsafe.guard import Guard, MonitorGuard
from geomsafe.guard.base import begin_steps, combined, step_logs, total_penalty
from geomsafe.train.checkpointing import check_checkpointing
from geomsafe.train.config import TrainConfig
from geomsafe.train.data import IGNORE_INDEX


@dataclass
class PadCollator:
    """Right-pads a list of ``{"input_ids", "labels"}`` features into a batch."""

    pad_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Sequence[int]]]) -> dict[str, Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class GuardedTrainer(Trainer):
    """A Trainer whose training loss is ``task loss + sum of guard penalties``."""

    def __init__(
        self,
        *args: Any,
        guards: Sequence[Guard] = (),
        monitor: MonitorGuard | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.guards = list(guards)
        self.monitor = monitor
        self._task: list[Tensor] = []
        self._penalty: list[Tensor] = []
        self.add_callback(_CheckCheckpointing(self))

    @property
    def installed(self) -> list[Guard]:
        """What the training forward carries: the monitor (if any), then the guards."""
        return ([self.monitor] if self.monitor is not None else []) + self.guards

    def _ga_steps(self) -> int:
        return int(
            getattr(self, "current_gradient_accumulation_steps", None)
            or self.args.gradient_accumulation_steps
        )

    def _loss_is_scaled(self, num_items_in_batch: object) -> bool:
        """Whether the Trainer treats the returned loss as already divided over the accumulated
        batch (then it does not divide by the accumulation steps itself)."""
        explicit = getattr(self, "loss_is_scaled_for_ga", None)
        if explicit is not None:
            return bool(explicit)
        return bool(
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None)
            or self.compute_loss_func is not None
        )

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        net = self.accelerator.unwrap_model(model)
        with combined(self.installed, net):
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if not return_outputs:
            del outputs  # free the logits before the guards' penalties (a base forward, maybe)
        scaled = self._loss_is_scaled(num_items_in_batch)
        # Under DDP with token averaging the Trainer has already multiplied the loss by the
        # number of processes, so this is the rank's own mean token loss again.
        task = loss.detach()
        self._task.append(task if scaled else task / self._ga_steps())
        penalty = total_penalty(self.installed, net, inputs)  # the monitor records here
        if penalty is not None:
            self._penalty.append(penalty.detach() / self._ga_steps())
            # The task loss is (or will be) divided over the accumulated micro-batches; do the
            # same to the penalty so its weight does not depend on grad_accum.
            loss = loss + (penalty / self._ga_steps() if scaled else penalty)
        return (loss, outputs) if return_outputs else loss

    def pop_step_stats(self) -> dict[str, float]:
        """The finished step's task loss, guard penalty and (after the monitor's
        ``after_step``) mean projections ``proj/<concept>``; resets the accumulators."""
        out = {"loss": float(torch.stack(self._task).sum()) if self._task else float("nan")}
        out["penalty"] = float(torch.stack(self._penalty).sum()) if self._penalty else 0.0
        self._task, self._penalty = [], []
        if self.monitor is not None:
            out.update(self.monitor.log())
        return out


class _CheckCheckpointing(TrainerCallback):
    """Refuses, at train start, activation checkpointing that the guards cannot serve."""

    def __init__(self, trainer: GuardedTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        trainer = self.trainer
        net = trainer.accelerator.unwrap_model(model if model is not None else trainer.model)
        check_checkpointing(trainer.installed, net, "GuardedTrainer")


@dataclass
class GeometryCallback(TrainerCallback):
    """Runs guards' ``after_step``, times steps and keeps the geometry log (one row per step)."""

    trainer: GuardedTrainer | None = None
    log_path: Path | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    _t0: float = 0.0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, **kwargs):
        # Resuming: keep the history up to the checkpoint, drop what came after it.
        self.rows = [r for r in self.rows if r["step"] <= state.global_step]
        if self.log_path is not None and state.is_world_process_zero:
            text = "".join(json.dumps(r) + "\n" for r in self.rows)
            self.log_path.write_text(text)

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._t0 = time.perf_counter()
        if self.trainer is not None:
            begin_steps(self.trainer.installed, state.global_step, state.max_steps)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        trainer = self.trainer
        assert trainer is not None
        net = trainer.accelerator.unwrap_model(model if model is not None else trainer.model)
        for guard in trainer.installed:
            guard.after_step(net)
        self._sync()
        dt = time.perf_counter() - self._t0
        self.step_times.append(dt)
        row: dict[str, Any] = {
            "step": state.global_step,
            "epoch": round(float(state.epoch or 0), 4),
        }
        row.update(trainer.pop_step_stats())
        row["lr"] = float(trainer._get_learning_rate())
        row["step_time_s"] = dt
        # <guard>/<key>, and <key> where the row has none yet (loss, penalty, proj/<c> win).
        for key, value in step_logs(trainer.guards, bare=True).items():
            row.setdefault(key, value)
        if args.world_size > 1:
            row = reduce_row(row, trainer.accelerator)
        self.rows.append(row)
        if self.log_path is not None and state.is_world_process_zero:
            with self.log_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            text = "".join(json.dumps(r) + "\n" for r in self.rows)
            atomic_write(ckpt / GEOMETRY_LOG, lambda p: Path(p).write_text(text))


_NOT_REDUCED = ("step", "epoch", "lr")


def reduce_row(row: dict[str, Any], accelerator: Any) -> dict[str, Any]:
    """``row`` reduced over the processes (one all-reduce each of a packed tensor): the max of
    ``step_time_s``, the mean of every other float/int value except ``step``, ``epoch`` and
    ``lr`` (equal on all ranks). Every rank must call it with the same keys (same guards)."""
    keys = sorted(
        k
        for k, v in row.items()
        if k not in _NOT_REDUCED
        and k != "step_time_s"
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
    )
    out = dict(row)
    device = accelerator.device
    if keys:
        values = torch.tensor([float(row[k]) for k in keys], dtype=torch.float64, device=device)
        mean = accelerator.reduce(values, reduction="mean").cpu().tolist()
        out.update(zip(keys, mean, strict=True))
    if "step_time_s" in row:
        slowest = torch.tensor([float(row["step_time_s"])], dtype=torch.float64, device=device)
        gathered = accelerator.gather(slowest)
        out["step_time_s"] = float(gathered.max())
    return out


@dataclass
class ProgressBar(TrainerCallback):
    """A tqdm bar over optimiser steps showing the loss and guard penalty."""

    geometry: GeometryCallback
    desc: str = "finetune"
    bar: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc=self.desc,
                unit="step",
                dynamic_ncols=True,
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None or not self.geometry.rows:
            return
        row = self.geometry.rows[-1]
        post = {"loss": f"{row['loss']:.3f}"}
        if self.geometry.trainer is not None and self.geometry.trainer.guards:
            post["penalty"] = f"{row['penalty']:.3g}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def training_arguments(
    config: TrainConfig, output_dir: str | Path, save: bool = True
) -> TrainingArguments:
    """TrainingArguments for ``config``: no reporting, CPU when there is no CUDA, quiet."""
    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        save_strategy="steps" if save else "no",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        report_to=[],
        use_cpu=not cuda,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        disable_tqdm=True,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        bf16=config.bf16,
        log_level="error",
    )
    kwargs.update(config.extra_args)
    return TrainingArguments(**kwargs)


def quiet(trainer: Trainer) -> None:
    """Remove the Trainer's own printing callbacks (we show our own bar and table)."""
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


def is_main_process() -> bool:
    """Rank 0 (:func:`geomsafe.distributed.is_main`)."""
    return distributed.is_main()
