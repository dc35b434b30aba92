"""Leak check: does a text still hold any of a patient's known identifiers?

Used after de-identification (records, FHIR resources, dataset rows): any hit means the item goes
nowhere (fail closed). Results are counts by type, never the values.

Matching is case-insensitive. Names, cities and address lines match on letter boundaries (so "Ted"
does not hit "started", while "Willena" still hits Synthea's "Willena258"); numbers (phones,
identifiers, ZIP codes) match on digit/letter boundaries, phones with any separators. Terms shorter
than the minimum lengths below are ignored: they would hit ordinary words.
"""
from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from fhir_adapter.record import Identity

# Words that mark a name as an organization's (its single words are not identifiers).
ORG_WORDS = frozenset(
    "hospital health healthcare clinic center centre medical regional general memorial llc inc "
    "associates university pharmacy practice physicians services group system network partners "
    "care urgent family community".split()
)

MIN_NAME = 3
MIN_ADDRESS_LINE = 5
MIN_IDENTIFIER = 4
MIN_PHONE_DIGITS = 7

_SUFFIX = re.compile(r"\d+$")  # Synthea appends digits to names: "Willena258"
_MONTHS = ("January February March April May June July August September October November "
           "December").split()


class LeakDetected(RuntimeError):
    """A known identifier survived de-identification. Carries only the types and counts."""

    def __init__(self, types: Mapping[str, int] | Iterable[str]):
        self.types = dict(Counter(types) if not isinstance(types, Mapping) else types)
        super().__init__(
            "identifier leak detected after de-identification: "
            + ", ".join(f"{t}={n}" for t, n in sorted(self.types.items()))
        )


def date_forms(d: date) -> set[str]:
    """A date in the forms clinicians and systems write it."""
    m, dd, y = d.month, d.day, d.year
    month = _MONTHS[m - 1]
    return {
        d.isoformat(),
        f"{m:02d}/{dd:02d}/{y}",
        f"{m}/{dd}/{y}",
        f"{m:02d}-{dd:02d}-{y}",
        f"{month} {dd}, {y}",
        f"{month} {dd} {y}",
        f"{month[:3]} {dd}, {y}",
        f"{dd} {month} {y}",
        f"{dd} {month[:3]} {y}",
        f"{y}{m:02d}{dd:02d}",
    }


def _name_variants(name: str) -> set[str]:
    name = " ".join(name.split())
    out = {name, _SUFFIX.sub("", name)}
    out |= {" ".join(_SUFFIX.sub("", w) for w in name.split())}
    return {v for v in out if len(v) >= MIN_NAME}


_PHONE_SEP = re.compile(r"[\s().\-+]+")  # what a PHONE pattern allows between its digits


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


