"""Store: migrations, card log, idempotent feedback, concurrency; on SQLite and real PostgreSQL."""
from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from cds_hooks import store as store_mod
from cds_hooks.store import CardLog, FeedbackItem, SaveResult, Store, StoreError, get_store
from db_fixtures import database_url  # noqa: F401  (fixture)

T0 = datetime(2020, 12, 11, 0, 0, tzinfo=UTC)


def card(**overrides) -> CardLog:
    values = dict(
        uuid=str(uuid.uuid4()),
        service_id="triage",
        hook_instance=str(uuid.uuid4()),
        kind="rules",
        indicator="warning",
        summary="NEWS2 5 (medium): urgent review",
        rule_inputs={"news2": {"total": 5, "missing": ["consciousness"]}, "vitals": {"8867-4": 112}},
        acuity=3,
        patient_pseudonym="p-7f3a",
    )
    values.update(overrides)
    return CardLog(**values)


@pytest.fixture
def store(database_url: str):  # noqa: F811
    s = Store(database_url)
    s.migrate()
    yield s
    s.dispose()


HEAD = "0002_hook_audit"  # the latest migration (0002: the hook audit table, cds_hooks/audit.py)


def tables(s: Store) -> set[str]:
    return set(sa.inspect(s.engine).get_table_names())


def test_migrations_upgrade_from_empty_downgrade_and_again(database_url: str) -> None:  # noqa: F811
    s = Store(database_url)
    try:
        assert s.current_revision() is None
        assert not {"cards", "feedback"} & tables(s)
        s.migrate()
        assert s.current_revision() == HEAD
        assert {"cards", "feedback", "hook_audit", "alembic_version"} <= tables(s)
        s.migrate()  # already at head: a no-op
        assert s.current_revision() == HEAD
        s.downgrade("base")
        assert s.current_revision() is None
        assert not {"cards", "feedback", "hook_audit"} & tables(s)
        s.migrate()
        assert {"cards", "feedback", "hook_audit"} <= tables(s)
    finally:
        s.dispose()


def test_schema_of_migrations_matches_table_definitions(store: Store) -> None:
    insp = sa.inspect(store.engine)
    from cds_hooks.audit import hook_audit

    for table in (store_mod.cards, store_mod.feedback, hook_audit):
        assert {c["name"] for c in insp.get_columns(table.name)} == {c.name for c in table.columns}
    uniques = insp.get_unique_constraints("feedback")
    assert any(u["column_names"] == ["card_uuid", "outcome", "outcome_timestamp"] for u in uniques)


def test_log_then_read_back(store: Store) -> None:
    created = datetime(2025, 3, 1, 8, 30, 15, 123000, tzinfo=timezone(timedelta(hours=-5)))
    ai = card(
        kind="ai",
        acuity=2,
        indicator="critical",
        created_at=created,
        prompt="<de-identified prompt>",
        report={"acuity": 2, "differential": ["sepsis"]},
        model_version="gpt-oss-20b+lora-0001",
    )
    rules = card(acuity=None, indicator="info", summary="No vital signs recorded", patient_pseudonym=None)
    store.log_cards([rules, ai])
    got = store.get_card(ai.uuid.upper())  # any spelling of the uuid finds it
    assert got is not None
    assert got["uuid"] == ai.uuid
    assert got["created_at"] == created and got["created_at"].tzinfo is not None
    assert got["created_at"].utcoffset() == timedelta(0)
    assert got["rule_inputs"] == ai.rule_inputs
    assert got["report"] == {"acuity": 2, "differential": ["sepsis"]}
    assert (got["kind"], got["acuity"], got["indicator"], got["model_version"]) == (
        "ai",
        2,
        "critical",
        "gpt-oss-20b+lora-0001",
    )
    back = store.get_card(rules.uuid)
    assert back["acuity"] is None and back["patient_pseudonym"] is None and back["prompt"] is None
    assert store.get_card(str(uuid.uuid4())) is None
    assert store.get_card("not-a-uuid") is None
    assert store.count_cards() == 2


def test_logging_a_card_twice_keeps_the_first(store: Store) -> None:
    first = card(summary="first")
    store.log_cards([first])
    store.log_cards([CardLog(**{**first.__dict__, "summary": "second"})])
    assert store.get_card(first.uuid)["summary"] == "first"
    assert store.count_cards() == 1


def test_card_kind_and_acuity_are_constrained(store: Store) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        store.log_cards([card(kind="bogus")])
    with pytest.raises(sa.exc.IntegrityError):
        store.log_cards([card(acuity=9)])
    assert store.count_cards() == 0  # the transaction rolled back


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(sa.exc.StatementError):
        store.log_cards([card(created_at=datetime(2025, 1, 1))])


