"""The report queue's parts: Celery configuration, settings, cache keys, both caches (the Redis one
on the real server), `run_batch` and the embedded batching loop on the tiny model, `triage worker`."""
from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import redis
from click.testing import CliRunner

from cds_hooks.cli import cli
from deidentify import Deidentifier
from deidentify.pseudonym import demo_key
from fhir_adapter.extract import build_record
from model.batching import BatchWindow
from model.cache import (
    INVALID_TTL_S,
    MemoryReportCache,
    NullReportCache,
    RedisReportCache,
    cache_key,
    make_cache,
)
from model.queue import REPORT_TASK, make_celery
from model.reports import ReportService
from model.settings import INFERENCE_SETTINGS, InferenceSettings, inference_settings
from tests.support.cds_app import load, patient_view, synthea_paths

TEST_REDIS = "redis://127.0.0.1:6379/5"  # this project's queue tests own DB 5
TINY_BUDGET = {"max_new_tokens_analysis": 0, "max_new_tokens_final": 160, "final_closing_reserve": 160}


def payloads(tmp_path, count: int = 2, *, as_of: datetime | None = None) -> list[dict]:
    deid = Deidentifier(demo_key(tmp_path))
    out = []
    for path in synthea_paths()[:count]:
        body = patient_view(load(path))
        record = build_record(body["prefetch"], as_of=as_of or datetime.now(timezone.utc))
        out.append(deid.record(record).to_payload())
    return out


# --- Celery configuration --------------------------------------------------------------------


def test_celery_config_is_json_only_late_acking_and_routed_to_the_inference_queue():
    celery = make_celery("redis://127.0.0.1:6379/5", environ={
        "TRIAGE_BATCH_MAX_SIZE": "6", "TRIAGE_TASK_TIME_LIMIT_S": "90", "TRIAGE_TASK_SOFT_TIME_LIMIT_S": "80",
        "TRIAGE_INFERENCE_QUEUE": "gpu-reports", "TRIAGE_VISIBILITY_TIMEOUT_S": "300",
    })
    conf = celery.conf
    assert conf.task_serializer == "json" and conf.result_serializer == "json"
    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True
    assert conf.task_routes[REPORT_TASK] == {"queue": "gpu-reports"}
    assert conf.task_default_queue == "gpu-reports"
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (80, 90)
    # celery-batches can only batch what the worker reserved: one batch per process.
    assert conf.worker_prefetch_multiplier == 6
    assert conf.result_expires == 3600 and conf.result_extended is False
    assert conf.result_backend == "redis://127.0.0.1:6379/5"  # the broker's Redis by default
    transport = conf.broker_transport_options
    assert transport["visibility_timeout"] == 300 and transport["max_retries"] == 0
    assert conf.broker_connection_timeout <= 0.5 and conf.task_publish_retry is False


def test_the_report_task_is_a_batches_task_with_the_batch_settings():
    from model import tasks

    task = tasks.app.tasks[REPORT_TASK]
    assert isinstance(task, tasks.InferenceBatches)
    settings = tasks.settings_of(tasks.app)
    assert task.flush_every == settings.batch_max_size
    assert task.window == settings.batch_window
    assert task.flush_interval == pytest.approx(settings.batch_window.tick_s)
    assert task.acks_late and task.reject_on_worker_lost


def test_settings_parse_names_the_bad_variable_and_defaults_match_the_table():
    with pytest.raises(ValueError, match="TRIAGE_BATCH_MAX_SIZE"):
        inference_settings({"TRIAGE_BATCH_MAX_SIZE": "zero"})
    with pytest.raises(ValueError, match="TRIAGE_BATCH_MAX_SIZE"):
        inference_settings({"TRIAGE_BATCH_MAX_SIZE": "0"})
    defaults = InferenceSettings()
    from model.settings import _FIELDS

    for setting in INFERENCE_SETTINGS:
        assert getattr(defaults, _FIELDS[setting.name]) == setting.default, setting.name
    s = inference_settings({"TRIAGE_BROKER_URL": "redis://h:6379/1"})
    assert s.backend_url == s.cache_redis_url == "redis://h:6379/1"
    assert inference_settings({"TRIAGE_BROKER_URL": "redis://h/1", "TRIAGE_CACHE_URL": "memory"}).cache_redis_url is None
    assert inference_settings({}).cache_redis_url is None
    assert isinstance(make_cache(inference_settings({})), MemoryReportCache)


