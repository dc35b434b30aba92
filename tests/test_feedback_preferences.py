"""`triage dataset feedback --output-dir`: nurses' decisions -> DPO pairs and KTO examples, with counts,
balance, per-patient de-duplication and a fail-closed leak check (planted identifiers)."""
from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from cds_hooks.store import CardLog, FeedbackItem, Store
from conftest import DATA
from db_fixtures import database_url  # noqa: F401  (fixture)
from model.cli import dataset
from model.feedback_export import PreferenceLeak, export_preferences

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
EXPORT = DATA / "fhir" / "bulk-export-synthea-10"
SYSTEM = "urn:triage-cds:override-reason"


def report(acuity: int, summary: str = "Chest pain with tachycardia") -> dict:
    return {"acuity": acuity, "summary": summary, "red_flags": ["HR 128"],
            "differential": [{"condition": "Acute coronary syndrome", "likelihood": "moderate", "rationale": "pain"}],
            "recommended_actions": ["ECG within 10 minutes"], "questions_to_ask": ["Onset?"],
            "reasoning_summary": "Tachycardic."}


def card(patient: str, prompt: str, rep: dict, minutes: int = 0) -> CardLog:
    return CardLog(uuid=str(uuid.uuid4()), service_id="triage", hook_instance=str(uuid.uuid4()), kind="ai",
                   indicator="critical", summary="s", rule_inputs={}, acuity=rep["acuity"], patient_pseudonym=patient,
                   created_at=T0 + timedelta(minutes=minutes), prompt=prompt, report=rep, model_version="m; adapter a@1")


def fb(c: CardLog, outcome: str, minutes: int, code: str | None = None) -> FeedbackItem:
    return FeedbackItem(c.uuid, outcome, T0 + timedelta(minutes=minutes),
                        override_reason_system=SYSTEM if code else None, override_reason_code=code)


def seed(url: str, extra: list[tuple[CardLog, list[FeedbackItem]]] = ()) -> dict[str, CardLog]:
    store = Store(url)
    store.migrate()
    cards = {
        "p1_accepted": card("p-1", "Patient one, chest pain.", report(2)),
        # the same chart seen again: same prompt, same cached report, accepted again -> one example
        "p1_again": card("p-1", "Patient one, chest pain.", report(2), minutes=30),
        "p2_under": card("p-2", "Patient two, short of breath.", report(4)),  # nurse: acuity 2
        "p3_wrong": card("p-3", "Patient three, headache.", report(3)),  # overridden, no level given
        "p4_old": card("p-4", "Patient four, fever.", report(5)),  # overridden, an accepted report exists
        "p4_new": card("p-4", "Patient four, fever.", report(3, "Fever with rigors"), minutes=5),
        "p5_same": card("p-5", "Patient five, cut.", report(4)),  # nurse picks the level the model gave
    }
    decisions = [
        fb(cards["p1_accepted"], "accepted", 1), fb(cards["p1_again"], "accepted", 31),
        fb(cards["p2_under"], "overridden", 2, "ai-acuity-2"),
        fb(cards["p3_wrong"], "overridden", 3, "ai-wrong-differential"),
        fb(cards["p4_old"], "overridden", 4, "clinical-judgement"), fb(cards["p4_new"], "accepted", 6),
        fb(cards["p5_same"], "overridden", 7, "ai-acuity-4"),
    ]
    for c, items in extra:
        cards[c.uuid] = c
        decisions += items
    store.log_cards(list(cards.values()))
    store.save_feedback("triage", decisions)
    store.dispose()
    return cards


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pairs_examples_counts_and_dedup(database_url: str, tmp_path: Path) -> None:
    cards = seed(database_url)
    result = export_preferences(database_url, tmp_path)
    kto = rows(tmp_path / "kto.jsonl")
    dpo = {r["card_uuid"]: r for r in rows(tmp_path / "dpo.jsonl")}
    summary = json.loads((tmp_path / "preferences.json").read_text())

    # KTO: one example per patient and (prompt, report); p-1's second view is a duplicate
    assert len(kto) == 6 and result.counts["duplicates_dropped"] == 1
    assert sum(r["label"] for r in kto) == 2 and summary["balance"] == {
        "desirable": 2, "undesirable": 4, "suggested_undesirable_weight": 0.5}

    # DPO: the nurse's level makes the chosen report; an accepted report of the same chart also does
    assert set(dpo) == {cards["p2_under"].uuid, cards["p4_old"].uuid}
    under = dpo[cards["p2_under"].uuid]
    assert json.loads(under["chosen"][0]["content"])["acuity"] == 2
    assert json.loads(under["rejected"][0]["content"])["acuity"] == 4
    assert under["nurse_acuity"] == 2 and under["prompt"] == [{"role": "user", "content": "Patient two, short of breath."}]
    old = dpo[cards["p4_old"].uuid]
    assert json.loads(old["chosen"][0]["content"])["summary"] == "Fever with rigors"
    c = summary["counts"]
    assert c["dpo_from_nurse_acuity"] == 1 and c["dpo_from_accepted_report"] == 1
    assert c["dpo_skipped_no_nurse_call"] == 1 and c["dpo_skipped_same_acuity"] == 1
    assert summary["leak_check"]["status"] == "not run"


