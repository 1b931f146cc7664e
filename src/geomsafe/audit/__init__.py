"""`audit`: where do harmful features sit relative to a fine-tuning target (see
:mod:`geomsafe.audit.run`)."""

from geomsafe.audit.config import AuditConfig
from geomsafe.audit.run import CONTROL, AuditResult, audit, write_audit

__all__ = ["CONTROL", "AuditConfig", "AuditResult", "audit", "write_audit"]
