"""`report`: one self-contained HTML page for a results folder (see
:mod:`geomsafe.report.render`). Plots are inline SVG; nothing loads from the network."""

from geomsafe.report.render import report

__all__ = ["report"]
