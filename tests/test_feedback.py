"""Feedback endpoint: the specification's examples stored on SQLite and PostgreSQL, idempotency,
validation (400 naming fields, never values), PHI-safe comments, no 5xx for junk."""
from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_hooks import feedback as feedback_mod
from cds_hooks import store as store_mod
from cds_hooks.services import TRIAGE, Registry
from cds_hooks.store import CardLog, Store, get_store
from conftest import DATA
from db_fixtures import database_url, make_database_url  # noqa: F401  (fixture)

EXAMPLES = DATA / "cds-hooks"
ACCEPTED = "18_example-suggestion-accepted.json"
OVERRIDDEN = "19_example-overridden-guidance-without-overridereason.json"
WITH_REASON = "20_example-overridden-guidance-with-overridereason.json"
URL = "/cds-services/triage/feedback"
PHI = "John Smith MRN 4471923"


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())


def make_app(db_url: str, scrubber: Any = None) -> Flask:
    app = Flask("feedback_test")
    app.config["TRIAGE_DATABASE_URL"] = db_url
    registry = Registry()
    registry.register(TRIAGE)
    app.extensions["triage_registry"] = registry
    store_mod.init_app(app)
    if scrubber is not None:
        app.extensions[feedback_mod.SCRUBBER_KEY] = scrubber
    app.register_blueprint(feedback_mod.bp)
    return app


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:  # noqa: F811
    app = make_app(database_url)
    yield app
    get_store(app).dispose()


def log_card(app: Flask, card_uuid: str, service_id: str = "triage") -> None:
    get_store(app).log_cards(
        [
            CardLog(
                uuid=card_uuid,
                service_id=service_id,
                hook_instance=str(uuid.uuid4()),
                kind="rules",
                indicator="warning",
                summary="NEWS2 5: urgent review",
                rule_inputs={"news2": 5},
                acuity=3,
            )
        ]
    )


def all_stored_text(store: Store) -> str:
    """Every value of every row, for 'this never reached the database' assertions."""
    with store.engine.connect() as conn:
        rows = [dict(r) for t in ("cards", "feedback") for r in conn.execute(sa.text(f"SELECT * FROM {t}")).mappings()]
    return json.dumps(rows, default=str)


# --- the specification's examples -----------------------------------------------------------


def test_spec_examples_are_accepted_and_stored(app: Flask) -> None:
    client = app.test_client()
    store = get_store(app)
    log_card(app, example(ACCEPTED)["feedback"][0]["card"])
    log_card(app, example(WITH_REASON)["feedback"][0]["card"])

    r = client.post(URL, json=example(ACCEPTED))
    assert r.status_code == 200 and r.get_json() == {"stored": 1, "duplicates": 0}
    (row,) = store.feedback_for("4e0a3a1e-3283-4575-ab82-028d55fe2719")
    assert row["outcome"] == "accepted" and row["card_known"] is True
    assert row["accepted_suggestions"] == ["e56e1945-20b3-4393-8503-a1a20fd73152"]
    assert row["outcome_timestamp"] == datetime(2021, 12, 11, 10, 5, 31, tzinfo=UTC)
    assert row["service_id"] == "triage"

    # Example 19's card was never issued here: stored, flagged, reported.
    r = client.post(URL, json=example(OVERRIDDEN))
    assert r.status_code == 200 and r.get_json() == {"stored": 1, "duplicates": 0, "unknownCards": 1}
    (row,) = store.feedback_for("f6b95768-b1c8-40dc-8385-bf3504b82ffb")
    assert row["outcome"] == "overridden" and row["card_known"] is False
    assert row["override_reason_code"] is None

    r = client.post(URL, json=example(WITH_REASON))
    assert r.status_code == 200
    (row,) = store.feedback_for("9368d37b-283f-44a0-93ea-547cebab93ed")
    assert (row["override_reason_system"], row["override_reason_code"]) == (
        "https://example.com/cds-hooks/override-reason-system",
        "d7ecf885",
    )
    # No scrubber registered: the clinician's free text is not stored at all.
    assert row["user_comment"] is None
    assert "A comment entered by the clinician" not in all_stored_text(store)
    assert store.count_feedback() == 3


