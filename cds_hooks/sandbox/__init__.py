"""The EHR sandbox page (`TRIAGE_SANDBOX=1`; on in `make serve`, off by default elsewhere).

`GET /sandbox` shows what a nurse sees in a record system: pick a shared Synthea patient, a
reference vignette (the evaluation's development set) or a packaged example, or upload a Bundle; edit the vital signs and the chief complaint; fire
`patient-view` through the real endpoint and the real JWT check (a token signed by the sandbox's
development key, which only the sandbox trusts); the cards render as EHRs render them (indicator
colour and word, summary, Markdown detail made safe, source and its link, suggestions, links);
"being prepared" refreshes into the AI card; accept and override (with the service's override
reasons) post real feedback. Everything works by keyboard.

The helper endpoints under `/sandbox/api/` build requests and sign tokens; they answer only
loopback callers, since a signed token is a key to the service. Never turn the sandbox on in a
deployment reachable by others.
"""
from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request, send_from_directory

from cds_hooks import auth
from cds_hooks.errors import ApiError
from cds_hooks.sandbox import keys, markdown, patients

log = logging.getLogger(__name__)

bp = Blueprint("sandbox", __name__, url_prefix="/sandbox", template_folder="templates")
STATIC = Path(__file__).resolve().parent / "static"

EXTENSION_KEY = "triage_sandbox_key"
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fhir" / "synthea-bundles"
DEFAULT_VIGNETTES = ROOT / "eval" / "vignettes" / "dev.jsonl"  # development set only, never held-out


def _loopback_only() -> None:
    try:
        loopback = ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ApiError(403, "forbidden", "the sandbox answers loopback callers only")


def _folder() -> str | None:
    folder = current_app.config.get("TRIAGE_SANDBOX_DATA")
    if folder:
        return str(folder)
    return str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else None


def _vignettes() -> str | None:
    path = current_app.config.get("TRIAGE_SANDBOX_VIGNETTES")
    if path:
        return str(path)
    return str(DEFAULT_VIGNETTES) if DEFAULT_VIGNETTES.is_file() else None


def _body() -> dict[str, Any]:
    from cds_hooks.app import read_json_object

    return read_json_object()


@bp.get("")
@bp.get("/")
@auth.exempt
def page() -> Response:
    _loopback_only()
    reports = getattr(current_app.extensions.get("triage_runtime"), "reports", None)
    ai_mode = "AI reports on" if reports is not None and reports.enabled else "rules-only (no AI model configured)"
    response = Response(render_template("sandbox.html", ai_mode=ai_mode))
    # The page's own script and style only: no inline script, nothing from elsewhere.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/static/<path:filename>")
@auth.exempt
def asset(filename: str) -> Response:
    _loopback_only()
    return send_from_directory(STATIC, filename, max_age=0)


@bp.get("/api/patients")
@auth.exempt
def list_patients() -> Response:
    _loopback_only()
    return jsonify({"patients": list(patients.patient_list(_folder(), _vignettes()))})


@bp.post("/api/defaults")
@auth.exempt
def form_defaults() -> Response:
    _loopback_only()
    body = _body()
    try:
        return jsonify(patients.defaults(str(body.get("source") or ""), _folder(), body.get("bundle"), _vignettes()))
    except patients.SandboxInputError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None


@bp.post("/api/hook-request")
@auth.exempt
def build_hook_request() -> Response:
    """The patient-view body for the chosen patient and the edited vitals, and a token for it."""
    _loopback_only()
    body = _body()
    vitals = body.get("vitals") if isinstance(body.get("vitals"), dict) else {}
    try:
        resources = patients.load_source(str(body.get("source") or ""), _folder(), body.get("bundle"), _vignettes())
        hook_body = patients.hook_request(resources, vitals, str(body.get("complaint") or ""))
    except patients.SandboxInputError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    service = str(body.get("service") or "triage")
    return jsonify({"url": f"/cds-services/{service}", "body": hook_body,
                    "token": _token(f"/cds-services/{service}")})


@bp.post("/api/token")
@auth.exempt
def token() -> Response:
    _loopback_only()
    path = str(_body().get("path") or "")
    registry = current_app.extensions["triage_registry"]
    parts = path.strip("/").split("/")
    if not (len(parts) in (2, 3) and parts[0] == "cds-services" and registry.get(parts[1]) is not None
            and (len(parts) == 2 or parts[2] == "feedback")):
        raise ApiError(400, "invalid_request", "path: a CDS Service or its feedback endpoint")
    return jsonify({"token": _token(path)})


@bp.post("/api/render")
@auth.exempt
def render_cards() -> Response:
    """Each card's Markdown detail as safe HTML, and its kind (rules, ai, pending)."""
    _loopback_only()
    cards = _body().get("cards")
    if not isinstance(cards, list) or len(cards) > 50:
        raise ApiError(400, "invalid_request", "cards: a list of at most 50 cards")
    from cds_hooks.ai_cards import AI_TOPIC, PENDING_SUMMARY

    out = []
    for card in cards:
        card = card if isinstance(card, dict) else {}
        source = card.get("source") if isinstance(card.get("source"), dict) else {}
        topic = source.get("topic") if isinstance(source.get("topic"), dict) else {}
        kind = "rules"
        if topic.get("code") == AI_TOPIC.code:
            kind = "pending" if card.get("summary") == PENDING_SUMMARY else "ai"
        detail = card.get("detail")
        out.append({"html": markdown.render(detail) if isinstance(detail, str) else "", "kind": kind})
    return jsonify({"cards": out})


def _token(path: str) -> str | None:
    authenticator = current_app.extensions.get(auth.EXTENSION_KEY)
    if authenticator is None:
        return None  # TRIAGE_INSECURE_NO_AUTH: the service checks no token
    audience = auth._normalise_url((authenticator.public_base_url or auth._normalise_url(request.url_root)) + path)
    return keys.sign(current_app.extensions[EXTENSION_KEY], audience)


def init_app(app: Flask) -> None:
    """Register the sandbox when `TRIAGE_SANDBOX` is on; trust its key (and only then)."""
    if not auth._truthy(app.config.get("TRIAGE_SANDBOX")):
        return
    key = keys.load_or_create(app.instance_path)
    app.extensions[EXTENSION_KEY] = key
    authenticator = app.extensions.get(auth.EXTENSION_KEY)
    if authenticator is not None:
        authenticator.trust(keys.SANDBOX_ISS, keys.public_jwks(key))
    log.warning("TRIAGE_SANDBOX is on: /sandbox signs client JWTs for loopback callers (development only)")
    app.register_blueprint(bp)
