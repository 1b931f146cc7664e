"""Which harmful concept each behavioural row speaks for: the one table of it.

A row is a metric of ``eval.json`` (its name there). "Speaks for" names the atlas concept
(``geomsafe.concepts``) whose harm the row measures in behaviour, or says that no single concept
fits and which is closest.

================================================  ===============================================
row                                               speaks for
================================================  ===============================================
``logodds:advice``                                dangerous_advice (cross-domain: health, money,
                                                  safety advice; matched in tone and length)
``logodds:advbench``, ``logodds:jailbreakbench``  harmful compliance (no single atlas concept;
                                                  closest: dangerous_advice); uncontrolled alone,
                                                  a harm measure only as ``<set>-controlled``
``logodds:benign_compliance``                     style control of the compliance rows
``logodds:toxigen``                               hate_bias (and toxicity); uncontrolled alone,
                                                  a harm measure only as ``toxigen-controlled``
``logodds:toxigen_control``                       style (tone) control of the ToxiGen row
``logodds:concept:<name>``                        <name> (the concept's evaluation half: pairs
                                                  its direction never saw; matched by
                                                  construction)
``toxic_rate``, ``toxicity_score``                toxicity
``trait:psychopathy``                             general misalignment (no single atlas concept;
                                                  closest: empathy, inverted)
``trait:desire-for-acquiring-power``              power_seeking
``trait:okay-with-deceiving-a-user-to-help-them`` deception
``trait:desire-to-remove-safety-precautions-to-`` dangerous_advice
``be-more-helpful``
``trait:willingness-to-manipulate-overseers-to-`` deception
``think-it-is-HHH``
``trait:em_pivotal_tokens``,                      general misalignment (emergent misalignment)
``trait:em_single_letter``
================================================  ===============================================

A controlled row ``logodds:<set>-controlled`` speaks for what ``logodds:<set>`` speaks for. A
pair set a user brings (a file, ``concept:<name>``) speaks for the concept its header names.
"""

from __future__ import annotations

GENERAL_MISALIGNMENT = "general misalignment"
COMPLIANCE = "harmful compliance (no single atlas concept; closest: dangerous_advice)"
CONTROL = "style control"

SPEAKS_FOR: dict[str, str] = {
    "logodds:advice": "dangerous_advice",
    "logodds:advbench": COMPLIANCE,
    "logodds:jailbreakbench": COMPLIANCE,
    "logodds:benign_compliance": CONTROL,
    "logodds:toxigen": "hate_bias (also toxicity)",
    "logodds:toxigen_control": CONTROL,
    "toxic_rate": "toxicity",
    "toxicity_score": "toxicity",
    "trait:psychopathy": f"{GENERAL_MISALIGNMENT} (no single atlas concept; closest: empathy, "
    "inverted)",
    "trait:desire-for-acquiring-power": "power_seeking",
    "trait:okay-with-deceiving-a-user-to-help-them": "deception",
    "trait:desire-to-remove-safety-precautions-to-be-more-helpful": "dangerous_advice",
    "trait:willingness-to-manipulate-overseers-to-think-it-is-HHH": "deception",
    "trait:em_pivotal_tokens": GENERAL_MISALIGNMENT,
    "trait:em_single_letter": GENERAL_MISALIGNMENT,
}

CONTROLLED_SUFFIX = "-controlled"


CONCEPT_ROW = "logodds:concept:"  # a concept's evaluation half: speaks for that concept


def speaks_for(row: str) -> str | None:
    """The concept a metric row speaks for (see the module docstring); None when unknown."""
    row = row.removesuffix(CONTROLLED_SUFFIX)
    if row.startswith(CONCEPT_ROW) and not row.endswith(".jsonl"):
        return row.removeprefix(CONCEPT_ROW).split(":")[-1]
    return SPEAKS_FOR.get(row)


__all__ = ["CONCEPT_ROW", "CONTROLLED_SUFFIX", "SPEAKS_FOR", "speaks_for"]
