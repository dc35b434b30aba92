"""PatientRecord extraction from real Synthea and US Core data, checked against the raw JSON."""
from __future__ import annotations

import base64
import json
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from fhir_adapter.extract import RecordError, build_record, record_from_resources, to_datetime
from fhir_adapter.prefetch import prefetch_from_resources
from tests.conftest import DATA

SYNTHEA = sorted((DATA / "fhir" / "synthea-bundles").glob("*.json"))
USCORE = DATA / "fhir" / "uscore-bundles"
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _raw(path: Path) -> tuple[dict, dict]:
    bundle = json.loads(path.read_text())
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    return bundle, patient


def _newest(bundle: dict, loinc: str) -> dict | None:
    """Independent reading of the raw JSON: the newest Observation carrying `loinc`."""
    obs = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
           and any(c["code"] == loinc for c in e["resource"]["code"]["coding"])]
    return max(obs, key=lambda o: datetime.fromisoformat(o["effectiveDateTime"]), default=None)


@pytest.mark.parametrize("path", SYNTHEA, ids=lambda p: p.name[:20])
def test_every_synthea_bundle_gives_a_record(path: Path) -> None:
    bundle, patient = _raw(path)
    record = build_record(prefetch_from_resources(bundle, {"patientId": patient["id"]}), as_of=NOW)
    assert record.sex == patient["gender"]
    assert record.birth_date == date.fromisoformat(patient["birthDate"])
    assert record.age_years is not None and 0 <= record.age_years < 120
    assert record.stats.skipped == 0
    for loinc in ("8867-4", "9279-1", "8310-5"):
        raw = _newest(bundle, loinc)
        if loinc != "8310-5":
            assert raw is not None
        if raw is None:
            assert loinc not in record.vitals
            continue
        vital = record.vitals[loinc]
        assert vital.value == pytest.approx(raw["valueQuantity"]["value"])
        assert vital.effective == datetime.fromisoformat(raw["effectiveDateTime"])
        assert vital.effective.tzinfo is not None
    panel = _newest(bundle, "85354-9")
    systolic = next(c for c in panel["component"] if c["code"]["coding"][0]["code"] == "8480-6")
    assert record.vitals["8480-6"].value == pytest.approx(systolic["valueQuantity"]["value"])
    assert record.vitals["85354-9"].components["8480-6"] == pytest.approx(systolic["valueQuantity"]["value"])
    assert "8462-4" in record.vitals
    raw_conditions = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition"]
    assert len(record.conditions) == len(raw_conditions)
    active = sum(c["clinicalStatus"]["coding"][0]["code"] == "active" for c in raw_conditions)
    assert sum(c.active for c in record.conditions) == active
    assert all(c.onset is None or c.onset.tzinfo is not None for c in record.conditions)
    assert record.identity.given_names == tuple(dict.fromkeys(g for n in patient["name"] for g in n["given"]))
    assert any(v == next(i["value"] for i in patient["identifier"] if "us-ssn" in i.get("system", ""))
               for _, v in record.identity.identifiers)


def test_uscore_spo2_with_oxygen_components_and_invalid_observation_skipped() -> None:
    bundle, patient = _raw(USCORE / "uscore_bundle_patient_85.json")
    record = build_record(prefetch_from_resources(bundle, {"patientId": "85"}), as_of=NOW)
    for code in ("2708-6", "59408-5"):
        spo2 = record.vitals[code]
        assert spo2.value == 77.0 and spo2.unit == "%"
        assert spo2.components == {"3151-8": 6.0, "3150-0": 40.0}
        assert spo2.component_units["3151-8"] == "L/min"
    assert "Dr. Willena258 Oberbrunner298" in record.identity.other_names
    assert record.identity.resource_id == "85" and record.sex == "male"

    bundle, _ = _raw(USCORE / "uscore_bundle_patient_355.json")
    record = build_record(prefetch_from_resources(bundle, {"patientId": "355"}), as_of=NOW)
    assert record.stats.skipped_by_type == {"Observation": 1}
    assert {"8867-4", "9279-1", "8480-6", "8310-5"} <= set(record.vitals)


