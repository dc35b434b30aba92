"""The audit table: one row per hook call, pseudonymous, kept `TRIAGE_AUDIT_RETENTION_DAYS`.

A row says who called (the client JWT's `iss`; none when auth is off or refused), when, which
service, the `hookInstance`, the request id, the HTTP status and outcome (`ok` or the error slug),
how many cards of which kinds were returned, the time taken, and the patient's pseudonym (the
same keyed pseudonym the card log holds; never a name, an id or a date). Refused calls (401,
400, 412) are rows too: an audit must show attempts, not only successes.

Rows are written after the response is built; a write that fails is logged and does not fail
the call. Rows older than the retention are deleted when the app starts, then by the process that
writes at most once an hour, and by `AuditLog.purge`.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, current_app, g, request

from cds_hooks.store import UTCDateTime, get_store, metadata

log = logging.getLogger(__name__)

EXTENSION_KEY = "triage_audit"
PURGE_EVERY_S = 3600.0

hook_audit = sa.Table(
    "hook_audit",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("client_iss", sa.String(512), nullable=True),
    sa.Column("service_id", sa.String(64), nullable=False),
    sa.Column("hook_instance", sa.String(64), nullable=True),
    sa.Column("status", sa.SmallInteger(), nullable=False),
    sa.Column("outcome", sa.String(64), nullable=False),
    sa.Column("cards", sa.SmallInteger(), nullable=False),
    sa.Column("card_kinds", sa.String(64), nullable=True),
    sa.Column("duration_ms", sa.Float(), nullable=True),
    sa.Column("patient_pseudonym", sa.String(128), nullable=True),
    sa.Index("ix_hook_audit_at", "at"),
)


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    service_id: str
    status: int
    outcome: str
    cards: int = 0
    card_kinds: str | None = None
    request_id: str | None = None
    client_iss: str | None = None
    hook_instance: str | None = None
    duration_ms: float | None = None
    patient_pseudonym: str | None = None


class AuditLog:
    def __init__(self, engine: sa.Engine, retention_days: float) -> None:
        self.engine = engine
        self.retention = timedelta(days=retention_days)
        self._last_purge = time.monotonic()  # init_app purges at start; then hourly on writes
        self._lock = threading.Lock()

    def record(self, entry: AuditEntry) -> None:
        with self.engine.connect().execution_options(triage_write=True) as conn, conn.begin():
            conn.execute(sa.insert(hook_audit).values(**entry.__dict__))
        if time.monotonic() - self._last_purge > PURGE_EVERY_S:
            with self._lock:
                if time.monotonic() - self._last_purge > PURGE_EVERY_S:
                    self._last_purge = time.monotonic()
                    self.purge()

    def purge(self, now: datetime | None = None) -> int:
        """Delete rows older than the retention; the number deleted."""
        cutoff = (now or datetime.now(UTC)) - self.retention
        with self.engine.connect().execution_options(triage_write=True) as conn, conn.begin():
            deleted = conn.execute(sa.delete(hook_audit).where(hook_audit.c.at < cutoff)).rowcount
        if deleted:
            log.info("audit: %d rows older than %d days deleted", deleted, self.retention.days)
        return int(deleted or 0)

    def rows(self, limit: int = 1000) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            result = conn.execute(sa.select(hook_audit).order_by(hook_audit.c.id.desc()).limit(limit))
            return [dict(r) for r in result.mappings()]


# --- Flask integration ----------------------------------------------------------------------------


def _on_cards(rows: Any) -> None:
    from flask import has_request_context

    if has_request_context():
        kinds = g.setdefault("audit_card_kinds", [])
        kinds.extend(r.kind for r in rows)
        pseudonym = next((r.patient_pseudonym for r in rows if r.patient_pseudonym), None)
        if pseudonym:
            g.audit_pseudonym = pseudonym


def _audit_response(response: Response) -> Response:
    if request.endpoint != "cds_services.invoke":
        return response
    try:
        service_id = (request.view_args or {}).get("service_id") or ""
        if current_app.extensions["triage_registry"].get(service_id) is None:
            service_id = "(unknown)"  # a path segment is caller input: not stored as given
        outcome = "ok"
        if response.status_code >= 400:
            body = response.get_json(silent=True)
            outcome = str(body.get("error"))[:64] if isinstance(body, dict) and body.get("error") else "error"
        kinds = g.get("audit_card_kinds") or []
        client = g.get("cds_client")
        started = g.get("started")
        current_app.extensions[EXTENSION_KEY].record(AuditEntry(
            at=datetime.now(UTC),
            service_id=service_id,
            status=response.status_code,
            outcome=outcome,
            cards=len(kinds) if response.status_code < 400 else 0,
            card_kinds=",".join(kinds)[:64] or None,
            request_id=g.get("request_id"),
            client_iss=getattr(client, "iss", None),
            hook_instance=g.get("hook_instance"),
            duration_ms=round((time.perf_counter() - started) * 1000, 2) if started else None,
            patient_pseudonym=g.get("audit_pseudonym"),
        ))
    except Exception as exc:  # noqa: BLE001 - the audit never fails the call it records
        log.error("audit row not written (%s)", type(exc).__name__)
    return response


def init_app(app: Flask) -> AuditLog:
    store = get_store(app)
    audit = AuditLog(store.engine, float(app.config.get("TRIAGE_AUDIT_RETENTION_DAYS") or 365))
    app.extensions[EXTENSION_KEY] = audit
    try:
        audit.purge()
    except Exception as exc:  # noqa: BLE001 - a database that is down at start is /ready's to report
        log.warning("audit purge at start failed (%s)", type(exc).__name__)
    store.on_cards(_on_cards)
    app.after_request(_audit_response)
    return audit


def get_audit(app: Flask | None = None) -> AuditLog:
    return (app or current_app).extensions[EXTENSION_KEY]
