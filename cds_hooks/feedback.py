"""``POST /cds-services/<service_id>/feedback``: clinicians' accept/override outcomes (CDS Hooks 2.0).

Choices where the specification leaves room:

- The whole body is validated before anything is stored; one invalid entry answers 400 naming the
  field (``feedback.0.outcome``), never the value sent.
- ``card`` must be a UUID: every card this service issues has one.
- Feedback about a card this service never issued (unknown uuid, or another service's card) is
  stored anyway with ``card_known = false`` rather than lost or refused: it may come from a card
  logged before a database move, and it is excluded from the training export.
- ``acceptedSuggestions`` is accepted missing on ``accepted`` outcomes (our cards may carry no
  suggestions, and clients differ); ``outcomeTimestamp`` without an offset is read as UTC, which
  the specification says it is.
- ``overrideReason.userComment`` is clinician free text that may hold PHI. It is stored only after
  the de-identification scrubber registered as ``app.extensions["triage_scrub_text"]`` (a
  ``str -> str`` callable) has run on it; with no scrubber registered, or if the scrubber fails,
  the comment is dropped and the rest of the feedback is stored.
- Repeats of (card, outcome, outcomeTimestamp) are idempotent no-ops: clients may resend.
- 200 is returned only after the transaction has committed; a database outage answers 503 so the
  client retries.
"""
from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from cds_hooks.schemas import validation_summary
from cds_hooks.store import FeedbackItem, get_store

log = logging.getLogger(__name__)

bp = Blueprint("cds_feedback", __name__)

SCRUBBER_KEY = "triage_scrub_text"
MAX_ENTRIES = 100
MAX_COMMENT_CHARS = 10_000


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError("must be a card uuid") from None


# Years 1900-2999: a feedback time outside them is a client bug, and the range keeps every
# offset inside what datetime can hold (0001-01-01T00:00+02:00 is before year 1 in UTC).
TIMESTAMP_PATTERN = r"^(19|2[0-9])[0-9]{2}-"


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError("must be an ISO 8601 / RFC 3339 date-time string")
    if not re.match(TIMESTAMP_PATTERN, value):
        raise ValueError("must be an ISO 8601 / RFC 3339 date-time between the years 1900 and 2999")
    try:
        parsed = datetime.fromisoformat(value)
        # OverflowError: an offset that moves the instant out of years 1-9999 (0001-01-01T00:00+02:00)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError("must be an ISO 8601 / RFC 3339 date-time") from None


Text = Annotated[str, Field(min_length=1, max_length=512)]


class _In(BaseModel):
    model_config = ConfigDict(extra="allow")  # spec extensions are tolerated


class FeedbackCoding(_In):
    system: Text
    code: Annotated[str, Field(min_length=1, max_length=256)]
    display: Annotated[str, Field(max_length=512)] | None = None


class FeedbackOverrideReason(_In):
    reason: FeedbackCoding | None = None
    userComment: Annotated[str, Field(max_length=MAX_COMMENT_CHARS)] | None = None


class AcceptedSuggestion(_In):
    id: Annotated[str, Field(min_length=1, max_length=128)]


class FeedbackEntry(_In):
    card: Annotated[str, AfterValidator(_uuid)]
    outcome: Literal["accepted", "overridden"]
    outcomeTimestamp: Annotated[datetime, BeforeValidator(_timestamp)]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: FeedbackOverrideReason | None = None


class FeedbackRequest(_In):
    feedback: Annotated[list[FeedbackEntry], Field(min_length=1, max_length=MAX_ENTRIES)]


def _error(status: int, error: str, message: str | None = None) -> Response:
    body = {"error": error}
    if message:
        body["message"] = message
    response = jsonify(body)
    response.status_code = status
    return response


def _scrubbed(comment: str | None, scrub: Callable[[str], str] | None) -> str | None:
    if not comment or not comment.strip():
        return None
    if scrub is None:
        return None  # no de-identification available: never store raw clinician text
    try:
        cleaned = scrub(comment)
    except Exception as exc:  # fail closed: drop the comment, keep the outcome
        log.warning("userComment scrubber failed (%s): comment dropped", type(exc).__name__)
        return None
    return cleaned if isinstance(cleaned, str) and cleaned.strip() else None


def _items(body: FeedbackRequest, scrub: Callable[[str], str] | None) -> list[FeedbackItem]:
    items = []
    for entry in body.feedback:
        reason = entry.overrideReason.reason if entry.overrideReason else None
        items.append(
            FeedbackItem(
                card_uuid=entry.card,
                outcome=entry.outcome,
                outcome_timestamp=entry.outcomeTimestamp,
                override_reason_system=reason.system if reason else None,
                override_reason_code=reason.code if reason else None,
                override_reason_display=reason.display if reason else None,
                user_comment=_scrubbed(entry.overrideReason.userComment if entry.overrideReason else None, scrub),
                accepted_suggestions=[s.id for s in entry.acceptedSuggestions] if entry.acceptedSuggestions else None,
            )
        )
    return items


def _service_known(service_id: str) -> bool:
    registry = current_app.extensions.get("triage_registry")
    return registry is not None and registry.get(service_id) is not None


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    if not _service_known(service_id):
        return _error(404, "unknown_service", "no CDS Service with this id")
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not (mimetype.startswith("application/") and mimetype.endswith("+json")):
        return _error(415, "unsupported_media_type", "Content-Type must be application/json")
    try:
        raw = json.loads(request.get_data(cache=True).decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _error(400, "malformed_json", "the body is not valid UTF-8 JSON")
    if not isinstance(raw, dict):
        return _error(400, "invalid_request", "the body must be a JSON object")
    try:
        body = FeedbackRequest.model_validate(raw)
    except ValidationError as exc:
        return _error(400, "invalid_request", validation_summary(exc))
    items = _items(body, current_app.extensions.get(SCRUBBER_KEY))
    try:
        result = get_store().save_feedback(service_id, items)
    except sa.exc.OperationalError as exc:  # database down or locked too long: the client should retry
        log.error("feedback not stored: database unavailable (%s)", type(exc.orig).__name__ if exc.orig else "")
        response = _error(503, "unavailable", "feedback could not be stored; retry later")
        response.headers["Retry-After"] = "5"
        return response
    if result.unknown_cards:
        log.info("feedback for %d card(s) this service has no record of: stored, flagged", len(result.unknown_cards))
    answer: dict[str, Any] = {"stored": result.stored, "duplicates": result.duplicates}
    if result.unknown_cards:
        answer["unknownCards"] = len(result.unknown_cards)
    return jsonify(answer)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
