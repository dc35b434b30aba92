"""`triage serve`: the service under gunicorn; Flask's development server only with `--debug`.

Settings come from `TRIAGE_*` environment variables (see `cds_hooks.config`). Any bad option or
setting stops the command with one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import errno
import socket
from typing import Any

import click

from cds_hooks.config import SettingsError, describe


class _OneLineCommand(click.Command):
    """Usage errors print as a single `Error: ...` line (no usage block), exit status 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            error = click.ClickException(exc.format_message().replace("\n", " "))
            error.exit_code = 2
            raise error from None


def _check_bindable(host: str, port: int) -> None:
    """Fail fast with one line instead of gunicorn's retry loop when the address is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise click.ClickException(f"cannot resolve host {host!r}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise click.ClickException(f"cannot listen on {host}:{port}: {reason}") from None


def _build_app() -> Any:
    from cds_hooks.app import create_app
    from cds_hooks.auth import AuthConfigError
    from deidentify.pseudonym import MissingKeyError

    try:
        return create_app()
    except SettingsError as exc:
        raise click.ClickException(f"bad setting {exc}") from None
    except (AuthConfigError, MissingKeyError) as exc:
        raise click.ClickException(str(exc).replace("\n", " ")) from None


def _warm_worker(worker: Any) -> None:
    """gunicorn post_worker_init: what the first call would pay inside its deadline is paid here
    (lazy parsing state, the embedded report worker process)."""
    from cds_hooks.hook import warm_up

    runtime = getattr(worker.wsgi, "extensions", {}).get("triage_runtime")
    if runtime is not None:
        warm_up(runtime)


def _gunicorn_app(options: dict[str, Any]) -> Any:
    from gunicorn.app.base import BaseApplication

    class TriageGunicorn(BaseApplication):
        def __init__(self) -> None:
            self.options = options
            super().__init__()

        def load_config(self) -> None:
            for key, value in self.options.items():
                if key in self.cfg.settings and value is not None:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            # Each worker builds its own app: no database connection crosses a fork.
            return _build_app()

    return TriageGunicorn()


def _child_exit(_server: Any, worker: Any) -> None:
    from cds_hooks.metrics import mark_process_dead

    mark_process_dead(worker.pid)


@click.command(cls=_OneLineCommand, epilog="Settings (environment):\n\n" + describe().replace("\n", "\n\n"))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="TCP port.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="gunicorn worker processes (about one per CPU core).")
@click.option("--threads", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Request threads per worker (gthread): a call waiting for an AI report holds a "
                   "thread, never a whole worker.")
@click.option("--worker-class", type=click.Choice(["gthread", "sync"]), default="gthread", show_default=True,
              help="gunicorn worker class: gthread (threads; measured in docs/deployment.md) or sync "
                   "(one call per worker at a time).")
@click.option("--keepalive", type=click.IntRange(0, 300), default=0, show_default=True,
              help="Seconds a gthread worker keeps an idle client connection open; 0 closes it after "
                   "each response, so every call is accepted by whichever worker is least busy.")
@click.option("--debug", is_flag=True, help="Flask's development server with the debugger (never in production).")
def serve(host: str, port: int, workers: int, threads: int, worker_class: str, keepalive: int,
          debug: bool) -> None:
    """Run the CDS Hooks service (discovery at /cds-services)."""
    if not host.strip():
        raise click.ClickException("--host must not be empty")
    _check_bindable(host, port)
    from cds_hooks.metrics_dir import prepare_multiprocess

    prepare_multiprocess()  # before any metric exists: every worker then writes to the shared folder
    # Built once here: bad settings fail before any worker starts, and migrations run once.
    app = _build_app()
    if debug:
        app.run(host=host, port=port, debug=True, use_reloader=False)
        return
    from cds_hooks.store import get_store

    get_store(app).dispose()
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    _gunicorn_app(
        {
            "bind": bind,
            "workers": workers,
            # gthread: a hook call waiting for an AI report (or the EHR's FHIR server) holds one
            # of `threads` threads; with sync workers it held the whole process (issue 16).
            "worker_class": worker_class,
            "threads": threads if worker_class == "gthread" else 1,
            "keepalive": keepalive,
            "accesslog": None,  # the app logs requests itself, without query strings or bodies
            "errorlog": "-",
            "loglevel": "info",
            "timeout": 30,
            "graceful_timeout": 10,
            "proc_name": "triage-cds",
            "post_worker_init": _warm_worker,
            "child_exit": _child_exit,
        }
    ).run()