def test_leak_check_drops_rows_with_identifiers(tmp_path: Path) -> None:
    from deidentify.leaks import IdentifierSet

    patient = json.loads((EXPORT / "Patient.000.ndjson").read_text().splitlines()[0])
    name = f"{patient['name'][0]['given'][0]} {patient['name'][0]['family']}"
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    leaky = card("p-9", "Patient nine, fall.", report(3, f"Fall at home, seen by {name}"))
    cards = seed(url, [(leaky, [fb(leaky, "overridden", 9, "ai-acuity-2")])])
    ids = IdentifierSet.from_resources([patient])
    out = tmp_path / "prefs"
    result = export_preferences(url, out, identifiers=ids)
    written = (out / "kto.jsonl").read_text() + (out / "dpo.jsonl").read_text()
    assert patient["name"][0]["family"] not in written and leaky.uuid not in written
    assert result.counts["leak_check_dropped"] == 2  # its KTO example and its DPO pair
    assert sum(result.leak_types.values()) >= 2 and result.leak_check == "passed"
    summary = json.loads((out / "preferences.json").read_text())
    assert name not in json.dumps(summary)  # counts by type only
    assert cards  # the rest is still written
    assert result.kto == 6 and result.dpo == 2


def test_leak_in_written_file_removes_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second check reads the written bytes: a hit there (here forced by a scanner that misses in the
    row check) removes every output and fails."""
    from deidentify.leaks import IdentifierSet
    from model import dataset as ds

    patient = json.loads((EXPORT / "Patient.000.ndjson").read_text().splitlines()[0])
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    leaky = card("p-9", "Patient nine, fall.", report(3, f"Seen by {patient['name'][0]['family']}"))
    seed(url, [(leaky, [fb(leaky, "accepted", 9)])])
    real_find, real_scan = ds.LeakScanner.find_parts, ds.scan_outputs
    state = {"files": False}

    def scan(paths, scanner):
        state["files"] = True
        return real_scan(paths, scanner)

    def blind_first_pass(self, parts):  # the row check misses (as if a bug), the file check must not
        return real_find(self, parts) if state["files"] else type(real_find(self, []))()

    monkeypatch.setattr(ds, "scan_outputs", scan)
    monkeypatch.setattr(ds.LeakScanner, "find_parts", blind_first_pass)
    out = tmp_path / "prefs"
    with pytest.raises(PreferenceLeak, match="outputs removed"):
        export_preferences(url, out, identifiers=IdentifierSet.from_resources([patient]))
    assert not any((out / n).exists() for n in ("kto.jsonl", "dpo.jsonl", "preferences.json"))


def test_cli_output_dir(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    seed(url)
    runner = CliRunner()
    res = runner.invoke(dataset, ["feedback", "--database", url, "--output-dir", str(tmp_path / "p"),
                                  "--identifiers", str(EXPORT)])
    assert res.exit_code == 0, res.output
    assert "KTO examples" in res.output and "6 (2 accepted, 4 overridden)" in res.output
    assert "DPO pairs" in res.output and "passed" in res.output
    res = runner.invoke(dataset, ["feedback", "--database", url])
    assert res.exit_code == 1 and res.output.strip().startswith("error: give one of --output")