def test_feedback_is_committed_before_200(app: Flask, database_url: str) -> None:  # noqa: F811
    r = app.test_client().post(URL, json=example(ACCEPTED))
    assert r.status_code == 200
    other = Store(database_url)  # another engine, as another worker would see it
    try:
        assert other.count_feedback() == 1
    finally:
        other.dispose()


def test_duplicate_post_is_idempotent(app: Flask) -> None:
    client = app.test_client()
    assert client.post(URL, json=example(WITH_REASON)).get_json() == {"stored": 1, "duplicates": 0, "unknownCards": 1}
    second = client.post(URL, json=example(WITH_REASON))
    assert second.status_code == 200
    assert second.get_json()["duplicates"] == 1 and second.get_json()["stored"] == 0
    # The same instant in another spelling is the same feedback.
    body = example(WITH_REASON)
    body["feedback"][0]["outcomeTimestamp"] = "2020-12-11T01:00:00+01:00"
    assert client.post(URL, json=body).get_json()["duplicates"] == 1
    assert get_store(app).count_feedback() == 1


def test_several_entries_in_one_post(app: Flask) -> None:
    body = {"feedback": example(ACCEPTED)["feedback"] + example(OVERRIDDEN)["feedback"] + example(ACCEPTED)["feedback"]}
    r = app.test_client().post(URL, json=body)
    assert r.get_json() == {"stored": 2, "duplicates": 1, "unknownCards": 2}


# --- PHI in userComment ---------------------------------------------------------------------


def _scrub(text: str) -> str:
    return re.sub(r"John Smith|MRN \d+", "[REDACTED]", text)


def test_user_comment_is_stored_only_scrubbed(database_url: str) -> None:  # noqa: F811
    app = make_app(database_url, scrubber=_scrub)
    try:
        body = example(WITH_REASON)
        body["feedback"][0]["overrideReason"]["userComment"] = f"Seen already; {PHI} on the ward"
        assert app.test_client().post(URL, json=body).status_code == 200
        (row,) = get_store(app).feedback_for(body["feedback"][0]["card"])
        assert row["user_comment"] == "Seen already; [REDACTED] [REDACTED] on the ward"
        text = all_stored_text(get_store(app))
        assert "John Smith" not in text and "4471923" not in text
    finally:
        get_store(app).dispose()


def test_failing_scrubber_drops_the_comment_and_keeps_the_outcome(tmp_path: Path, caplog) -> None:
    def broken(text: str) -> str:
        raise RuntimeError(f"cannot scrub {text}")

    app = make_app(f"sqlite:///{tmp_path / 'f.sqlite'}", scrubber=broken)
    caplog.set_level(logging.DEBUG)
    body = example(WITH_REASON)
    body["feedback"][0]["overrideReason"]["userComment"] = PHI
    assert app.test_client().post(URL, json=body).status_code == 200
    (row,) = get_store(app).feedback_for(body["feedback"][0]["card"])
    assert row["user_comment"] is None and row["override_reason_code"] == "d7ecf885"
    assert PHI not in caplog.text
    assert "scrubber failed" in caplog.text
    get_store(app).dispose()


# --- bad input ------------------------------------------------------------------------------


def _entry(**overrides: Any) -> dict[str, Any]:
    entry = dict(example(WITH_REASON)["feedback"][0])
    entry.update(overrides)
    return {k: v for k, v in entry.items() if v is not None}


