"""`GET /metrics`: Prometheus metrics of the service (prometheus-client).

Under gunicorn every worker process counts on its own; `triage serve` sets
`PROMETHEUS_MULTIPROC_DIR` before the workers fork, so each writes its values to files there and a
scrape of any worker sums them all (prometheus-client's multiprocess mode). The queue depth is
read at scrape time from the broker (Redis) by the scraping process.

Labels are bounded sets (service ids, card kinds, indicators, status codes, our override reason
codes, entity types of the de-identifier); never a value from a request, never patient data.

What is counted, and where it is seen (no change to the hook's own code):
- hook latency and outcome: the app's request timer (`observe_request`, from app.py);
- cards by kind and indicator, acuity by source, de-identification failures: the store's
  `on_cards` listener (every card the hook returns is logged there first);
- AI report outcome (ready / pending / failed / disabled): the cards of each hook response;
- entities removed by type: an observer of the runtime's Deidentifier;
- feedback by outcome and override reason: the store's `on_feedback` listener.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.core import GaugeMetricFamily

from cds_hooks import auth

bp = Blueprint("metrics", __name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The hook deadline is 450 ms by default: buckets around it.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.45, 0.5, 0.75, 1.0, 2.5, 5.0)

HOOK_LATENCY = Histogram("triage_hook_duration_seconds", "Hook call time, arrival to response, by service and HTTP status",
                         ["service", "status"], buckets=LATENCY_BUCKETS)
REQUESTS = Counter("triage_http_requests_total", "HTTP requests by route and status", ["route", "status"])
CARDS = Counter("triage_cards_total", "Cards returned, by kind (rules, ai, pending) and indicator", ["kind", "indicator"])
ACUITY = Counter("triage_acuity_total", "Acuity levels of the cards returned (ESI 1-5, none), by source",
                 ["source", "acuity"])
AI_REPORTS = Counter("triage_ai_reports_total",
                     "AI report outcome of each patient-view call: ready, pending, failed, disabled", ["status"])
DEID_FAILURES = Counter("triage_deid_failures_total", "Records refused by de-identification (fail closed)")
DEID_REMOVED = Counter("triage_deid_entities_removed_total", "Identifiers removed by de-identification, by type",
                       ["entity_type"])
FEEDBACK = Counter("triage_feedback_total", "Feedback stored, by outcome and override reason", ["outcome", "reason"])

_KNOWN_ENTITY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz0123456789")


def _known_reasons() -> frozenset[str]:
    from cds_hooks.ai_cards import AI_OVERRIDE_REASONS
    from cds_hooks.cards import OVERRIDE_REASONS

    return frozenset(r.code for r in (*OVERRIDE_REASONS, *AI_OVERRIDE_REASONS))


# --- observers ---------------------------------------------------------------------------------


def observe_request(route: str, service_id: str | None, status: int, elapsed_s: float) -> None:
    REQUESTS.labels(route, str(status)).inc()
    if service_id is not None:
        HOOK_LATENCY.labels(service_id, str(status)).observe(elapsed_s)


def observe_cards(rows: Sequence[Any]) -> None:
    for row in rows:
        CARDS.labels(row.kind, row.indicator).inc()
        if row.kind in ("rules", "ai"):
            ACUITY.labels(row.kind, str(row.acuity) if row.acuity is not None else "none").inc()
        if row.kind == "rules" and row.rule_inputs == {"deidentification": "failed"}:
            DEID_FAILURES.inc()


def observe_feedback(service_id: str, items: Sequence[Any]) -> None:
    known = _known_reasons()
    for item in items:
        code = item.override_reason_code
        reason = "none" if not code else code if code in known else "other"
        FEEDBACK.labels(item.outcome, reason).inc()


def observe_ai_cards(kinds: Iterable[str], enabled: bool) -> None:
    """One patient-view response: which AI card it carried."""
    kinds = set(kinds)
    status = ("ready" if "ai" in kinds else "pending" if "pending" in kinds
              else "failed" if enabled else "disabled")
    AI_REPORTS.labels(status).inc()


def ai_card_kinds(cards: Sequence[Any]) -> list[str]:
    """'ai' / 'pending' for the AI cards among a response's cards (by their topic and summary)."""
    from cds_hooks.ai_cards import AI_TOPIC, PENDING_SUMMARY

    kinds = []
    for card in cards:
        topic = card.source.topic if card.source is not None else None
        if topic is not None and topic.code == AI_TOPIC.code:
            kinds.append("pending" if card.summary == PENDING_SUMMARY else "ai")
    return kinds


def observe_deidentified(record: Any) -> None:
    """A record de-identified (the Deidentifier's observer): identifiers removed, by type only."""
    for entity, count in (getattr(record, "removed", None) or {}).items():
        label = str(entity)[:40]
        if count and set(label) <= _KNOWN_ENTITY_CHARS:
            DEID_REMOVED.labels(label).inc(count)


# --- scrape ------------------------------------------------------------------------------------


class QueueDepthCollector:
    """`triage_queue_depth`: report jobs waiting in the broker (Redis list of the queue), at scrape."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("triage_queue_depth", "AI report jobs waiting in the broker queue", labels=["queue"])
        runtime = self.app.extensions.get("triage_runtime")
        reports = getattr(runtime, "reports", None)
        if reports is not None and reports.mode == "celery":
            queue = reports.settings.queue
            depth = _redis_queue_depth(reports.settings.broker_url, queue)
            if depth is not None:
                gauge.add_metric([queue], depth)
        elif reports is not None and reports.mode == "embedded":
            gauge.add_metric(["embedded"], len(getattr(reports, "_inflight", {})))
        yield gauge


def _redis_queue_depth(url: str | None, queue: str) -> float | None:
    if not url or not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)
        try:
            return float(client.llen(queue))
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - a scrape while the broker is down shows no value
        return None


class _Forward:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Any]:
        return self.registry.collect()


def _multiprocess() -> bool:
    """The mode prometheus-client chose when it was imported: values live in files only when the
    folder was set before that (an environment variable set later changes nothing)."""
    from prometheus_client import values

    return bool(os.environ.get(MULTIPROC_ENV)) and values.ValueClass is not values.MutexValue


def scrape_registry(app: Flask) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if _multiprocess():
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward(DEFAULT_REGISTRY))
    registry.register(QueueDepthCollector(app))
    return registry


@bp.get("/metrics")
@auth.exempt
def metrics() -> Response:
    return Response(generate_latest(scrape_registry(current_app._get_current_object())),
                    content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    from cds_hooks.openapi import add_path
    from cds_hooks.store import get_store

    store = get_store(app)
    store.on_cards(observe_cards)
    store.on_feedback(observe_feedback)
    runtime = app.extensions.get("triage_runtime")
    observers = getattr(getattr(runtime, "deidentifier", None), "observers", None)
    if observers is not None and observe_deidentified not in observers:
        observers.append(observe_deidentified)
    add_path(app, "/metrics", {"get": {
        "operationId": "metricsGet", "tags": ["operations"], "security": [],
        "description": "Prometheus metrics (text exposition format).",
        "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    }})
    app.register_blueprint(bp)


def mark_process_dead(pid: int) -> None:
    """gunicorn `child_exit`: drop a dead worker's live gauges (multiprocess mode)."""
    if _multiprocess():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
