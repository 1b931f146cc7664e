"""`firewall`: score, clamp or block a model's residual stream along harmful directions at
inference, with thresholds calibrated on benign traffic (see :mod:`.hooks`, :mod:`.calibration`,
:mod:`.screening`, :mod:`.serve`)."""

from __future__ import annotations

from geomsafe.firewall.calibration import (
    CalibrationConfig,
    calibrate,
    choose_thresholds,
    rethreshold,
    sequence_statistics,
)
from geomsafe.firewall.config import DEFAULT_REFUSAL, MODES, Check, Firewall
from geomsafe.firewall.hooks import RowTrace, Session, Verdict, install
from geomsafe.firewall.requests import REQUEST_CONCEPT, fit_request_direction, load_requests
from geomsafe.firewall.screening import RunResult, Screened, run, screen

__all__ = [
    "DEFAULT_REFUSAL",
    "MODES",
    "REQUEST_CONCEPT",
    "CalibrationConfig",
    "Check",
    "Firewall",
    "RowTrace",
    "RunResult",
    "Screened",
    "Session",
    "Verdict",
    "calibrate",
    "choose_thresholds",
    "fit_request_direction",
    "install",
    "load_requests",
    "rethreshold",
    "run",
    "screen",
    "sequence_statistics",
]
