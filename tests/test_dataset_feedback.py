"""`triage dataset feedback`: card feedback -> KTO rows, on SQLite and real PostgreSQL.

Tables are made by the store's own migrations; the export reads them by reflection (model does not
import cds_hooks).
"""
from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from cds_hooks.store import CardLog, FeedbackItem, Store
from db_fixtures import database_url  # noqa: F401  (fixture)
from model.cli import dataset
from model.feedback_export import FeedbackExportError, export_feedback

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
REPORT = {
    "acuity": 2, "summary": "Chest pain with tachycardia", "red_flags": ["HR 128"],
    "differential": [{"condition": "Acute coronary syndrome", "likelihood": "moderate", "rationale": "pain and HR"}],
    "recommended_actions": ["ECG within 10 minutes"], "questions_to_ask": ["Onset?"], "reasoning_summary": "Tachycardic.",
}


def _card(kind: str = "ai", prompt: str | None = "Write the triage report for this patient.\n\nPatient: 54 years old, male.",
          report: dict | None = REPORT) -> CardLog:
    return CardLog(uuid=str(uuid.uuid4()), service_id="triage", hook_instance=str(uuid.uuid4()), kind=kind,
                   indicator="critical", summary="s", rule_inputs={}, acuity=2, patient_pseudonym="p-1",
                   created_at=T0, prompt=prompt, report=report, model_version="adapter-v1")


def _seed(url: str) -> dict[str, str]:
    store = Store(url)
    store.migrate()
    cards = {
        "accepted": _card(),
        "overridden": _card(prompt=json.dumps([{"role": "developer", "content": "rules"}, {"role": "user", "content": "hi"}])),
        "changed_mind": _card(),
        "no_feedback": _card(),
        "rules_only": _card(kind="rules", prompt=None, report=None),
    }
    store.log_cards(list(cards.values()))
    fb = [
        FeedbackItem(cards["accepted"].uuid, "accepted", T0 + timedelta(minutes=1)),
        FeedbackItem(cards["overridden"].uuid, "overridden", T0 + timedelta(minutes=2),
                     override_reason_system="http://example.org/reasons", override_reason_code="too-high",
                     override_reason_display="Acuity too high"),
        FeedbackItem(cards["changed_mind"].uuid, "accepted", T0 + timedelta(minutes=3)),
        FeedbackItem(cards["changed_mind"].uuid, "overridden", T0 + timedelta(minutes=9), override_reason_code="other"),
        FeedbackItem(cards["rules_only"].uuid, "accepted", T0 + timedelta(minutes=4)),
        FeedbackItem(str(uuid.uuid4()), "accepted", T0 + timedelta(minutes=5)),  # a card never issued
    ]
    store.save_feedback("triage", fb)
    store.dispose()
    return {k: v.uuid for k, v in cards.items()}


def test_feedback_export_kto_rows(database_url: str, tmp_path: Path) -> None:
    ids = _seed(database_url)
    out = tmp_path / "kto.jsonl"
    result = export_feedback(database_url, out)
    rows = {r["card_uuid"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {ids["accepted"], ids["overridden"], ids["changed_mind"]}  # no guessing
    assert rows[ids["accepted"]]["label"] is True
    assert rows[ids["overridden"]]["label"] is False
    assert rows[ids["overridden"]]["override_reason"] == {
        "system": "http://example.org/reasons", "code": "too-high", "display": "Acuity too high"}
    assert rows[ids["accepted"]]["override_reason"] is None
    # the latest outcome is the nurse's final word
    assert rows[ids["changed_mind"]]["label"] is False and rows[ids["changed_mind"]]["outcome"] == "overridden"
    # conversational prompt: a plain prompt becomes one user turn, a logged message list is kept
    assert rows[ids["accepted"]]["prompt"] == [{"role": "user", "content": _card().prompt}]
    assert [m["role"] for m in rows[ids["overridden"]]["prompt"]] == ["developer", "user"]
    completion = rows[ids["accepted"]]["completion"]
    assert completion[0]["role"] == "assistant" and json.loads(completion[0]["content"])["acuity"] == 2
    c = result.as_dict()
    assert c["examples"] == 3 and c["accepted"] == 1 and c["overridden"] == 2
    assert c["skipped_no_prompt_or_report"] == 1 and c["skipped_unknown_card"] == 1
    assert c["superseded_feedback"] == 1


def test_feedback_export_loads_with_datasets(tmp_path: Path) -> None:
    from datasets import load_dataset

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _seed(url)
    out = tmp_path / "kto.jsonl"
    export_feedback(url, out)
    ds = load_dataset("json", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 3 and set(ds.column_names) >= {"prompt", "completion", "label"}
    assert sorted(ds["label"]) == [False, False, True]


def test_feedback_cli_and_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _seed(url)
    runner = CliRunner()
    res = runner.invoke(dataset, ["feedback", "--database", url, "--output", str(tmp_path / "k.jsonl")])
    assert res.exit_code == 0, res.output
    assert "3 KTO examples" in res.output
    # an empty database (no migrations): one-line error, no traceback
    res = runner.invoke(dataset, ["feedback", "--database", f"sqlite:///{tmp_path / 'empty.sqlite'}", "--output", str(tmp_path / "x.jsonl")])
    assert res.exit_code == 1 and "run the service's migrations" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.jsonl").exists()  # atomic: nothing half-written
    with pytest.raises(FeedbackExportError) as err:
        export_feedback("postgresql+psycopg://triage:s3cret-pw@127.0.0.1:1/nowhere", tmp_path / "y.jsonl")
    assert "s3cret-pw" not in str(err.value)
