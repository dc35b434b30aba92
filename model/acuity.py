"""The one acuity scale of the product, aligned with the Emergency Severity Index (ESI v4).

Rules, model reports, cards, datasets and evaluation all speak this scale; nothing else
defines acuity levels.
"""
from __future__ import annotations

from enum import IntEnum


class Acuity(IntEnum):
    RESUSCITATION = 1  # immediate life-saving intervention
    EMERGENT = 2  # high risk, danger-zone vitals, should not wait
    URGENT = 3  # stable, needs several resources
    LESS_URGENT = 4  # one resource
    NON_URGENT = 5  # no resources

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def indicator(self) -> str:
        """CDS Hooks card indicator: 1-2 critical, 3 warning, 4-5 info."""
        return indicator_for(self)


_LABELS = {
    Acuity.RESUSCITATION: "Resuscitation",
    Acuity.EMERGENT: "Emergent",
    Acuity.URGENT: "Urgent",
    Acuity.LESS_URGENT: "Less urgent",
    Acuity.NON_URGENT: "Non-urgent",
}


def indicator_for(acuity: int | Acuity) -> str:
    level = Acuity(acuity)
    if level <= Acuity.EMERGENT:
        return "critical"
    if level == Acuity.URGENT:
        return "warning"
    return "info"
