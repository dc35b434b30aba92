"""`GET /openapi.json`: an OpenAPI 3.1 description of this service, generated from the models that
validate the traffic (so the description cannot drift from what the service accepts).

Schema and operation names follow the CDS Hooks community definitions (github.com/cds-hooks/api:
`CdsServiceInformation`, `CdsService`, `CdsRequest`, `CdsResponse`, `Card`, `Feedback`,
`cdsServicesGet`, `cdsServicePost`, `cdsServiceFeedbackPost`, the `clientIssuedJwt` scheme).
Where the community file has one templated `/cds-services/{serviceId}`, this one lists each
registered service's own path, with that hook's context model, so that a client (or a fuzzer)
sees exactly what each service takes. Every error answers the one `Error` shape of `app.py`.
OpenAPI 3.1 because its schemas are JSON Schema 2020-12, which pydantic writes.
"""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from cds_hooks import auth
from cds_hooks.feedback import TIMESTAMP_PATTERN, FeedbackEntry, FeedbackRequest
from cds_hooks.schemas import DiscoveryResponse, HookRequest, HookResponse

bp = Blueprint("openapi", __name__)

# Our model name -> the community definition's name.
COMMUNITY_NAMES = {
    "DiscoveryResponse": "CdsServiceInformation",
    "ServiceDescriptor": "CdsService",
    "HookRequest": "CdsRequest",
    "HookResponse": "CdsResponse",
    "FhirAuthorization": "FhirAuthorization",
    "FeedbackEntry": "Feedback",
    "FeedbackRequest": "FeedbackRequest",
}
REF = "#/components/schemas/"

ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error: a slug, and a message that names fields, never the values sent. "
                   "A 500 carries only an errorId to find the server's log line.",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "minLength": 1, "examples": ["invalid_request"]},
        "message": {"type": "string"},
        "errorId": {"type": "string"},
    },
    "additionalProperties": False,
}
FEEDBACK_RESULT = {
    "type": "object",
    "required": ["stored", "duplicates"],
    "properties": {
        "stored": {"type": "integer", "minimum": 0},
        "duplicates": {"type": "integer", "minimum": 0},
        "unknownCards": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
}
ERROR_TEXTS = {
    "400": "Malformed JSON or a request that does not match the schema (the message names the fields)",
    "401": "Missing or invalid client JWT (no detail, by design)",
    "404": "No such CDS Service",
    "412": "Required FHIR data is neither prefetched nor fetchable from fhirServer",
    "413": "Body larger than TRIAGE_MAX_BODY_BYTES",
    "415": "Content-Type is not application/json",
    "503": "A dependency (database, JWT replay store) is unavailable; retry after Retry-After seconds",
}


def _error_responses(*codes: str) -> dict[str, Any]:
    return {code: {"$ref": f"#/components/responses/{code}"} for code in codes}


def _schemas(models: list[tuple[type[BaseModel], str]]) -> dict[str, Any]:
    _, top = models_json_schema(models, ref_template=REF + "{model}")
    text = json.dumps(top.get("$defs", {}))
    for ours, theirs in COMMUNITY_NAMES.items():
        text = text.replace(f'"{REF}{ours}"', f'"{REF}{theirs}"')
    out = {}
    for name, schema in json.loads(text).items():
        if name in COMMUNITY_NAMES:
            name = COMMUNITY_NAMES[name]
            schema["title"] = name
        out[name] = schema
    return out


HTTP_URL = {"type": "string", "pattern": r"^https?://[^/?#\s]+", "format": "uri"}


def _describe_validators(schemas: dict[str, Any]) -> None:
    """What the models check in code (after-validators) written out, so that the description
    accepts exactly what the service accepts."""
    request = schemas["CdsRequest"]
    request["properties"]["fhirServer"] = {"anyOf": [HTTP_URL, {"type": "null"}], "default": None}
    # fhirAuthorization (not null) needs a fhirServer (not null).
    request["if"] = {"required": ["fhirAuthorization"], "properties": {"fhirAuthorization": {"type": "object"}}}
    request["then"] = {"required": ["fhirServer"], "properties": {"fhirServer": HTTP_URL}}
    schemas["Feedback"]["properties"]["card"] = {"type": "string", "format": "uuid"}
    schemas["Feedback"]["properties"]["outcomeTimestamp"] = {"type": "string", "format": "date-time",
                                                             "maxLength": 64, "pattern": TIMESTAMP_PATTERN}


def _context_schema_name(model: type[BaseModel]) -> str:
    return model.__name__


def build_openapi(registry: Any, *, secured: bool, server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI document of `registry`'s services; `secured` adds the client JWT scheme."""
    context_models = {s.context_model for s in registry}
    schemas = _schemas(
        [(DiscoveryResponse, "serialization"), (HookRequest, "validation"), (HookResponse, "serialization"),
         (FeedbackRequest, "validation"), (FeedbackEntry, "validation")]
        + [(m, "validation") for m in sorted(context_models, key=lambda m: m.__name__)]
    )
    _describe_validators(schemas)
    schemas["Error"] = ERROR_SCHEMA
    schemas["FeedbackResult"] = FEEDBACK_RESULT
    security = [{"clientIssuedJwt": []}] if secured else []
    paths: dict[str, Any] = {
        "/cds-services": {
            "get": {
                "operationId": "cdsServicesGet",
                "tags": ["discovery"],
                "description": "The CDS Services offered here, with their prefetch templates.",
                "security": security,
                "responses": {
                    "200": {"description": "The services",
                            "content": {"application/json": {"schema": {"$ref": REF + "CdsServiceInformation"}}}},
                    **_error_responses("401"),
                },
            }
        }
    }
    for service in registry:
        request_schema = {
            "allOf": [
                {"$ref": REF + "CdsRequest"},
                {"type": "object",
                 "properties": {"hook": {"const": service.hook},
                                "context": {"$ref": REF + _context_schema_name(service.context_model)}}},
            ]
        }
        paths[f"/cds-services/{service.id}"] = {
            "post": {
                "operationId": f"cdsServicePost.{service.id}",
                "tags": ["service"],
                "summary": service.title,
                "description": service.description,
                "security": security,
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": request_schema}}},
                "responses": {
                    "200": {"description": "Cards (an empty list: no guidance)",
                            "content": {"application/json": {"schema": {"$ref": REF + "CdsResponse"}}}},
                    **_error_responses("400", "401", "412", "413", "415", "503"),
                },
            }
        }
        paths[f"/cds-services/{service.id}/feedback"] = {
            "post": {
                "operationId": f"cdsServiceFeedbackPost.{service.id}",
                "tags": ["feedback"],
                "description": "Clinicians' accept/override outcomes on this service's cards; stored "
                               "before 200; repeats are no-ops.",
                "security": security,
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": {"$ref": REF + "FeedbackRequest"}}}},
                "responses": {
                    "200": {"description": "Feedback stored",
                            "content": {"application/json": {"schema": {"$ref": REF + "FeedbackResult"}}}},
                    **_error_responses("400", "401", "413", "415", "503"),
                },
            }
        }
    for path, operation in current_app.extensions.get("triage_openapi_paths", {}).items():
        paths[path] = operation  # operations other modules add (health, metrics)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Triage CDS — CDS Hooks REST API",
            "version": "2.0",
            "description": "CDS Hooks 2.0 service (https://cds-hooks.hl7.org/2.0/). Names follow the "
                           "community OpenAPI definitions (github.com/cds-hooks/api).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {code: {"description": text,
                                 "content": {"application/json": {"schema": {"$ref": REF + "Error"}}}}
                          for code, text in ERROR_TEXTS.items()},
            "securitySchemes": {
                "clientIssuedJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                    "description": "A JWT signed by the CDS client (ES384/RS384), aud = the "
                                                   "endpoint's URL, unique jti."}
            },
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document


def add_path(app: Any, path: str, operations: dict[str, Any]) -> None:
    """Let another module (health, metrics) describe its route in the document."""
    app.extensions.setdefault("triage_openapi_paths", {})[path] = operations


@bp.get("/openapi.json")
@auth.exempt
def openapi() -> Response:
    app = current_app
    document = app.extensions.get("triage_openapi")
    if document is None:
        secured = app.extensions.get(auth.EXTENSION_KEY) is not None
        document = build_openapi(app.extensions["triage_registry"], secured=secured,
                                 server_url=app.config.get("TRIAGE_PUBLIC_BASE_URL") or None)
        app.extensions["triage_openapi"] = document
    return Response(json.dumps(document), mimetype="application/json")


def init_app(app: Any) -> None:
    add_path(app, "/openapi.json", {"get": {
        "operationId": "openapiGet", "tags": ["operations"], "security": [],
        "description": "This document.",
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {
            "schema": {"type": "object", "required": ["openapi", "paths"]}}}}},
    }})
    app.register_blueprint(bp)