def test_newer_standalone_systolic_wins_over_panel() -> None:
    patient = {"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "2000-06-15"}
    vs = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}]

    def obs(oid, code, when, **value):
        return {"resourceType": "Observation", "id": oid, "status": "final", "category": vs,
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": "Patient/p"}, "effectiveDateTime": when, **value}

    panel = obs("bp", "85354-9", "2024-01-01T10:00:00Z", component=[
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
         "valueQuantity": {"value": 90, "unit": "mmHg", "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
         "valueQuantity": {"value": 60, "code": "mm[Hg]"}}])
    standalone = obs("sys", "8480-6", "2024-01-01T11:00:00+01:00", valueQuantity={"value": 130, "code": "mm[Hg]"})
    older = obs("sys0", "8480-6", "2023-01-01", valueQuantity={"value": 150, "code": "mm[Hg]"})
    absent = obs("hr1", "8867-4", "2024-02-01T00:00:00Z", dataAbsentReason={"text": "unknown"})
    hr = obs("hr0", "8867-4", "2024-01-01T00:00:00Z", valueQuantity={"value": 80, "code": "/min"})
    acvpu = obs("loc", "67775-7", "2024-01-01T00:00:00Z", valueCodeableConcept={
        "coding": [{"system": "http://snomed.info/sct", "code": "450847001", "display": "Confused"}]})
    record = record_from_resources([patient, panel, standalone, older, absent, hr, acvpu], "p", NOW)
    # 11:00+01:00 is the same instant as the panel's 10:00Z: not newer, so the panel's value stands.
    assert record.vitals["8480-6"].value == 90.0
    assert record.vitals["8462-4"].value == 60.0
    assert record.vitals["8867-4"].value == 80.0  # a value-less newer reading does not hide it
    assert record.vitals["67775-7"].value_code.code == "450847001"
    assert to_datetime("2023-01-01") == datetime(2023, 1, 1, tzinfo=timezone.utc)
    later = obs("sys2", "8480-6", "2024-01-01T10:30:00Z", valueQuantity={"value": 135, "code": "mm[Hg]"})
    record = record_from_resources([patient, panel, later], "p", NOW)
    assert record.vitals["8480-6"].value == 135.0
    history = record_from_resources([patient, panel, later], "p", datetime(2024, 1, 1, 10, 15, tzinfo=timezone.utc),
                                    history_only=True)
    assert history.vitals["8480-6"].value == 90.0


def test_medications_encounter_notes_and_names() -> None:
    patient = {"resourceType": "Patient", "id": "p", "birthDate": "1950", "gender": "male",
               "name": [{"given": ["Ann", "B"], "family": "Smith"}],
               "telecom": [{"system": "phone", "value": "555-0100"}, {"system": "email", "value": "a@x.org"}],
               "contact": [{"name": {"given": ["Carl"], "family": "Smith"}}]}
    med = {"resourceType": "Medication", "id": "m1", "code": {"text": "Aspirin 81 mg"}}
    rx_ref = {"resourceType": "MedicationRequest", "id": "r1", "status": "active", "intent": "order",
              "subject": {"reference": "Patient/p"}, "medicationReference": {"reference": "Medication/m1"}}
    rx_contained = {"resourceType": "MedicationRequest", "id": "r2", "status": "active", "intent": "order",
                    "contained": [{"resourceType": "Medication", "id": "c", "code": {"text": "Metformin"}}],
                    "subject": {"reference": "Patient/p"}, "medicationReference": {"reference": "#c"},
                    "dosageInstruction": [{"text": "500 mg twice daily"}]}
    rx_stopped = {"resourceType": "MedicationRequest", "id": "r3", "status": "stopped", "intent": "order",
                  "subject": {"reference": "Patient/p"}, "medicationCodeableConcept": {"text": "Old drug"}}
    enc = {"resourceType": "Encounter", "id": "e1", "status": "in-progress",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
           "priority": {"coding": [{"code": "EM"}]}, "reasonCode": [{"text": "chest pain"}],
           "subject": {"reference": "Patient/p"}, "period": {"start": "2025-12-31T23:00:00-05:00"},
           "participant": [{"individual": {"reference": "Practitioner/d", "display": "Dr. Jane Roe"}}]}
    note = "Pt Ann Smith reports chest pain."
    doc = {"resourceType": "DocumentReference", "id": "d1", "status": "current", "subject": {"reference": "Patient/p"},
           "content": [{"attachment": {"contentType": "text/plain; charset=utf-8",
                                       "data": base64.b64encode(note.encode()).decode()}}]}
    org = {"resourceType": "Organization", "id": "o", "name": "General Hospital"}
    record = record_from_resources([patient, med, rx_ref, rx_contained, rx_stopped, enc, doc, org], None, NOW,
                                   encounter_id="e1")
    assert [m.text for m in record.medications] == ["Aspirin 81 mg", "Metformin"]
    assert record.medications[1].dosage == ("500 mg twice daily",)
    assert record.encounter.class_code == "EMER" and record.encounter.priority == "EM"
    assert record.encounter.reasons == ("chest pain",)
    assert record.encounter.start == datetime(2026, 1, 1, 4, 0, tzinfo=timezone.utc)
    assert record.notes == (note,)
    assert record.birth_date == date(1950, 1, 1)
    ident = record.identity
    assert ident.given_names == ("Ann", "B") and ident.family_names == ("Smith",)
    assert ident.phones == ("555-0100",) and ident.emails == ("a@x.org",)
    assert {"Carl Smith", "Dr. Jane Roe", "General Hospital"} <= set(ident.other_names)


def test_no_patient_is_a_clear_error() -> None:
    with pytest.raises(RecordError):
        record_from_resources([{"resourceType": "Condition", "subject": {"reference": "Patient/x"},
                                "code": {"text": "x"}}], None, NOW)


def test_only_displays_of_people_and_organizations_are_identity_names() -> None:
    """A reference's display names a party only when it points at one; a diagnosis display
    ("Acute bronchitis") is clinical text and must not become an identifier to scrub."""
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-01-01"}
    encounter = {
        "resourceType": "Encounter", "id": "e1", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"},
        "participant": [{"individual": {"reference": "urn:uuid:1234", "display": "Dr. Ada Quill"}}],
        "serviceProvider": {"reference": "Organization/o1", "display": "Harbor Family Clinic"},
        "diagnosis": [{"condition": {"reference": "Condition/c1", "display": "Acute bronchitis"}}],
    }
    record = record_from_resources([patient, encounter], "p1", datetime(2024, 1, 1, tzinfo=timezone.utc),
                                   encounter_id="e1")
    names = record.identity.other_names
    assert "Dr. Ada Quill" in names and "Harbor Family Clinic" in names
    assert "Acute bronchitis" not in names


def _all_resources() -> list[dict]:
    out = []
    for f in sorted((DATA / "fhir").rglob("*.ndjson")):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    for f in sorted((DATA / "fhir").rglob("*.json")):
        data = json.loads(f.read_text())
        if isinstance(data, dict) and data.get("resourceType") == "Bundle":
            out += [e["resource"] for e in data.get("entry", []) if isinstance(e.get("resource"), dict)]
    return out


def test_raw_reference_displays_equal_the_model_walk_on_every_test_resource() -> None:
    """The dataset build reads party displays of resources it does not validate from their JSON;
    they must be the displays the validated model gives (a Coding's display never is one)."""
    from fhir_adapter.extract import _reference_displays, raw_reference_displays
    from fhir_adapter.parse import StatsCounter, parse_many

    resources = _all_resources()
    seen = found = 0
    for raw in resources:
        models = parse_many([raw], stats=StatsCounter())
        if not models:
            continue
        a: list[str] = []
        b: list[str] = []
        _reference_displays(models[0], a)
        raw_reference_displays(raw, b)
        assert sorted(a) == sorted(b), raw.get("resourceType")
        seen += 1
        found += len(a)
    assert seen > 4000 and found > 1000
    # Display-only references count by their field; a Coding under a party field does not.
    node = {"performer": [{"display": "Dr. Ada Quill"}], "requester": {"system": "s", "code": "c", "display": "x"},
            "medicationReference": {"reference": "urn:uuid:9", "display": "Aspirin"}}
    got: list[str] = []
    raw_reference_displays(node, got)
    assert got == ["Dr. Ada Quill"]


def test_extra_displays_join_the_identity() -> None:
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-01-01"}
    record = record_from_resources([patient], "p1", NOW, displays=["Dr. Ada Quill"])
    assert record.identity.other_names == ("Dr. Ada Quill",)
