"""Geometric guards: regularisers that keep LoRA fine-tuning off harmful feature directions.

Six guards, cheapest first (``GUARDS`` maps each name to its class):

- ``orthogonal``: after each optimiser step, project the LoRA ``B`` of the residual-stream
  writers (``o_proj``, ``down_proj``) of each guarded block off the harmful directions;
- ``steer``: add the harmful directions to the residual stream during training forwards only
  (preventative steering);
- ``ablate``: project the residual stream off the harmful directions during training forwards
  only (concept ablation, CAFT-style);
- ``projection``: penalise the change of the residual stream's projection on the harmful
  directions versus the base model (adapters disabled, one partial no-grad forward);
- ``covariance``: penalise the batch cross-covariance of target and harmful projections;
- ``kl`` (a peer, not geometric; no atlas): penalise KL(base || tuned) of the next-token
  distributions on a reference batch (``GuardConfig.kl_data``), :mod:`geomsafe.guard.kl`.

Which directions at which layers: :class:`GuardConfig` (``concepts``: harmful feature names of
the atlas; ``layers``: None = each concept at its best atlas layer, or a list/band of layers;
``allow``: target concepts whose component the guards keep, :mod:`geomsafe.guard.allow`;
``source="pilot"``: the principal shifts of a short pilot fine-tune that align with the
concepts, :mod:`geomsafe.guard.pilot`). How hard: ``weight``, ``steer_coeff`` and a strength
schedule per optimiser step (``schedule``: constant, front, linear_decay;
:mod:`geomsafe.guard.schedule`). Every guard logs each step its ``penalty`` (0 for
orthogonal/steer/ablate), its ``strength`` and ``proj/<concept>``, the mean projection of the
assistant tokens' residual stream on each guarded direction. Guards installed together
(``combined``) share one forward hook per guarded layer, which computes the projections once.
:class:`MonitorGuard` records ``proj/<concept>`` only (what ``finetune`` logs with an atlas);
:func:`resolve_guards` turns names, concepts and an atlas into the :class:`GuardSetup` of a
run. A guard class registered with ``@register`` is a kind like the built-in ones.

Any torch training loop can use them (``geomsafe.train`` does the same on the Trainer, and
``geomsafe.train.GuardCallback`` in a user's own Trainer or TRL SFTTrainer)::

    from geomsafe.guard import (
        GuardConfig, begin_steps, build_guards, combined, step_logs, total_penalty,
    )

    guards = build_guards(["orthogonal", "projection"], atlas, GuardConfig(concepts=["toxicity"]))
    params = [p for p in model.parameters() if p.requires_grad]  # model: a peft LoRA model
    opt = torch.optim.AdamW(params, lr=1e-4)
    for step, batch in enumerate(batches):  # input_ids, attention_mask, labels (-100: ignored)
        begin_steps(guards, step, len(batches))  # scheduled strengths
        with combined(guards, model):  # hooks active during the training forward only
            loss = model(**batch).loss
        penalty = total_penalty(guards, model, batch)  # after the forward, before backward
        if penalty is not None:
            loss = loss + penalty
        loss.backward()
        opt.step()
        opt.zero_grad()
        for guard in guards:
            guard.after_step(model)  # orthogonal projects the LoRA weights here
        print(step_logs(guards))  # {"orthogonal/penalty": 0.0, "projection/proj/toxicity": ...}
"""

from __future__ import annotations

from geomsafe.guard.ablate import AblateGuard
from geomsafe.guard.atlas_guard import AtlasGuard
from geomsafe.guard.base import GUARDS, Guard, GuardConfig, build_guards, register
from geomsafe.guard.covariance import CovarianceGuard
from geomsafe.guard.kl import KLGuard
from geomsafe.guard.monitor import MonitorGuard
from geomsafe.guard.orthogonal import OrthogonalGuard
from geomsafe.guard.pilot import PilotConfig
from geomsafe.guard.projection import ProjectionGuard
from geomsafe.guard.steer import SteerGuard

__all__ = [
    "GUARDS",
    "AblateGuard",
    "AtlasGuard",
    "CovarianceGuard",
    "Guard",
    "GuardConfig",
    "KLGuard",
    "MonitorGuard",
    "OrthogonalGuard",
    "PilotConfig",
    "ProjectionGuard",
    "SteerGuard",
    "build_guards",
    "register",
]
