"""Bad input never yields a 5xx or a traceback; errors are JSON that names fields, not values."""
from __future__ import annotations

import json
import logging

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.cds_app import load, make_app, patient_view, post_hook, uscore_paths

VALID_CONTEXT = {"userId": "Practitioner/example", "patientId": "85"}


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Flask:
    return make_app(tmp_path_factory.mktemp("errors"), TRIAGE_MAX_BODY_BYTES=64 * 1024)


@pytest.fixture()
def client(app):
    return app.test_client()


def assert_json_error(response, status: int, error: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    payload = response.get_json()
    assert payload["error"]
    assert "Traceback" not in response.get_data(as_text=True)
    if error:
        assert payload["error"] == error
    return payload


@pytest.mark.parametrize(
    "data, content_type, status, error",
    [
        (b"{not json", "application/json", 400, "malformed_json"),
        (b"\xff\xfe\x00", "application/json", 400, "malformed_json"),
        (b'{"a": NaN}', "application/json", 400, "malformed_json"),
        (b"[1, 2]", "application/json", 400, "invalid_request"),
        (b'"text"', "application/json", 400, "invalid_request"),
        (b"null", "application/json", 400, "invalid_request"),
        (b"{}", "application/json", 400, "invalid_request"),
        (b"{}", "text/plain", 415, "unsupported_media_type"),
        (b"a=b", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"{}", None, 415, "unsupported_media_type"),
        (b"[" * 100_000, "application/json", 413, None),
        (b"[" * 20_000 + b"]" * 20_000, "application/json", 400, "malformed_json"),
    ],
)
def test_bad_bodies(client, data, content_type, status, error):
    headers = {"Content-Type": content_type} if content_type else {}
    assert_json_error(client.post("/cds-services/triage", data=data, headers=headers), status, error)


def test_fhir_json_content_type_is_accepted(client):
    body = patient_view(load(uscore_paths()[1]))
    response = client.post("/cds-services/triage", data=json.dumps(body),
                           headers={"Content-Type": "application/fhir+json; charset=utf-8"})
    assert response.status_code == 200


def test_unknown_service_is_404(client):
    assert_json_error(client.post("/cds-services/nope", json={}), 404, "unknown_service")
    assert_json_error(client.get("/nothing-here"), 404, "not_found")


def test_wrong_method_is_405_json(client):
    response = client.get("/cds-services/triage")
    assert_json_error(response, 405)
    assert "POST" in response.headers["Allow"]


def test_wrong_hook_is_400(client):
    body = {"hook": "order-sign", "hookInstance": "1", "context": VALID_CONTEXT}
    payload = assert_json_error(post_hook(client, body), 400, "wrong_hook")
    assert "patient-view" in payload["message"]


def test_schema_errors_name_the_field_but_not_the_value(client):
    body = {"hook": "patient-view", "hookInstance": "1",
            "context": {"userId": "Practitioner/example", "patientId": "Jane Doe 1970-01-01"}}
    payload = assert_json_error(post_hook(client, body), 400, "invalid_context")
    assert "context.patientId" in payload["message"]
    assert "Jane" not in payload["message"] and "1970" not in payload["message"]
    body = {"hook": "patient-view", "context": VALID_CONTEXT,
            "fhirServer": "https://ehr.example", "fhirAuthorization": {"access_token": "SECRET-abc"}}
    payload = assert_json_error(post_hook(client, body), 400, "invalid_request")
    assert "hookInstance" in payload["message"] and "fhirAuthorization.token_type" in payload["message"]
    assert "SECRET-abc" not in payload["message"]


@pytest.mark.parametrize("rtype", [["Observation"], {"resourceType": "Observation"}])
def test_prefetch_entry_with_non_string_resource_type_is_skipped(client, rtype):
    # Issue 15: three of 150 malformed requests were HTTP 500 (TypeError, unhashable type).
    body = patient_view(load(uscore_paths()[1]))
    body["prefetch"]["vitals"] = {"resourceType": "Bundle", "type": "searchset",
                                  "entry": [{"resource": {"resourceType": rtype}}]}
    response = post_hook(client, body)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["cards"]


def test_body_over_limit_is_413(client):
    body = patient_view(load(uscore_paths()[0]))
    assert len(json.dumps(body)) > 64 * 1024
    assert_json_error(post_hook(client, body), 413)


def test_unexpected_error_is_500_with_error_id_and_no_detail(tmp_path, caplog, monkeypatch):
    # (A de-identification failure is not unexpected: it fails closed with the rules card, see
    # tests/test_hook_phi.py. A bug after it is.)
    app = make_app(tmp_path)

    def boom(*args, **kwargs):
        raise RuntimeError("patient Jane Doe exploded")

    monkeypatch.setattr("cds_hooks.hook.rules_card", boom)
    body = patient_view(load(uscore_paths()[1]))
    with caplog.at_level(logging.ERROR):
        response = post_hook(app.test_client(), body)
    payload = assert_json_error(response, 500, "internal_error")
    assert payload["errorId"] and "message" not in payload
    assert payload["errorId"] in caplog.text and "RuntimeError" in caplog.text
    assert "Jane" not in caplog.text and "Jane" not in response.get_data(as_text=True)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
# Bodies near a valid request reach deeper layers than random JSON would.
near_valid = st.fixed_dictionaries(
    {"hook": st.sampled_from(["patient-view", "order-sign"]) | json_values,
     "hookInstance": st.text(max_size=70) | json_values,
     "context": st.fixed_dictionaries({"userId": st.sampled_from(["Practitioner/1", "x"]) | json_values,
                                       "patientId": st.sampled_from(["85", "a.b-1"]) | json_values}) | json_values},
    optional={"prefetch": st.dictionaries(st.sampled_from(["patient", "vitals", "conditions", "encounter", "x"]),
                                          json_values | st.fixed_dictionaries({"resourceType": st.sampled_from(
                                              ["Patient", "Bundle", "Observation", "OperationOutcome"])},
                                              optional={"entry": json_values, "id": json_values,
                                                        "birthDate": json_values, "gender": json_values})),
              "fhirServer": st.sampled_from(["http://127.0.0.1:9", "not a url"]) | json_values,
              "fhirAuthorization": json_values},
)
ENDPOINTS = [("POST", "/cds-services/triage"), ("POST", "/cds-services/triage/feedback"),
             ("GET", "/cds-services"), ("POST", "/cds-services/unknown")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(endpoint=st.sampled_from(ENDPOINTS), body=json_values | near_valid)
def test_arbitrary_json_never_5xx(client, endpoint, body):
    method, path = endpoint
    response = client.open(path, method=method, data=json.dumps(body), content_type="application/json")
    assert response.status_code < 500, (path, response.get_json())
    assert response.mimetype == "application/json"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(endpoint=st.sampled_from(ENDPOINTS), data=st.binary(max_size=200),
       content_type=st.sampled_from(["application/json", "text/plain", "application/octet-stream", ""]))
def test_arbitrary_bytes_never_5xx(client, endpoint, data, content_type):
    method, path = endpoint
    response = client.open(path, method=method, data=data, content_type=content_type or None)
    assert response.status_code < 500
    assert response.mimetype == "application/json"


def test_database_down_during_a_hook_is_503_with_retry_after(tmp_path, caplog):
    # Cards are logged before they are returned: no database, no cards, and a documented 503.
    app = make_app(tmp_path, TRIAGE_SCRUB_FREE_TEXT=False)
    from cds_hooks.store import get_store

    get_store(app).engine.dispose()
    (tmp_path / "triage.sqlite").unlink()
    (tmp_path / "triage.sqlite").mkdir()
    with caplog.at_level(logging.ERROR):
        response = post_hook(app.test_client(), patient_view(load(uscore_paths()[1])))
    payload = assert_json_error(response, 503, "unavailable")
    assert response.headers["Retry-After"] == "5" and "errorId" not in payload
    assert "database unavailable (OperationalError)" in caplog.text
