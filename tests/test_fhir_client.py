"""The FHIR client and prefetch resolver against a real FHIR server on loopback."""
from __future__ import annotations

import json
import logging
import socket

import pytest

from fhir_adapter.client import (
    FhirClient,
    FhirError,
    FhirUnavailable,
    OperationOutcomeError,
    PrefetchUnavailable,
    resolve_prefetch,
)
from fhir_adapter.prefetch import prefetch_from_resources
from tests.conftest import DATA
from tests.support.fhir_server import serve_fhir

TOKEN = "s3cr3t-access-token-xyz"
BUNDLE_PATH = DATA / "fhir" / "synthea-bundles" / "Bernie_Smitham_7a05bc93-cf1a-4929-9aca-6178ba9abcb7.json"
PID = "7a05bc93-cf1a-4929-9aca-6178ba9abcb7"
TIMEOUT = (1.0, 3.0)


@pytest.fixture(scope="module")
def bundle() -> dict:
    return json.loads(BUNDLE_PATH.read_text())


@pytest.fixture()
def server(bundle):
    with serve_fhir(bundle, page_size=7, require_token=TOKEN) as url:
        yield url


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return port


def test_search_follows_next_links(server, bundle) -> None:
    expected = prefetch_from_resources(bundle, {"patientId": PID})["vitals"]
    with FhirClient(server, TOKEN, timeout=TIMEOUT) as client:
        result = client.search(f"Observation?patient={PID}&category=vital-signs&_sort=-date")
    pages = [r for r in server.requests if r.path == "/Observation"]
    assert len(pages) == -(-expected["total"] // 7) > 1
    assert all(r.authorized for r in server.requests)
    ids = [e["resource"]["id"] for e in result["entry"]]
    assert ids == [e["resource"]["id"] for e in expected["entry"]]


def test_max_pages_bounds_paging(server) -> None:
    with FhirClient(server, TOKEN, timeout=TIMEOUT) as client:
        result = client.search(f"Observation?patient={PID}", max_pages=2)
    assert len(result["entry"]) == 14


def test_missing_keys_fetched_and_null_not_fetched(server, bundle) -> None:
    local = prefetch_from_resources(bundle, {"patientId": PID})
    sent = {"patient": local["patient"], "allergies": None}
    resolved = resolve_prefetch(sent, {"patientId": PID}, server, TOKEN, timeout=TIMEOUT)
    assert sorted(resolved.fetched) == ["conditions", "medications", "vitals"]
    assert resolved.missing == []
    assert resolved.data["allergies"] is None
    assert resolved.data["patient"] is local["patient"]
    assert "encounter" not in resolved.data  # no encounterId in the context
    paths = {r.path for r in server.requests}
    assert "/AllergyIntolerance" not in paths and f"/Patient/{PID}" not in paths
    for key in ("conditions", "vitals", "medications"):
        assert [e["resource"]["id"] for e in resolved.data[key]["entry"]] == \
               [e["resource"]["id"] for e in local[key]["entry"]]


def test_no_prefetch_fetches_everything_including_encounter(server, bundle) -> None:
    enc = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter")
    resolved = resolve_prefetch(None, {"patientId": PID, "encounterId": enc}, server, TOKEN, timeout=TIMEOUT)
    assert sorted(resolved.fetched) == sorted(["patient", "conditions", "vitals", "allergies", "medications", "encounter"])
    assert resolved.data["encounter"]["id"] == enc


def test_optional_key_that_fails_is_missing(server) -> None:
    resolved = resolve_prefetch(None, {"patientId": PID, "encounterId": "unknown"}, server, TOKEN, timeout=TIMEOUT)
    assert resolved.missing == ["encounter"]
    assert "encounter" not in resolved.data and resolved.data["patient"]["id"] == PID


def test_unreachable_server_raises_for_required_keys() -> None:
    with pytest.raises(PrefetchUnavailable) as err:
        resolve_prefetch({}, {"patientId": PID}, f"http://127.0.0.1:{_closed_port()}", TOKEN, timeout=TIMEOUT)
    assert set(err.value.keys) == {"patient", "vitals"}


def test_no_fhir_server_raises_only_when_required_missing(bundle) -> None:
    local = prefetch_from_resources(bundle, {"patientId": PID})
    resolved = resolve_prefetch({"patient": local["patient"], "vitals": local["vitals"]}, {"patientId": PID},
                                None, None, timeout=TIMEOUT)
    assert sorted(resolved.missing) == ["allergies", "conditions", "medications"]
    with pytest.raises(PrefetchUnavailable) as err:
        resolve_prefetch({"patient": local["patient"]}, {"patientId": PID}, None, None, timeout=TIMEOUT)
    assert err.value.keys == ["vitals"]


def test_required_null_is_data_not_missing() -> None:
    resolved = resolve_prefetch({"patient": {"resourceType": "Patient", "id": "x"}, "vitals": None},
                                {"patientId": "x"}, None, None, timeout=TIMEOUT)
    assert resolved.data["vitals"] is None and "vitals" not in resolved.missing


def test_wrong_token_401_and_404_raise_fhir_error(server) -> None:
    with FhirClient(server, "wrong", timeout=TIMEOUT) as client, pytest.raises(FhirError) as err:
        client.read(f"Patient/{PID}")
    assert err.value.status == 401 and "wrong" not in str(err.value)
    with FhirClient(server, TOKEN, timeout=TIMEOUT) as client, pytest.raises(FhirError) as err:
        client.read("Patient/nope")
    assert err.value.status == 404 and "error:not-found" in str(err.value)


def test_operation_outcome_body_raises(server) -> None:
    outcome = {"resourceType": "OperationOutcome", "id": "oo", "issue": [{"severity": "error", "code": "processing"}]}
    with serve_fhir([outcome]) as url, FhirClient(url, timeout=TIMEOUT) as client:
        with pytest.raises(OperationOutcomeError) as err:
            client.read("OperationOutcome/oo")
    assert isinstance(err.value, FhirError) and "error:processing" in str(err.value)


def test_ehr_operation_outcome_for_required_key_is_412() -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    with pytest.raises(PrefetchUnavailable):
        resolve_prefetch({"patient": {"resourceType": "Patient", "id": "x"}, "vitals": outcome},
                         {"patientId": "x"}, None, None, timeout=TIMEOUT)


def test_unavailable_is_distinct() -> None:
    with FhirClient(f"http://127.0.0.1:{_closed_port()}", TOKEN, timeout=TIMEOUT) as client:
        with pytest.raises(FhirUnavailable) as err:
            client.read("Patient/1")
    assert TOKEN not in str(err.value)


def test_next_link_to_another_host_is_refused(bundle) -> None:
    page = {"resourceType": "Bundle", "id": "p", "type": "searchset",
            "link": [{"relation": "next", "url": "http://evil.example/steal"}]}
    with serve_fhir([page]) as url, FhirClient(url, TOKEN, timeout=TIMEOUT) as client:
        with pytest.raises(FhirError):
            client.search("Bundle/p")
    assert TOKEN not in str(client)


def test_token_never_logged_or_in_errors(server, caplog: pytest.LogCaptureFixture) -> None:
    messages: list[str] = []
    with caplog.at_level(logging.DEBUG):
        resolve_prefetch(None, {"patientId": PID}, server, TOKEN, timeout=TIMEOUT)
        for base, token in ((server, "wrong-" + TOKEN), (f"http://127.0.0.1:{_closed_port()}", TOKEN)):
            with pytest.raises(PrefetchUnavailable) as err:
                resolve_prefetch(None, {"patientId": PID}, base, token, timeout=TIMEOUT)
            messages.append(str(err.value))
    assert caplog.records  # something was logged (warnings for the failures)
    assert TOKEN not in caplog.text and all(TOKEN not in m for m in messages)
    assert PID not in caplog.text  # request URLs carry the patient id: not logged either


def test_bad_base_url_is_a_clear_error() -> None:
    with pytest.raises(PrefetchUnavailable) as err:
        resolve_prefetch(None, {"patientId": "1"}, "ftp://x", TOKEN, timeout=TIMEOUT)
    assert "http" in str(err.value)
