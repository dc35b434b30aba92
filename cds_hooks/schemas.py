"""Pydantic v2 models of the CDS Hooks 2.0 wire format, and the one serializer that writes them.

Field names are the wire names (camelCase), so nothing is lost to an alias mismatch. Requests are
validated strictly where the spec says REQUIRED and tolerantly elsewhere (unknown fields and
`extension` objects are accepted). Responses are built from these models and written with
`to_wire`, which drops every null and empty value (spec: "JSON elements SHALL NOT be null or
empty"), except the top-level `cards: []` / `services: []` that mean "no guidance" / "no services".
"""
from __future__ import annotations

import re
import uuid as _uuid
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

__all__ = [
    "Action", "Card", "Coding", "DiscoveryResponse", "FhirAuthorization", "HookRequest",
    "HookResponse", "Link", "PatientViewContext", "ServiceDescriptor", "Source", "Suggestion",
    "ValidationError", "prune_empty", "to_wire", "validation_summary",
]

# FHIR id: [A-Za-z0-9\-\.]{1,64}. Enforced on ids that end up in FHIR URLs we call.
_FHIR_ID = r"^[A-Za-z0-9\-.]{1,64}$"
_REFERENCE = r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}$"


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError("must be an absolute http(s) URL")
    return value


def _absolute_url(value: str) -> str:
    parts = urlsplit(value)
    if not parts.scheme or not (parts.netloc or parts.path):
        raise ValueError("must be an absolute URL")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
AbsoluteUrl = Annotated[str, AfterValidator(_absolute_url)]
NonEmpty = Annotated[str, Field(min_length=1)]


class _Wire(BaseModel):
    """Base of the models we send: exact field names, no surprises."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Incoming(BaseModel):
    """Base of the models we receive: unknown fields are tolerated (spec extensions)."""

    model_config = ConfigDict(extra="allow")


# --- Discovery ------------------------------------------------------------------------------


class ServiceDescriptor(_Wire):
    hook: NonEmpty
    title: str | None = None
    description: NonEmpty
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9\-_.]{1,64}$")]
    prefetch: dict[str, NonEmpty] | None = None
    usageRequirements: str | None = None
    extension: dict[str, Any] | None = None


class DiscoveryResponse(_Wire):
    services: list[ServiceDescriptor]


# --- Hook request ---------------------------------------------------------------------------


class FhirAuthorization(_Incoming):
    # SecretStr: the token never shows in a repr, a log line or a validation message.
    access_token: SecretStr = Field(min_length=1)
    token_type: Annotated[str, Field(pattern=r"^[Bb]earer$")]
    expires_in: int
    scope: NonEmpty
    subject: NonEmpty
    patient: Annotated[str, Field(pattern=_FHIR_ID)] | None = None


class HookRequest(_Incoming):
    hook: NonEmpty
    hookInstance: Annotated[str, Field(min_length=1, max_length=64)]  # a UUID; logged with cards
    fhirServer: HttpUrl | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _server_with_token(self) -> HookRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirServer is required when fhirAuthorization is given")
        return self

    @property
    def bearer_token(self) -> str | None:
        auth = self.fhirAuthorization
        return auth.access_token.get_secret_value() if auth is not None else None


class PatientViewContext(_Incoming):
    userId: Annotated[str, Field(pattern=_REFERENCE)]
    patientId: Annotated[str, Field(pattern=_FHIR_ID)]
    encounterId: Annotated[str, Field(pattern=_FHIR_ID)] | None = None


# --- Response -------------------------------------------------------------------------------


class Coding(_Wire):
    system: NonEmpty
    code: NonEmpty
    display: str | None = None


class OverrideReason(Coding):
    display: NonEmpty  # spec: MUST populate display on override reasons


class Source(_Wire):
    label: NonEmpty
    url: AbsoluteUrl | None = None
    icon: AbsoluteUrl | None = None
    topic: Coding | None = None


class Action(_Wire):
    type: Literal["create", "update", "delete"]
    description: NonEmpty
    resource: dict[str, Any] | None = None
    resourceId: str | None = None

    @model_validator(mode="after")
    def _resource_for_type(self) -> Action:
        if self.type in {"create", "update"} and not self.resource:
            raise ValueError(f"a {self.type} action needs a resource")
        if self.type == "delete" and not self.resourceId:
            raise ValueError("a delete action needs a resourceId")
        return self


class Suggestion(_Wire):
    label: NonEmpty
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[Action] | None = None


class Link(_Wire):
    label: NonEmpty
    url: AbsoluteUrl
    type: Literal["absolute", "smart"]
    appContext: str | None = None
    autolaunchable: bool | None = None

    @model_validator(mode="after")
    def _app_context_only_for_smart(self) -> Link:
        if self.appContext is not None and self.type != "smart":
            raise ValueError("appContext is only valid on smart links")
        return self


class Card(_Wire):
    uuid: str = Field(default_factory=lambda: str(_uuid.uuid4()))
    summary: Annotated[str, Field(min_length=1, max_length=139)]  # spec: < 140 characters
    detail: str | None = None  # GitHub-flavoured Markdown
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[OverrideReason] | None = None
    links: list[Link] | None = None

    @model_validator(mode="after")
    def _selection_with_suggestions(self) -> Card:
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("selectionBehavior is required when suggestions are present")
        if self.selectionBehavior == "at-most-one" and self.suggestions:
            if sum(bool(s.isRecommended) for s in self.suggestions) > 1:
                raise ValueError("at most one suggestion may be recommended with at-most-one")
        return self


class HookResponse(_Wire):
    cards: list[Card] = Field(default_factory=list)
    systemActions: list[Action] | None = None


# --- Serialization --------------------------------------------------------------------------

_EMPTY: tuple[Any, ...] = (None, "", [], {})


def prune_empty(value: Any, keep: frozenset[str] = frozenset()) -> Any:
    """Drop null and empty values at every depth; `keep` names top-level keys kept even if empty.

    A container that becomes empty after pruning is dropped too. `False` and `0` are values.
    """
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            pruned = prune_empty(item)
            if key in keep or not _is_empty(pruned):
                out[key] = pruned if pruned is not None else []
        return out
    if isinstance(value, list):
        return [p for p in (prune_empty(item) for item in value) if not _is_empty(p)]
    return value


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, dict)) and len(value) == 0)


def to_wire(model: BaseModel) -> dict[str, Any]:
    """The JSON object to send: no null, no empty value, except top-level `cards`/`services`."""
    data = model.model_dump(mode="json", exclude_none=True)
    return prune_empty(data, keep=frozenset({"cards", "services"}))


def validation_summary(exc: ValidationError, prefix: str = "", limit: int = 5) -> str:
    """Which fields are wrong and why, never the values that were sent (they may hold PHI)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        msg = re.sub(r"\s+", " ", err["msg"])[:120]
        parts.append(f"{prefix}{loc}: {msg}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)
