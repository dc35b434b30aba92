"""JSON log lines with request ids and no patient data (planted identifiers); the hook audit table."""
from __future__ import annotations

import io
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from cds_hooks import logs
from cds_hooks.audit import AuditEntry, get_audit
from tests.support.cds_app import load, make_app, patient_view, post_hook, uscore_paths

# Planted identifiers: a name, an MRN, an SSN, a phone number, an address, an email, a birth date.
PLANTED = {"name": "Zebulon Quackenbush", "mrn": "MRN-88123457", "ssn": "123-45-6789", "phone": "555-867-5309",
           "street": "1742 Evergreen Terrace", "email": "zebulon.q@example.net", "birth": "1951-07-23"}


def planted_bundle() -> dict:
    bundle = load(uscore_paths()[1])
    for entry in bundle["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "Patient":
            res["name"] = [{"family": "Quackenbush", "given": ["Zebulon"], "text": PLANTED["name"]}]
            res["identifier"] = [{"system": "http://hospital.example.org/mrn", "value": PLANTED["mrn"]},
                                 {"system": "http://hl7.org/fhir/sid/us-ssn", "value": PLANTED["ssn"]}]
            res["telecom"] = [{"system": "phone", "value": PLANTED["phone"]},
                              {"system": "email", "value": PLANTED["email"]}]
            res["address"] = [{"line": [PLANTED["street"]], "city": "Springfield", "postalCode": "49007"}]
            res["birthDate"] = PLANTED["birth"]
    return bundle


@pytest.fixture()
def json_log():
    """The service's own JSON handler on the root logger, writing to a buffer, at DEBUG."""
    buffer = io.StringIO()
    handler = logs.handler(buffer, fmt="json")
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logging.getLogger("cds_hooks").setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        logging.getLogger("cds_hooks").setLevel(logging.INFO)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("logs"))


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def assert_no_planted(text: str) -> None:
    for what, value in PLANTED.items():
        assert value not in text, what
    assert "Quackenbush" not in text and "Zebulon" not in text


def test_every_line_is_json_with_the_request_id_and_no_planted_identifier(app, json_log):
    client = app.test_client()
    body = patient_view(planted_bundle())
    body["prefetch"]["vitals"]["entry"].append(  # an invalid entry: logged as skipped, by path only
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": PLANTED["name"]},
                      "valueQuantity": {"value": PLANTED["phone"]}}})
    response = post_hook(client, body)
    assert response.status_code == 200
    request_id = response.headers["X-Request-ID"]
    # Error paths: invalid context quoting PHI, an unknown service named like a patient, feedback with PHI.
    post_hook(client, {"hook": "patient-view", "hookInstance": "1",
                       "context": {"userId": "Practitioner/1", "patientId": PLANTED["name"]}})
    client.post("/cds-services/" + PLANTED["mrn"], json={})
    client.post("/cds-services/triage/feedback", json={"feedback": [
        {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": datetime.now(UTC).isoformat(),
         "overrideReason": {"userComment": f"{PLANTED['name']} called from {PLANTED['phone']}"}}]})
    records = lines(json_log)
    assert len(records) >= 5
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
    access = [r for r in records if r["logger"] == "cds_hooks.access"]
    assert any(r["request_id"] == request_id and r["route"] == "/cds-services/<service_id>" and r["status"] == 200
               for r in access)
    assert all(r.get("request_id") for r in access)
    assert any("skipped" in r["message"] for r in records)  # the invalid entry was logged...
    assert_no_planted(json_log.getvalue())  # ...and nothing planted was


def test_a_safe_caller_request_id_is_kept_and_an_unsafe_one_replaced(app):
    client = app.test_client()
    ok = client.get("/cds-services", headers={"X-Request-ID": "ehr-trace.42_a"})
    assert ok.headers["X-Request-ID"] == "ehr-trace.42_a"
    replaced = client.get("/cds-services", headers={"X-Request-ID": PLANTED["name"]})
    assert replaced.headers["X-Request-ID"] != "" and "Zebulon" not in replaced.headers["X-Request-ID"]
    assert len(replaced.headers["X-Request-ID"]) == 32


