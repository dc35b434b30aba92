"""AI reports through the hook, in-process: rules-only without a model, the embedded worker with
the tiny model (pending, then the AI card from the cache; ready at once with a long deadline;
appointment-book precompute), and a broker that refuses or hangs (rules card, inside the deadline)."""
from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import pytest

from cds_hooks.ai_cards import PENDING_SUMMARY, PRELIMINARY, md
from cds_hooks.store import get_store
from model.acuity import indicator_for
from tests.support.cds_app import load, make_app, patient_id, patient_view, post_hook, synthea_paths

TINY_BUDGET = {
    "TRIAGE_MAX_NEW_TOKENS_ANALYSIS": "0",
    "TRIAGE_MAX_NEW_TOKENS_FINAL": "160",
    "TRIAGE_FINAL_CLOSING_RESERVE": "160",
}


def bundle(n: int) -> dict:
    return load(synthea_paths()[n])


def timed_post(client, body, service="triage"):
    started = time.perf_counter()
    response = post_hook(client, body, service)
    return response, (time.perf_counter() - started) * 1000


def wait_for_cache(app, body, timeout_s: float = 240) -> dict:
    """Poll the report cache for this request's record (as the next view would find it)."""
    from cds_hooks.hook import load_deidentified
    from cds_hooks.schemas import HookRequest, PatientViewContext

    runtime = app.extensions["triage_runtime"]
    request = HookRequest.model_validate(body)
    context = PatientViewContext.model_validate(body["context"])
    service = app.extensions["triage_registry"].get("triage")
    record = load_deidentified(request, context, runtime, service)
    key = runtime.reports.key_for(record.to_payload())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = runtime.reports.cache.get(key)
        if value is not None:
            return value
        time.sleep(0.25)
    raise AssertionError("the report never reached the cache")


# --- rules-only ------------------------------------------------------------------------------


def test_no_model_runs_rules_only_and_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("TRIAGE_MODEL_PATH", raising=False)
    app = make_app(tmp_path)
    client = app.test_client()
    services = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}
    assert "rules-only" in services["triage"]["description"]
    assert "rules-only" in services["triage-prescreen"]["description"]
    assert services["triage-prescreen"]["hook"] == "appointment-book"
    response = post_hook(client, patient_view(bundle(0)))
    cards = response.get_json()["cards"]
    assert response.status_code == 200 and len(cards) == 1
    assert "rules-only" in cards[0]["source"]["label"]
    assert app.extensions["triage_runtime"].reports.mode == "disabled"


# --- embedded mode with the tiny model ----------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_app(tmp_path_factory, tiny_model_dir):
    app = make_app(tmp_path_factory.mktemp("embedded"), TRIAGE_MODEL_PATH=str(tiny_model_dir), **TINY_BUDGET)
    yield app
    app.extensions["triage_runtime"].reports.close()


def test_embedded_discovery_names_the_model(embedded_app):
    reports = embedded_app.extensions["triage_runtime"].reports
    assert reports.mode == "embedded"
    description = {s["id"]: s for s in embedded_app.test_client().get("/cds-services").get_json()["services"]}
    assert reports.versions()[0] in description["triage"]["description"]
    assert "rules-only" not in description["triage"]["description"]


def test_embedded_first_view_pending_next_view_ai_card_from_cache(embedded_app):
    client = embedded_app.test_client()
    store = get_store(embedded_app)
    body = patient_view(bundle(1))
    response, elapsed_ms = timed_post(client, body)
    assert response.status_code == 200 and elapsed_ms < 450 + 100  # deadline (450) + test-client slack
    cards = response.get_json()["cards"]
    assert len(cards) == 2 and cards[1]["summary"] == PENDING_SUMMARY
    assert store.get_card(cards[1]["uuid"])["kind"] == "pending"
    assert "rules-only" not in cards[0]["source"]["label"]

    value = wait_for_cache(embedded_app, body)
    body2 = patient_view(bundle(1))  # a new view of the same chart, a little later
    response, elapsed_ms = timed_post(client, body2)
    cards = response.get_json()["cards"]
    assert response.status_code == 200 and elapsed_ms < 450 + 100
    if value["status"] != "ok":  # the untrained model's output was rejected: no AI card, ever
        assert len(cards) == 1
        return
    assert len(cards) == 2
    assert_ai_card(cards[1], value, store)