INVALID: dict[str, tuple[Any, str]] = {
    "json array": ([], "body"),
    "no feedback": ({}, "feedback"),
    "feedback not a list": ({"feedback": PHI}, "feedback"),
    "empty feedback": ({"feedback": []}, "feedback"),
    "missing card": ({"feedback": [_entry(card=None)]}, "feedback.0.card"),
    "card not a uuid": ({"feedback": [_entry(card=PHI)]}, "feedback.0.card"),
    "card a number": ({"feedback": [_entry(card=12)]}, "feedback.0.card"),
    "bad outcome": ({"feedback": [_entry(outcome=PHI)]}, "feedback.0.outcome"),
    "missing timestamp": ({"feedback": [_entry(outcomeTimestamp=None)]}, "feedback.0.outcomeTimestamp"),
    "timestamp not a date": ({"feedback": [_entry(outcomeTimestamp=PHI)]}, "feedback.0.outcomeTimestamp"),
    "timestamp out of range in UTC": ({"feedback": [_entry(outcomeTimestamp="0001-01-01T00:00:00+02:00")]},
                                      "feedback.0.outcomeTimestamp"),  # was a 500 (OverflowError)
    "timestamp a number": ({"feedback": [_entry(outcomeTimestamp=1607644800)]}, "feedback.0.outcomeTimestamp"),
    "reason without code": (
        {"feedback": [_entry(overrideReason={"reason": {"system": PHI}})]},
        "feedback.0.overrideReason.reason.code",
    ),
    "comment not a string": (
        {"feedback": [_entry(overrideReason={"userComment": {"name": PHI}})]},
        "feedback.0.overrideReason.userComment",
    ),
    "suggestions not objects": ({"feedback": [_entry(acceptedSuggestions=[PHI])]}, "feedback.0.acceptedSuggestions.0"),
    "second entry bad": ({"feedback": [_entry(), _entry(outcome="maybe")]}, "feedback.1.outcome"),
    "too many entries": ({"feedback": [_entry()] * 101}, "feedback"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_bodies_get_400_naming_fields_not_values(app: Flask, case: str) -> None:
    body, field = INVALID[case]
    r = app.test_client().post(URL, json=body)
    assert r.status_code == 400
    payload = r.get_json()
    assert payload["error"] == "invalid_request"
    assert field in payload["message"] or (field == "body" and "object" in payload["message"])
    assert "John" not in r.get_data(as_text=True) and "4471923" not in r.get_data(as_text=True)
    assert get_store(app).count_feedback() == 0  # nothing of a rejected body is stored


@pytest.mark.parametrize("raw", [b"{", b"not json", b"\xff\xfe", b'{"feedback": NaN}', b"[" * 100_000])
def test_malformed_json_is_400(app: Flask, raw: bytes) -> None:
    r = app.test_client().post(URL, data=raw, content_type="application/json")
    assert r.status_code == 400
    assert r.get_json()["error"] == "malformed_json"


def test_unknown_service_is_404(app: Flask) -> None:
    r = app.test_client().post("/cds-services/nope/feedback", json=example(ACCEPTED))
    assert r.status_code == 404 and r.get_json()["error"] == "unknown_service"
    assert get_store(app).count_feedback() == 0


def test_wrong_content_type_and_oversized_body(app: Flask) -> None:
    r = app.test_client().post(URL, data=json.dumps(example(ACCEPTED)), content_type="text/plain")
    assert r.status_code == 415
    app.config["MAX_CONTENT_LENGTH"] = 1000
    r = app.test_client().post(URL, json={"feedback": [_entry()] * 50})
    assert r.status_code == 413


def test_naive_timestamp_is_read_as_utc(app: Flask) -> None:
    body = {"feedback": [_entry(outcomeTimestamp="2020-12-11T00:00:00")]}
    assert app.test_client().post(URL, json=body).status_code == 200
    (row,) = get_store(app).feedback_for(body["feedback"][0]["card"])
    assert row["outcome_timestamp"] == datetime(2020, 12, 11, tzinfo=UTC)


@pytest.mark.postgres
def test_database_outage_is_503_not_200(tmp_path: Path) -> None:
    urls = make_database_url("postgresql", tmp_path)
    url = next(urls)
    app = make_app(url)
    get_store(app).dispose()
    next(urls, None)  # drops the database under the running app
    r = app.test_client().post(URL, json=example(ACCEPTED))
    assert r.status_code == 503 and r.get_json()["error"] == "unavailable"
    get_store(app).dispose()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_fieldish = st.fixed_dictionaries(
    {},
    optional={
        "card": st.one_of(st.uuids().map(str), _json),
        "outcome": st.one_of(st.sampled_from(["accepted", "overridden"]), _json),
        "outcomeTimestamp": st.one_of(st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat), st.text(max_size=30), _json),
        "acceptedSuggestions": st.one_of(st.lists(st.fixed_dictionaries({"id": st.text(max_size=140)}), max_size=3), _json),
        "overrideReason": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "reason": st.one_of(
                        st.fixed_dictionaries({"system": st.text(max_size=600), "code": st.text(max_size=300)}), _json
                    ),
                    "userComment": st.one_of(st.text(max_size=50), _json),
                },
            ),
            _json,
        ),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(_json, st.fixed_dictionaries({"feedback": st.lists(_fieldish, max_size=3)})))
