"""Prefetch templates: rendering, and local evaluation against a Synthea Bundle."""
from __future__ import annotations

import json
from datetime import datetime

import pytest

from fhir_adapter.prefetch import (
    PREFETCH_TEMPLATES,
    REQUIRED_KEYS,
    prefetch_from_resources,
    render_prefetch,
    render_template,
    resolve_bundle_references,
)
from tests.conftest import DATA

SYNTHEA = sorted((DATA / "fhir" / "synthea-bundles").glob("*.json"))


def test_templates_and_required_keys() -> None:
    assert set(PREFETCH_TEMPLATES) == {"patient", "conditions", "vitals", "allergies", "medications", "encounter"}
    assert REQUIRED_KEYS == ("patient", "vitals")


def test_render_with_and_without_encounter() -> None:
    rendered = render_prefetch({"patientId": "123"})
    assert rendered["patient"] == "Patient/123"
    assert rendered["vitals"] == "Observation?patient=123&category=vital-signs&_sort=-date"
    assert rendered["medications"] == "MedicationRequest?patient=123&status=active&_include=MedicationRequest:medication"
    assert "encounter" not in rendered
    assert render_prefetch({"patientId": "123", "encounterId": "e9"})["encounter"] == "Encounter/e9"


@pytest.mark.parametrize(
    ("template", "context", "expected"),
    [
        ("Patient/{{context.patientId}}", {"patientId": "a-1"}, "Patient/a-1"),
        ("Patient/{{ context.patientId }}", {"patientId": "a-1"}, "Patient/a-1"),
        ("Practitioner/{{userPractitionerId}}", {"userId": "Practitioner/77"}, "Practitioner/77"),
        ("Practitioner/{{userPractitionerId}}", {"userId": "PractitionerRole/77"}, None),
        ("Condition?patient={{context.patientId}}", {"patientId": "1&_include=*"}, "Condition?patient=1%26_include%3D%2A"),
        ("Encounter/{{context.encounterId}}", {"patientId": "1"}, None),
        ("Patient/{{context.patientId}}", {"patientId": None}, None),
    ],
)
def test_render_template(template: str, context: dict, expected: str | None) -> None:
    assert render_template(template, context) == expected


def _bundle_and_patient(path):
    bundle = json.loads(path.read_text())
    patient_id = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    return bundle, patient_id


def test_prefetch_from_synthea_bundle_gives_every_key() -> None:
    bundle, pid = _bundle_and_patient(SYNTHEA[1])
    encounter_id = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter")
    prefetch = prefetch_from_resources(bundle, {"patientId": pid, "encounterId": encounter_id})
    assert set(prefetch) == set(PREFETCH_TEMPLATES)
    assert prefetch["patient"]["id"] == pid
    assert prefetch["encounter"]["id"] == encounter_id
    raw = [e["resource"] for e in bundle["entry"]]
    for key, rtype in [("conditions", "Condition"), ("allergies", "AllergyIntolerance")]:
        assert prefetch[key]["type"] == "searchset"
        assert prefetch[key]["total"] == sum(r["resourceType"] == rtype for r in raw)
    vitals = [e["resource"] for e in prefetch["vitals"]["entry"]]
    expected = [r for r in raw if r["resourceType"] == "Observation"
                and any(c["code"] == "vital-signs" for cat in r.get("category", []) for c in cat["coding"])]
    assert len(vitals) == len(expected) > 0
    times = [datetime.fromisoformat(v["effectiveDateTime"]) for v in vitals]
    assert times == sorted(times, reverse=True)
    # references are resolved from urn:uuid to Type/id, as a server stores them
    assert all(v["subject"]["reference"] == f"Patient/{pid}" for v in vitals)
    meds = [e["resource"] for e in prefetch["medications"]["entry"]]
    assert all(m["status"] == "active" for m in meds)
    assert len(meds) == sum(r["resourceType"] == "MedicationRequest" and r["status"] == "active" for r in raw)


def test_unknown_read_is_null() -> None:
    bundle, pid = _bundle_and_patient(SYNTHEA[0])
    prefetch = prefetch_from_resources(bundle, {"patientId": pid, "encounterId": "nope"})
    assert prefetch["encounter"] is None


def test_resolve_references_uses_fullurl_not_id() -> None:
    bundle = json.loads((DATA / "fhir" / "uscore-bundles" / "uscore_bundle_patient_85.json").read_text())
    resources = resolve_bundle_references(bundle)
    obs = next(r for r in resources if r["resourceType"] == "Observation")
    assert obs["subject"]["reference"] == "Patient/85"
    original = next(e["resource"] for e in bundle["entry"] if e["resource"].get("id") == obs["id"])
    assert original["subject"]["reference"].startswith("urn:uuid:")  # the input is not modified
