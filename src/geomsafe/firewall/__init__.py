"""`firewall`: score, clamp or block a model's residual stream along harmful directions at
inference, with thresholds calibrated on benign traffic (see :mod:`.hooks`, :mod:`.calibration`,
:mod:`.screening`, :mod:`.serve`)."""

from __future__ import annotations

from geomsafe.firewall.calibration import CalibrationConfig, calibrate, rethreshold
from geomsafe.firewall.config import Check, Firewall
from geomsafe.firewall.hooks import Session, Verdict, install
from geomsafe.firewall.screening import RunResult, run, screen

__all__ = [
    "CalibrationConfig",
    "Check",
    "Firewall",
    "RunResult",
    "Session",
    "Verdict",
    "calibrate",
    "install",
    "rethreshold",
    "run",
    "screen",
]
