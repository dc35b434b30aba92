"""`triage monitor report`: the monitoring report from the card and feedback store.

Reads the cards of the window and of the reference window before it, and the feedback on them,
from `TRIAGE_DATABASE_URL` (or `--database-url`), and hands plain rows to `model.monitor`.
Exit status: 0, or 1 when an `--alert` threshold is crossed (for a scheduled job), 2 for bad input.
"""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from cds_hooks.serve import _OneLineCommand


@click.group()
def monitor() -> None:
    """How nurses answer the cards over time; acuity drift; AI pending and disagreement."""


@monitor.command("report", cls=_OneLineCommand)
@click.option("--since", default="30d", show_default=True, help="Window: this long before --until (30d, 12h, 2w).")
@click.option("--until", "until_", default=None, help="End of the window (ISO date-time, UTC); default now.")
@click.option("--reference", default=None, help="Reference window length before the window; default = --since.")
@click.option("--period", default="7d", show_default=True, help="Length of each period of the over-time plot.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("monitor-report"),
              show_default=True, help="Folder for index.html, summary.json and the PNG plots.")
@click.option("--database-url", envvar="TRIAGE_DATABASE_URL", default=None,
              help="Card/feedback store (default: TRIAGE_DATABASE_URL).")
@click.option("--alert", "alerts", multiple=True, metavar="NAME>VALUE",
              help="Exit 1 when crossed, e.g. override_rate.ai>0.4, psi.rules>0.25, pending_rate>0.5, "
                   "disagreement>0.3, ai_less_urgent>0.1. Repeatable.")
def report(since: str, until_: str | None, reference: str | None, period: str, out_dir: Path,
           database_url: str | None, alerts: tuple[str, ...]) -> None:
    """Write the monitoring report (HTML + PNG + JSON) and check alert thresholds."""
    from model.monitor import Alert, MonitorError, MonitorInput, check_alerts, parse_duration, summarize, write_report

    try:
        window = parse_duration(since)
        ref = parse_duration(reference) if reference else window
        step = parse_duration(period)
        parsed_alerts = [Alert.parse(a) for a in alerts]
        end = _parse_time(until_) if until_ else datetime.now(UTC)
    except MonitorError as exc:
        raise _bad_input(str(exc)) from None
    if not database_url:
        raise _bad_input("no database: set TRIAGE_DATABASE_URL or --database-url")
    start = end - window
    reference_start = start - ref
    cards, feedback = _read(database_url, reference_start, end)
    summary = summarize(MonitorInput(cards=cards, feedback=feedback, start=start, end=end,
                                     reference_start=reference_start, period=step))
    crossed = check_alerts(summary, parsed_alerts)
    files = write_report(summary, out_dir, alerts=crossed)
    fb = summary["feedback"]
    click.echo(f"{sum(summary['cards']['window'].values())} cards, {fb['all']['answered']} answered; "
               f"override rules {_pct(fb['rules']['override_rate'])}, AI {_pct(fb['ai']['override_rate'])}; "
               f"PSI rules {_num(summary['acuity']['rules']['psi'])}; "
               f"pending {_pct(summary['ai_pending']['pending_rate'])} -> {files['html']}")
    for line in crossed:
        click.echo(line, err=True)
    if crossed:
        raise SystemExit(1)


def _bad_input(message: str) -> click.ClickException:
    """One `Error: ...` line and exit status 2, like a usage error without the usage block."""
    error = click.ClickException(message)
    error.exit_code = 2
    return error


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _bad_input(f"--until: not an ISO date-time: {text!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _read(url: str, start: datetime, end: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from cds_hooks.store import Store, StoreError, cards, feedback

    try:
        store = Store(url)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    columns = [cards.c.uuid, cards.c.hook_instance, cards.c.created_at, cards.c.kind, cards.c.acuity,
               cards.c.indicator, cards.c.model_version]
    try:
        with store.engine.connect() as conn:
            card_rows = [dict(r) for r in conn.execute(
                sa.select(*columns).where(cards.c.created_at >= start, cards.c.created_at < end)).mappings()]
            fb_rows = [dict(r) for r in conn.execute(
                sa.select(feedback.c.card_uuid, feedback.c.outcome, feedback.c.outcome_timestamp,
                          feedback.c.override_reason_code)
                .join(cards, cards.c.uuid == feedback.c.card_uuid)
                .where(cards.c.created_at >= start, cards.c.created_at < end)).mappings()]
    except sa.exc.OperationalError as exc:
        raise click.ClickException(f"cannot read the database: {type(exc.orig).__name__ if exc.orig else 'error'}") from None
    finally:
        store.dispose()
    return card_rows, fb_rows
