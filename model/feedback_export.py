"""Nurses' card feedback as unpaired preference data for TRL's KTO trainer.

Each card that received feedback and was logged with its de-identified prompt and report gives one
row: `prompt` (conversational), `completion` (the report as the assistant turn), `label`
(accepted -> True, overridden -> False) and `override_reason`. Where a card has several feedback
entries, the latest outcome (by outcome timestamp) is the nurse's final word; the others are
counted as superseded. Cards without feedback never appear: nothing is guessed.

Import direction: `model` must not import `cds_hooks`, so the `cards` and `feedback` tables are
read by name through SQLAlchemy reflection. The store's migrations own the schema; this module only
needs the columns it names below and fails with a one-line error if they are missing.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from .dataset_card import atomic_open, dumps_line

CARD_COLUMNS = ("uuid", "kind", "prompt", "report", "model_version")
FEEDBACK_COLUMNS = (
    "id", "card_uuid", "outcome", "outcome_timestamp",
    "override_reason_system", "override_reason_code", "override_reason_display",
)
LABELS = {"accepted": True, "overridden": False}


class FeedbackExportError(RuntimeError):
    """The database cannot be read (message never contains the password)."""


@dataclass
class FeedbackExportResult:
    examples: int = 0
    counts: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        return {"examples": self.examples, **dict(sorted(self.counts.items()))}


def _tables(engine: sa.Engine) -> tuple[sa.Table, sa.Table]:
    meta = sa.MetaData()
    try:
        meta.reflect(bind=engine, only=["cards", "feedback"])
    except sa.exc.InvalidRequestError:
        raise FeedbackExportError("the database has no cards/feedback tables: run the service's migrations first") from None
    cards, feedback = meta.tables["cards"], meta.tables["feedback"]
    missing = [f"cards.{c}" for c in CARD_COLUMNS if c not in cards.c] + [
        f"feedback.{c}" for c in FEEDBACK_COLUMNS if c not in feedback.c
    ]
    if missing:
        raise FeedbackExportError(f"unexpected schema, missing columns: {', '.join(missing)}")
    return cards, feedback


def _prompt_messages(prompt: str) -> list[dict[str, str]]:
    """The logged prompt as chat messages: a JSON list of {role, content} as is, else one user turn."""
    text = prompt.strip()
    if text.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, list) and data and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in data
        ):
            return [{"role": m["role"], "content": m["content"]} for m in data]
    return [{"role": "user", "content": prompt}]


def _report_text(report: Any) -> str:
    """The report as the model writes it: TriageReport's JSON when it validates, else canonical JSON."""
    if isinstance(report, str):
        try:
            report = json.loads(report)
        except json.JSONDecodeError:
            return report
    try:
        from .report import TriageReport  # optional: present once the inference work lands

        return TriageReport.model_validate(report).model_dump_json()
    except Exception:  # noqa: BLE001 - any failure: keep the logged report as canonical JSON
        return json.dumps(report, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _rows(engine: sa.Engine, batch: int) -> Iterator[dict[str, Any]]:
    cards, feedback = _tables(engine)
    stmt = (
        sa.select(
            *[feedback.c[c] for c in FEEDBACK_COLUMNS],
            *[cards.c[c].label(f"c__{c}") for c in CARD_COLUMNS],
        )
        .select_from(feedback.outerjoin(cards, cards.c.uuid == feedback.c.card_uuid))
        .order_by(feedback.c.card_uuid, feedback.c.outcome_timestamp, feedback.c.id)
    )
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(stmt)
        for row in result.mappings():
            yield dict(row)


def _grouped(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    group: list[dict[str, Any]] = []
    for row in rows:
        if group and row["card_uuid"] != group[0]["card_uuid"]:
            yield group
            group = []
        group.append(row)
    if group:
        yield group


def export_feedback(database_url: str, output: str | Path, *, batch: int = 500) -> FeedbackExportResult:
    """Write the KTO JSONL for every card with feedback; return the counts."""
    try:
        url = make_url(database_url)
    except sa.exc.ArgumentError:
        raise FeedbackExportError("invalid database URL") from None
    safe = url.render_as_string(hide_password=True)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    result = FeedbackExportResult()
    try:
        with atomic_open(Path(output)) as out:
            for group in _grouped(_rows(engine, batch)):
                result.counts["cards_with_feedback"] += 1
                result.counts["superseded_feedback"] += len(group) - 1
                last = group[-1]  # ordered by outcome time: the final decision
                if last["c__kind"] is None:  # feedback about a card this service never logged
                    result.counts["skipped_unknown_card"] += 1
                    continue
                if not last["c__prompt"] or last["c__report"] is None:
                    result.counts["skipped_no_prompt_or_report"] += 1
                    continue
                label = LABELS.get(last["outcome"])
                if label is None:
                    result.counts["skipped_unknown_outcome"] += 1
                    continue
                reason = None
                if any(last[f"override_reason_{k}"] for k in ("system", "code", "display")):
                    reason = {k: last[f"override_reason_{k}"] for k in ("system", "code", "display")}
                out.write(
                    dumps_line(
                        {
                            "card_uuid": last["card_uuid"],
                            "prompt": _prompt_messages(last["c__prompt"]),
                            "completion": [{"role": "assistant", "content": _report_text(last["c__report"])}],
                            "label": label,
                            "outcome": last["outcome"],
                            "override_reason": reason,
                            "model_version": last["c__model_version"],
                        }
                    )
                )
                result.examples += 1
                result.counts["accepted" if label else "overridden"] += 1
    except sa.exc.OperationalError as exc:
        raise FeedbackExportError(
            f"cannot read database {safe}: {type(exc.orig).__name__ if exc.orig else 'OperationalError'}"
        ) from None
    except sa.exc.ProgrammingError as exc:
        raise FeedbackExportError(f"cannot query database {safe}: {type(exc.orig).__name__ if exc.orig else 'error'}") from None
    finally:
        engine.dispose()
    return result
