"""AI report -> CDS Hooks cards: the AI card, the "being prepared" card, rules-only texts.

The model's text is shown as data, never as markup: every string is escaped for Markdown and
HTML before it goes into `detail` (the EHR renders GitHub-flavoured Markdown).
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import TYPE_CHECKING, Any

from cds_hooks.cards import OVERRIDE_REASONS, TOPIC_SYSTEM
from cds_hooks.schemas import Card, Coding, OverrideReason, Source
from model.acuity import Acuity, indicator_for

if TYPE_CHECKING:
    from cds_hooks.services import Registry
    from model.report import TriageReport
    from model.reports import ReportOutcome, ReportService

SUMMARY_MAX = 139
AI_TOPIC = Coding(system=TOPIC_SYSTEM, code="ai-triage-report", display="Preliminary AI triage report")
AI_OVERRIDE_REASONS: tuple[OverrideReason, ...] = (
    OverrideReason(system=OVERRIDE_REASONS[0].system, code="ai-wrong-acuity", display="Acuity is wrong"),
    OverrideReason(system=OVERRIDE_REASONS[0].system, code="ai-wrong-differential",
                   display="Differential is wrong or unhelpful"),
    OverrideReason(system=OVERRIDE_REASONS[0].system, code="ai-unsafe", display="Advice is unsafe"),
    *OVERRIDE_REASONS[1:2],  # clinical judgement differs
    # The nurse's own level: an overridden report becomes a DPO pair (model.feedback_export).
    *(OverrideReason(system=OVERRIDE_REASONS[0].system, code=f"ai-acuity-{level.value}",
                     display=f"Acuity should be {level.value} ({level.label})") for level in Acuity),
)
PRELIMINARY = ("_Preliminary AI report for nurse review, written by a language model from de-identified "
               "data. It is not a diagnosis and does not replace clinical judgement._")
PENDING_SUMMARY = "AI triage report is being prepared — it will show on the next view of this chart"
RULES_ONLY = "rules-only (no AI model configured)"

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+\-!|~])")


def md(text: str) -> str:
    """Model text as literal Markdown text: one line, special characters escaped."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _fit(text: str, limit: int = SUMMARY_MAX) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def ai_source(model_version: str | None, adapter_version: str | None) -> Source:
    adapter = adapter_version if adapter_version and adapter_version != "none" else "no adapter"
    return Source(label=f"Triage CDS AI report — model {model_version or 'unknown'}, adapter {adapter}",
                  topic=AI_TOPIC)


def ai_card(outcome: ReportOutcome) -> Card:
    """The AI card of a ready report."""
    report: TriageReport = outcome.report
    acuity = Acuity(report.acuity)
    return Card(
        summary=_fit(f"AI (preliminary): {report.summary}"),
        detail=ai_detail(report, outcome.model_version, outcome.adapter_version),
        indicator=indicator_for(acuity),
        source=ai_source(outcome.model_version, outcome.adapter_version),
        overrideReasons=list(AI_OVERRIDE_REASONS),
    )


def ai_detail(report: TriageReport, model_version: str | None, adapter_version: str | None) -> str:
    acuity = Acuity(report.acuity)
    lines = [
        PRELIMINARY,
        "",
        f"**Suggested acuity: ESI {int(acuity)} ({acuity.label})**",
        "",
        md(report.summary),
        "",
        "**Differential diagnosis**",
        "",
        "| Condition | Likelihood | Rationale |",
        "|---|---|---|",
    ]
    lines += [f"| {md(d.condition)} | {d.likelihood} | {md(d.rationale)} |" for d in report.differential]
    for title, items in (
        ("Red flags", report.red_flags),
        ("Recommended actions", report.recommended_actions),
        ("Questions to ask the patient", report.questions_to_ask),
    ):
        lines += ["", f"**{title}**", ""]
        lines += [f"- {md(item)}" for item in items] if items else ["- none listed"]
    lines += ["", f"**Reasoning (summary):** {md(report.reasoning_summary)}"]
    adapter = adapter_version if adapter_version and adapter_version != "none" else "none"
    lines += ["", f"_Model {md(model_version or 'unknown')}; adapter {md(adapter)}._"]
    return "\n".join(lines)


def pending_card() -> Card:
    return Card(
        summary=PENDING_SUMMARY,
        detail=("The preliminary AI triage report for this chart is still being written. The vital-sign "
                "rules card above is complete. Open the chart again in a minute to see the AI report."),
        indicator="info",
        source=Source(label="Triage CDS AI report", topic=AI_TOPIC),
    )


def rules_only_source(source: Source) -> Source:
    """The rules card's source when no model is configured: says so."""
    if RULES_ONLY in source.label:
        return source
    return source.model_copy(update={"label": f"{source.label} — {RULES_ONLY}"})


def report_cards(outcome: ReportOutcome | None) -> list[tuple[Card, str]]:
    """Cards (with their log kind) that follow the rules card for this outcome."""
    if outcome is None:
        return []
    if outcome.status == "ready" and outcome.report is not None:
        return [(ai_card(outcome), "ai")]
    if outcome.status == "pending":
        return [(pending_card(), "pending")]
    return []  # disabled or unavailable: the rules card stands alone


def log_fields(kind: str, outcome: ReportOutcome) -> dict[str, Any]:
    """Extra CardLog fields of an AI card: the de-identified prompt, the report JSON, versions."""
    if kind != "ai" or outcome.report is None:
        return {}
    version = f"{outcome.model_version}; adapter {outcome.adapter_version}"
    return {
        "acuity": int(outcome.report.acuity),
        "prompt": outcome.prompt,
        "report": json.loads(outcome.report.model_dump_json()),
        "model_version": version[:128],
    }


# --- Discovery texts -----------------------------------------------------------------------


def describe_ai_mode(registry: Registry, reports: ReportService | None) -> Registry:
    """A copy of the registry whose descriptions say whether AI reports are on (rules-only)."""
    from cds_hooks.services import Registry

    disabled = reports is None or not reports.enabled
    out = Registry()
    for service in registry:
        if service.hook == "patient-view":
            extra = (" Runs rules-only: no AI model is configured." if disabled else
                     f" Adds a preliminary AI triage report for nurse review ({reports.description}) when "
                     "it is ready within the hook deadline; otherwise a 'being prepared' card, and the "
                     "report shows on the next view.")
            service = dataclasses.replace(service, description=service.description + extra)
        elif service.hook == "appointment-book" and disabled:
            service = dataclasses.replace(
                service, description=service.description + " Runs rules-only: no AI model is configured, "
                "so nothing is precomputed.")
        out.register(service)
    return out