def test_feedback_is_idempotent_and_unknown_cards_are_flagged(store: Store) -> None:
    c = card()
    store.log_cards([c])
    accepted = FeedbackItem(c.uuid, "accepted", T0, accepted_suggestions=["e56e1945-20b3-4393-8503-a1a20fd73152"])
    # The same instant written in another offset is the same feedback.
    same_instant = FeedbackItem(c.uuid, "accepted", T0.astimezone(timezone(timedelta(hours=2))))
    overridden = FeedbackItem(
        c.uuid,
        "overridden",
        T0 + timedelta(minutes=5),
        override_reason_system="https://example.com/cds-hooks/override-reason-system",
        override_reason_code="d7ecf885",
        override_reason_display="Patient already assessed",
    )
    stray = str(uuid.uuid4())
    r1 = store.save_feedback("triage", [accepted, overridden, FeedbackItem(stray, "overridden", T0)])
    assert r1 == SaveResult(stored=3, duplicates=0, unknown_cards=[stray])
    r2 = store.save_feedback("triage", [same_instant, overridden])
    assert r2 == SaveResult(stored=0, duplicates=2, unknown_cards=[])
    assert store.count_feedback() == 3

    rows = store.feedback_for(c.uuid)
    assert [r["outcome"] for r in rows] == ["accepted", "overridden"]
    assert rows[0]["accepted_suggestions"] == ["e56e1945-20b3-4393-8503-a1a20fd73152"]
    assert rows[0]["outcome_timestamp"] == T0 and rows[0]["card_known"] is True
    assert rows[1]["override_reason_code"] == "d7ecf885"
    assert rows[1]["user_comment"] is None
    assert store.feedback_for(stray)[0]["card_known"] is False


def test_card_of_another_service_counts_as_unknown(store: Store) -> None:
    c = card(service_id="other-service")
    store.log_cards([c])
    result = store.save_feedback("triage", [FeedbackItem(c.uuid, "accepted", T0)])
    assert result.unknown_cards == [c.uuid]


def test_iter_feedback_joined_streams_known_cards_in_order(store: Store) -> None:
    cs = [card() for _ in range(5)]
    store.log_cards(cs)
    items = [FeedbackItem(c.uuid, "accepted", T0 + timedelta(seconds=i)) for i, c in enumerate(cs)]
    items.append(FeedbackItem(str(uuid.uuid4()), "overridden", T0))  # unknown card: not exported
    for item in items:
        store.save_feedback("triage", [item])
    pairs = list(store.iter_feedback_joined(batch_size=2))
    assert [p[0]["uuid"] for p in pairs] == [c.uuid for c in cs]
    assert all(p[0]["uuid"] == p[1]["card_uuid"] for p in pairs)
    assert pairs[0][0]["rule_inputs"] == cs[0].rule_inputs
    assert list(store.iter_feedback_joined(service_id="nope")) == []


def test_concurrent_writers_from_separate_engines(database_url: str) -> None:  # noqa: F811
    """Several 'workers' (one engine each) log cards and post the same feedback at once."""
    Store(database_url).migrate()
    shared = card()
    Store(database_url).log_cards([shared])
    workers = 4
    per_worker = 10
    errors: list[BaseException] = []
    results: list[SaveResult] = []
    barrier = threading.Barrier(workers)

    def work() -> None:
        s = Store(database_url)
        try:
            barrier.wait()
            for i in range(per_worker):
                s.log_cards([card()])
                results.append(s.save_feedback("triage", [FeedbackItem(shared.uuid, "accepted", T0 + timedelta(seconds=i))]))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            s.dispose()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    s = Store(database_url)
    try:
        assert s.count_cards() == 1 + workers * per_worker
        assert s.count_feedback() == per_worker  # one row per distinct (card, outcome, timestamp)
        assert sum(r.stored for r in results) == per_worker
        assert sum(r.duplicates for r in results) == (workers - 1) * per_worker
    finally:
        s.dispose()


def test_concurrent_migrations_do_not_collide(database_url: str) -> None:  # noqa: F811
    errors: list[BaseException] = []

    def migrate() -> None:
        s = Store(database_url)
        try:
            s.migrate()
        except BaseException as exc:
            errors.append(exc)
        finally:
            s.dispose()

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert Store(database_url).current_revision() == HEAD


def test_sqlite_runs_in_wal_mode_with_busy_timeout(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'a' / 'b' / 'x.sqlite'}")
    s.migrate()
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == store_mod.SQLITE_BUSY_TIMEOUT_MS
    assert (tmp_path / "a" / "b" / "x.sqlite").is_file()
    s.dispose()


def test_bad_database_urls_give_clear_errors_without_password() -> None:
    with pytest.raises(StoreError, match="invalid database URL"):
        Store("this is not a url")
    s = Store("postgresql+psycopg://triage:s3cret-pw@127.0.0.1:1/nowhere")
    with pytest.raises(StoreError) as info:
        s.migrate()
    assert "cannot open database" in str(info.value)
    assert "s3cret-pw" not in str(info.value) and "s3cret-pw" not in repr(s)


def test_init_app_defaults_to_sqlite_in_instance_folder(tmp_path: Path) -> None:
    app = Flask("t", instance_path=str(tmp_path / "inst"))
    store = store_mod.init_app(app)
    try:
        assert (tmp_path / "inst" / "triage.sqlite").is_file()
        assert get_store(app) is store
        with app.app_context():
            assert get_store() is store
        assert store.current_revision() == HEAD
    finally:
        store.dispose()


def test_init_app_uses_configured_url(database_url: str) -> None:  # noqa: F811
    app = Flask("t")
    app.config["TRIAGE_DATABASE_URL"] = database_url
    store = store_mod.init_app(app)
    try:
        assert store.url.get_backend_name() == sa.engine.make_url(database_url).get_backend_name()
        store.log_cards([card()])
        assert get_store(app).count_cards() == 1
    finally:
        store.dispose()


def test_get_store_without_init_app_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="init_app"):
        get_store(Flask("t"))
