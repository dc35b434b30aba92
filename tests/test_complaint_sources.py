"""The chief complaint wherever EHRs put it, kept (scrubbed) through de-identification, and used by
the hook: Encounter.reasonCode, a chief-complaint Observation (LOINC 8661-1), an encounter-diagnosis
Condition of the current encounter."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from deidentify import Deidentifier
from fhir_adapter.extract import build_record
from model.rules import score_record

NOW = datetime.now(timezone.utc)
SNOMED = "http://snomed.info/sct"


def patient() -> dict:
    return {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1961-04-02",
            "name": [{"family": "Quagmire", "given": ["Horatio"]}]}


def encounter(**extra) -> dict:
    return {"resourceType": "Encounter", "id": "e1", "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
            "subject": {"reference": "Patient/p1"}, **extra}


def chief_complaint_obs(value: dict, *, encounter_ref: str | None = "Encounter/e1", hours_ago: float = 1) -> dict:
    obs = {"resourceType": "Observation", "id": "cc1", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "8661-1"}]},
           "subject": {"reference": "Patient/p1"},
           "effectiveDateTime": (NOW - timedelta(hours=hours_ago)).isoformat(), **value}
    if encounter_ref:
        obs["encounter"] = {"reference": encounter_ref}
    return obs


def encounter_diagnosis(text: str, encounter_ref: str = "Encounter/e1") -> dict:
    return {"resourceType": "Condition", "id": "d1", "subject": {"reference": "Patient/p1"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                      "code": "encounter-diagnosis"}]}],
            "encounter": {"reference": encounter_ref}, "code": {"text": text}}


def bundle(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def record(*resources, encounter_id="e1"):
    data = {"patient": patient(), "encounter": next((r for r in resources if r["resourceType"] == "Encounter"), None),
            "rest": bundle(*[r for r in resources if r["resourceType"] != "Encounter"])}
    return build_record(data, as_of=NOW, encounter_id=encounter_id)


def test_reason_code_text_and_codes():
    r = record(encounter(reasonCode=[{"text": "CP x2h"}, {"coding": [{"system": SNOMED, "code": "267036007",
                                                                      "display": "Dyspnea"}]}]))
    assert [c.text for c in r.complaints] == ["CP x2h", "Dyspnea"]
    assert r.complaints[1].codings[0].code == "267036007"
    assert {c.source for c in r.complaints} == {"encounter-reason"}


@pytest.mark.parametrize("value,text", [
    ({"valueString": "abd pain x2d"}, "abd pain x2d"),
    ({"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "21522001", "display": "Abdominal pain"}]}},
     "Abdominal pain"),
])
def test_chief_complaint_observation_of_the_encounter(value, text):
    r = record(encounter(), chief_complaint_obs(value))
    assert [(c.text, c.source) for c in r.complaints] == [(text, "chief-complaint-observation")]


def test_unlinked_chief_complaint_counts_only_when_recent():
    recent = record(encounter(), chief_complaint_obs({"valueString": "headache"}, encounter_ref=None))
    assert [c.text for c in recent.complaints] == ["headache"]
    old = record(encounter(), chief_complaint_obs({"valueString": "headache"}, encounter_ref=None, hours_ago=72))
    assert old.complaints == ()


def test_encounter_diagnosis_of_the_current_encounter_only():
    r = record(encounter(), encounter_diagnosis("testicular pain"))
    assert [(c.text, c.source) for c in r.complaints] == [("testicular pain", "encounter-diagnosis")]
    other = record(encounter(), encounter_diagnosis("testicular pain", "Encounter/old"))
    assert other.complaints == ()


def test_without_an_encounter_id_the_one_encounter_in_progress_is_current():
    data = {"patient": patient(), "encounters": bundle(encounter(reasonCode=[{"text": "chest pain"}]))}
    r = build_record(data, as_of=NOW)
    assert [c.text for c in r.complaints] == ["chest pain"]


def test_complaint_survives_deidentification_scrubbed(tmp_path: Path):
    from deidentify.engine import build_analyzer
    from deidentify.text import TextScrubber

    r = record(encounter(reasonCode=[{"text": "chest pain, brought in by Horatio Quagmire's wife"}]))
    deid = Deidentifier(b"k" * 32, scrubber=TextScrubber(build_analyzer("en_core_web_sm"))).record(r)
    text = deid.complaints[0].text
    assert "chest pain" in text and "Quagmire" not in text and "Horatio" not in text
    assert deid.to_payload()["complaints"][0]["text"] == text
    assert type(deid).from_payload(deid.to_payload()).complaints == deid.complaints
    assert int(score_record(deid).acuity) == 2  # the scrubbed complaint still drives the level
