"""The service's prefetch templates, their token rendering, and a local search over resources.

`search_resources` implements the few FHIR search parameters our templates use, so that a set of
resources (a Synthea Bundle, a test server's data) can answer the templates exactly as an EHR would.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

__all__ = [
    "PREFETCH_TEMPLATES",
    "REQUIRED_KEYS",
    "prefetch_from_resources",
    "reference_objects",
    "render_prefetch",
    "render_template",
    "resolve_bundle_references",
    "search_resources",
    "searchset",
    "included_resources",
]

PREFETCH_TEMPLATES: dict[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
    "vitals": "Observation?patient={{context.patientId}}&category=vital-signs&_sort=-date",
    "allergies": "AllergyIntolerance?patient={{context.patientId}}",
    # _include: a MedicationRequest may name its drug by reference (medicationReference); the
    # Medication resource carries the codes. Without it (an EHR that ignores _include), the client
    # reads each referenced Medication (fhir_adapter.client.fetch_medication_references).
    "medications": "MedicationRequest?patient={{context.patientId}}&status=active"
                   "&_include=MedicationRequest:medication",
    "encounter": "Encounter/{{context.encounterId}}",
}
REQUIRED_KEYS: tuple[str, ...] = ("patient", "vitals")

_TOKEN = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_.]*)\s*\}\}")
# `{{userPractitionerId}}` and friends (CDS Hooks 2.0) come from context.userId "Type/id".
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


def _token_value(name: str, context: Mapping[str, Any]) -> str | None:
    if name.startswith("context."):
        value = context.get(name[len("context."):])
    elif name in _USER_TOKENS:
        user = context.get("userId")
        prefix = _USER_TOKENS[name] + "/"
        value = user[len(prefix):] if isinstance(user, str) and user.startswith(prefix) else None
    else:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


def render_template(template: str, context: Mapping[str, Any]) -> str | None:
    """Replace `{{context.X}}` tokens; None when a token has no value (the key is then skipped).

    Values are percent-encoded so that an id cannot add search parameters or path segments.
    """
    missing = False

    def sub(m: re.Match[str]) -> str:
        nonlocal missing
        value = _token_value(m.group(1), context)
        if value is None:
            missing = True
            return ""
        return quote(value, safe="")

    out = _TOKEN.sub(sub, template)
    return None if missing else out


def render_prefetch(context: Mapping[str, Any], templates: Mapping[str, str] = PREFETCH_TEMPLATES) -> dict[str, str]:
    """Rendered queries by key; keys whose tokens are absent from the context are left out."""
    out = {}
    for key, template in templates.items():
        query = render_template(template, context)
        if query is not None:
            out[key] = query
    return out


# ---- references ------------------------------------------------------------------------------

def reference_objects(node: Any, out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every JSON object under `node` (itself included) with a string `reference`, parents before
    their children: the one walk behind the reference readers of `bulk` and Bundle resolution."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            out.append(node)
        for value in node.values():
            if isinstance(value, (dict, list)):
                reference_objects(value, out)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, (dict, list)):
                reference_objects(item, out)
    return out


def resolve_bundle_references(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Copies of a Bundle's resources with `fullUrl` references (`urn:uuid:...`) made `Type/id`.

    Resources without an id get one from their `urn:uuid:` fullUrl, as a server would assign.
    """
    entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    mapping: dict[str, str] = {}
    resources = []
    for entry in entries:
        res = copy.deepcopy(entry["resource"])
        full = entry.get("fullUrl")
        if not res.get("id") and isinstance(full, str) and full.startswith("urn:uuid:"):
            res["id"] = full[len("urn:uuid:"):]
        if isinstance(full, str) and res.get("id") and res.get("resourceType"):
            mapping[full] = f"{res['resourceType']}/{res['id']}"
        resources.append(res)
    for ref in reference_objects(resources, []):
        if ref["reference"] in mapping:
            ref["reference"] = mapping[ref["reference"]]
    return resources


# ---- local search ----------------------------------------------------------------------------

_PATIENT_REF_FIELDS = ("subject", "patient", "beneficiary")


def _patient_refs(res: Mapping[str, Any]) -> set[str]:
    refs = set()
    for name in _PATIENT_REF_FIELDS:
        ref = res.get(name)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            refs.add(ref["reference"])
    return refs


def _token_match(concepts: Any, wanted: str) -> bool:
    """FHIR token search: `code` or `system|code` against a list of CodeableConcepts."""
    system, _, code = wanted.rpartition("|") if "|" in wanted else (None, "", wanted)
    for concept in concepts if isinstance(concepts, list) else [concepts]:
        if not isinstance(concept, dict):
            continue
        for coding in concept.get("coding") or []:
            if coding.get("code") == code and (system is None or coding.get("system") == system):
                return True
    return False