def test_every_hook_call_is_audited_pseudonymously(app):
    client = app.test_client()
    audit = get_audit(app)
    body = patient_view(planted_bundle())
    response = post_hook(client, body, )
    assert response.status_code == 200
    post_hook(client, {"hook": "patient-view", "hookInstance": "h-bad", "context": {}})
    client.post("/cds-services/" + PLANTED["mrn"], json={})
    ok, bad, unknown = audit.rows(3)[::-1]
    assert ok["service_id"] == "triage" and ok["status"] == 200 and ok["outcome"] == "ok"
    assert ok["hook_instance"] == body["hookInstance"] and ok["request_id"] == response.headers["X-Request-ID"]
    assert ok["cards"] == len(response.get_json()["cards"]) and ok["card_kinds"] == "rules"
    assert ok["patient_pseudonym"] and ok["duration_ms"] > 0 and ok["client_iss"] is None  # auth off
    assert bad["status"] == 400 and bad["outcome"] == "invalid_context" and bad["cards"] == 0
    assert unknown["service_id"] == "(unknown)" and unknown["status"] == 404
    assert_no_planted(json.dumps([ok, bad, unknown], default=str))
    # The pseudonym is the card log's, not an identifier of the EHR.
    from cds_hooks.store import get_store

    card = get_store(app).get_card(response.get_json()["cards"][0]["uuid"])
    assert card["patient_pseudonym"] == ok["patient_pseudonym"]


def test_audit_rows_carry_the_client_iss_when_auth_is_on(tmp_path):
    from tests.test_app_auth_on import ISS, token
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    key = ec.generate_private_key(ec.SECP384R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="ES384", use="sig")
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps([{"iss": ISS, "jwks": {"keys": [jwk]}}]))
    app = make_app(tmp_path, TRIAGE_INSECURE_NO_AUTH=False, TRIAGE_CLIENTS_FILE=str(clients),
                   TRIAGE_PUBLIC_BASE_URL="https://triage.example.org", TRIAGE_SCRUB_FREE_TEXT=False)
    client = app.test_client()
    path = "/cds-services/triage"
    assert client.post(path, json=patient_view(load(uscore_paths()[1])),
                       headers={"Authorization": f"Bearer {token(key, path)}"}).status_code == 200
    assert client.post(path, json={}).status_code == 401
    refused, accepted = get_audit(app).rows(2)
    assert accepted["client_iss"] == ISS and accepted["status"] == 200
    assert refused["client_iss"] is None and refused["status"] == 401 and refused["outcome"] == "unauthorized"


def test_retention_deletes_old_rows_only(tmp_path):
    app = make_app(tmp_path, TRIAGE_AUDIT_RETENTION_DAYS=30, TRIAGE_SCRUB_FREE_TEXT=False)
    audit = get_audit(app)
    now = datetime.now(UTC)
    for days in (400, 31, 29, 1):
        audit.record(AuditEntry(at=now - timedelta(days=days), service_id="triage", status=200, outcome="ok"))
    assert audit.purge(now) == 2
    assert sorted(round((now - r["at"]).total_seconds() / 86400) for r in audit.rows()) == [1, 29]
    # A new start purges by itself (rows older than the retention never outlive a restart).
    audit.record(AuditEntry(at=now - timedelta(days=45), service_id="triage", status=200, outcome="ok"))
    again = make_app(tmp_path, TRIAGE_AUDIT_RETENTION_DAYS=30, TRIAGE_SCRUB_FREE_TEXT=False)
    assert len(get_audit(again).rows()) == 2


def test_an_audit_write_failure_does_not_fail_the_call(tmp_path, caplog, monkeypatch):
    app = make_app(tmp_path, TRIAGE_SCRUB_FREE_TEXT=False)

    def broken(entry):
        raise RuntimeError(PLANTED["name"])

    monkeypatch.setattr(get_audit(app), "record", broken)
    with caplog.at_level(logging.ERROR):
        response = post_hook(app.test_client(), patient_view(load(uscore_paths()[1])))
    assert response.status_code == 200
    assert "audit row not written (RuntimeError)" in caplog.text and "Zebulon" not in caplog.text
