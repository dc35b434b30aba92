"""Rules result -> CDS Hooks card.

The card leads with the ESI v4 level and the finding that set it (its summary names exactly one
ESI level, the one its indicator uses), lists every finding under "why this acuity", what the
chief complaint matched and the resources it expects, then what the vitals showed: every NEWS2
parameter with its value, unit, age of the reading, points and flags; the aggregate, band and RCP
response; what is missing. Times are relative ("2 h ago"): the record's dates are shifted by
de-identification, but the distance between a reading and the request is not.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from cds_hooks.schemas import Card, Coding, OverrideReason, Source
from model.acuity import Acuity, indicator_for
from model.rules import Band, ParameterScore, RulesResult

SUMMARY_MAX = 139  # spec: summary < 140 characters

TOPIC_SYSTEM = "urn:triage-cds:card-topic"
OVERRIDE_SYSTEM = "urn:triage-cds:override-reason"
RULES_SOURCE = Source(
    label="Triage CDS rules (ESI v4 decision points, NEWS2)",
    url="https://www.ahrq.gov/patient-safety/settings/emergency-dept/esi.html",
    topic=Coding(system=TOPIC_SYSTEM, code="esi-triage", display="ESI v4 triage (rules)"),
)

OVERRIDE_REASONS: tuple[OverrideReason, ...] = (
    OverrideReason(system=OVERRIDE_SYSTEM, code="vitals-remeasured", display="Vitals re-measured"),
    OverrideReason(system=OVERRIDE_SYSTEM, code="clinical-judgement", display="Clinical judgement differs"),
    OverrideReason(system=OVERRIDE_SYSTEM, code="data-out-of-date", display="Data is out of date"),
    OverrideReason(system=OVERRIDE_SYSTEM, code="data-incorrect", display="Recorded value is wrong"),
)

# What the acuity level asks for, in the card summary.
_ACTIONS = {
    Acuity.RESUSCITATION: "immediate life-saving care",
    Acuity.EMERGENT: "emergency assessment",
    Acuity.URGENT: "urgent clinical review",
    Acuity.LESS_URGENT: "nurse assessment",
    Acuity.NON_URGENT: "routine monitoring",
}

_ESI_MENTION = re.compile(r"\bESI\s*\d\b")  # the summary names one level only: its own
_UNITS = {"Cel": "°C", "[degF]": "°F", "mm[Hg]": "mmHg", "/min": "/min", "%": "%", "L/min": "L/min"}

DISCLAIMER = (
    "_Rule-based triage: ESI v4 decision points from the chief complaint and vital signs (AHRQ ESI "
    "Implementation Handbook); NEWS2 (Royal College of Physicians 2017) shown for deterioration "
    "risk. Decision support: it does not replace clinical judgement._"
)
_POINTS = {
    "A": "decision point A (immediate life-saving intervention)",
    "B": "decision point B (high risk, new confusion, severe pain or distress)",
    "C": "decision point C (expected resources)",
    "D": "decision point D (danger-zone vital signs)",
}


def rules_card(
    result: RulesResult,
    *,
    as_of: datetime,
    skipped: int = 0,
    stale_after: timedelta | None = None,
) -> Card:
    """The rules card. `as_of` is the (shifted) request time the result was scored at."""
    acuity = Acuity(result.acuity if result.acuity is not None else Acuity.URGENT)
    return Card(
        summary=_summary(result, acuity),
        detail=_detail(result, acuity, as_of=as_of, skipped=skipped, stale_after=stale_after),
        indicator=indicator_for(acuity),
        source=RULES_SOURCE,
        overrideReasons=list(OVERRIDE_REASONS),
    )


def _news2_phrase(result: RulesResult) -> str:
    if result.band is None:
        return "no vital signs recorded"
    score = f"NEWS2 {result.total}" if result.complete else f"NEWS2 ≥{result.total}"
    qualifiers = [result.band.value]
    if not result.complete:
        qualifiers.append(f"{len(result.missing)} missing")
    if not result.news2_applicable:
        qualifiers.append("not validated under 16")
    return f"{score} ({', '.join(qualifiers)})"


def _summary(result: RulesResult, acuity: Acuity) -> str:
    """`ESI n (label): deciding finding; NEWS2`: one ESI level, the card's own."""
    head = f"ESI {int(acuity)} ({acuity.label.lower()}): {_ACTIONS[acuity]}"
    lead = _ESI_MENTION.sub("", result.headline).strip()
    tail = _news2_phrase(result)
    for parts in ((head, lead, tail), (head, lead), (head, tail), (head,)):
        text = "; ".join(p for p in parts if p)
        if len(text) <= SUMMARY_MAX:
            return text
    return head[: SUMMARY_MAX - 1] + "…"


