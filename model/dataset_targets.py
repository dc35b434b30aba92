"""What a training example's assistant turn may be: the schemas targets are validated against, the
label sources, and the parsing of both dataset formats (chat rows and the seed's `###Human:` text).

Two target schemas, chosen per build and recorded in the manifest (`settings.target_schema`):

- `triage-report` (default): the serving `TriageReport` (model/report.py), the schema the engine
  constrains every served report to; acuity 1-5 is required. An example whose record carries no
  acuity is labelled by the ESI rules (`model.rules.score_record`, `label_source: "rules"`) or,
  when they cannot assess it either, not written.
- `diagnosis-only`: `DiagnosisReport`, the same report without `acuity`, for a model that writes the
  differential and leaves acuity to the rules. Every target of such a build has no acuity.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError, create_model

from .report import TriageReport

TARGET_SCHEMAS = ("triage-report", "diagnosis-only")
# Where an example's acuity comes from. record: the clinic's record (Encounter.priority or class);
# rules: the ESI rules on the de-identified record; nurse feedback: the acuity a nurse chose on a
# card; imported: a steward's curated record (`triage dataset import`).
LABEL_SOURCES = ("record", "rules", "nurse feedback", "imported")
SEED_ASSISTANT = "###Assistant:"
SEED_HUMAN = "###Human:"

# TriageReport without acuity, every other field and constraint the same (extra fields forbidden).
DiagnosisReport = create_model(
    "DiagnosisReport",
    __base__=TriageReport.__base__,
    __doc__="A preliminary report without acuity (acuity is left to the ESI rules).",
    **{name: (f.annotation, f) for name, f in TriageReport.model_fields.items() if name != "acuity"},
)
SCHEMAS = {"triage-report": TriageReport, "diagnosis-only": DiagnosisReport}


def target_problem(text: str, schema: str) -> str | None:
    """None if `text` is a valid target under `schema`, else a short reason (never the text)."""
    model = SCHEMAS[schema]
    try:
        model.model_validate_json(text)
    except ValidationError as exc:
        kinds = sorted({f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['type']}"
                        for e in exc.errors(include_url=False, include_context=False, include_input=False)})
        return "; ".join(kinds[:3]) + (f"; +{len(kinds) - 3} more" if len(kinds) > 3 else "")
    return None


def diagnosis_only(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "acuity"}


def split_seed(text: str) -> tuple[str, str] | None:
    """(prompt, answer) of a seed-format text, or None if it is not one."""
    if not text.startswith(SEED_HUMAN) or SEED_ASSISTANT not in text:
        return None
    prompt, _, answer = text.rpartition(SEED_ASSISTANT)
    return prompt + SEED_ASSISTANT, answer.strip()


def chat_target(row: dict[str, Any]) -> str | None:
    """The assistant turn's content of a chat row (the last message), or None."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    return last.get("content") if last.get("role") == "assistant" and isinstance(last.get("content"), str) else None


def user_turn(row: dict[str, Any]) -> str:
    for m in row.get("messages") or ():
        if isinstance(m, dict) and m.get("role") == "user":
            return str(m.get("content") or "")
    return ""


def loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _find_metrics() -> Path | None:
    root = Path(__file__).resolve().parent.parent / "eval"
    found = sorted(root.rglob("metrics.json")) if root.is_dir() else []
    return found[0] if found else None


def rules_labeller_accuracy(path: Path | None = None) -> dict[str, Any]:
    """The ESI rules' own measured agreement, read from `triage evaluate`'s metrics.json (the given
    file, else the first `eval/**/metrics.json` shipped with the code), for the dataset card."""
    how = ("docs/evaluation.md gives the rules' figures on the reference vignettes (its held-out line is the one to "
           "believe); for this card, run `triage evaluate eval/vignettes --out eval/rules` (it writes metrics.json), "
           "then rebuild or pass --rules-metrics FILE")
    path = Path(path) if path is not None else _find_metrics()
    if path is None:
        return {"source": None, "note": f"not measured in this tree: {how}"}
    try:
        rules = json.loads(path.read_text(encoding="utf-8"))["triagers"]["rules"]
    except (OSError, ValueError, KeyError, TypeError):
        return {"source": str(path), "note": f"unreadable or without a rules triager: {how}"}
    keys = ("n", "exact", "within_one", "kappa", "under_triage", "over_triage")

    def pick(block: Any) -> dict[str, Any]:
        return {k: block.get(k) for k in keys} if isinstance(block, dict) else {}

    return {"source": str(path), "overall": pick(rules.get("overall")),
            "by_split": {s: pick(b) for s, b in sorted((rules.get("by_split") or {}).items())}}
