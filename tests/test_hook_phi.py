"""Invariant 1 end to end: identifiers planted in a chart's free text never leave the API process.

A patient's name, MRN, phone, street address and birth date are written into Condition notes and
`code.text`; after a real patient-view call none of them is in the de-identified record, in any
log line (all levels), or in any database row. Invariant 2: when de-identification fails the
nurse still gets the rules card, and nothing about the record is queued or logged.
"""
from __future__ import annotations

import copy
import json
import logging

import pytest
from sqlalchemy import create_engine, inspect, text

from support.cds_app import load, make_app, patient_view, post_hook, synthea_paths

GIVEN, FAMILY = "Marguerite", "Okonkwo-Lindqvist"
MRN = "MRN88412207"
PHONE = "(617) 555-0143"
STREET = "4417 Quarry Hollow Road"
BIRTH = "1952-03-14"
PLANTED = [GIVEN, FAMILY, MRN, PHONE, "555-0143", STREET, "Quarry Hollow", BIRTH, "03/14/1952", "March 14, 1952"]


def _planted_bundle() -> dict:
    bundle = copy.deepcopy(load(synthea_paths()[0]))
    conditions = 0
    for entry in bundle["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "Patient":
            res["name"] = [{"use": "official", "given": [GIVEN], "family": FAMILY}]
            res["birthDate"] = BIRTH
            res["telecom"] = [{"system": "phone", "value": PHONE}]
            res["address"] = [{"line": [STREET], "city": "Marblehead", "state": "MA", "postalCode": "01945"}]
            res["identifier"] = [{"type": {"text": "Medical Record Number"}, "system": "urn:mrn", "value": MRN}]
        if res["resourceType"] == "Condition" and conditions < 3:
            conditions += 1
            res["code"]["text"] = f"Chest pain, {GIVEN} {FAMILY} ({MRN}) called from {PHONE}"
            res["note"] = [{"text": (f"Pt {GIVEN.upper()} {FAMILY.upper()}, DOB 03/14/1952, lives at {STREET}. "
                                     f"Call back {PHONE}. Born March 14, 1952. MRN: {MRN}.")}]
    assert conditions
    return bundle


@pytest.fixture()
def app(tmp_path):
    return make_app(tmp_path)


def _all_rows(url: str) -> str:
    engine = create_engine(url)
    dump = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            for row in conn.execute(text(f"SELECT * FROM {table}")):
                dump.append(json.dumps([str(v) for v in row]))
    engine.dispose()
    return "\n".join(dump)


def test_planted_identifiers_reach_no_record_log_or_row(app, caplog, monkeypatch):
    runtime = app.extensions["triage_runtime"]
    seen = []
    original = runtime.deidentifier.record

    def capture(record):
        out = original(record)
        seen.append(out)
        return out

    monkeypatch.setattr(runtime.deidentifier, "record", capture)
    caplog.set_level(logging.DEBUG)
    response = post_hook(app.test_client(), patient_view(_planted_bundle()))
    assert response.status_code == 200
    assert response.get_json()["cards"], "the rules card is always there"

    assert len(seen) == 1
    payload = json.dumps(seen[0].to_payload())
    assert "[NAME]" in payload or "[ID]" in payload, "the planted free text was scrubbed, not dropped"
    rows = _all_rows(app.config["TRIAGE_DATABASE_URL"])
    assert rows, "cards were logged"
    for value in PLANTED:
        for where, haystack in (("record", payload), ("logs", caplog.text), ("database", rows)):
            assert value.lower() not in haystack.lower(), f"planted identifier found in {where}"


def test_failed_deidentification_still_answers_with_rules_card_and_logs_nothing(app, caplog, monkeypatch):
    """A scrubber that lets text through makes the leak check fire: fail closed."""
    runtime = app.extensions["triage_runtime"]
    monkeypatch.setattr(runtime.deidentifier, "scrubber", _PassThrough())
    caplog.set_level(logging.DEBUG)
    before = runtime.deid_failures
    response = post_hook(app.test_client(), patient_view(_planted_bundle()))
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    assert len(cards) == 1 and "NEWS2" in cards[0]["summary"]
    assert runtime.deid_failures == before + 1
    assert "LeakDetected" in caplog.text
    rows = _all_rows(app.config["TRIAGE_DATABASE_URL"])
    assert '"deidentification": "failed"' in rows or "failed" in rows
    for value in PLANTED:
        assert value.lower() not in caplog.text.lower()
        assert value.lower() not in rows.lower()


class _PassThrough:
    """A scrubber that changes nothing (a broken de-identifier)."""

    def scrub_many(self, texts, *, known=None, date_shift_days=None, **_):
        from deidentify.text import ScrubResult

        return [ScrubResult(t, []) for t in texts]

    def scrub(self, text, **kw):
        return self.scrub_many([text], **kw)[0]
