"""A real FHIR R4 server on loopback for tests: the EHR's FHIR server, which is outside the product.

    with serve_fhir(resources, page_size=5, require_token="secret") as base_url:
        ...  # base_url.requests records what the server saw (no token values)

Reads (`GET /{Type}/{id}`) and searches (`GET /{Type}?patient=&category=&status=&_sort=-date&_count=`)
answer searchset Bundles paged with `next` links; 401 and 404 answer OperationOutcomes.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from fhir_adapter.prefetch import included_resources, resolve_bundle_references, search_resources, searchset

__all__ = ["ServerUrl", "SeenRequest", "serve_fhir"]


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    query: str
    authorized: bool  # whether a bearer token was sent and (if required) matched


class ServerUrl(str):
    """The base URL (a str), with the log of requests the server received."""

    requests: list[SeenRequest]


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # request lines carry patient ids
        pass


def _outcome(status: int, code: str, text: str) -> Response:
    body = {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
    return Response(json.dumps(body), status=status, content_type="application/fhir+json")


def _fhir(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/fhir+json")


class _App:
    def __init__(self, resources: list[dict[str, Any]], page_size: int, require_token: str | None):
        self.resources = resources
        self.page_size = page_size
        self.require_token = require_token
        self.seen: list[SeenRequest] = []
        self.base_url = ""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        return self.handle(request)(environ, start_response)

    def handle(self, request: Request) -> Response:
        auth = request.headers.get("Authorization", "")
        authorized = auth.startswith("Bearer ") and (
            self.require_token is None or auth[len("Bearer "):] == self.require_token)
        self.seen.append(SeenRequest(request.method, request.path, request.query_string.decode(), authorized))
        if self.require_token is not None and not authorized:
            return _outcome(401, "login", "invalid or missing bearer token")
        if request.method != "GET":
            return _outcome(405, "not-supported", "read-only test server")
        parts = [p for p in request.path.split("/") if p]
        if len(parts) == 2:
            rtype, rid = parts
            for res in self.resources:
                if res.get("resourceType") == rtype and res.get("id") == rid:
                    return _fhir(res)
            return _outcome(404, "not-found", f"{rtype} not found")
        if len(parts) != 1:
            return _outcome(400, "not-supported", "unsupported path")
        rtype = parts[0]
        params = [(k, v) for k, v in request.args.items(multi=True) if k not in ("_count", "_offset")]
        try:
            count = max(1, int(request.args.get("_count", self.page_size)))
            offset = max(0, int(request.args.get("_offset", 0)))
        except ValueError:
            return _outcome(400, "invalid", "bad _count or _offset")
        matches = search_resources(self.resources, rtype, params)
        shown = matches[offset:offset + count]
        page = searchset(shown, base_url=self.base_url, included=included_resources(self.resources, shown, params))
        page["total"] = len(matches)
        links = [{"relation": "self", "url": f"{self.base_url}/{rtype}?{request.query_string.decode()}"}]
        if offset + count < len(matches):
            nxt = urlencode([*params, ("_count", str(count)), ("_offset", str(offset + count))])
            links.append({"relation": "next", "url": f"{self.base_url}/{rtype}?{nxt}"})
        page["link"] = links
        return _fhir(page)


@contextmanager
def serve_fhir(
    resources: list[dict[str, Any]] | Mapping[str, Any],
    page_size: int = 50,
    require_token: str | None = None,
) -> Iterator[ServerUrl]:
    """Serve `resources` (a list, or a Bundle whose `urn:uuid:` references get resolved)."""
    if isinstance(resources, Mapping):
        resources = resolve_bundle_references(resources)
    app = _App(list(resources), page_size, require_token)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    app.base_url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="fhir-test-server", daemon=True)
    thread.start()
    url = ServerUrl(app.base_url)
    url.requests = app.seen
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
