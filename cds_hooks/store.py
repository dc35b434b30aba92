"""Persistence of issued cards and clinician feedback (SQLAlchemy 2 Core + Alembic).

Every card the service returns is logged so that feedback can later be joined to what was shown
(the KTO preference export). Only de-identified values are stored: a patient pseudonym, rule
inputs, never a name, an identifier, a token or raw clinician free text.

SQLite (the default, a file) runs in WAL mode with a busy timeout, and write transactions start
with ``BEGIN IMMEDIATE`` so that gunicorn workers queue for the write lock instead of failing.
PostgreSQL is used through ``postgresql+psycopg://``.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from flask import Flask, current_app
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url

log = logging.getLogger(__name__)

EXTENSION_KEY = "triage_store"
SQLITE_BUSY_TIMEOUT_MS = 30_000
CardKind = Literal["rules", "ai", "pending"]
Outcome = Literal["accepted", "overridden"]


class UTCDateTime(sa.TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware value")
        value = value.astimezone(UTC)
        # SQLite stores text: keep it naive UTC so equal instants compare equal.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata = sa.MetaData()

cards = sa.Table(
    "cards",
    metadata,
    sa.Column("uuid", sa.String(36), primary_key=True),
    sa.Column("service_id", sa.String(64), nullable=False),
    sa.Column("hook_instance", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("acuity", sa.SmallInteger(), nullable=True),
    sa.Column("indicator", sa.String(16), nullable=False),
    sa.Column("summary", sa.String(140), nullable=False),
    sa.Column("patient_pseudonym", sa.String(128), nullable=True),
    sa.Column("rule_inputs", JSONType, nullable=False),
    sa.Column("prompt", sa.Text(), nullable=True),
    sa.Column("report", JSONType, nullable=True),
    sa.Column("model_version", sa.String(128), nullable=True),
    sa.CheckConstraint("kind IN ('rules', 'ai', 'pending')", name="ck_cards_kind"),
    sa.CheckConstraint("acuity IS NULL OR acuity BETWEEN 1 AND 5", name="ck_cards_acuity"),
    sa.Index("ix_cards_service_created", "service_id", "created_at"),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("card_uuid", sa.String(36), nullable=False),
    sa.Column("service_id", sa.String(64), nullable=False),
    # False when the card was never issued by this service: kept, not lost, but flagged.
    sa.Column("card_known", sa.Boolean(), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("outcome_timestamp", UTCDateTime(), nullable=False),
    sa.Column("override_reason_system", sa.String(512), nullable=True),
    sa.Column("override_reason_code", sa.String(256), nullable=True),
    sa.Column("override_reason_display", sa.String(512), nullable=True),
    sa.Column("user_comment", sa.Text(), nullable=True),
    sa.Column("accepted_suggestions", JSONType, nullable=True),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("card_uuid", "outcome", "outcome_timestamp", name="uq_feedback_card_outcome_ts"),
    sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name="ck_feedback_outcome"),
    sa.Index("ix_feedback_card_uuid", "card_uuid"),
)

_FEEDBACK_KEY = ["card_uuid", "outcome", "outcome_timestamp"]


def _now() -> datetime:
    return datetime.now(UTC)


def _canonical_uuid(value: str | uuidlib.UUID) -> str:
    return str(value if isinstance(value, uuidlib.UUID) else uuidlib.UUID(str(value)))


@dataclass(frozen=True)
class CardLog:
    """One card as returned to the EHR. Everything here must already be de-identified."""

    uuid: str
    service_id: str
    hook_instance: str
    kind: CardKind
    indicator: str
    summary: str
    rule_inputs: dict[str, Any]
    acuity: int | None = None
    patient_pseudonym: str | None = None
    created_at: datetime = field(default_factory=_now)
    prompt: str | None = None
    report: dict[str, Any] | None = None
    model_version: str | None = None


@dataclass(frozen=True)
class FeedbackItem:
    """One entry of a CDS Hooks feedback POST. ``user_comment`` must already be scrubbed."""

    card_uuid: str
    outcome: Outcome
    outcome_timestamp: datetime
    override_reason_system: str | None = None
    override_reason_code: str | None = None
    override_reason_display: str | None = None
    user_comment: str | None = None
    accepted_suggestions: list[str] | None = None


@dataclass(frozen=True)
class SaveResult:
    stored: int
    duplicates: int
    unknown_cards: list[str]  # card uuids this service never issued (stored, flagged card_known=False)


class StoreError(RuntimeError):
    """The database cannot be opened or migrated (message never contains the password)."""


def _install_sqlite_pragmas(engine: Engine) -> None:
    """WAL + busy timeout, and explicit BEGIN so write transactions can take the lock up front.

    pysqlite's own transaction handling is switched off (SQLAlchemy's documented recipe) so that
    a write transaction that reads first cannot fail with "database is locked" on lock upgrade.
    """

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _wal(cur)
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("triage_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _wal(cur: Any) -> None:
    """Switch the database to WAL (a setting kept in the file), retrying while it is locked.

    Changing the journal mode needs the database to itself, and the busy timeout did not cover
    it: three threads migrating a new database at once got "database is locked" in 5 starts of
    60 (0 of 60 with this retry). Once one has switched, the others find WAL set and change
    nothing.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as exc:  # sqlite3.OperationalError, from whichever driver module
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


