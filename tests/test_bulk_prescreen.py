"""`triage prescreen`: a day's Appointments (FHIR search or file) -> one appointment-book call per
booked patient to the running service, which fetches the data from the EHR's FHIR server and
queues the report, so the first view of the chart finds it. Real HTTP both ways (the service on
loopback, a loopback FHIR server standing for the EHR's), the tiny model in the embedded worker."""
from __future__ import annotations

import json
import threading
import time

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from werkzeug.serving import make_server

from cds_hooks.ai_cards import PENDING_SUMMARY
from cds_hooks.bulk_prescreen import client_jwt, patients_of
from cds_hooks.cli import cli
from fhir_adapter.prefetch import resolve_bundle_references
from tests.support.cds_app import load, make_app, patient_id, patient_view, post_hook, synthea_paths
from tests.support.fhir_server import serve_fhir
from tests.test_reports import TINY_BUDGET, wait_for_cache

DAY = "2026-12-02"


def appointment(n: int, pid: str, status: str = "booked") -> dict:
    return {"resourceType": "Appointment", "id": f"appt-{n}", "status": status,
            "start": f"{DAY}T0{8 + n}:00:00Z", "end": f"{DAY}T0{8 + n}:30:00Z",
            "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"},
                            {"actor": {"reference": "Practitioner/dr-1"}, "status": "accepted"}]}


@pytest.fixture(scope="module")
def charts():
    return [load(p) for p in synthea_paths()[4:7]]


@pytest.fixture(scope="module")
def fhir(charts):
    a, b, c = (patient_id(x) for x in charts)
    resources = [r for chart in charts[:2] for r in resolve_bundle_references(chart)]
    resources += [appointment(1, a), appointment(2, a), appointment(3, b), appointment(4, c, "cancelled")]
    with serve_fhir(resources) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model_dir):
    app = make_app(tmp_path_factory.mktemp("prescreen"), TRIAGE_MODEL_PATH=str(tiny_model_dir), **TINY_BUDGET)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)
    app.extensions["triage_runtime"].reports.close()


def test_a_days_appointments_are_prescreened_before_the_first_view(service, fhir, charts):
    app, url = service
    result = CliRunner().invoke(cli, ["prescreen", "--service", url, "--fhir-server", fhir, "--date", DAY])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "prescreen: 4 appointments, 2 patients, 2 submitted, 0 failed"
    for chart in charts[:2]:
        assert patient_id(chart) not in result.output
    assert any(r.path.startswith("/Appointment") for r in fhir.requests)
    assert any(r.path.startswith("/Patient/") for r in fhir.requests)  # the service fetched the data
    client = app.test_client()
    for chart in charts[:2]:
        wait_for_cache(app, patient_view(chart))  # queued by the CLI, no view yet
        cards = post_hook(client, patient_view(chart)).get_json()["cards"]
        assert cards[-1]["summary"] != PENDING_SUMMARY  # the first view: the AI card (or none if rejected)


def test_appointments_from_a_file(service, fhir, charts, tmp_path):
    _, url = service
    ndjson = tmp_path / "appointments.ndjson"
    ndjson.write_text("\n".join(json.dumps(appointment(n, patient_id(charts[0]))) for n in (1, 2)) + "\n")
    result = CliRunner().invoke(cli, ["prescreen", "--service", url, "--fhir-server", fhir,
                                      "--appointments", str(ndjson)])
    assert result.exit_code == 0 and "1 patients, 1 submitted, 0 failed" in result.output


@pytest.mark.parametrize("args, text", [
    (["--fhir-server", "http://127.0.0.1:9/fhir"], "cannot read the appointment list"),
    (["--fhir-server", "ftp://x", "--date", DAY], "cannot read the appointment list"),
    (["--fhir-server", "http://127.0.0.1:9/fhir", "--date", "2-12-2026"], "--date"),
    (["--fhir-server", "http://127.0.0.1:9/fhir", "--jwt-key", __file__], "--jwt-iss"),
])
def test_bad_input_is_one_line(args, text):
    result = CliRunner().invoke(cli, ["prescreen", "--service", "http://127.0.0.1:9", *args])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error") and text in lines[0], result.output


def test_unreachable_service_is_counted_not_a_traceback(fhir):
    result = CliRunner().invoke(cli, ["prescreen", "--service", "http://127.0.0.1:9", "--fhir-server", fhir,
                                      "--date", DAY])
    assert result.exit_code == 1
    assert result.output.strip() == ("prescreen: 4 appointments, 2 patients, 0 submitted, 2 failed "
                                     "(2 x unreachable (ConnectionError))")


def test_patients_of_skips_cancelled_and_non_patient_actors():
    appts = [appointment(1, "p1"), appointment(2, "p1"), appointment(3, "p2", "noshow"),
             {"resourceType": "Appointment", "participant": [{"actor": {"reference": "Location/1"}}]}]
    assert {k: len(v) for k, v in patients_of(appts).items()} == {"p1": 2}


def test_client_jwt_is_a_cds_hooks_token_for_the_endpoint():
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    aud = "https://triage.example.org/cds-services/triage-prescreen"
    token = client_jwt(pem, "https://clinic.example.org", "k1", aud)
    assert jwt.get_unverified_header(token) == {"alg": "ES384", "kid": "k1", "typ": "JWT"}
    claims = jwt.decode(token, key.public_key(), algorithms=["ES384"], audience=aud)
    assert claims["iss"] == "https://clinic.example.org" and claims["exp"] - claims["iat"] == 300
    assert claims["jti"] and abs(claims["iat"] - time.time()) < 5
