"""Helpers of the CDS Hooks service tests: an app on a temp instance folder, and patient-view
requests built from the shared FHIR test data."""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from flask import Flask

from conftest import DATA
from fhir_adapter.prefetch import prefetch_from_resources

SYNTHEA = DATA / "fhir" / "synthea-bundles"
USCORE = DATA / "fhir" / "uscore-bundles"
CDS_EXAMPLES = DATA / "cds-hooks"


def make_app(instance: Path, **overrides: Any) -> Flask:
    from cds_hooks.app import create_app

    config: dict[str, Any] = {
        "TESTING": True,
        "TRIAGE_INSECURE_NO_AUTH": True,
        "TRIAGE_INSTANCE_DIR": str(instance),
        "TRIAGE_DATABASE_URL": f"sqlite:///{instance / 'triage.sqlite'}",
        "TRIAGE_FHIR_TIMEOUT_S": 2.0,
    }
    config.update(overrides)
    return create_app(config)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def synthea_paths() -> list[Path]:
    return sorted(SYNTHEA.glob("*.json"))


def uscore_paths() -> list[Path]:
    return sorted(USCORE.glob("*.json"))


def patient_id(bundle: dict[str, Any]) -> str:
    for entry in bundle["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "Patient":
            return res.get("id") or entry["fullUrl"].removeprefix("urn:uuid:")
    raise AssertionError("bundle has no Patient")


def patient_view(
    bundle: dict[str, Any] | None = None,
    *,
    pid: str | None = None,
    prefetch: bool = True,
    fhir_server: str | None = None,
    token: str | None = None,
    encounter_id: str | None = None,
) -> dict[str, Any]:
    """A patient-view request; with `prefetch`, every template answered from `bundle` as an EHR would."""
    pid = pid or patient_id(bundle)
    context: dict[str, Any] = {"userId": "Practitioner/example", "patientId": pid}
    if encounter_id:
        context["encounterId"] = encounter_id
    body: dict[str, Any] = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "context": context}
    if prefetch:
        body["prefetch"] = prefetch_from_resources(bundle, context)
    if fhir_server:
        body["fhirServer"] = fhir_server
    if token:
        body["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "triage-cds",
        }
    return body


def post_hook(client: Any, body: Any, service: str = "triage") -> Any:
    return client.post(f"/cds-services/{service}", json=body)
