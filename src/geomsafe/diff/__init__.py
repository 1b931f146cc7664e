"""Model diffing: the directions a fine-tune actually moves (``geomsafe diff``).

:func:`diff` compares a model with and without a peft adapter on a fixed set of prompts and
responses and writes the per-layer mean difference and principal components as an atlas
(:mod:`geomsafe.diff.run`); :mod:`geomsafe.diff.shifts` holds the principal-shift computation
it shares with the pilot guard. Names are imported on first use, so the pilot guard can import
:mod:`geomsafe.diff.shifts` without the rest.
"""

from geomsafe._lazy import lazy_exports

_EXPORTS = {
    "DiffConfig": "geomsafe.diff.config",
    "DiffResult": "geomsafe.diff.run",
    "diff": "geomsafe.diff.run",
    "diff_model": "geomsafe.diff.run",
    "gram_shifts": "geomsafe.diff.shifts",
    "principal_shifts": "geomsafe.diff.shifts",
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
__all__ = sorted(_EXPORTS)
