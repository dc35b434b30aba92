"""Parse FHIR R4 JSON with the `fhir.resources` R4B models, one resource at a time.

Plain R4 JSON validates against the R4B models (the package's default models are R5). One bad
element makes pydantic reject a whole Bundle, so a Bundle's entries are validated one by one: an
invalid entry is skipped and counted, the rest is used. Logs name only the resource type and the
failing element path, never a value (values are PHI).
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource

from .codes import RECORD_TYPES
from .record import ParseStats

log = logging.getLogger(__name__)

__all__ = [
    "FhirError",
    "OperationOutcomeError",
    "Resource",
    "StatsCounter",
    "bundle_entries",
    "parse_bundle",
    "parse_resource",
    "outcome_summary",
]


class FhirError(Exception):
    """A FHIR server or payload answered with an error. The message never holds PHI or tokens."""

    def __init__(self, message: str, *, status: int | None = None, issues: tuple[str, ...] = ()):
        super().__init__(message)
        self.status = status
        self.issues = issues


class OperationOutcomeError(FhirError):
    """An OperationOutcome arrived where data was expected."""


def outcome_summary(outcome: dict[str, Any]) -> tuple[str, ...]:
    """`severity:code` of each issue. Diagnostics are free text that may echo PHI: left out."""
    issues = outcome.get("issue") if isinstance(outcome.get("issue"), list) else []
    out = []
    for issue in issues:
        if isinstance(issue, dict):
            out.append(f"{issue.get('severity', '?')}:{issue.get('code', '?')}")
    return tuple(out)


class StatsCounter:
    """Mutable tally while parsing; `freeze()` gives the record's immutable ParseStats."""

    def __init__(self) -> None:
        self.parsed = 0
        self.skipped: Counter[str] = Counter()
        self.ignored = 0

    def freeze(self) -> ParseStats:
        return ParseStats(
            parsed=self.parsed,
            skipped=sum(self.skipped.values()),
            skipped_by_type=dict(self.skipped),
            ignored=self.ignored,
        )

    def merge(self, stats: ParseStats) -> None:
        self.parsed += stats.parsed
        self.skipped.update(stats.skipped_by_type)
        self.ignored += stats.ignored


def _error_paths(exc: pydantic.ValidationError) -> str:
    paths = []
    for err in exc.errors(include_input=False, include_url=False):
        paths.append(".".join(str(p) for p in err.get("loc", ())) or "<root>")
    return ", ".join(sorted(set(paths))[:5])


def parse_resource(data: Any, *, stats: StatsCounter | None = None) -> Resource | None:
    """Validate one resource dict. None for JSON null, a non-resource, or an invalid resource.

    An OperationOutcome is an error report, not data: it raises OperationOutcomeError.
    """
    if data is None:
        return None
    rtype = data.get("resourceType") if isinstance(data, dict) else None
    if not isinstance(rtype, str):
        log.warning("skipped a FHIR entry that is not a resource (no resourceType)")
        if stats is not None:
            stats.skipped["<unknown>"] += 1
        return None
    if rtype == "OperationOutcome":
        issues = outcome_summary(data)
        raise OperationOutcomeError(f"OperationOutcome instead of data ({', '.join(issues) or 'no issues'})",
                                    issues=issues)
    try:
        cls = get_fhir_model_class(rtype)
    except ValueError:
        log.warning("skipped a resource of unknown type %r", rtype[:40])
        if stats is not None:
            stats.skipped["<unknown>"] += 1
        return None
    try:
        resource = cls.model_validate(data)
    except pydantic.ValidationError as exc:
        log.warning("skipped an invalid %s resource at %s", rtype, _error_paths(exc))
        if stats is not None:
            stats.skipped[rtype] += 1
        return None
    except (TypeError, ValueError) as exc:  # fhir_core raises these for some malformed shapes
        log.warning("skipped an invalid %s resource (%s)", rtype, type(exc).__name__)
        if stats is not None:
            stats.skipped[rtype] += 1
        return None
    if stats is not None:
        stats.parsed += 1
    return resource


def bundle_entries(data: Any) -> Iterator[dict[str, Any]]:
    """The raw resources in a Bundle (or the resource itself if it is not a Bundle).

    Entries without a resource (transaction responses) are passed over; `search.mode = outcome`
    entries are server warnings, logged by code and passed over. A top-level OperationOutcome
    raises OperationOutcomeError.
    """
    if data is None:
        return
    if not isinstance(data, dict):
        raise FhirError(f"expected a FHIR resource or Bundle, got {type(data).__name__}")
    rtype = data.get("resourceType")
    if rtype == "OperationOutcome":
        issues = outcome_summary(data)
        raise OperationOutcomeError(f"OperationOutcome instead of data ({', '.join(issues) or 'no issues'})",
                                    issues=issues)
    if rtype != "Bundle":
        yield data
        return
    entries = data.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError("Bundle.entry is not a list")
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        res = entry.get("resource")
        if res is None:
            continue
        search = entry.get("search")
        if isinstance(res, dict) and res.get("resourceType") == "OperationOutcome":
            if not (isinstance(search, dict) and search.get("mode") == "outcome"):
                log.warning("Bundle entry is an OperationOutcome (%s)", ", ".join(outcome_summary(res)))
            continue
        yield res


def parse_bundle(
    data: Any,
    *,
    types: Collection[str] | None = RECORD_TYPES,
    stats: StatsCounter | None = None,
) -> tuple[list[Resource], ParseStats]:
    """Parse a Bundle (searchset, transaction, collection, ...), a bare resource, or JSON null.

    Only resource types in `types` are validated (default: what a PatientRecord needs; None for
    every type); other entries are counted as `ignored`, not as errors.
    """
    counter = stats if stats is not None else StatsCounter()
    before = (counter.parsed, sum(counter.skipped.values()), counter.ignored, Counter(counter.skipped))
    out = parse_many(bundle_entries(data), types=types, stats=counter)
    if stats is None:
        return out, counter.freeze()
    # A shared counter: report only this call's share.
    skipped = counter.skipped - before[3]
    return out, ParseStats(counter.parsed - before[0], sum(skipped.values()), dict(skipped),
                           counter.ignored - before[2])


def parse_many(
    items: Iterable[Any], *, types: Collection[str] | None = RECORD_TYPES, stats: StatsCounter
) -> list[Resource]:
    out: list[Resource] = []
    for raw in items:
        # A resourceType that is not a string (a list, an object) is invalid, not "another type":
        # parse_resource skips and counts it. Test the type first: a list is not hashable.
        rtype = raw.get("resourceType") if isinstance(raw, dict) else None
        if types is not None and isinstance(rtype, str) and rtype not in types:
            stats.ignored += 1
            continue
        try:
            res = parse_resource(raw, stats=stats)
        except OperationOutcomeError:
            log.warning("skipped an OperationOutcome found among data entries")
            stats.skipped["OperationOutcome"] += 1
            continue
        if res is not None:
            out.append(res)
    return out
