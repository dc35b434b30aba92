"""`/health` and `/ready`: real database, real Redis (DB 11, used by no other test), a real worker.

Each answers in milliseconds, without a client JWT, and says nothing a patient could be found by
(nor a URL, which may hold a password)."""
from __future__ import annotations

import json
import time

import pytest

from tests.conftest import REDIS_URL
from tests.support.cds_app import make_app
from tests.support.worker_process import worker

REDIS_DB11 = REDIS_URL.rsplit("/", 1)[0] + "/11"  # DB 11: this file only
DEAD_REDIS = "redis://:s3cret-password@127.0.0.1:1/0"  # nothing listens on port 1


def test_health_is_public_and_immediate(tmp_path):
    app = make_app(tmp_path, TRIAGE_INSECURE_NO_AUTH=False, TRIAGE_CLIENTS_FILE=None, TRIAGE_SCRUB_FREE_TEXT=False)
    client = app.test_client()
    assert client.get("/cds-services").status_code == 401  # the CDS endpoints still need the JWT
    started = time.perf_counter()
    response = client.get("/health")
    assert (time.perf_counter() - started) < 0.05
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200


def test_ready_rules_only_with_the_database(tmp_path):
    app = make_app(tmp_path, TRIAGE_SCRUB_FREE_TEXT=False)
    body = app.test_client().get("/ready").get_json()
    assert body["status"] == "ready" and body["ai"] == {"mode": "rules-only"}
    assert body["checks"]["database"]["ok"] is True and body["checks"]["database"]["ms"] < 200
    assert set(body["checks"]) == {"database"}  # nothing else configured: nothing else checked


def test_ready_is_503_when_the_database_is_gone(tmp_path):
    app = make_app(tmp_path, TRIAGE_SCRUB_FREE_TEXT=False)
    from cds_hooks.store import get_store

    get_store(app).engine.dispose()
    (tmp_path / "triage.sqlite").unlink()
    (tmp_path / "triage.sqlite").mkdir()  # a folder where the file was: cannot be opened
    response = app.test_client().get("/ready")
    assert response.status_code == 503
    body = response.get_json()
    assert body["error"] == "not_ready" and body["checks"]["database"]["ok"] is False
    assert response.headers["Retry-After"]


@pytest.mark.redis
def test_ready_checks_redis_and_names_no_url(tmp_path):
    good = make_app(tmp_path / "good", TRIAGE_JTI_REDIS_URL=REDIS_DB11, TRIAGE_SCRUB_FREE_TEXT=False)
    body = good.test_client().get("/ready").get_json()
    assert body["status"] == "ready" and body["checks"]["redis"]["ok"] is True
    bad = make_app(tmp_path / "bad", TRIAGE_JTI_REDIS_URL=DEAD_REDIS, TRIAGE_SCRUB_FREE_TEXT=False,
                   TRIAGE_READY_TIMEOUT_S=0.3)
    started = time.perf_counter()
    response = bad.test_client().get("/ready")
    elapsed = time.perf_counter() - started
    assert response.status_code == 503 and elapsed < 1.0
    body = response.get_json()
    assert body["checks"]["redis"] == {"ok": False, "ms": body["checks"]["redis"]["ms"], "reason": "ConnectionError"}
    assert body["checks"]["database"]["ok"] is True
    text = json.dumps(body)
    assert "s3cret" not in text and "127.0.0.1" not in text and "redis://" not in text


@pytest.mark.redis
def test_ready_without_a_worker_is_503_and_says_so(tmp_path, tiny_model_dir):
    app = make_app(tmp_path, TRIAGE_SCRUB_FREE_TEXT=False, TRIAGE_MODEL_PATH=str(tiny_model_dir),
                   TRIAGE_BROKER_URL=REDIS_DB11, TRIAGE_RESULT_BACKEND=REDIS_DB11, TRIAGE_CACHE_URL=REDIS_DB11,
                   TRIAGE_INFERENCE_QUEUE="ready-test-none", TRIAGE_READY_TIMEOUT_S=0.3)
    assert app.test_client().get("/ready").status_code == 503  # the first also opens the broker connection
    started = time.perf_counter()
    response = app.test_client().get("/ready")
    assert time.perf_counter() - started < 1.0
    body = response.get_json()
    assert response.status_code == 503, body
    assert body["ai"]["mode"] == "celery" and body["ai"]["model"]
    assert body["checks"]["broker"]["ok"] is True and body["checks"]["redis"]["ok"] is True
    assert body["checks"]["worker"] == {"ok": False, "ms": body["checks"]["worker"]["ms"], "reason": "WorkerUnreachable"}


@pytest.mark.slow
@pytest.mark.redis
def test_ready_with_a_real_worker(tmp_path, tiny_model_dir):
    env = {"TRIAGE_MODEL_PATH": str(tiny_model_dir), "TRIAGE_BROKER_URL": REDIS_DB11,
           "TRIAGE_RESULT_BACKEND": REDIS_DB11, "TRIAGE_CACHE_URL": REDIS_DB11,
           "TRIAGE_INFERENCE_QUEUE": "ready-test", "TRIAGE_DEVICE": "cpu"}
    app = make_app(tmp_path, TRIAGE_SCRUB_FREE_TEXT=False, TRIAGE_READY_TIMEOUT_S=1.0, **env)
    with worker(env, tmp_path / "worker.log", concurrency=1):
        started = time.perf_counter()
        response = app.test_client().get("/ready")
        elapsed = time.perf_counter() - started
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["checks"]["worker"]["ok"] is True
    assert elapsed < 0.9  # the ping returns at the first reply, not after its timeout
