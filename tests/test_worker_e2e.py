"""The AI report path with a real `triage worker` (prefork, tiny model) and the real Redis (DB 5):
patient-view -> "being prepared" -> AI card from the cache on the next view; a worker killed with
SIGKILL mid-batch loses nothing (redelivered after the visibility timeout to a restarted worker,
its report reaches the cache); nothing in Redis carries an identifier planted in the FHIR input."""
from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import redis

from cds_hooks.ai_cards import PENDING_SUMMARY
from cds_hooks.store import get_store
from tests.support.cds_app import load, make_app, patient_view, post_hook, synthea_paths
from tests.support.worker_process import wait_for_log, worker

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/5"  # DB 5 belongs to the queue tests: flushed by them only
RUN = uuid.uuid4().hex[:8]

PLANTED = {
    "name": "Quillfeather",
    "given": "Zebediah",
    "mrn": "MRN-48213377",
    "phone": "555-867-5309",
    "phone_digits": "5558675309",
    "street": "1428 Elm Street",
    "city": "Springwood",
    "birth_date": "1961-03-14",
    "patient_id": f"planted-{RUN}",
}


def planted_bundle(n: int) -> dict:
    """A Synthea bundle whose Patient carries the planted identifiers (and a fresh id per test)."""
    bundle = copy.deepcopy(load(synthea_paths()[n]))
    old_id = None
    for entry in bundle["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "Patient":
            old_id = res["id"]
            res["id"] = f"{PLANTED['patient_id']}-{n}"
            res["name"] = [{"use": "official", "family": PLANTED["name"], "given": [PLANTED["given"]]}]
            res["identifier"] = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                       "code": "MR"}]},
                                  "system": "http://hospital.example.org/mrn", "value": PLANTED["mrn"]}]
            res["telecom"] = [{"system": "phone", "value": PLANTED["phone"], "use": "home"}]
            res["address"] = [{"line": [PLANTED["street"]], "city": PLANTED["city"], "state": "OH",
                               "postalCode": "43210"}]
            res["birthDate"] = PLANTED["birth_date"]
            entry["fullUrl"] = f"urn:uuid:{res['id']}"
    text = json.dumps(bundle).replace(old_id, f"{PLANTED['patient_id']}-{n}")  # subject references
    return json.loads(text)


@pytest.fixture(scope="module")
def redis_db():
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def settings(tiny_model_dir, redis_db) -> dict[str, str]:
    return {
        "TRIAGE_BROKER_URL": REDIS_URL,
        "TRIAGE_MODEL_PATH": str(tiny_model_dir),
        "TRIAGE_INFERENCE_QUEUE": f"inference-test-{RUN}",
        "TRIAGE_CACHE_PREFIX": f"triage-test-{RUN}:",
        "TRIAGE_VISIBILITY_TIMEOUT_S": "4",  # redelivery after a crash within seconds (test only)
        "TRIAGE_BATCH_MAX_WAIT_MS": "50",
        "TRIAGE_MAX_NEW_TOKENS_ANALYSIS": "0",
        "TRIAGE_MAX_NEW_TOKENS_FINAL": "160",
        "TRIAGE_FINAL_CLOSING_RESERVE": "160",
    }


def record_key(app, body) -> tuple[str, str]:
    """(cache key, pseudonym) of the de-identified record this request makes."""
    from cds_hooks.hook import load_deidentified
    from cds_hooks.schemas import HookRequest, PatientViewContext

    runtime = app.extensions["triage_runtime"]
    record = load_deidentified(HookRequest.model_validate(body), PatientViewContext.model_validate(body["context"]),
                               runtime, app.extensions["triage_registry"].get("triage"))
    return runtime.reports.key_for(record.to_payload()), record.pseudonym


def wait_for_cache(app, key: str, timeout_s: float) -> dict:
    cache = app.extensions["triage_runtime"].reports.cache
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cache.get(key)
        if value is not None:
            return value
        time.sleep(0.2)
    raise AssertionError("the report never reached the cache")


# --- Redis contents --------------------------------------------------------------------------


def redis_texts(client: redis.Redis) -> list[str]:
    """Every key and value of the DB as text, task message bodies base64-decoded (kombu)."""
    texts: list[str] = []
    for key in client.scan_iter(count=500):
        kind = client.type(key).decode()
        values: list[bytes] = [key]
        if kind == "string":
            values.append(client.get(key) or b"")
        elif kind == "list":
            values += client.lrange(key, 0, -1)
        elif kind == "hash":
            for field, value in client.hgetall(key).items():
                values += [field, value]
        elif kind == "set":
            values += list(client.smembers(key))
        elif kind == "zset":
            values += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        texts += [_decoded(v) for v in values]
    return texts