@dataclass
class IdentifierSet:
    """Known identifiers by type: NAME, ADDRESS, CITY, ZIP, PHONE, EMAIL, IDENTIFIER, BIRTH_DATE."""

    terms: dict[str, set[str]] = field(default_factory=dict)
    _compiled: list[tuple[str, str, tuple[str, ...] | None]] | None = field(default=None, repr=False)
    _regex: dict[str, re.Pattern[str]] = field(default_factory=dict, repr=False, compare=False)  # compiled on need

    # --- building ------------------------------------------------------------------------

    def add(self, kind: str, value: Any) -> None:
        if value is None:
            return
        if kind == "BIRTH_DATE":
            if isinstance(value, str):
                try:
                    value = date.fromisoformat(value[:10])
                except ValueError:
                    return
            self.terms.setdefault(kind, set()).update(date_forms(value))
        elif kind == "NAME":
            self.terms.setdefault(kind, set()).update(_name_variants(str(value)))
        elif kind == "PHONE":
            digits = _digits(str(value))
            if len(digits) == 11 and digits.startswith("1"):
                digits = digits[1:]
            if len(digits) >= MIN_PHONE_DIGITS:
                self.terms.setdefault(kind, set()).add(digits)
        else:
            text = " ".join(str(value).split())
            minimum = {"ADDRESS": MIN_ADDRESS_LINE, "CITY": MIN_NAME, "ZIP": 5,
                       "EMAIL": 5}.get(kind, MIN_IDENTIFIER)
            if len(text) >= minimum:
                self.terms.setdefault(kind, set()).add(text)
        self._compiled = None
        self._regex.clear()

    def update(self, other: IdentifierSet) -> IdentifierSet:
        for kind, values in other.terms.items():
            self.terms.setdefault(kind, set()).update(values)
        self._compiled = None
        self._regex.clear()
        return self

    def __bool__(self) -> bool:
        return any(self.terms.values())

    @classmethod
    def from_identity(cls, identity: Identity) -> IdentifierSet:
        s = cls()
        for n in identity.given_names + identity.family_names:
            s.add("NAME", n)
        for g in identity.given_names:
            for f in identity.family_names:
                s.add("NAME", f"{g} {f}")
        for n in identity.other_names:
            s.add("NAME", n)
            # A person's name parts are identifiers on their own; an organization's words
            # ("Urgent", "Care", "Health") are not, only the whole name is.
            if not {w.lower().strip(".,") for w in n.split()} & ORG_WORDS:
                for part in n.split():
                    s.add("NAME", part)
        for _system, value in identity.identifiers:
            s.add("IDENTIFIER", value)
        if identity.resource_id:
            s.add("IDENTIFIER", identity.resource_id)
        for p in identity.phones:
            s.add("PHONE", p)
        for e in identity.emails:
            s.add("EMAIL", e)
        for a in identity.addresses:
            for line in a.lines:
                s.add("ADDRESS", line)
            s.add("CITY", a.city)
            s.add("CITY", a.district)
            s.add("ZIP", a.postal_code if a.postal_code and len(_digits(a.postal_code)) >= 5 else None)
        s.add("BIRTH_DATE", identity.birth_date)
        return s

    @classmethod
    def from_resources(cls, resources: Iterable[Mapping[str, Any]]) -> IdentifierSet:
        """From every Patient, RelatedPerson, Practitioner, Organization and Location given."""
        s = cls()
        for r in resources:
            if not isinstance(r, Mapping):
                continue
            rtype = r.get("resourceType")
            if rtype not in ("Patient", "RelatedPerson", "Practitioner", "Organization", "Location"):
                continue
            if isinstance(r.get("id"), str) and rtype in ("Patient", "RelatedPerson"):
                s.add("IDENTIFIER", r["id"])
            names = r.get("name")
            if isinstance(names, str):
                s.add("NAME", names)
            for n in names if isinstance(names, list) else []:
                if not isinstance(n, Mapping):
                    continue
                given = [g for g in n.get("given") or [] if isinstance(g, str)]
                family = n.get("family") if isinstance(n.get("family"), str) else None
                for g in given:
                    s.add("NAME", g)
                if family:
                    s.add("NAME", family)
                    for g in given:
                        s.add("NAME", f"{g} {family}")
                if isinstance(n.get("text"), str):
                    s.add("NAME", n["text"])
            for alias in r.get("alias") or []:
                s.add("NAME", alias if isinstance(alias, str) else None)
            for t in r.get("telecom") or []:
                if isinstance(t, Mapping) and isinstance(t.get("value"), str):
                    s.add("EMAIL" if t.get("system") == "email" else "PHONE", t["value"])
            addresses = r.get("address")
            addresses = [addresses] if isinstance(addresses, Mapping) else addresses or []
            for a in addresses:
                if not isinstance(a, Mapping):
                    continue
                for line in a.get("line") or []:
                    s.add("ADDRESS", line if isinstance(line, str) else None)
                for k in ("city", "district"):
                    s.add("CITY", a.get(k) if isinstance(a.get(k), str) else None)
                pc = a.get("postalCode")
                if isinstance(pc, str) and len(_digits(pc)) >= 5:
                    s.add("ZIP", pc)
            for ident in r.get("identifier") or []:
                if isinstance(ident, Mapping) and isinstance(ident.get("value"), str):
                    s.add("IDENTIFIER", ident["value"])
            if isinstance(r.get("birthDate"), str):
                s.add("BIRTH_DATE", r["birthDate"])
        return s

    # --- matching ------------------------------------------------------------------------

    def _patterns(self) -> list[tuple[str, str, tuple[str, ...] | None]]:
        """Per kind: its regex (source; compiled only when a text may match, case-insensitive),
        and the probes that an ASCII text must contain for it to match (lower-cased: each term's
        longest word, or a phone's digits), None where a term is not ASCII (Unicode case folding
        is left to the regex)."""
        if self._compiled is not None:
            return self._compiled
        out: list[tuple[str, str, tuple[str, ...] | None]] = []
        for kind, values in sorted(self.terms.items()):
            if not values:
                continue
            ordered = sorted(values, key=len, reverse=True)
            probes = (tuple({max(v.lower().split(), key=len) for v in values})
                      if all(v.isascii() for v in values) else None)
            if kind == "PHONE":
                sep = r"[\s().\-+]*"
                alts = [sep.join(d) for d in ordered]
                pat = rf"(?<!\d)(?:1{sep})?(?:{'|'.join(alts)})(?!\d)"
            else:
                alts = [r"\s+".join(re.escape(w) for w in v.split()) for v in ordered]
                if kind in ("NAME", "CITY", "ADDRESS"):
                    # letter boundaries: "Willena" hits "Willena258", "Ted" misses "started"
                    pat = rf"(?<![^\W\d_])(?:{'|'.join(alts)})(?![^\W\d_])"
                else:
                    pat = rf"(?<![A-Za-z0-9])(?:{'|'.join(alts)})(?![A-Za-z0-9])"
            out.append((kind, pat, probes))
        self._compiled = out
        return out

    def find(self, text: str) -> Counter[str]:
        found: Counter[str] = Counter()
        if not text:
            return found
        # Plain substring probes first (C speed): a kind none of whose probes is in the text
        # cannot match, and most records contain no identifier at all.
        lowered = text.lower() if text.isascii() else None
        joined: str | None = None  # the text without phone separators
        for kind, pattern, probes in self._patterns():
            if probes is not None and lowered is not None:
                if kind == "PHONE":
                    joined = _PHONE_SEP.sub("", lowered) if joined is None else joined
                    hay = joined
                else:
                    hay = lowered
                if not any(p in hay for p in probes):
                    continue
            regex = self._regex.get(kind)
            if regex is None:  # compiled on first need, kept with the set (not re's global cache)
                regex = self._regex[kind] = re.compile(pattern, re.IGNORECASE)
            n = sum(1 for _ in regex.finditer(text))
            if n:
                found[kind] += n
        return found