def _detail(
    result: RulesResult,
    acuity: Acuity,
    *,
    as_of: datetime,
    skipped: int,
    stale_after: timedelta | None,
) -> str:
    point = _POINTS.get(result.decision or "", "")
    lines = [f"**ESI {int(acuity)} ({acuity.label})**" + (f", set at {point}." if point else "."), ""]
    lines += ["**Why this acuity:**"] + [f"- {_cell(r)}" for r in result.reasons]
    complaint = result.complaint
    if complaint is not None and complaint.present:
        matched = [m.matched for m in (*complaint.life_saving, *complaint.high_risk, *complaint.resource_matches)]
        lines += ["", "**Chief complaint read as:** " + (", ".join(dict.fromkeys(matched)) if matched
                                                         else "no table entry (resources unknown)")]
        if complaint.negated:
            lines.append("**Read as negated:** " + " ".join(complaint.negated))
    elif complaint is not None:
        lines += ["", "**No chief complaint recorded:** ESI decision points B and C could not use it."]
    if result.pain is not None:
        lines += ["", f"**Pain:** {result.pain:g}/10"]
    if result.band is None:
        lines += ["", "**No vital signs recorded: NEWS2 could not be scored.**", "", result.response,
                  "", "**Missing:** " + ", ".join(result.missing) + "."]
    else:
        lines += ["", *_news2_lines(result, as_of=as_of, stale_after=stale_after)]
    if skipped:
        lines += ["", _skipped_line(skipped)]
    lines += ["", DISCLAIMER]
    return "\n".join(lines)


def _news2_lines(result: RulesResult, *, as_of: datetime, stale_after: timedelta | None) -> list[str]:
    score = str(result.total) if result.complete else f"≥{result.total} (lower bound)"
    band = result.band.value if result.band else "not scored"
    lines = [
        f"**NEWS2 {score}: {band}** (deterioration risk; a low score does not lower the ESI level)",
        "",
        "| Parameter | Value | Time | Points | Flags |",
        "|---|---|---|---:|---|",
    ]
    for p in result.parameters:
        lines.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in (p.name, _value(p), _when(p.effective, as_of) if not p.missing or p.effective else "—",
                          "—" if p.points is None else str(p.points), _flags(p))
            )
            + " |"
        )
    lines.append(f"| **Aggregate** | | | **{result.total}** | {_cell(_aggregate_flags(result))} |")
    lines += ["", f"**Band:** {band}" + (" (a single parameter scored 3)" if result.band == Band.LOW_MEDIUM else "")]
    lines += ["", f"**Clinical response (RCP NEWS2):** {result.response}"]
    if not result.news2_applicable:
        lines += ["", "NEWS2 is not validated under 16 years: ESI paediatric rules set the acuity."]
    if result.spo2_scale == 2:
        lines += ["", "SpO2 scored on **Scale 2** (hypercapnic respiratory failure)."]
    if result.danger_zone:
        lines += ["", "**ESI danger-zone vitals:**"] + [f"- {_cell(d)}" for d in result.danger_zone]
    if result.infant_fever:
        lines += ["", f"**Infant fever:** {_cell(result.infant_fever)}"]
    missing = [p for p in result.parameters if p.missing]
    if missing:
        lines += ["", "**Missing (not scored, never counted as 0):** "
                  + "; ".join(f"{p.name} ({p.note})" if p.note else p.name for p in missing) + "."]
    if result.stale:
        window = f" (older than {_duration(stale_after)})" if stale_after else ""
        lines += ["", f"**Stale{window}:** " + ", ".join(result.stale) + ". Re-measure before relying on the score."]
    return lines


def _skipped_line(skipped: int) -> str:
    noun = "resource" if skipped == 1 else "resources"
    verb = "was" if skipped == 1 else "were"
    return f"⚠ {skipped} {noun} could not be read and {verb} skipped."


def _aggregate_flags(result: RulesResult) -> str:
    flags = []
    if result.missing:
        flags.append(f"{len(result.missing)} missing: lower bound")
    if result.stale:
        flags.append(f"{len(result.stale)} stale")
    return ", ".join(flags)


def _value(p: ParameterScore) -> str:
    if p.missing or p.value is None:
        return "—"
    if isinstance(p.value, str):
        return f"{p.value} ({p.note})" if p.note else p.value
    unit = _UNITS.get(p.unit or "", p.unit or "")
    number = f"{p.value:.1f}".rstrip("0").rstrip(".")
    text = f"{number} {unit}".strip()
    return f"{text} ({p.note})" if p.note else text


def _flags(p: ParameterScore) -> str:
    if p.missing:
        return f"missing: {p.note}" if p.note else "missing"
    flags = []
    if p.stale:
        flags.append("stale" if p.effective else "stale (time unknown)")
    return ", ".join(flags)


def _when(moment: datetime | None, as_of: datetime) -> str:
    if moment is None:
        return "time unknown"
    delta = _aware(as_of) - _aware(moment)
    future = delta.total_seconds() < 0
    text = _duration(abs(delta))
    if text == "now":
        return "just now"
    return f"in {text} (future time)" if future else f"{text} ago"


def _duration(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    minutes = seconds / 60
    if minutes < 1:
        return "now"
    if minutes < 60:
        return f"{int(minutes)} min"
    hours = minutes / 60
    if hours < 48:
        return f"{int(hours)} h"
    days = hours / 24
    if days < 60:
        return f"{int(days)} d"
    if days < 730:
        return f"{int(days / 30.44)} mo"
    return f"{int(days / 365.25)} y"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _cell(text: str) -> str:
    """Safe inside a GFM table cell: no pipe, no line break."""
    return text.replace("|", "\\|").replace("\n", " ")