class Store:
    """Cards and feedback in one database named by a SQLAlchemy URL."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        try:
            parsed = make_url(url)
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"invalid database URL: {exc}") from None
        self.url = parsed
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite" and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "postgresql":
            kwargs["pool_pre_ping"] = True
        self.engine = sa.create_engine(parsed, **kwargs)
        self._write_lock = threading.Lock()
        if self.dialect == "sqlite":
            _install_sqlite_pragmas(self.engine)
        # Called after a commit with what was written (metrics, audit): see on_cards/on_feedback.
        self._card_listeners: list[Callable[[Sequence[CardLog]], None]] = []
        self._feedback_listeners: list[Callable[[str, Sequence[FeedbackItem]], None]] = []

    def __repr__(self) -> str:
        return f"Store({self.url.render_as_string(hide_password=True)!r})"

    # -- schema ---------------------------------------------------------------------------

    def alembic_config(self) -> AlembicConfig:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", "cds_hooks:migrations")
        # Alembic's ini interpolation treats % specially.
        cfg.set_main_option("sqlalchemy.url", self.url.render_as_string(hide_password=False).replace("%", "%%"))
        return cfg

    def _run_alembic(self, fn: Any, *args: Any) -> None:
        cfg = self.alembic_config()
        try:
            with self._write_connection() as conn, conn.begin():
                if self.dialect == "postgresql":
                    # Several workers may start at once: one migrates, the others wait.
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7351882001)")
                cfg.attributes["connection"] = conn
                fn(cfg, *args)
        except sa.exc.OperationalError as exc:
            raise StoreError(
                f"cannot open database {self.url.render_as_string(hide_password=True)}: "
                f"{type(exc.orig).__name__ if exc.orig else 'OperationalError'}"
            ) from None

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision`` with the packaged migrations."""
        self._run_alembic(command.upgrade, revision)

    def downgrade(self, revision: str = "base") -> None:
        self._run_alembic(command.downgrade, revision)

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write_connection(self) -> Iterator[Connection]:
        # SQLite has one writer at a time and its busy handler sleeps in steps of up to 100 ms:
        # with many request threads per process (gthread) writers queue here on a lock instead
        # (measured: a 4 s tail at 16 concurrent calls without it).
        with self._write_lock if self.dialect == "sqlite" else nullcontext():
            with self.engine.connect().execution_options(triage_write=True) as conn:
                yield conn

    def _insert(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        if self.dialect == "sqlite":
            return sqlite.insert(table)
        raise StoreError(f"unsupported database backend: {self.dialect}")

    # -- listeners ------------------------------------------------------------------------

    def on_cards(self, listener: Callable[[Sequence[CardLog]], None]) -> None:
        """Call ``listener(rows)`` after each committed ``log_cards``."""
        self._card_listeners.append(listener)

    def on_feedback(self, listener: Callable[[str, Sequence[FeedbackItem]], None]) -> None:
        """Call ``listener(service_id, items)`` with the feedback items newly stored (not repeats)."""
        self._feedback_listeners.append(listener)

    @staticmethod
    def _notify(listeners: Sequence[Callable[..., None]], *args: Any) -> None:
        for listener in listeners:
            try:
                listener(*args)
            except Exception as exc:  # noqa: BLE001 - an observer never fails the write it observes
                log.warning("store listener %s failed: %s", getattr(listener, "__name__", "?"), type(exc).__name__)

    # -- cards ----------------------------------------------------------------------------

    def log_cards(self, rows: Sequence[CardLog]) -> None:
        """Record cards as issued. Logging the same card uuid twice keeps the first record."""
        if not rows:
            return
        values = [
            {
                "uuid": _canonical_uuid(r.uuid),
                "service_id": r.service_id,
                "hook_instance": r.hook_instance,
                "created_at": r.created_at,
                "kind": r.kind,
                "acuity": None if r.acuity is None else int(r.acuity),
                "indicator": r.indicator,
                "summary": r.summary,
                "patient_pseudonym": r.patient_pseudonym,
                "rule_inputs": r.rule_inputs,
                "prompt": r.prompt,
                "report": r.report,
                "model_version": r.model_version,
            }
            for r in rows
        ]
        stmt = self._insert(cards).on_conflict_do_nothing(index_elements=["uuid"])
        with self._write_connection() as conn, conn.begin():
            conn.execute(stmt, values)
        self._notify(self._card_listeners, rows)

    def get_card(self, uuid: str) -> dict[str, Any] | None:
        try:
            key = _canonical_uuid(uuid)
        except ValueError:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(cards).where(cards.c.uuid == key)).mappings().first()
        return dict(row) if row else None

    def count_cards(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(cards)).scalar_one())

    # -- feedback -------------------------------------------------------------------------

    def save_feedback(self, service_id: str, items: Sequence[FeedbackItem]) -> SaveResult:
        """Store feedback in one transaction, committed before this returns.

        A repeat of (card, outcome, outcomeTimestamp) is a no-op (CDS clients may resend).
        Feedback about a card this service never issued is stored with ``card_known = False``.
        """
        received = _now()
        rows = [
            {
                "card_uuid": _canonical_uuid(i.card_uuid),
                "service_id": service_id,
                "outcome": i.outcome,
                "outcome_timestamp": i.outcome_timestamp,
                "override_reason_system": i.override_reason_system,
                "override_reason_code": i.override_reason_code,
                "override_reason_display": i.override_reason_display,
                "user_comment": i.user_comment,
                "accepted_suggestions": i.accepted_suggestions,
                "received_at": received,
            }
            for i in items
        ]
        if not rows:
            return SaveResult(0, 0, [])
        stored = duplicates = 0
        new_items: list[FeedbackItem] = []
        with self._write_connection() as conn, conn.begin():
            wanted = {r["card_uuid"] for r in rows}
            known = set(
                conn.execute(
                    sa.select(cards.c.uuid).where(cards.c.uuid.in_(wanted), cards.c.service_id == service_id)
                ).scalars()
            )
            for item, row in zip(items, rows):
                row["card_known"] = row["card_uuid"] in known
                stmt = (
                    self._insert(feedback)
                    .values(**row)
                    .on_conflict_do_nothing(index_elements=_FEEDBACK_KEY)
                    .returning(feedback.c.id)
                )
                if conn.execute(stmt).first() is None:
                    duplicates += 1
                else:
                    stored += 1
                    new_items.append(item)
        self._notify(self._feedback_listeners, service_id, new_items)
        unknown = sorted(wanted - known)
        return SaveResult(stored=stored, duplicates=duplicates, unknown_cards=unknown)

    def feedback_for(self, uuid: str) -> list[dict[str, Any]]:
        try:
            key = _canonical_uuid(uuid)
        except ValueError:
            return []
        with self.engine.connect() as conn:
            result = conn.execute(
                sa.select(feedback).where(feedback.c.card_uuid == key).order_by(feedback.c.outcome_timestamp, feedback.c.id)
            )
            return [dict(r) for r in result.mappings()]

    def count_feedback(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(feedback)).scalar_one())

    def iter_feedback_joined(
        self, *, service_id: str | None = None, batch_size: int = 500
    ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Yield (card, feedback) pairs for feedback on known cards, oldest feedback first.

        Streams in batches (keyset on feedback.id) so a large export does not hold the table.
        """
        last_id = 0
        while True:
            stmt = (
                sa.select(feedback, *[c.label(f"card__{c.name}") for c in cards.c])
                .join(cards, cards.c.uuid == feedback.c.card_uuid)
                .where(feedback.c.id > last_id)
                .order_by(feedback.c.id)
                .limit(batch_size)
            )
            if service_id is not None:
                stmt = stmt.where(feedback.c.service_id == service_id)
            with self.engine.connect() as conn:
                batch = [dict(r) for r in conn.execute(stmt).mappings()]
            if not batch:
                return
            for row in batch:
                card = {k.removeprefix("card__"): v for k, v in row.items() if k.startswith("card__")}
                fb = {k: v for k, v in row.items() if not k.startswith("card__")}
                yield card, fb
            last_id = batch[-1]["id"]


# -- Flask integration ----------------------------------------------------------------------


def default_database_url(app: Flask) -> str:
    return "sqlite:///" + os.path.join(app.instance_path, "triage.sqlite")


def init_app(app: Flask) -> Store:
    """Open ``TRIAGE_DATABASE_URL`` (default: a SQLite file in the instance folder), migrate it
    to head, and keep the Store in ``app.extensions["triage_store"]``."""
    url = app.config.get("TRIAGE_DATABASE_URL") or default_database_url(app)
    store = Store(str(url))
    store.migrate()
    app.extensions[EXTENSION_KEY] = store
    log.info("database ready: %s", store.url.render_as_string(hide_password=True))
    return store


def get_store(app: Flask | None = None) -> Store:
    target = app if app is not None else current_app
    try:
        return target.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError("store not initialised: call cds_hooks.store.init_app(app)") from None
