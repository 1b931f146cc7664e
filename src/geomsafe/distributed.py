"""Ranks and data parallelism under a multi-process launcher (``torchrun``).

Which process this is (:func:`rank`, :func:`world_size`, :func:`is_main`, :func:`launched`),
for every command; and the data parallelism of the commands that score many examples
(``audit``, ``predict``), which run their work inside :func:`data_parallel`:

- **Sharding** (:func:`mine`): a loop over examples builds its batches exactly as one process
  would, then each rank runs every ``world_size``-th of them (batch ``b`` on rank
  ``b % world_size``). A batch's per-example values are therefore those of the one-process
  run (same rows, same padding, same seed).
- **Reduction** (:func:`all_sum`, :func:`sum_dict`, :func:`gather_dict`): per-example rows are
  kept in full-size tensors that are zero where another rank holds the example, so their sum
  over the ranks is exact and in the original order; running sums (gradients, sketches) are
  summed over the ranks (equal to one process's up to float rounding: the terms are added in
  another order); Python values (generated texts) are merged by key.

Every rank ends with the one-process result (the reductions are all-reduces, not reduces), so
the code after a loop runs unchanged on every rank; only rank 0 writes files or prints.
Outside :func:`data_parallel`, or without an initialised process group, every helper is the
identity and nothing is communicated: a one-process run takes the path it always took.
``data_parallel`` starts the process group when the launcher's ``WORLD_SIZE`` is above 1 and
none is running (gloo for CPU tensors; NCCL for CUDA tensors when torch has it). The group then
stays up until the process exits (the next command of the same process, e.g. ``audit`` then
``predict`` in one script, uses it): a group cannot be started again from the launcher's
rendezvous once destroyed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import TypeVar

import torch
from torch import Tensor

from geomsafe.errors import GeomsafeError

T = TypeVar("T")
K = TypeVar("K")

_ACTIVE: ContextVar[bool] = ContextVar("geomsafe_data_parallel", default=False)
_LAUNCH_VARS = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise GeomsafeError(
            f"{name}={text!r} is not a whole number (set by the launcher)"
        ) from None


def _initialised() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def launched() -> bool:
    """True when a launcher started several processes (``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def world_size() -> int:
    """Processes in the process group, else the launcher's ``WORLD_SIZE`` (1 without one)."""
    return torch.distributed.get_world_size() if _initialised() else _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """This process's rank in the process group, else the launcher's ``RANK`` (0 without one)."""
    return torch.distributed.get_rank() if _initialised() else _env_int("RANK", 0)


def is_main() -> bool:
    """True on rank 0: the process that writes output folders and prints."""
    return rank() == 0


def active() -> bool:
    """True inside :func:`data_parallel` with a process group: loops shard, results reduce."""
    return _ACTIVE.get() and _initialised()


def shard_rank() -> int:
    """The rank that :func:`mine` deals to (0 when not :func:`active`): rank 0 alone adds work
    that every rank must repeat (a shared prompt prefix run for its key/value cache)."""
    return torch.distributed.get_rank() if active() else 0


def _init_group() -> None:
    """Start the default process group from the launcher's environment (one-line errors)."""
    if not torch.distributed.is_available():
        raise GeomsafeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [k for k in _LAUNCH_VARS if not os.environ.get(k)]
    if missing:
        raise GeomsafeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} unset: "
            "start the command with torchrun"
        )
    backend = "gloo"
    if torch.cuda.is_available() and torch.distributed.is_nccl_available():
        backend = "cpu:gloo,cuda:nccl"
        local = _env_int("LOCAL_RANK", 0)
        if local < torch.cuda.device_count():
            torch.cuda.set_device(local)
    try:
        torch.distributed.init_process_group(backend=backend)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GeomsafeError(f"could not join the other processes: {first}") from None
    atexit.register(_end_group)


def _end_group() -> None:
    if _initialised():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def data_parallel() -> Iterator[None]:
    """Shard the loops over examples inside the block over the launcher's processes (module
    docstring). Starts the process group when launched with ``WORLD_SIZE`` > 1 and none is
    running (it ends when the process exits); a running group is used. Without a launcher,
    the block runs as it would without this context."""
    if launched() and not _initialised():
        _init_group()
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def mine(items: Sequence[T]) -> list[T]:
    """The items (batches) this rank runs: every ``world_size``-th, from its rank on (all of
    them when not :func:`active`). Every rank must pass the same sequence."""
    if not active():
        return list(items)
    return list(items[torch.distributed.get_rank() :: torch.distributed.get_world_size()])


def all_sum(*tensors: Tensor | None) -> None:
    """Sum each tensor over the ranks, in place (None is skipped; nothing when not active)."""
    if not active():
        return
    for t in tensors:
        if t is not None:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)


def sum_grads(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> list[Tensor | None]:
    """Gradients summed over the ranks; a None (no gradient on this rank) counts as zeros of
    its ``like`` tensor's shape when active (unchanged otherwise)."""
    if not active():
        return list(grads)
    out = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, like, strict=True)]
    all_sum(*out)
    return list(out)


def sum_dict(values: Mapping[str, Tensor], device: torch.device | str) -> dict[str, Tensor]:
    """Named tensors summed over the ranks; a name that a rank lacks counts as zeros there
    (created on ``device``). Unchanged when not active."""
    if not active():
        return dict(values)
    Spec = dict[str, tuple[tuple[int, ...], torch.dtype]]
    shapes: list[Spec | None] = [None] * torch.distributed.get_world_size()
    local: Spec = {k: (tuple(v.shape), v.dtype) for k, v in values.items()}
    torch.distributed.all_gather_object(shapes, local)
    names: Spec = {}
    for entry in shapes:
        for name, spec in (entry or {}).items():
            names.setdefault(name, spec)
    out = {}
    for k in names:  # first-seen order, the same on every rank
        shape, dtype = names[k]
        t = values[k].clone() if k in values else torch.zeros(shape, dtype=dtype, device=device)
        all_sum(t)
        out[k] = t
    return out


def gather_dict(values: Mapping[K, T]) -> dict[K, T]:
    """Every rank's entries merged (keys are expected to be disjoint; a later rank's wins).
    Unchanged when not active. For small Python values (texts), not tensors."""
    if not active():
        return dict(values)
    parts: list[dict | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, dict(values))
    merged: dict[K, T] = {}
    for part in parts:
        merged.update(part or {})
    return merged


__all__ = [
    "active",
    "all_sum",
    "data_parallel",
    "gather_dict",
    "is_main",
    "launched",
    "mine",
    "rank",
    "shard_rank",
    "sum_dict",
    "sum_grads",
    "world_size",
]