def test_no_5xx_for_junk(tmp_path: Path, body: Any) -> None:
    app = _junk_app(tmp_path)
    r = app.test_client().post(URL, data=json.dumps(body), content_type="application/json")
    assert r.status_code in (200, 400), r.get_data(as_text=True)


_JUNK_APPS: dict[Path, Flask] = {}


def _junk_app(tmp_path: Path) -> Flask:
    if tmp_path not in _JUNK_APPS:
        _JUNK_APPS.clear()
        _JUNK_APPS[tmp_path] = make_app(f"sqlite:///{tmp_path / 'junk.sqlite'}")
    return _JUNK_APPS[tmp_path]


# --- through the real application ---------------------------------------------------------


def test_feedback_joins_a_card_issued_by_patient_view(tmp_path: Path) -> None:
    from support.cds_app import load, make_app as make_service, patient_view, synthea_paths

    app = make_service(tmp_path)
    client = app.test_client()
    r = client.post("/cds-services/triage", json=patient_view(load(synthea_paths()[0])))
    assert r.status_code == 200, r.get_json()
    card_uuid = r.get_json()["cards"][0]["uuid"]
    reason = r.get_json()["cards"][0]["overrideReasons"][0]
    body = {
        "feedback": [
            {
                "card": card_uuid,
                "outcome": "overridden",
                "overrideReason": {"reason": reason, "userComment": PHI},
                "outcomeTimestamp": datetime.now(UTC).isoformat(),
            }
        ]
    }
    r = client.post(URL, json=body)
    assert r.status_code == 200 and r.get_json() == {"stored": 1, "duplicates": 0}
    store = get_store(app)
    (card, fb) = next(store.iter_feedback_joined())
    assert card["uuid"] == card_uuid and fb["card_known"] is True
    assert fb["override_reason_display"] == reason["display"]
    assert "4471923" not in all_stored_text(store)
    assert client.post("/cds-services/nope/feedback", json=body).status_code == 404
    store.dispose()


def test_feedback_requires_the_client_jwt_through_create_app(tmp_path: Path) -> None:
    from support.cds_app import make_app as make_service

    key = ec.generate_private_key(ec.SECP384R1())
    jwk = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": "k", "alg": "ES384"}
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps([{"iss": "https://ehr.example", "jwks": {"keys": [jwk]}}]))
    app = make_service(tmp_path, TRIAGE_INSECURE_NO_AUTH=False, TRIAGE_CLIENTS_FILE=str(clients))
    client = app.test_client()
    assert client.post(URL, json=example(ACCEPTED)).status_code == 401
    now = int(time.time())
    tok = jwt.encode(
        {"iss": "https://ehr.example", "aud": "http://localhost" + URL, "exp": now + 60, "iat": now, "jti": str(uuid.uuid4())},
        key,
        algorithm="ES384",
        headers={"kid": "k"},
    )
    r = client.post(URL, json=example(ACCEPTED), headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 200
    assert get_store(app).count_feedback() == 1
    get_store(app).dispose()
