"""Log lines as JSON objects (python-json-logger), each with the request id of the request it belongs to.

The request id is the caller's `X-Request-ID` when it is a plain token (letters, digits, `._-`,
at most 64), else a new UUID; it is sent back in `X-Request-ID` and stored in the audit table,
so one id finds a call in the EHR's logs, ours and the audit. What is logged was already chosen
to hold no patient data (routes not paths, field names not values, exception types not
messages); this module only adds the shape and the id. `TRIAGE_LOG_FORMAT=text` keeps plain lines.
"""
from __future__ import annotations

import logging
import re
import sys
import uuid

from flask import Flask, Response, g, has_request_context, request
from pythonjsonlogger.json import JsonFormatter

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


class RequestContextFilter(logging.Filter):
    """Adds `request_id` (and `hook_instance` once known) to records made inside a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context():
            record.request_id = g.get("request_id")
            hook_instance = g.get("hook_instance")
            if hook_instance:
                record.hook_instance = hook_instance
        return True


def json_formatter() -> logging.Formatter:
    return JsonFormatter(FIELDS, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         timestamp=False)


def handler(stream: object = None, *, fmt: str = "json") -> logging.Handler:
    out = logging.StreamHandler(stream or sys.stderr)
    out.setFormatter(json_formatter() if fmt == "json" else
                     logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s",
                                       defaults={"request_id": "-"}))
    out.addFilter(RequestContextFilter())
    return out


def _assign_request_id() -> None:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex


def _echo_request_id(response: Response) -> Response:
    if g.get("request_id"):
        response.headers[REQUEST_ID_HEADER] = g.request_id
    return response


def init_app(app: Flask) -> None:
    """Request ids on every request; one JSON (or text) handler on the root logger, unless the
    host (pytest, an embedding application) has configured logging already."""
    app.before_request(_assign_request_id)
    app.after_request(_echo_request_id)
    level = str(app.config.get("TRIAGE_LOG_LEVEL") or "INFO").upper()
    logging.getLogger("cds_hooks").setLevel(getattr(logging, level, logging.INFO))
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler(fmt=str(app.config.get("TRIAGE_LOG_FORMAT") or "json").lower()))
        root.setLevel(logging.INFO)
