"""Entry-by-entry R4B parsing: invalid entries are skipped and counted, never logged by value."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from fhir_adapter.parse import OperationOutcomeError, parse_bundle, parse_resource
from tests.conftest import DATA

SYNTHEA = sorted((DATA / "fhir" / "synthea-bundles").glob("*.json"))
USCORE = sorted((DATA / "fhir" / "uscore-bundles").glob("*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_bare_resource_and_null() -> None:
    res = parse_resource({"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-02"})
    assert res is not None and res.get_resource_type() == "Patient" and res.gender == "female"
    assert parse_resource(None) is None
    resources, stats = parse_bundle(None)
    assert resources == [] and stats.parsed == 0 and stats.skipped == 0


def test_operation_outcome_is_an_error_not_data() -> None:
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": "not-found", "diagnostics": "Patient Jane Doe not found"}]}
    with pytest.raises(OperationOutcomeError) as err:
        parse_bundle(outcome)
    assert "error:not-found" in str(err.value)
    assert "Jane" not in str(err.value)  # diagnostics may echo PHI


def test_invalid_entry_skipped_counted_and_logged_without_values(caplog: pytest.LogCaptureFixture) -> None:
    bundle = {
        "resourceType": "Bundle", "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "valueQuantity": {"value": "Jane Doe 555-0101"}}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
                          "valueQuantity": {"value": 72}}},
            {"resource": {"resourceType": "NotAType", "id": "1"}},
            {"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "info"}]},
             "search": {"mode": "outcome"}},
            {"resource": "not a resource"},
        ],
    }
    with caplog.at_level(logging.DEBUG):
        resources, stats = parse_bundle(bundle, types=None)
    assert [r.get_resource_type() for r in resources] == ["Observation"]
    assert stats.parsed == 1 and stats.skipped == 3
    assert stats.skipped_by_type == {"Observation": 1, "<unknown>": 2}
    assert "valueQuantity.value" in caplog.text
    assert "Jane" not in caplog.text and "555-0101" not in caplog.text


def test_only_record_types_are_validated() -> None:
    bundle = _load(SYNTHEA[0])
    _, all_stats = parse_bundle(bundle, types=None)
    resources, stats = parse_bundle(bundle)
    assert all_stats.skipped == 0 and all_stats.parsed == len(bundle["entry"])
    assert stats.ignored > 0 and stats.parsed + stats.ignored == len(bundle["entry"])
    assert {r.get_resource_type() for r in resources} <= {
        "Patient", "Condition", "Observation", "AllergyIntolerance", "MedicationRequest", "Medication",
        "Encounter", "DocumentReference", "RelatedPerson", "Practitioner", "PractitionerRole", "Organization"}


@pytest.mark.parametrize("path", SYNTHEA, ids=lambda p: p.name[:20])
def test_every_synthea_bundle_parses(path: Path) -> None:
    bundle = _load(path)
    resources, stats = parse_bundle(bundle, types=None)
    assert stats.skipped == 0
    assert len(resources) == len(bundle["entry"])


def test_uscore_invalid_observation_skipped(caplog: pytest.LogCaptureFixture) -> None:
    bundle = _load(DATA / "fhir" / "uscore-bundles" / "uscore_bundle_patient_355.json")
    with caplog.at_level(logging.WARNING):
        resources, stats = parse_bundle(bundle, types=None)
    assert stats.skipped_by_type == {"Observation": 1}
    assert len(resources) == len(bundle["entry"]) - 1
    assert "effectivePeriod.stop" in caplog.text
    assert "1994-05-19" not in caplog.text


def test_parse_time_of_largest_synthea_bundle() -> None:
    bundle = _load(max(SYNTHEA, key=lambda p: p.stat().st_size))
    parse_bundle(bundle)  # warm the model classes
    start = time.perf_counter()
    resources, _ = parse_bundle(bundle)
    elapsed = time.perf_counter() - start
    assert resources
    # Generous bound for a shared 2-core machine; measured ~30 ms for the record types.
    assert elapsed < 1.0


@pytest.mark.parametrize("rtype", [["Observation"], {"a": 1}, 7, None, True])
def test_resource_type_that_is_not_a_string_is_skipped(rtype) -> None:
    # Issue 15: a list or an object as resourceType raised TypeError (unhashable) -> HTTP 500.
    bundle = {"resourceType": "Bundle", "type": "searchset",
              "entry": [{"resource": {"resourceType": rtype, "id": "x"}},
                        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
                                      "valueQuantity": {"value": 72}}}]}
    resources, stats = parse_bundle(bundle)
    assert [r.get_resource_type() for r in resources] == ["Observation"]
    assert stats.skipped_by_type == {"<unknown>": 1} and stats.ignored == 0
