"""`GET /health` (the process answers) and `GET /ready` (it can do its work).

`/ready` checks, in parallel and each within `TRIAGE_READY_TIMEOUT_S`: the database (`SELECT 1`),
Redis (the JWT replay store and the report cache, when they are Redis), the broker, and that a
report worker answers a ping (Celery mode); and it states the AI mode: `rules-only`, `embedded`
or `celery`, with the model and adapter versions. It answers 200 when every check passed, else
503 with `"error": "not_ready"` and the checks that failed. The body names components and
exception types only: never a URL (it may hold a password), never patient data. Both routes are
exempt from the client JWT (load balancers and compose call them).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, jsonify

from cds_hooks import auth
from cds_hooks.store import get_store

bp = Blueprint("health", __name__)

DEFAULT_TIMEOUT_S = 0.5
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="triage-ready")


@bp.get("/health")
@auth.exempt
def health() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/ready")
@auth.exempt
def ready() -> Response:
    app = current_app._get_current_object()
    timeout = float(app.config.get("TRIAGE_READY_TIMEOUT_S") or DEFAULT_TIMEOUT_S)
    checks = _checks(app, timeout)
    started = time.perf_counter()
    futures = {name: _POOL.submit(_timed, fn) for name, fn in checks.items()}
    results: dict[str, dict[str, Any]] = {}
    for name, future in futures.items():
        left = max(timeout - (time.perf_counter() - started), 0.0) + 0.05
        try:
            results[name] = future.result(timeout=left)
        except FutureTimeout:
            results[name] = {"ok": False, "ms": round(timeout * 1000, 1), "reason": "timeout"}
    ok = all(r["ok"] for r in results.values())
    body: dict[str, Any] = {"status": "ready" if ok else "not_ready", "ai": _ai_mode(app), "checks": results,
                            "ms": round((time.perf_counter() - started) * 1000, 1)}
    if not ok:
        body = {"error": "not_ready", **body}
    response = jsonify(body)
    response.status_code = 200 if ok else 503
    if not ok:
        response.headers["Retry-After"] = "5"
    response.headers["Cache-Control"] = "no-store"
    return response


def _timed(fn: Callable[[], None]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - a failed check is a result, not an error
        return {"ok": False, "ms": round((time.perf_counter() - started) * 1000, 1), "reason": type(exc).__name__}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _checks(app: Flask, timeout: float) -> dict[str, Callable[[], None]]:
    checks: dict[str, Callable[[], None]] = {"database": lambda: _database(app)}
    redis_urls = {u for u in (app.config.get("TRIAGE_JTI_REDIS_URL"), app.config.get("TRIAGE_CACHE_URL"))
                  if isinstance(u, str) and u.startswith(("redis://", "rediss://", "unix://"))}
    runtime = app.extensions.get("triage_runtime")
    reports = getattr(runtime, "reports", None)
    celery_mode = reports is not None and reports.mode == "celery"
    for index, url in enumerate(sorted(redis_urls)):
        checks["redis" if index == 0 else f"redis{index + 1}"] = lambda url=url: _redis_ping(url, timeout)
    if celery_mode:
        checks["broker"] = lambda: _broker(reports._celery, timeout)
        checks["worker"] = lambda: _worker(reports._celery, timeout)
    return checks


def _database(app: Flask) -> None:
    with get_store(app).engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def _redis_ping(url: str, timeout: float) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()


def _broker(celery: Any, timeout: float) -> None:
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)


def _worker(celery: Any, timeout: float) -> None:
    # limit=1: returns at the first reply instead of waiting out the timeout.
    # 0.8: the ping's own overhead must fit in the check's time, or it reads as a timeout.
    replies = celery.control.ping(timeout=timeout * 0.8, limit=1)
    if not replies:
        raise WorkerUnreachable()


class WorkerUnreachable(Exception):
    """No report worker answered the ping in time."""


def _ai_mode(app: Flask) -> dict[str, Any]:
    runtime = app.extensions.get("triage_runtime")
    reports = getattr(runtime, "reports", None)
    if reports is None or not reports.enabled:
        return {"mode": "rules-only"}
    out: dict[str, Any] = {"mode": reports.mode}
    versions = reports.versions()
    if versions:
        out["model"], out["adapter"] = versions
    return out


READY_SCHEMA = {
    "type": "object",
    "required": ["status", "ai", "checks", "ms"],
    "properties": {
        "error": {"const": "not_ready"},
        "status": {"enum": ["ready", "not_ready"]},
        "ai": {"type": "object", "required": ["mode"],
               "properties": {"mode": {"enum": ["rules-only", "embedded", "celery"]},
                              "model": {"type": "string"}, "adapter": {"type": "string"}}},
        "checks": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["ok", "ms"],
            "properties": {"ok": {"type": "boolean"}, "ms": {"type": "number"}, "reason": {"type": "string"}}}},
        "ms": {"type": "number"},
    },
}


def init_app(app: Flask) -> None:
    from cds_hooks.openapi import add_path

    add_path(app, "/health", {"get": {
        "operationId": "healthGet", "tags": ["operations"], "security": [],
        "description": "Liveness: the process answers.",
        "responses": {"200": {"description": "alive", "content": {"application/json": {"schema": {
            "type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}}}}},
    }})
    add_path(app, "/ready", {"get": {
        "operationId": "readyGet", "tags": ["operations"], "security": [],
        "description": "Readiness: database, Redis, broker and a report worker reachable; the AI mode.",
        "responses": {code: {"description": text, "content": {"application/json": {"schema": READY_SCHEMA}}}
                      for code, text in (("200", "ready"), ("503", "a dependency is not reachable"))},
    }})
    app.register_blueprint(bp)
