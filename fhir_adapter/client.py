"""A small FHIR R4 REST client and the prefetch resolver of the hook path.

The access token is sent only to the `fhirServer` origin (paging links to other hosts are refused)
and never appears in a log line or an exception message. Log lines name resource types and HTTP
statuses, never ids or query values (PHI).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from .parse import FhirError, OperationOutcomeError, bundle_entries, outcome_summary
from .prefetch import PREFETCH_TEMPLATES, REQUIRED_KEYS, render_prefetch

log = logging.getLogger(__name__)
# urllib3 logs every request URL at DEBUG, and our URLs carry patient ids.
logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)

__all__ = [
    "FhirClient",
    "FhirError",
    "FhirUnavailable",
    "OperationOutcomeError",
    "PrefetchUnavailable",
    "ResolvedPrefetch",
    "resolve_prefetch",
]

DEFAULT_TIMEOUT: tuple[float, float] = (2.0, 5.0)


class FhirUnavailable(FhirError):
    """The FHIR server could not be reached in time (connection refused, DNS, timeout)."""


class PrefetchUnavailable(Exception):
    """Required prefetch data is missing and could not be fetched (the hook answers 412)."""

    def __init__(self, keys: list[str], reason: str):
        super().__init__(f"required prefetch unavailable for {', '.join(keys)}: {reason}")
        self.keys = keys
        self.reason = reason


class FhirClient:
    def __init__(
        self,
        base_url: str,
        access_token: str | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise FhirError("fhirServer is not an http(s) URL")
        self.base_url = base_url.rstrip("/") + "/"
        self._origin = (parts.scheme, parts.netloc)
        self._token = access_token
        self.timeout = timeout
        self._session = session or requests.Session()

    def __repr__(self) -> str:  # no token
        return f"FhirClient({self.base_url!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, url: str, what: str) -> dict[str, Any]:
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != self._origin:
            raise FhirError(f"{what}: refusing a link to another server")
        headers = {"Accept": "application/fhir+json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            resp = self._session.get(url, headers=headers, timeout=self.timeout)
        except requests.Timeout:
            raise FhirUnavailable(f"{what}: FHIR server timed out") from None
        except requests.RequestException as exc:
            # The exception text may repeat the URL (ids); keep only its class.
            raise FhirUnavailable(f"{what}: FHIR server unreachable ({type(exc).__name__})") from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 400:
            is_outcome = isinstance(body, dict) and body.get("resourceType") == "OperationOutcome"
            issues = outcome_summary(body) if is_outcome else ()
            log.warning("FHIR %s answered HTTP %d", what, resp.status_code)
            cls = FhirUnavailable if resp.status_code in (502, 503, 504) else FhirError
            raise cls(f"{what}: HTTP {resp.status_code}" + (f" ({', '.join(issues)})" if issues else ""),
                      status=resp.status_code, issues=issues)
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise FhirError(f"{what}: response is not a FHIR resource", status=resp.status_code)
        if body["resourceType"] == "OperationOutcome":
            issues = outcome_summary(body)
            raise OperationOutcomeError(f"{what}: OperationOutcome ({', '.join(issues) or 'no issues'})",
                                        status=resp.status_code, issues=issues)
        return body

    def read(self, path: str) -> dict[str, Any]:
        """GET `Type/id` (relative to the base URL)."""
        what = f"read {path.strip('/').split('/')[0]}"
        return self._get(urljoin(self.base_url, path.lstrip("/")), what)

    def search(self, query: str, max_pages: int = 20) -> dict[str, Any]:
        """GET `Type?params`, following `next` links; one searchset Bundle with every entry."""
        what = f"search {query.lstrip('/').split('?')[0]}"
        url = urljoin(self.base_url, query.lstrip("/"))
        entries: list[Any] = []
        pages = 0
        while url:
            bundle = self._get(url, what)
            if bundle.get("resourceType") != "Bundle":
                raise FhirError(f"{what}: expected a Bundle, got {bundle['resourceType'][:40]}")
            entries.extend(e for e in bundle.get("entry") or [] if isinstance(e, dict))
            pages += 1
            url = next((link.get("url") for link in bundle.get("link") or []
                        if isinstance(link, dict) and link.get("relation") == "next"), None)
            if url and pages >= max_pages:
                log.warning("FHIR %s stopped after %d pages", what, pages)
                break
            if url:
                url = urljoin(self.base_url, url)
        return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}

    def get(self, query: str, max_pages: int = 20) -> dict[str, Any]:
        """A rendered prefetch template: a read (`Type/id`) or a search (`Type?...`)."""
        path = query.split("?", 1)[0].strip("/")
        if "?" in query or "/" not in path:
            return self.search(query, max_pages=max_pages)
        return self.read(query)


@dataclass
class ResolvedPrefetch:
    data: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def resolve_prefetch(
    prefetch: Mapping[str, Any] | None,
    context: Mapping[str, Any],
    fhir_server: str | None,
    access_token: str | None,
    *,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    templates: Mapping[str, str] = PREFETCH_TEMPLATES,
    required: tuple[str, ...] = REQUIRED_KEYS,
    max_pages: int = 20,
    max_workers: int = 4,
) -> ResolvedPrefetch:
    """Complete the EHR's prefetch: every template key it did not send is fetched from fhirServer.

    A key sent as JSON null means "no data" and is not fetched. A template whose tokens are not in
    the context (encounterId is optional) is skipped. An OperationOutcome sent for a key is the
    EHR's report that it could not get the data (spec: do not query again): treated as missing.
    Raises PrefetchUnavailable when a required key ends up missing.
    """
    prefetch = prefetch or {}
    queries = render_prefetch(context, templates)
    result = ResolvedPrefetch()
    to_fetch: dict[str, str] = {}
    for key, query in queries.items():
        if key in prefetch:
            value = prefetch[key]
            if value is None:
                result.data[key] = None
            elif isinstance(value, dict) and value.get("resourceType") == "OperationOutcome":
                log.warning("prefetch %r is an OperationOutcome (%s)", key, ", ".join(outcome_summary(value)))
                result.missing.append(key)
            elif isinstance(value, dict) and isinstance(value.get("resourceType"), str):
                result.data[key] = value
            else:
                log.warning("prefetch %r is not a FHIR resource; fetching it", key)
                to_fetch[key] = query
        else:
            to_fetch[key] = query

    reasons: dict[str, str] = {}
    if to_fetch and not fhir_server:
        for key in to_fetch:
            reasons[key] = "no fhirServer in the request"
        to_fetch = {}
    if to_fetch:
        try:
            client = FhirClient(fhir_server or "", access_token, timeout=timeout)
        except FhirError as exc:
            reasons.update({key: str(exc) for key in to_fetch})
            to_fetch = {}
    if to_fetch:
        with client, ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(to_fetch)))) as pool:
            futures = {key: pool.submit(client.get, query, max_pages) for key, query in to_fetch.items()}
            for key, future in futures.items():
                try:
                    result.data[key] = future.result()
                    result.fetched.append(key)
                except FhirError as exc:
                    reasons[key] = str(exc)
                except Exception as exc:  # a bug must not turn into a 500: the key is missing
                    reasons[key] = f"fetch failed ({type(exc).__name__})"
    for key, reason in reasons.items():
        log.warning("prefetch %r unavailable: %s", key, reason)
        result.missing.append(key)
    if fhir_server:
        fetch_medication_references(result, fhir_server, access_token, timeout=timeout, max_workers=max_workers)
    absent = [key for key in required if key not in result.data or key in result.missing]
    if absent:
        raise PrefetchUnavailable(absent, "; ".join(reasons.get(k, "EHR reported an error") for k in absent))
    return result


MEDICATION_REFERENCES_KEY = "medication_references"
MAX_MEDICATION_READS = 20  # bounded: each is a round trip inside the hook deadline
_MEDICATION_REF = re.compile(r"^Medication/[A-Za-z0-9\-.]{1,64}$")


def missing_medication_references(data: Mapping[str, Any]) -> list[str]:
    """`Medication/<id>` references of MedicationRequests whose Medication is not in `data`
    (neither included by the EHR nor contained). Only relative references to the EHR's own
    server: an absolute URL is never followed (it could point anywhere)."""
    present: set[str] = set()
    wanted: list[str] = []
    for value in data.values():
        if not isinstance(value, dict):
            continue
        try:
            resources = list(bundle_entries(value))
        except FhirError:
            continue
        for res in resources:
            if not isinstance(res, dict):
                continue
            if isinstance(res.get("resourceType"), str) and isinstance(res.get("id"), str):
                present.add(f"{res['resourceType']}/{res['id']}")
            ref = res.get("medicationReference") if res.get("resourceType") == "MedicationRequest" else None
            target = ref.get("reference") if isinstance(ref, dict) else None
            if isinstance(target, str) and _MEDICATION_REF.match(target) and target not in wanted:
                wanted.append(target)
    return [ref for ref in wanted if ref not in present]


def fetch_medication_references(
    result: ResolvedPrefetch,
    fhir_server: str,
    access_token: str | None,
    *,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    max_workers: int = 4,
) -> int:
    """Read the Medications that MedicationRequests name but nobody sent (an EHR that ignores
    `_include`), into `result.data["medication_references"]`; the number read. Failures only
    cost the codes (the request's `display`, if any, is still used): logged by count, never raised."""
    refs = missing_medication_references(result.data)
    if not refs:
        return 0
    if len(refs) > MAX_MEDICATION_READS:
        log.warning("%d Medication references not included; reading the first %d", len(refs), MAX_MEDICATION_READS)
        refs = refs[:MAX_MEDICATION_READS]
    found: list[dict[str, Any]] = []
    failed = 0
    try:
        client = FhirClient(fhir_server, access_token, timeout=timeout)
    except FhirError:
        return 0
    with client, ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(refs)))) as pool:
        for future in [pool.submit(client.read, ref) for ref in refs]:
            try:
                resource = future.result()
            except Exception:  # noqa: BLE001 - a missing Medication is not a failed hook
                failed += 1
                continue
            if resource.get("resourceType") == "Medication":
                found.append(resource)
    if failed:
        log.warning("%d of %d referenced Medications could not be read", failed, len(refs))
    if found:
        result.data[MEDICATION_REFERENCES_KEY] = {
            "resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in found]}
        result.fetched.append(MEDICATION_REFERENCES_KEY)
    return len(found)
