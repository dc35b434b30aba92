"""The Celery app of the AI report queue and its configuration (Celery's one-module layout).

`app` is built at import from `TRIAGE_*` variables so `celery -A model.queue:app ...` (worker,
Flower, inspect) and `triage worker` see the same configuration. Tasks live in `model.tasks`.

Reliability choices (ARCHITECTURE invariant 5, "nothing is lost"):
- `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only after its
  report is stored; a worker that dies mid-batch leaves it unacknowledged and it is redelivered
  (Redis: after `visibility_timeout`). Report tasks are idempotent (same input, same cache key).
- JSON only: no pickle ever crosses the broker, and a payload in Redis is readable for audits.
- The prefetch window is exactly one batch per worker process: celery-batches can only batch what
  the worker has reserved, so `worker_prefetch_multiplier` is the batch size (with concurrency 1
  per GPU, that is the "prefetch 1" of an unbatched worker, counted in batches).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from celery import Celery

from model.settings import InferenceSettings, inference_settings

log = logging.getLogger(__name__)

REPORT_TASK = "model.tasks.generate_report"


def celery_config(settings: InferenceSettings, *, broker_url: str | None = None,
                  backend: str | None = None) -> dict[str, Any]:
    """Celery settings (lower-case names) for the inference queue."""
    if broker_url or backend:
        settings = dataclasses.replace(settings, broker_url=broker_url or settings.broker_url,
                                       result_backend=backend or settings.result_backend)
    broker = settings.broker_url or "memory://"
    result_backend = settings.backend_url
    connect = settings.broker_connect_timeout_s
    transport: dict[str, Any] = {
        # Publishing from the API: a dead broker fails in ~connect seconds, never retried in a loop.
        "max_retries": 0,
        "socket_connect_timeout": connect,
        "socket_timeout": max(connect, 5.0),
        "visibility_timeout": settings.visibility_timeout_s,
        # Sweep for abandoned (unacked) messages often enough for the visibility timeout chosen.
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
        "unacked_restore_throttle": 1,
    }
    return {
        "broker_url": broker,
        "result_backend": result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_default_queue": settings.queue,
        "task_routes": {REPORT_TASK: {"queue": settings.queue}},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_soft_time_limit": settings.soft_time_limit_s,
        "task_time_limit": settings.time_limit_s,
        "task_track_started": False,
        "task_publish_retry": False,
        "worker_prefetch_multiplier": settings.batch_max_size,
        "worker_max_tasks_per_child": None,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": True,  # Flower
        "task_send_sent_event": True,
        "result_expires": settings.result_expires_s,
        "result_extended": False,  # never copy task args (the payload) into the result back end
        "broker_connection_timeout": connect,
        "broker_connection_retry_on_startup": True,  # the worker waits for Redis to come up
        "broker_connection_max_retries": None,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"retry_policy": {"max_retries": 0}},
        "redis_socket_connect_timeout": connect,
        "redis_socket_timeout": max(connect, 5.0),
        "redis_retry_on_timeout": False,
        "broker_channel_error_retry": False,
        "timezone": "UTC",
        "enable_utc": True,
    }


def make_celery(broker_url: str | None = None, backend: str | None = None, *,
                environ: Mapping[str, Any] | None = None) -> Celery:
    """The Celery app: broker/back end from the arguments, else TRIAGE_BROKER_URL/RESULT_BACKEND."""
    settings = inference_settings(environ)
    if broker_url or backend:
        settings = dataclasses.replace(settings, broker_url=broker_url or settings.broker_url,
                                       result_backend=backend or settings.result_backend)
    celery = Celery("triage", include=["model.tasks"], set_as_current=False)
    celery.conf.update(celery_config(settings, broker_url=broker_url, backend=backend))
    celery.conf.triage_settings = settings
    return celery


app = make_celery()


def settings_of(celery: Celery) -> InferenceSettings:
    return celery.conf.get("triage_settings") or inference_settings()
