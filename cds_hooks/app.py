"""Flask application factory of the CDS Hooks service.

Every error is a JSON object (`{"error": slug, "message": ...}`), never an HTML page or a
traceback. Messages name fields, never the values sent (they may hold PHI). Request logs carry
method, route, status and time only: no bodies, no tokens, no query strings.
"""
from __future__ import annotations

import json
import logging
import os
import time
import traceback
import uuid
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException

from cds_hooks import auth, metrics, store
from cds_hooks.config import load_settings
from cds_hooks.errors import ApiError, PreconditionFailed  # noqa: F401 (re-exported)
from cds_hooks.schemas import HookRequest, ValidationError, to_wire, validation_summary
from cds_hooks.services import REGISTRY, Registry

log = logging.getLogger("cds_hooks")
access_log = logging.getLogger("cds_hooks.access")

api = Blueprint("cds_services", __name__)

JSON_MIMETYPES = {"application/json"}


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the service: settings from `TRIAGE_*` variables, then `test_config` on top."""
    settings = load_settings()
    if test_config:
        settings.update(test_config)
    instance_path = settings.get("TRIAGE_INSTANCE_DIR") or None
    app = Flask("cds_hooks", instance_path=instance_path, instance_relative_config=True)
    app.config.update(settings)
    app.config["MAX_CONTENT_LENGTH"] = int(app.config["TRIAGE_MAX_BODY_BYTES"])
    app.json.sort_keys = False  # keep the spec's field order: easier to read in EHR logs
    os.makedirs(app.instance_path, exist_ok=True)
    from cds_hooks import logs

    logs.init_app(app)  # first: its request id is set before any other hook of the request runs

    app.extensions["triage_registry"] = app.config.get("TRIAGE_REGISTRY") or REGISTRY
    origins = [o.strip() for o in str(app.config["TRIAGE_CORS_ORIGINS"]).split(",") if o.strip()]
    CORS(
        app,
        resources={r"/cds-services*": {"origins": origins or "*"}},
        allow_headers=["Authorization", "Content-Type"],
        methods=["GET", "POST", "OPTIONS"],
        max_age=600,
    )
    app.before_request(_start_timer)  # first, so requests refused by auth are timed too
    app.after_request(_log_request)
    auth.init_app(app)
    store.init_app(app)

    from cds_hooks.hook import Runtime

    app.extensions["triage_runtime"] = runtime = Runtime.from_app(app)
    # The AI report estimate and the hooks' wait decisions of this process (for a /metrics).
    app.extensions["triage_report_stats"] = runtime.reports.stats
    from cds_hooks.ai_cards import describe_ai_mode

    # Discovery says whether AI reports are on ("rules-only" when no model is configured).
    app.extensions["triage_registry"] = describe_ai_mode(app.extensions["triage_registry"], runtime.reports)

    from cds_hooks.feedback import bp as feedback_bp

    app.register_blueprint(api)
    app.register_blueprint(feedback_bp)
    from cds_hooks import audit, health, metrics, openapi

    openapi.init_app(app)
    health.init_app(app)
    metrics.init_app(app)
    audit.init_app(app)
    from cds_hooks import sandbox

    sandbox.init_app(app)  # only with TRIAGE_SANDBOX=1
    _register_error_handlers(app)
    return app


def registry(app: Flask | None = None) -> Registry:
    return (app or current_app).extensions["triage_registry"]


# --- Routes ---------------------------------------------------------------------------------


@api.get("/cds-services")
def discovery() -> Response:
    return jsonify(to_wire(registry().discovery()))


@api.post("/cds-services/<service_id>")
def invoke(service_id: str) -> Response:
    service = registry().get(service_id)
    if service is None:
        raise ApiError(404, "unknown_service", "no CDS Service with this id")
    body = read_json_object()
    try:
        hook_request = HookRequest.model_validate(body)
    except ValidationError as exc:
        raise ApiError(400, "invalid_request", validation_summary(exc)) from None
    if hook_request.hook != service.hook:
        raise ApiError(400, "wrong_hook", f"this service answers the {service.hook} hook")
    try:
        context = service.context_model.model_validate(hook_request.context)
    except ValidationError as exc:
        raise ApiError(400, "invalid_context", validation_summary(exc, prefix="context.")) from None
    g.hook_instance = hook_request.hookInstance
    handler = service.resolve_handler()
    runtime = current_app.extensions["triage_runtime"]
    response = handler(hook_request, context, runtime, service)
    if service.hook == "patient-view":
        reports = runtime.reports
        metrics.observe_ai_cards(metrics.ai_card_kinds(response.cards), reports is not None and reports.enabled)
    return jsonify(to_wire(response))


def read_json_object() -> dict[str, Any]:
    """The request body as a JSON object, or an ApiError (415, 413, 400)."""
    mimetype = request.mimetype or ""
    if mimetype not in JSON_MIMETYPES and not (mimetype.startswith("application/") and mimetype.endswith("+json")):
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    raw = request.get_data(cache=True)  # raises 413 above MAX_CONTENT_LENGTH
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "malformed_json", "the body is not valid UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# --- Errors and logs ------------------------------------------------------------------------


def _error(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    response = jsonify({k: v for k, v in payload.items() if v})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return _error(exc.status, {"error": exc.error, "message": exc.message})

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        # Only the standard reason: a 401 says nothing about why (auth best practice).
        keep = {k: v for k, v in exc.get_headers() if k.lower() in {"allow", "www-authenticate", "retry-after"}}
        slug = (exc.name or "error").lower().replace(" ", "_")
        return _error(exc.code or 500, {"error": slug}, keep)

    @app.errorhandler(sa.exc.OperationalError)
    @app.errorhandler(sa.exc.InterfaceError)
    def _database_unavailable(exc: sa.exc.DBAPIError) -> Response:
        # Cards are logged before they are returned (feedback needs them): with the database
        # down or restarting, the documented answer is 503 and a retry, not a 500.
        log.error("database unavailable (%s): 503", type(exc.orig).__name__ if exc.orig else type(exc).__name__)
        return _error(503, {"error": "unavailable", "message": "the database is unavailable; retry later"},
                      {"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        error_id = uuid.uuid4().hex
        # Type and frame locations only: messages (and source lines) may quote request data.
        frames = "\n".join(f"  {f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__))
        log.error("unhandled %s error_id=%s\n%s", type(exc).__name__, error_id, frames)
        return _error(500, {"error": "internal_error", "errorId": error_id})


def _start_timer() -> None:
    g.started = time.perf_counter()


def _log_request(response: Response) -> Response:
    started = g.get("started")
    elapsed_ms = (time.perf_counter() - started) * 1000 if started else -1.0
    rule = request.url_rule.rule if request.url_rule is not None else "(no route)"
    service_id = (request.view_args or {}).get("service_id") if request.endpoint == "cds_services.invoke" else None
    if service_id is not None and registry().get(service_id) is None:
        service_id = "(unknown)"  # label values stay a bounded set
    metrics.observe_request(rule, service_id, response.status_code, max(elapsed_ms, 0.0) / 1000)
    access_log.info(
        "%s %s %s %.1fms%s",
        request.method,
        rule,
        response.status_code,
        elapsed_ms,
        f" hookInstance={g.hook_instance}" if g.get("hook_instance") else "",
        extra={"method": request.method, "route": rule, "status": response.status_code,
               "ms": round(elapsed_ms, 1)},
    )
    return response