def test_every_inference_setting_is_a_service_setting():
    from cds_hooks.config import SETTINGS

    names = {s.name for s in SETTINGS}
    assert {s.name for s in INFERENCE_SETTINGS} <= names
    assert {"TRIAGE_BROKER_URL", "TRIAGE_MODEL_PATH", "TRIAGE_ADAPTER_PATH"} <= names


# --- Cache keys and caches -------------------------------------------------------------------


def test_cache_key_ignores_the_view_time_but_not_the_clinical_content_or_versions(tmp_path):
    now = datetime(2031, 5, 1, 12, 0, tzinfo=timezone.utc)
    first = payloads(tmp_path, 2, as_of=now)
    later = payloads(tmp_path, 1, as_of=now + timedelta(minutes=7))[0]
    assert first[0]["as_of"] != later["as_of"]
    key = cache_key(first[0], "m@1", "none", "harmony:low")
    assert key == cache_key(later, "m@1", "none", "harmony:low")
    assert len(key) == 64 and int(key, 16) >= 0
    assert key != cache_key(first[1], "m@1", "none", "harmony:low")
    assert key != cache_key(first[0], "m@2", "none", "harmony:low")
    assert key != cache_key(first[0], "m@1", "lora@1", "harmony:low")
    assert key != cache_key(first[0], "m@1", "none", "harmony:high")
    changed = json.loads(json.dumps(first[0]))
    changed["age_years"] = (changed["age_years"] or 0) + 1
    assert key != cache_key(changed, "m@1", "none", "harmony:low")


def test_memory_cache_ttl_lru_claims_and_copies():
    cache = MemoryReportCache(ttl_s=1, max_items=2)
    value = {"status": "ok", "report": {"acuity": 3}}
    cache.put("a", value)
    value["status"] = "mutated"
    assert cache.get("a") == {"status": "ok", "report": {"acuity": 3}}  # stored as a JSON copy
    cache.put("b", {"n": 2})
    cache.get("a")
    cache.put("c", {"n": 3})  # evicts the least recently used: b
    assert cache.get("b") is None and cache.get("a") is not None
    assert cache.claim("k", "task-1", 60) is None
    assert cache.claim("k", "task-2", 60) == "task-1"
    cache.release("k")
    assert cache.claim("k", "task-3", 60) is None
    cache.incr("rejected")
    cache.incr("rejected", 2)
    assert cache.counters() == {"rejected": 3}
    time.sleep(1.1)
    assert cache.get("a") is None


@pytest.fixture()
def redis_cache():
    prefix = f"triage-test:{uuid.uuid4().hex[:8]}:"
    cache = RedisReportCache(TEST_REDIS, ttl_s=120, prefix=prefix)
    yield cache
    client = redis.Redis.from_url(TEST_REDIS)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    cache.close()


def test_redis_cache_round_trip_ttls_claims_and_counters(redis_cache):
    client = redis.Redis.from_url(TEST_REDIS)
    redis_cache.put("k1", {"status": "ok", "report": {"summary": "x"}})
    assert redis_cache.get("k1") == {"status": "ok", "report": {"summary": "x"}}
    assert 100 < client.ttl(redis_cache.prefix + "r:k1") <= 120
    redis_cache.put("k2", {"status": "invalid"}, INVALID_TTL_S)
    assert client.ttl(redis_cache.prefix + "r:k2") <= INVALID_TTL_S
    assert redis_cache.get("missing") is None
    assert redis_cache.claim("k1", "task-a", 30) is None
    assert redis_cache.claim("k1", "task-b", 30) == "task-a"
    redis_cache.release("k1")
    assert redis_cache.claim("k1", "task-c", 30) is None
    redis_cache.incr("rejected")
    redis_cache.incr("rejected")
    assert redis_cache.counters() == {"rejected": 2}


