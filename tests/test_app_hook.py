"""POST /cds-services/triage end to end: prefetch or loopback FHIR fetch, invalid entries, 412."""
from __future__ import annotations

import json
import logging
import socket

import pytest

from cds_hooks.store import get_store
from tests.support.cds_app import CDS_EXAMPLES, load, make_app, patient_id, patient_view, post_hook, uscore_paths
from tests.support.fhir_server import serve_fhir


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("hook"))


@pytest.fixture()
def client(app):
    return app.test_client()


def comparable(cards: list[dict]) -> list[tuple]:
    return [(c["summary"], c["indicator"], c["detail"], c["source"], c["overrideReasons"]) for c in cards]


def uscore(name: str) -> dict:
    return load(next(p for p in uscore_paths() if p.name == name))


def test_uscore_spo2_on_oxygen_scores_and_logs_the_card(app, client):
    bundle = uscore("uscore_bundle_patient_85.json")
    body = patient_view(bundle)
    response = post_hook(client, body)
    assert response.status_code == 200, response.get_json()
    cards = response.get_json()["cards"]
    assert len(cards) == 1
    card = cards[0]
    # SpO2 77 % (scale 1: 3 points) on 6 L/min oxygen (2 points); other parameters missing.
    assert card["summary"].startswith("ESI 1 (resuscitation)")  # SpO2 < 85 %
    assert card["summary"].endswith("NEWS2 ≥5 (medium, 5 missing)")
    assert card["indicator"] == "critical"
    assert "| SpO2 Scale 1 | 77 % |" in card["detail"]
    assert "| Air or oxygen? | oxygen (inhaled oxygen 6 L/min) |" in card["detail"]
    # The card is in the database, keyed by its uuid, with rule inputs and no PHI.
    row = get_store(app).get_card(card["uuid"])
    assert row is not None
    assert row["service_id"] == "triage" and row["hook_instance"] == body["hookInstance"]
    assert row["acuity"] == 1 and row["indicator"] == "critical" and row["kind"] == "rules"
    assert row["rule_inputs"]["total"] == 5
    assert row["patient_pseudonym"] and row["patient_pseudonym"] != "85"
    stored = json.dumps(row, default=str)
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    for name in patient["name"]:
        for part in name.get("given", []) + [name.get("family", "")]:
            if len(part) > 2:
                assert part not in stored
    assert patient["birthDate"] not in stored


def test_uscore_invalid_observation_skipped_and_counted(client):
    response = post_hook(client, patient_view(uscore("uscore_bundle_patient_355.json")))
    assert response.status_code == 200
    card = response.get_json()["cards"][0]
    assert "1 resource could not be read and was skipped" in card["detail"]
    assert card["summary"].endswith("NEWS2 ≥0 (low, 3 missing)")
    assert card["indicator"] == "warning"  # ESI 3: no complaint, vitals do not indicate 1-2


def test_same_cards_when_fetched_from_loopback_fhir_server(client):
    bundle = uscore("uscore_bundle_patient_85.json")
    with_prefetch = post_hook(client, patient_view(bundle)).get_json()["cards"]
    with serve_fhir(bundle, page_size=3, require_token="token-123") as url:
        body = patient_view(bundle, prefetch=False, fhir_server=str(url), token="token-123")
        response = post_hook(client, body)
        assert response.status_code == 200, response.get_json()
        fetched = response.get_json()["cards"]
        assert len(url.requests) >= 5  # every template, vitals paged (page_size 3)
    assert comparable(fetched) == comparable(with_prefetch)
    assert fetched[0]["uuid"] != with_prefetch[0]["uuid"]


def test_partial_prefetch_is_completed_from_the_server(client):
    bundle = uscore("uscore_bundle_patient_355.json")
    full = post_hook(client, patient_view(bundle)).get_json()["cards"]
    body = patient_view(bundle)
    vitals = body["prefetch"].pop("vitals")
    assert vitals["entry"]
    with serve_fhir(bundle, require_token="t") as url:
        served = patient_view(bundle, prefetch=False, fhir_server=str(url), token="t")
        body["fhirServer"], body["fhirAuthorization"] = served["fhirServer"], served["fhirAuthorization"]
        response = post_hook(client, body)
        assert response.status_code == 200
        assert [r.path for r in url.requests] == ["/Observation"]  # only what was not prefetched
        assert all(r.authorized for r in url.requests)
    assert comparable(response.get_json()["cards"]) == comparable(full)


