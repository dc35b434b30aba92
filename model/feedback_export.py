"""Nurses' card feedback as unpaired preference data for TRL's KTO trainer.

Each card that received feedback and was logged with its de-identified prompt and report gives one
row: `prompt` (conversational), `completion` (the report as the assistant turn), `label`
(accepted -> True, overridden -> False) and `override_reason`. Where a card has several feedback
entries, the latest outcome (by outcome timestamp) is the nurse's final word; the others are
counted as superseded. Cards without feedback never appear: nothing is guessed.

`export_preferences` writes a folder for the preference stages: `kto.jsonl` (every final decision),
`dpo.jsonl` (pairs from overridden reports where the nurse's call is known) and `preferences.json`
(counts, class balance, de-duplication, leak check). See its docstring.

Import direction: `model` must not import `cds_hooks`, so the `cards` and `feedback` tables are
read by name through SQLAlchemy reflection. The store's migrations own the schema; this module only
needs the columns it names below and fails with a one-line error if they are missing.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from .dataset_card import atomic_open, dumps_line

CARD_COLUMNS = ("uuid", "kind", "prompt", "report", "model_version", "patient_pseudonym")
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


# --- preference sets (DPO pairs and KTO examples) ------------------------------------------------

NURSE_ACUITY = re.compile(r"^ai-acuity-([1-5])$")  # the AI card's "Acuity should be N" override reasons
PREFERENCE_FILES = ("kto.jsonl", "dpo.jsonl", "preferences.json")


class PreferenceLeak(FeedbackExportError):
    """An identifier was found in a written file: the outputs were removed (exit 3)."""


@dataclass
class _Decision:
    card_uuid: str
    patient: str | None
    prompt: list[dict[str, str]]
    completion: str
    report: dict[str, Any] | None
    label: bool
    outcome: str
    reason: dict[str, Any] | None
    nurse_acuity: int | None
    model_version: str | None
    decided_at: Any


@dataclass
class PreferenceResult:
    kto: int = 0
    dpo: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    leak_types: Counter[str] = field(default_factory=Counter)
    leak_check: str = "not run"

    def as_dict(self) -> dict[str, Any]:
        desirable, undesirable = self.counts["kto_desirable"], self.counts["kto_undesirable"]
        return {
            "kto_examples": self.kto,
            "dpo_pairs": self.dpo,
            "balance": {
                "desirable": desirable,
                "undesirable": undesirable,
                # TRL's KTO guidance: desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
                # in [1, 4/3]; with desirable_weight 1 this undesirable_weight puts it at 1.
                "suggested_undesirable_weight": round(desirable / undesirable, 3) if desirable and undesirable else None,
            },
            "counts": dict(sorted(self.counts.items())),
            "leak_check": {"status": self.leak_check, "dropped_by_type": dict(sorted(self.leak_types.items()))},
        }


def _decisions(engine: sa.Engine, batch: int, counts: Counter[str]) -> Iterator[_Decision]:
    for group in _grouped(_rows(engine, batch)):
        counts["cards_with_feedback"] += 1
        counts["superseded_feedback"] += len(group) - 1
        last = group[-1]
        if last["c__kind"] is None:
            counts["skipped_unknown_card"] += 1
            continue
        if not last["c__prompt"] or last["c__report"] is None:
            counts["skipped_no_prompt_or_report"] += 1
            continue
        label = LABELS.get(last["outcome"])
        if label is None:
            counts["skipped_unknown_outcome"] += 1
            continue
        reason = None
        if any(last[f"override_reason_{k}"] for k in ("system", "code", "display")):
            reason = {k: last[f"override_reason_{k}"] for k in ("system", "code", "display")}
        match = NURSE_ACUITY.match(last["override_reason_code"] or "") if not label else None
        report = last["c__report"]
        if isinstance(report, str):
            try:
                report = json.loads(report)
            except json.JSONDecodeError:
                report = None
        yield _Decision(
            card_uuid=last["card_uuid"], patient=last["c__patient_pseudonym"],
            prompt=_prompt_messages(last["c__prompt"]), completion=_report_text(last["c__report"]),
            report=report if isinstance(report, dict) else None, label=label, outcome=last["outcome"],
            reason=reason, nurse_acuity=int(match.group(1)) if match else None,
            model_version=last["c__model_version"], decided_at=last["outcome_timestamp"],
        )


def _dedupe(decisions: list[_Decision], counts: Counter[str]) -> list[_Decision]:
    """One decision per patient and (prompt, report): the same chart seen again gives the same prompt
    and (cached) report; the latest decision on it is kept."""
    latest: dict[tuple[Any, str], _Decision] = {}
    for d in decisions:
        key = (d.patient, hashlib.sha256(json.dumps([d.prompt, d.completion], sort_keys=True).encode()).hexdigest())
        if key in latest:
            counts["duplicates_dropped"] += 1
            if str(d.decided_at) < str(latest[key].decided_at):
                continue
        latest[key] = d
    return sorted(latest.values(), key=lambda d: d.card_uuid)


def _pairs(decisions: list[_Decision], counts: Counter[str]) -> Iterator[tuple[_Decision, str, str]]:
    """(overridden decision, chosen, rejected): the report consistent with the nurse's call is chosen.

    With the nurse's acuity (override reason `ai-acuity-N`), the chosen report is the model's own
    with that acuity; without it, a report the nurse accepted for the same patient and prompt.
    Otherwise there is no pair (the override is still a KTO example).
    """
    accepted: dict[tuple[Any, str], str] = {}
    for d in decisions:
        if d.label:
            accepted[(d.patient, json.dumps(d.prompt, sort_keys=True))] = d.completion
    for d in decisions:
        if d.label:
            continue
        if d.nurse_acuity is not None and d.report is not None:
            if d.report.get("acuity") == d.nurse_acuity:
                counts["dpo_skipped_same_acuity"] += 1
                continue
            yield d, _report_text({**d.report, "acuity": d.nurse_acuity}), d.completion
            counts["dpo_from_nurse_acuity"] += 1
            continue
        other = accepted.get((d.patient, json.dumps(d.prompt, sort_keys=True)))
        if other is not None and other != d.completion:
            yield d, other, d.completion
            counts["dpo_from_accepted_report"] += 1
            continue
        counts["dpo_skipped_no_nurse_call"] += 1


def export_preferences(database_url: str, out_dir: str | Path, *, identifiers: Any = None,
                       batch: int = 500) -> PreferenceResult:
    """Write `kto.jsonl`, `dpo.jsonl` and `preferences.json` into `out_dir`.

    `identifiers` (a `deidentify.leaks.IdentifierSet`, e.g. `model.dataset.export_identifiers` of
    the clinic's Bulk export): every row is searched before writing and dropped on a hit; the
    written files are searched again and removed on any hit (PreferenceLeak). Fail closed.
    """
    try:
        url = make_url(database_url)
    except sa.exc.ArgumentError:
        raise FeedbackExportError("invalid database URL") from None
    safe = url.render_as_string(hide_password=True)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    result = PreferenceResult()
    try:
        decisions = _dedupe(list(_decisions(engine, batch, result.counts)), result.counts)
    except sa.exc.OperationalError as exc:
        raise FeedbackExportError(
            f"cannot read database {safe}: {type(exc.orig).__name__ if exc.orig else 'OperationalError'}"
        ) from None
    except sa.exc.ProgrammingError as exc:
        raise FeedbackExportError(f"cannot query database {safe}: {type(exc.orig).__name__ if exc.orig else 'error'}") from None
    finally:
        engine.dispose()

    scanner = None
    if identifiers is not None:
        from model.dataset import LeakScanner, json_parts

        scanner = LeakScanner(identifiers)
        result.leak_check = "passed"

    def clean(row: dict[str, Any]) -> bool:
        if scanner is None:
            return True
        hits = scanner.find_parts(json_parts(row))
        if hits:
            result.leak_types.update(hits)
            result.counts["leak_check_dropped"] += 1
        return not hits

    kto_rows, dpo_rows = [], []
    for d in decisions:
        row = {"card_uuid": d.card_uuid, "patient": d.patient, "prompt": d.prompt,
               "completion": [{"role": "assistant", "content": d.completion}], "label": d.label,
               "outcome": d.outcome, "override_reason": d.reason, "nurse_acuity": d.nurse_acuity,
               "model_version": d.model_version}
        if clean(row):
            kto_rows.append(row)
            result.counts["kto_desirable" if d.label else "kto_undesirable"] += 1
    for d, chosen, rejected in _pairs(decisions, result.counts):
        row = {"card_uuid": d.card_uuid, "patient": d.patient, "prompt": d.prompt,
               "chosen": [{"role": "assistant", "content": chosen}],
               "rejected": [{"role": "assistant", "content": rejected}],
               "override_reason": d.reason, "nurse_acuity": d.nurse_acuity, "model_version": d.model_version}
        if clean(row):
            dpo_rows.append(row)
    result.kto, result.dpo = len(kto_rows), len(dpo_rows)

    out = Path(out_dir)
    for name, rows in (("kto.jsonl", kto_rows), ("dpo.jsonl", dpo_rows)):
        with atomic_open(out / name) as fh:
            for row in rows:
                fh.write(dumps_line(row))
    if scanner is not None:  # the written bytes, searched again: any hit removes every output
        from model.dataset import scan_outputs

        hits = scan_outputs([out / "kto.jsonl", out / "dpo.jsonl"], scanner)
        if hits:
            for name in PREFERENCE_FILES:
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
            raise PreferenceLeak(f"leak check failed on the written files ({sum(hits.values())} hits): outputs removed")
    with atomic_open(out / "preferences.json") as fh:
        fh.write(json.dumps(result.as_dict(), indent=2, sort_keys=True) + "\n")
    return result