def test_redis_cache_down_fails_fast():
    cache = RedisReportCache("redis://127.0.0.1:1/0", socket_timeout_s=0.25)
    started = time.perf_counter()
    with pytest.raises(redis.ConnectionError):
        cache.get("k")
    assert time.perf_counter() - started < 1.0


# --- run_batch and the embedded loop on the tiny model ----------------------------------------


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    from model.engine import Engine, EngineConfig

    return Engine.load(EngineConfig(model_path=str(tiny_model_dir), **TINY_BUDGET))


def untimed(result: dict) -> dict:
    """The result without the whole batch's time (added to live results, not to cached ones)."""
    return {k: v for k, v in result.items() if k != "batch_s"}


def test_run_batch_one_generate_per_batch_dedups_caches_and_isolates_bad_payloads(tmp_path, tiny_engine):
    from model.report import TriageReport
    from model.reports import EmbeddedPool
    from model.tasks import run_batch

    first, second = payloads(tmp_path, 2)
    cache = MemoryReportCache()
    pool = EmbeddedPool(tiny_engine.config, cache, window=BatchWindow(8, 0.5, 0.5))
    pool.engine = tiny_engine
    futures = [pool.submit(p) for p in (first, json.loads(json.dumps(first)), {"not": "a record"}, second)]
    results = [f.result(timeout=240) for f in futures]
    pool.close()
    assert pool.batches == [4]  # arrived together: one batch
    assert tiny_engine.last_stats["batch_size"] == 2  # the duplicate was generated once
    assert results[0] == results[1] and results[0]["key"] != results[3]["key"]
    assert results[2]["status"] == "error" and "bad payload" in results[2]["error"]
    for result in (results[0], results[3]):
        assert result["model_version"] == tiny_engine.model_version and result["adapter_version"] == "none"
        messages = json.loads(result["prompt"])
        assert [m["role"] for m in messages] == ["developer", "user"]
        if result["status"] == "ok":
            TriageReport.model_validate(result["report"])
            assert cache.get(result["key"]) == untimed(result)
        else:  # rejected: counted, briefly cached, never an exception
            assert result["status"] == "invalid" and cache.counters().get("rejected")
    assert cache.counters().get("bad_payload") == 1

    # A redelivered or repeated request is answered from the cache: no generation.
    before = dict(tiny_engine.counters)
    again = run_batch([first], tiny_engine, cache)
    assert untimed(again[0]) == untimed(results[0])
    assert dict(tiny_engine.counters) == before


def test_invalid_reports_are_rejected_counted_and_never_raise(tmp_path, tiny_engine):
    from model.tasks import run_batch

    cache = MemoryReportCache()
    saved = (tiny_engine.config.max_new_tokens_final, tiny_engine.config.final_closing_reserve)
    tiny_engine.config.max_new_tokens_final = tiny_engine.config.final_closing_reserve = 24  # no room for a report
    try:
        [result] = run_batch(payloads(tmp_path, 1), tiny_engine, cache)
    finally:
        tiny_engine.config.max_new_tokens_final, tiny_engine.config.final_closing_reserve = saved
    assert result["status"] == "invalid" and "report" not in result
    assert cache.counters() == {"rejected": 1}
    assert cache.get(result["key"])["status"] == "invalid"


# --- triage worker ---------------------------------------------------------------------------


def test_worker_command_help_and_one_line_errors(monkeypatch, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["worker", "--help"])
    assert result.exit_code == 0 and "--concurrency" in result.output and "solo" in result.output
    monkeypatch.delenv("TRIAGE_BROKER_URL", raising=False)
    import model.queue

    monkeypatch.setattr(model.queue, "app", make_celery(environ={}))
    result = runner.invoke(cli, ["worker"])
    assert result.exit_code != 0 and "TRIAGE_BROKER_URL" in result.output
    assert len(result.output.strip().splitlines()) == 1
    monkeypatch.setattr(model.queue, "app", make_celery(environ={
        "TRIAGE_BROKER_URL": "redis://127.0.0.1:6379/5", "TRIAGE_MODEL_PATH": str(tmp_path / "nope")}))
    result = runner.invoke(cli, ["worker"])
    assert result.exit_code != 0 and "config.json" in result.output
    result = runner.invoke(cli, ["worker", "--pool", "gevent"])
    assert result.exit_code != 0