def _decoded(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    parts = [text]
    try:
        data = json.loads(text)
    except ValueError:
        return text

    def walk(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("body"), str) and (node.get("properties") or {}).get("body_encoding") == "base64":
                parts.append(base64.b64decode(node["body"]).decode("utf-8", "replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data)
    return "\n".join(parts)


def task_messages(client: redis.Redis) -> list[dict]:
    """Decoded bodies of report task messages still in Redis (queued or unacknowledged)."""
    out = []
    for text in redis_texts(client):
        for chunk in text.split("\n"):
            with contextlib.suppress(ValueError):
                data = json.loads(chunk)
                if isinstance(data, list) and len(data) == 3 and isinstance(data[1], dict) and "payload" in data[1]:
                    out.append(data[1]["payload"])  # protocol 2 body: [args, kwargs, embed]
    return out


def assert_no_planted_identifiers(client: redis.Redis) -> str:
    blob = "\n".join(redis_texts(client)).lower()
    for what, value in PLANTED.items():
        assert value.lower() not in blob, f"planted {what} found in Redis"
    return blob


# --- the tests -------------------------------------------------------------------------------


def test_patient_view_pending_then_ai_card_through_celery_and_redis(tmp_path, settings, redis_db):
    app = make_app(tmp_path, **settings)
    client = app.test_client()
    store = get_store(app)
    body = patient_view(planted_bundle(5))
    key, pseudonym = record_key(app, body)
    with worker(settings, tmp_path / "worker.log") as proc:
        started = time.perf_counter()
        response = post_hook(client, body)
        elapsed = time.perf_counter() - started
        cards = response.get_json()["cards"]
        assert response.status_code == 200 and elapsed < 0.55
        assert cards[0]["source"]["label"].startswith("Triage CDS rules")
        assert len(cards) == 2 and cards[1]["summary"] == PENDING_SUMMARY  # a CPU batch takes seconds
        assert store.get_card(cards[1]["uuid"])["kind"] == "pending"

        value = wait_for_cache(app, key, timeout_s=60)  # written by the worker process
        wait_for_log(tmp_path / "worker.log", "inference batch of", proc, timeout_s=5)
        started = time.perf_counter()
        response = post_hook(client, patient_view(planted_bundle(5)))  # the next view of the chart
        elapsed = time.perf_counter() - started
        cards = response.get_json()["cards"]
        assert response.status_code == 200 and elapsed < 0.45
        if value["status"] == "ok":
            assert len(cards) == 2 and cards[1]["summary"].startswith("AI (preliminary): ")
            row = store.get_card(cards[1]["uuid"])
            assert row["kind"] == "ai" and row["report"] == value["report"] and row["prompt"]
            assert value["model_version"] in cards[1]["source"]["label"]
        else:
            assert value["status"] == "invalid" and len(cards) == 1
    blob = assert_no_planted_identifiers(redis_db)
    # The scan did read what could carry PHI: the task result and the cached prompt and report.
    assert "celery-task-meta-" in blob and "write the triage report for this patient" in blob
    app.extensions["triage_runtime"].reports.close()


def test_worker_killed_mid_batch_loses_nothing(tmp_path, settings, redis_db):
    app = make_app(tmp_path, **settings)
    reports = app.extensions["triage_runtime"].reports
    body = patient_view(planted_bundle(6))
    key, pseudonym = record_key(app, body)
    log_path = tmp_path / "worker.log"
    with worker(settings, log_path) as first:
        response = post_hook(app.test_client(), body)
        assert response.status_code == 200 and response.get_json()["cards"][-1]["summary"] == PENDING_SUMMARY
        wait_for_log(log_path, "inference batch of 1", first, timeout_s=30)
        os.killpg(first.pid, signal.SIGKILL)  # the parent and the child holding the model
        first.wait(timeout=10)
        assert reports.cache.get(key) is None  # killed before the report was written
        # The unacknowledged message is still in Redis, de-identified.
        messages = task_messages(redis_db)
        assert any(m.get("pseudonym") == pseudonym for m in messages)
        assert_no_planted_identifiers(redis_db)

    with worker(settings, log_path) as second:
        value = wait_for_cache(app, key, timeout_s=60)  # redelivered after the visibility timeout
        assert value["status"] in ("ok", "invalid") and value["key"] == key
        wait_for_log(log_path, "inference batch of", second, timeout_s=5, count=2)
        deadline = time.monotonic() + 10  # acknowledged: nothing left to redeliver
        while any(m.get("pseudonym") == pseudonym for m in task_messages(redis_db)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(m.get("pseudonym") == pseudonym for m in task_messages(redis_db))
    outcome_view = post_hook(app.test_client(), patient_view(planted_bundle(6))).get_json()["cards"]
    assert outcome_view[-1]["summary"] != PENDING_SUMMARY
    assert_no_planted_identifiers(redis_db)
    reports.close()