def assert_ai_card(card: dict, value: dict, store) -> None:
    report = value["report"]
    assert card["summary"].startswith("AI (preliminary): ")
    assert card["indicator"] == indicator_for(report["acuity"])
    assert value["model_version"] in card["source"]["label"]
    assert PRELIMINARY in card["detail"]
    assert f"ESI {report['acuity']}" in card["detail"]
    for item in report["differential"]:
        assert md(item["condition"]) in card["detail"] and item["likelihood"] in card["detail"]
    assert "Questions to ask the patient" in card["detail"] and "Recommended actions" in card["detail"]
    assert card["overrideReasons"] and all(r["display"] for r in card["overrideReasons"])
    row = store.get_card(card["uuid"])
    assert row["kind"] == "ai" and row["acuity"] == report["acuity"]
    assert row["report"] == report
    assert json.loads(row["prompt"])[1]["role"] == "user"  # the de-identified chat the model saw
    assert row["model_version"].startswith(value["model_version"])


def test_embedded_with_a_generous_deadline_the_ai_card_comes_at_once(embedded_app, tiny_model_dir):
    client = embedded_app.test_client()
    runtime = embedded_app.extensions["triage_runtime"]
    saved = runtime.deadline_ms
    runtime.deadline_ms = 240_000
    try:
        response = post_hook(client, patient_view(bundle(2)))
    finally:
        runtime.deadline_ms = saved
    cards = response.get_json()["cards"]
    assert response.status_code == 200
    assert cards[0]["source"]["label"].startswith("Triage CDS rules")
    if len(cards) == 2:
        assert cards[1]["summary"].startswith("AI (preliminary): ")
    else:  # rejected report: counted in the cache, no AI card
        assert runtime.reports.cache.counters().get("rejected")


def test_appointment_book_precomputes_and_answers_no_cards_at_once(embedded_app):
    client = embedded_app.test_client()
    source = bundle(3)
    pid = patient_id(source)
    view = patient_view(source)
    body = {
        "hook": "appointment-book",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "PractitionerRole/1", "patientId": pid,
                    "appointments": {"resourceType": "Bundle", "type": "collection", "entry": []}},
        "prefetch": view["prefetch"],
    }
    response, elapsed_ms = timed_post(client, body, "triage-prescreen")
    assert response.status_code == 200 and response.get_json() == {"cards": []}
    assert elapsed_ms < 450
    wait_for_cache(embedded_app, patient_view(source))  # the report is ready before the first view
    started = time.perf_counter()
    cards = post_hook(client, patient_view(source)).get_json()["cards"]
    assert (time.perf_counter() - started) < 0.45
    assert cards[-1]["summary"] != PENDING_SUMMARY  # AI card (or none if rejected), never "pending"
    # The wrong hook on this service is refused.
    assert post_hook(client, patient_view(source), "triage-prescreen").status_code == 400


# --- a broker that is down or hangs ------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_broker_down_rules_card_inside_the_deadline_then_circuit_breaker(tmp_path, tiny_model_dir):
    url = f"redis://127.0.0.1:{closed_port()}/0"
    app = make_app(tmp_path, TRIAGE_MODEL_PATH=str(tiny_model_dir), TRIAGE_BROKER_URL=url, **TINY_BUDGET)
    client = app.test_client()
    reports = app.extensions["triage_runtime"].reports
    assert reports.mode == "celery"
    for n in range(3):
        response, elapsed_ms = timed_post(client, patient_view(bundle(n)))
        assert response.status_code == 200
        cards = response.get_json()["cards"]
        assert len(cards) == 1 and cards[0]["source"]["label"].startswith("Triage CDS rules")
        assert elapsed_ms < 450
    assert reports._down_until > time.monotonic()  # the breaker skips the broker for a while
    reports.close()


@pytest.fixture()
def silent_server():
    """A TCP server that accepts connections and never answers (a hung broker)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    server.close()


def test_hung_broker_never_holds_the_hook_past_its_deadline(tmp_path, tiny_model_dir, silent_server):
    app = make_app(tmp_path, TRIAGE_MODEL_PATH=str(tiny_model_dir),
                   TRIAGE_BROKER_URL=f"redis://127.0.0.1:{silent_server}/0", **TINY_BUDGET)
    client = app.test_client()
    for n in range(2):
        response, elapsed_ms = timed_post(client, patient_view(bundle(n)))
        assert response.status_code == 200
        assert len(response.get_json()["cards"]) == 1
        assert elapsed_ms < 450 + 50
    app.extensions["triage_runtime"].reports.close()


def test_embedded_worker_runs_in_a_child_process_and_fills_this_process_cache(embedded_app):
    """Generation must not share the API process's GIL: the engine lives in a spawned child."""
    import os

    from model.reports import EmbeddedProcessPool

    reports = embedded_app.extensions["triage_runtime"].reports
    body = patient_view(bundle(2))
    response, _ = timed_post(embedded_app.test_client(), body)
    assert response.status_code == 200
    pool = reports._pool
    assert isinstance(pool, EmbeddedProcessPool)
    assert pool._process.is_alive() and pool._process.pid != os.getpid()
    assert not hasattr(pool, "engine")  # no engine object on the API side
    assert wait_for_cache(embedded_app, body)["model_version"]  # the child's result came back here