# --- waiting for a result -----------------------------------------------------------------------


def _waiting_service(monkeypatch) -> tuple[ReportService, list[str]]:
    from model.engine import EngineConfig

    settings = inference_settings({"TRIAGE_BROKER_URL": TEST_REDIS, "TRIAGE_MODEL_PATH": "/no/model",
                                   "TRIAGE_CACHE_URL": "none"})
    service = ReportService(settings, engine_config=EngineConfig(model_path="/no/model"), cache=NullReportCache())
    reads: list[str] = []
    backend = service._celery.backend
    inner = backend.get_task_meta
    monkeypatch.setattr(backend, "get_task_meta", lambda task_id, **kw: reads.append(task_id) or inner(task_id, **kw))
    return service, reads


def _store_later(service: ReportService, task_id: str, delay_s: float) -> threading.Timer:
    value = {"status": "invalid", "error": "x", "model_version": "m", "adapter_version": "none"}
    timer = threading.Timer(delay_s, lambda: service._celery.backend.mark_as_done(task_id, value))
    timer.start()
    return timer


def test_waiting_for_a_result_wakes_on_redis_publish_not_on_a_polling_timer(monkeypatch):
    service, reads = _waiting_service(monkeypatch)
    task_id = f"wait-test-{uuid.uuid4()}"
    try:
        _store_later(service, task_id, 0.3)
        started = time.monotonic()
        outcome = service._wait_task(task_id, started + 5, None)
        elapsed = time.monotonic() - started
    finally:
        service._celery.backend.forget(task_id)
        service.close()
    assert outcome.status == "unavailable" and outcome.reason == "invalid"  # the stored value, read
    assert 0.3 <= elapsed < 0.35
    # One read at the start and one per message (not ~60 polls over 300 ms); the 100 ms safety
    # re-reads add at most three.
    assert len(reads) <= 6


def test_one_pubsub_connection_per_thread_serves_every_wait(monkeypatch):
    service, reads = _waiting_service(monkeypatch)
    first, second = f"wait-test-{uuid.uuid4()}", f"wait-test-{uuid.uuid4()}"
    try:
        _store_later(service, first, 0.05)
        assert service._wait_task(first, time.monotonic() + 5, None).reason == "invalid"
        pubsub = service._thread_state.pubsub
        connection = pubsub.connection
        service._celery.backend.mark_as_done(first, {"status": "ok"})  # a late message on the old channel
        _store_later(service, second, 0.05)
        started = time.monotonic()
        assert service._wait_task(second, started + 5, None).reason == "invalid"
        assert time.monotonic() - started < 0.1
        assert service._thread_state.pubsub is pubsub and pubsub.connection is connection
        client = redis.Redis.from_url(TEST_REDIS)
        for task_id in (first, second):  # unsubscribed after each wait
            assert client.pubsub_numsub(f"celery-task-meta-{task_id}")[0][1] == 0
        client.close()
    finally:
        for task_id in (first, second):
            service._celery.backend.forget(task_id)
        service.close()


def test_without_pubsub_the_wait_falls_back_to_polling_and_still_honours_the_deadline(monkeypatch):
    from model import reports

    monkeypatch.setattr(reports.ReportService, "_subscribe", lambda self, backend, task_id: None)
    service, reads = _waiting_service(monkeypatch)
    task_id = f"wait-test-{uuid.uuid4()}"
    try:
        started = time.monotonic()
        assert service._wait_task(task_id, started + 0.2, None).status == "pending"
        assert 0.2 <= time.monotonic() - started < 0.3
        assert len(reads) > 20  # polled
        _store_later(service, task_id, 0.1)
        assert service._wait_task(task_id, time.monotonic() + 5, None).reason == "invalid"
    finally:
        service._celery.backend.forget(task_id)
        service.close()
