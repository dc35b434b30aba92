"""Discovery: GET /cds-services lists the triage patient-view service with its prefetch templates."""
from __future__ import annotations

import pytest

from cds_hooks.schemas import PatientViewContext
from cds_hooks.services import REGISTRY, Registry, Service
from tests.support.cds_app import make_app
from tests.test_app_schemas import _has_empty


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("discovery")).test_client()


def test_discovery_lists_triage(client):
    response = client.get("/cds-services")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    services = response.get_json()["services"]
    triage = next(s for s in services if s["id"] == "triage")
    assert triage["hook"] == "patient-view"
    assert triage["title"] and triage["description"] and triage["usageRequirements"]
    prefetch = triage["prefetch"]
    assert set(prefetch) == {"patient", "conditions", "vitals", "allergies", "medications", "encounter"}
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert prefetch["encounter"] == "Encounter/{{context.encounterId}}"
    assert "category=vital-signs" in prefetch["vitals"] and "_sort=-date" in prefetch["vitals"]
    assert "status=active" in prefetch["medications"]
    assert not _has_empty(response.get_json())


def test_discovery_sends_cors_headers_for_browser_clients(client):
    preflight = client.options(
        "/cds-services/triage",
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert preflight.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")
    get = client.get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert get.headers["Access-Control-Allow-Origin"]


def test_adding_a_service_is_one_registry_entry(tmp_path):
    registry = Registry()
    for service in REGISTRY:
        registry.register(service)
    registry.register(
        Service(
            id="appointment-check",
            hook="appointment-book",
            title="Example",
            description="A second service, registered in one entry.",
            handler="cds_hooks.hook:patient_view",
            context_model=PatientViewContext,
        )
    )
    client = make_app(tmp_path, TRIAGE_REGISTRY=registry).test_client()
    services = client.get("/cds-services").get_json()["services"]
    assert [s["id"] for s in services] == [s.id for s in REGISTRY] + ["appointment-check"]
    assert "prefetch" not in services[-1]  # no empty object on the wire
    # The hook check follows the registry entry.
    response = client.post("/cds-services/appointment-check", json={
        "hook": "patient-view", "hookInstance": "x", "context": {"userId": "Practitioner/1", "patientId": "1"}})
    assert response.status_code == 400 and response.get_json()["error"] == "wrong_hook"
    with pytest.raises(ValueError):
        registry.register(REGISTRY.get("triage"))