def sort_date(res: Mapping[str, Any]) -> str | None:
    """The date a `date`/`_sort=date` search uses for each resource type we serve."""
    for path in (
        ("effectiveDateTime",), ("effectiveInstant",), ("effectivePeriod", "start"), ("issued",),
        ("onsetDateTime",), ("recordedDate",), ("authoredOn",), ("period", "start"), ("date",),
    ):
        node: Any = res
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, str):
            return node
    return None


def _date_key(value: str | None) -> float:
    if not value:
        return float("-inf")
    text = value.replace("Z", "+00:00")
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return float("-inf")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def search_resources(
    resources: Iterable[Mapping[str, Any]], resource_type: str, params: Iterable[tuple[str, str]]
) -> list[Mapping[str, Any]]:
    """The resources a FHIR server would return for `resource_type?params` (our templates' subset).

    Supports `patient`/`subject` (reference or bare id), `_id`, `category`, `code`, `status`,
    `clinical-status` (comma = OR) and `_sort=date|-date`. Unknown parameters are ignored, as a
    server would (lenient handling); `_count` and paging are the caller's.
    """
    matches = [r for r in resources if r.get("resourceType") == resource_type]
    sort = None
    for name, value in params:
        alternatives = value.split(",")
        if name in ("patient", "subject"):
            wanted = {v if "/" in v else f"Patient/{v}" for v in alternatives}
            matches = [r for r in matches if _patient_refs(r) & wanted]
        elif name == "_id":
            matches = [r for r in matches if r.get("id") in alternatives]
        elif name in ("category", "code"):
            matches = [r for r in matches if any(_token_match(r.get(name), v) for v in alternatives)]
        elif name == "status":
            matches = [r for r in matches if r.get("status") in alternatives]
        elif name == "clinical-status":
            matches = [r for r in matches if any(_token_match(r.get("clinicalStatus"), v) for v in alternatives)]
        elif name == "_sort":
            sort = value
    if sort in ("date", "-date"):
        matches.sort(key=lambda r: _date_key(sort_date(r)), reverse=sort == "-date")
    return matches


# `_include` values our templates use: source type:search parameter -> the element it follows.
INCLUDES = {"MedicationRequest:medication": "medicationReference"}


def included_resources(
    resources: Iterable[Mapping[str, Any]], matches: Iterable[Mapping[str, Any]], params: Iterable[tuple[str, str]]
) -> list[Mapping[str, Any]]:
    """What `_include` adds to a search (our templates' subset): the resources the matches'
    named references point to (relative `Type/id`), each once, in first-reference order."""
    elements = [INCLUDES[v] for name, value in params if name == "_include" for v in value.split(",")
                if v in INCLUDES]
    if not elements:
        return []
    by_ref = {f"{r.get('resourceType')}/{r.get('id')}": r for r in resources if r.get("id")}
    out: dict[str, Mapping[str, Any]] = {}
    for match in matches:
        for element in elements:
            ref = match.get(element)
            target = by_ref.get(ref.get("reference", "")) if isinstance(ref, Mapping) else None
            if target is not None:
                out.setdefault(ref["reference"], target)
    return list(out.values())


def searchset(resources: Iterable[Mapping[str, Any]], *, base_url: str | None = None,
              included: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    entries = []
    for mode, items in (("match", resources), ("include", included)):
        for res in items:
            entry: dict[str, Any] = {"resource": res, "search": {"mode": mode}}
            if base_url and res.get("id"):
                entry["fullUrl"] = f"{base_url.rstrip('/')}/{res['resourceType']}/{res['id']}"
            entries.append(entry)
    total = sum(1 for e in entries if e["search"]["mode"] == "match")  # FHIR: total counts matches only
    return {"resourceType": "Bundle", "type": "searchset", "total": total, "entry": entries}


def run_query(resources: list[Mapping[str, Any]], query: str) -> dict[str, Any] | None:
    """Answer one rendered template (`Type/id` read or `Type?params` search) from resources."""
    parts = urlsplit(query)
    path = parts.path.strip("/")
    if "/" in path:
        rtype, _, rid = path.partition("/")
        for res in resources:
            if res.get("resourceType") == rtype and res.get("id") == rid:
                return dict(res)
        return None
    params = parse_qsl(parts.query)
    matches = search_resources(resources, path, params)
    return searchset(matches, included=included_resources(resources, matches, params))


def prefetch_from_resources(
    resources: list[dict[str, Any]] | Mapping[str, Any],
    context: Mapping[str, Any],
    templates: Mapping[str, str] = PREFETCH_TEMPLATES,
) -> dict[str, dict[str, Any] | None]:
    """The prefetch an EHR would send for `context`, computed locally from a set of resources.

    `resources` is a list of resources or a Bundle (whose `urn:uuid:` references are resolved).
    A read that finds nothing gives JSON null ("no data"), like an EHR that has none.
    """
    if isinstance(resources, Mapping):
        is_bundle = resources.get("resourceType") == "Bundle"
        resources = resolve_bundle_references(resources) if is_bundle else [dict(resources)]
    return {key: run_query(resources, query) for key, query in render_prefetch(context, templates).items()}