def test_null_prefetch_means_no_data_not_missing(client):
    bundle = uscore("uscore_bundle_patient_85.json")
    body = patient_view(bundle)
    body["prefetch"]["vitals"] = None  # the EHR has no vitals: nothing to fetch, no 412
    response = post_hook(client, body)
    assert response.status_code == 200
    card = response.get_json()["cards"][0]
    assert card["indicator"] == "warning" and "no vital signs recorded" in card["summary"]
    assert "NEWS2 could not be scored" in card["detail"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_fhir_server_gives_412(client, caplog):
    bundle = uscore("uscore_bundle_patient_85.json")
    body = patient_view(bundle, prefetch=False, fhir_server=f"http://127.0.0.1:{_closed_port()}",
                        token="secret-fhir-token-xyz")
    with caplog.at_level(logging.DEBUG):
        response = post_hook(client, body)
    assert response.status_code == 412
    payload = response.get_json()
    assert payload["error"] == "precondition_failed" and "patient" in payload["message"]
    assert "secret-fhir-token-xyz" not in caplog.text
    assert "secret-fhir-token-xyz" not in response.get_data(as_text=True)


def test_required_prefetch_missing_without_fhir_server_gives_412(client):
    body = patient_view(uscore("uscore_bundle_patient_85.json"))
    del body["prefetch"]["vitals"]
    response = post_hook(client, body)
    assert response.status_code == 412 and "vitals" in response.get_json()["message"]


@pytest.mark.parametrize("patient", [None, {"resourceType": "Patient", "id": "someone-else"},
                                     {"resourceType": "Patient", "id": "85", "birthDate": "not a date"}])
def test_no_usable_patient_gives_412(client, patient):
    body = patient_view(uscore("uscore_bundle_patient_85.json"))
    body["prefetch"]["patient"] = patient  # null: the EHR has no such patient
    response = post_hook(client, body)
    assert response.status_code == 412 and response.get_json()["error"] == "precondition_failed"


def test_operation_outcome_prefetch_is_missing_data(client):
    body = patient_view(uscore("uscore_bundle_patient_85.json"))
    body["prefetch"]["vitals"] = {"resourceType": "OperationOutcome",
                                  "issue": [{"severity": "error", "code": "timeout"}]}
    assert post_hook(client, body).status_code == 412


def test_spec_example_request(client):
    """The spec's example: schema-valid; its FHIR server cannot be reached from here -> 412;
    the same request against a loopback server holding its Patient -> 200 with the no-vitals card."""
    body = load(CDS_EXAMPLES / "01_patient-view-request-example.json")
    unreachable = dict(body, fhirServer=f"http://127.0.0.1:{_closed_port()}")
    response = post_hook(client, unreachable)
    assert response.status_code == 412
    patient = body["prefetch"]["patientToGreet"]
    with serve_fhir([patient]) as url:
        response = post_hook(client, dict(body, fhirServer=str(url)))
    assert response.status_code == 200, response.get_json()
    card = response.get_json()["cards"][0]
    assert card["indicator"] == "warning" and "no vital signs recorded" in card["summary"]


def test_encounter_in_context_is_prefetched(client):
    bundle = uscore("uscore_bundle_patient_85.json")
    encounter = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter")
    body = patient_view(bundle, encounter_id=encounter["id"])
    assert body["prefetch"]["encounter"]["id"] == encounter["id"]
    assert post_hook(client, body).status_code == 200


def test_request_log_has_no_phi_or_token(client, caplog):
    bundle = uscore("uscore_bundle_patient_85.json")
    with caplog.at_level(logging.DEBUG):
        with serve_fhir(bundle, require_token="tok-abcdef-123") as url:
            post_hook(client, patient_view(bundle, prefetch=False, fhir_server=str(url), token="tok-abcdef-123"))
    assert "POST /cds-services/<service_id> 200" in caplog.text
    assert "tok-abcdef-123" not in caplog.text
    pid = patient_id(bundle)
    assert f"Patient/{pid}" not in caplog.text
