"""The CDS Hooks wire models and the no-null/no-empty serializer."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_hooks.config import SettingsError, load_settings
from cds_hooks.schemas import (
    Card,
    DiscoveryResponse,
    HookRequest,
    HookResponse,
    Link,
    PatientViewContext,
    Source,
    ValidationError,
    prune_empty,
    to_wire,
    validation_summary,
)
from tests.support.cds_app import CDS_EXAMPLES, load


def _has_empty(value, top=True) -> bool:
    if isinstance(value, dict):
        return any(
            (v is None or v == "" or v == [] or v == {}) and not (top and k in ("cards", "services"))
            or _has_empty(v, top=False)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return any(v is None or v == "" or v == [] or v == {} or _has_empty(v, top=False) for v in value)
    return False


def test_prune_empty_drops_null_and_empty_at_every_depth_but_keeps_false_and_zero():
    data = {"a": None, "b": "", "c": [], "d": {}, "e": {"f": {"g": None}}, "h": [None, "", {"i": []}],
            "j": False, "k": 0, "l": [0, "x"], "cards": []}
    assert prune_empty(data, keep=frozenset({"cards"})) == {"j": False, "k": 0, "l": [0, "x"], "cards": []}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=3), json_values, max_size=4))
def test_prune_empty_property(data):
    out = prune_empty(data)
    assert not _has_empty(out, top=False)
    # idempotent
    assert prune_empty(out) == out


def test_empty_response_keeps_cards_array():
    assert to_wire(HookResponse()) == {"cards": []}
    assert to_wire(DiscoveryResponse(services=[])) == {"services": []}


def test_spec_discovery_and_response_examples_round_trip():
    discovery = load(CDS_EXAMPLES / "00_discovery-example.json")
    assert to_wire(DiscoveryResponse.model_validate(discovery)) == discovery
    response = load(CDS_EXAMPLES / "16_cds-response-example.json")
    wire = to_wire(HookResponse.model_validate(response))
    assert wire["cards"][0] == response["cards"][0]
    # A card without uuid gets one: the feedback endpoint needs it.
    assert wire["cards"][1]["uuid"] and not _has_empty(wire)


def test_spec_patient_view_request_validates_and_hides_the_token():
    body = load(CDS_EXAMPLES / "01_patient-view-request-example.json")
    request = HookRequest.model_validate(body)
    assert request.bearer_token == "some-opaque-fhir-access-token"
    assert "some-opaque" not in repr(request) and "some-opaque" not in str(request)
    context = PatientViewContext.model_validate(request.context)
    assert (context.patientId, context.encounterId) == ("1288992", "89284")


@pytest.mark.parametrize(
    "change, field",
    [
        ({"hook": None}, "hook"),
        ({"hookInstance": ""}, "hookInstance"),
        ({"context": "x"}, "context"),
        ({"fhirServer": "ftp://x"}, "fhirServer"),
        ({"fhirServer": None}, "fhirServer is required"),
        ({"fhirAuthorization": {"access_token": "SECRET-TOKEN", "token_type": "MAC"}}, "fhirAuthorization.token_type"),
    ],
)
def test_invalid_request_names_the_field_not_the_value(change, field):
    body = load(CDS_EXAMPLES / "01_patient-view-request-example.json")
    body.update(change)
    if body.get("fhirServer") is None:
        body.pop("fhirServer")
    with pytest.raises(ValidationError) as info:
        HookRequest.model_validate(body)
    summary = validation_summary(info.value)
    assert field in summary
    assert "SECRET-TOKEN" not in summary and "ftp://x" not in summary


@pytest.mark.parametrize(
    "context",
    [
        {"patientId": "1"},  # userId required
        {"userId": "example", "patientId": "1"},  # not Type/id
        {"userId": "Practitioner/1", "patientId": "../../Patient"},  # not a FHIR id
        {"userId": "Practitioner/1", "patientId": "1", "encounterId": "a b"},
    ],
)
def test_patient_view_context_rejects(context):
    with pytest.raises(ValidationError):
        PatientViewContext.model_validate(context)


def test_card_rules():
    source = Source(label="x")
    with pytest.raises(ValidationError):
        Card(summary="x" * 140, indicator="info", source=source)  # spec: < 140
    Card(summary="x" * 139, indicator="info", source=source)
    with pytest.raises(ValidationError):
        Card(summary="s", indicator="urgent", source=source)
    with pytest.raises(ValidationError):  # suggestions need selectionBehavior
        Card(summary="s", indicator="info", source=source, suggestions=[{"label": "do"}])
    with pytest.raises(ValidationError):  # override reasons need a display
        Card(summary="s", indicator="info", source=source,
             overrideReasons=[{"system": "urn:x", "code": "c"}])
    with pytest.raises(ValidationError):
        Link(label="l", url="https://x", type="absolute", appContext="{}")
    assert Card(summary="s", indicator="info", source=source).uuid != Card(summary="s", indicator="info", source=source).uuid


def test_settings_from_environment():
    values = load_settings({"TRIAGE_MAX_BODY_BYTES": "1024", "TRIAGE_INSECURE_NO_AUTH": "yes"})
    assert values["TRIAGE_MAX_BODY_BYTES"] == 1024 and values["TRIAGE_INSECURE_NO_AUTH"] is True
    assert load_settings({})["TRIAGE_MAX_BODY_BYTES"] == 5 * 1024 * 1024
    with pytest.raises(SettingsError, match="TRIAGE_FHIR_TIMEOUT_S"):
        load_settings({"TRIAGE_FHIR_TIMEOUT_S": "soon"})
    with pytest.raises(SettingsError, match="TRIAGE_INSECURE_NO_AUTH"):
        load_settings({"TRIAGE_INSECURE_NO_AUTH": "maybe"})


def test_wire_is_json_serialisable():
    card = Card(summary="s", indicator="warning", source=Source(label="x"))
    assert json.loads(json.dumps(to_wire(HookResponse(cards=[card]))))["cards"][0]["indicator"] == "warning"