def find_leaks(text: str, identifiers: IdentifierSet) -> Counter[str]:
    """How many of `identifiers` occur in `text`, by type (never the values)."""
    return identifiers.find(text)


def payload_text(payload: Any) -> str:
    """Every string and number in a JSON-like payload, one per line, for `find_leaks`."""
    parts: list[str] = []
    _strings(payload, parts, strict=False)
    return "\n".join(parts)


def record_text(record: Any, skip: tuple[str, ...] = ()) -> str:
    """`payload_text` of a dataclass record's JSON payload (dates as ISO strings, tuples as lists),
    read off the dataclass itself: the same text without `asdict` and a JSON round trip. Fields
    named in `skip` are left out at the top level."""
    parts: list[str] = []
    for f in dataclasses.fields(record):
        if f.name not in skip:
            _strings(getattr(record, f.name), parts, strict=True)
    return "\n".join(parts)


def _strings(v: Any, parts: list[str], strict: bool) -> None:
    """Strings and numbers under `v`, in order (dict values, not keys). `strict`: also dates and
    dataclasses, as their JSON encoding would give them, and any other type is an error."""
    if isinstance(v, str):
        parts.append(v)
    elif isinstance(v, bool) or v is None:
        pass
    elif isinstance(v, int):
        parts.append(int.__repr__(v))  # what json writes, and str() of what it reads back
    elif isinstance(v, float):
        parts.append(float.__repr__(v))
    elif isinstance(v, Mapping):
        for x in v.values():
            _strings(x, parts, strict)
    elif isinstance(v, (list, tuple)):
        for x in v:
            _strings(x, parts, strict)
    elif not strict:
        pass
    elif isinstance(v, date):  # datetimes too
        parts.append(v.isoformat())
    elif dataclasses.is_dataclass(v):
        for f in dataclasses.fields(v):
            _strings(getattr(v, f.name), parts, strict)
    else:
        raise TypeError(f"cannot encode {type(v).__name__}")
