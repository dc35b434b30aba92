"""Identifiers the record itself gives us, found again in that record's free text.

`KnownIdentifiers.from_identity(identity)` collects the patient's and related people's names
(given and family separately, Synthea's digit-suffixed forms and the bare names), address
parts, phones (matched by digits, any formatting), identifiers (MRN, SSN, ...) and the birth
date in its common written forms. `recognizer()` turns them into a deny-list recognizer:
whole-word, case-insensitive, built once per record.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Iterable

import regex
from presidio_analyzer import EntityRecognizer, RecognizerResult

from fhir_adapter.record import Address, Identity

from .leaks import ORG_WORDS

# Words that are never treated as a name or address token on their own (titles, suffixes,
# organisation nouns): an organisation "Newman Regional Health" must not redact every "health".
_NOT_A_NAME = frozenset(
    """dr dr. mr mrs ms miss mx prof md do rn np pa jr sr ii iii iv phd the of and at for in
    hospital health healthcare clinic center centre medical regional general memorial community
    care services service group llc inc pc associates university county city state department
    practice family physicians pharmacy urgent primary partners network system systems home
    street st avenue ave road rd drive dr lane ln way court ct suite unit apt north south east
    west n s e w new saint mount mt""".split()
)
_DIGIT_SUFFIX = re.compile(r"^([^\W\d_]+?)\d+$")
_MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
]
_PHONE_LIKE = regex.compile(r"(?<![\w])\+?\(?\d[\d\s().-]{5,18}\d(?![\w])")


def _name_tokens(name: str) -> set[str]:
    """Tokens of a person name plus the bare form of digit-suffixed ones (Willena258 -> Willena)."""
    out: set[str] = set()
    for tok in re.split(r"[\s,]+", name):
        tok = tok.strip(".()\"'")
        if len(tok) < 2 or tok.lower() in _NOT_A_NAME:
            continue
        out.add(tok)
        m = _DIGIT_SUFFIX.match(tok)
        if m and len(m.group(1)) >= 2 and m.group(1).lower() not in _NOT_A_NAME:
            out.add(m.group(1))
    return out


def _strip_digits(name: str) -> str:
    return " ".join(_DIGIT_SUFFIX.sub(r"\1", t) for t in name.split())


def _birth_date_forms(d: date) -> set[str]:
    m, day, y = d.month, d.day, d.year
    mon = _MONTHS[m - 1]
    suffix = "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    forms = {
        d.isoformat(), f"{y}/{m:02d}/{day:02d}",
        f"{m}/{day}/{y}", f"{m:02d}/{day:02d}/{y}", f"{m}-{day}-{y}", f"{m:02d}-{day:02d}-{y}",
        f"{m}/{day}/{y % 100:02d}", f"{m:02d}/{day:02d}/{y % 100:02d}", f"{m}.{day}.{y}",
        f"{day}/{m}/{y}", f"{day:02d}/{m:02d}/{y}",
        f"{mon} {day}, {y}", f"{mon} {day} {y}", f"{mon} {day}{suffix}, {y}", f"{mon} {day}{suffix} {y}",
        f"{mon[:3]} {day}, {y}", f"{mon[:3]} {day} {y}", f"{mon[:3]}. {day}, {y}", f"{mon[:3]} {day}{suffix}, {y}",
        f"{day} {mon} {y}", f"{day} {mon[:3]} {y}", f"{day}{suffix} {mon} {y}", f"{day}-{mon[:3]}-{y}",
        f"{day} {mon}, {y}", f"{mon} {day}", f"{mon} {day}{suffix}", f"{mon[:3]} {day}",
    }
    return forms


def _address_terms(addr: Address) -> tuple[set[str], set[str]]:
    """(phrases, zip codes) of one address. State is not an identifier under Safe Harbor."""
    phrases: set[str] = set()
    for line in addr.lines:
        line = line.strip()
        if len(line) >= 4:
            phrases.add(line)
            # "123 Main St Apt 4" is also written without its unit, or just the street name.
            m = re.match(r"^(\d+[A-Za-z]?\s+.+?)(?:\s*,?\s*(?:apt|apartment|suite|ste|unit|#).*)?$", line, re.I)
            if m:
                phrases.add(m.group(1))
                street = re.sub(r"^\d+[A-Za-z]?\s+", "", m.group(1))
                if len(street) >= 6 and " " in street:
                    phrases.add(street)
    for part in (addr.city, addr.district):
        if part and len(part.strip()) >= 3:
            phrases.add(part.strip())
    zips: set[str] = set()
    if addr.postal_code:
        pc = addr.postal_code.strip()
        zips.add(pc)
        if len(pc) >= 5 and pc[:5].isdigit():
            zips.add(pc[:5])
    return phrases, zips


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


@dataclass(frozen=True)
class KnownIdentifiers:
    """One record's identifiers, ready to be searched for in its free text."""

    names: frozenset[str] = frozenset()  # full names and single name tokens
    places: frozenset[str] = frozenset()  # address lines, street names, cities, counties, ZIPs
    phones: frozenset[str] = frozenset()  # digits only, last 10 for US numbers
    identifiers: frozenset[str] = frozenset()  # MRN, SSN, ... as written (and digit-only forms)
    emails: frozenset[str] = frozenset()
    birth_dates: frozenset[str] = frozenset()  # written forms
    _compiled: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    @classmethod
    def from_identity(cls, identity: Identity) -> "KnownIdentifiers":
        names: set[str] = set()
        for n in (*identity.given_names, *identity.family_names):
            names |= _name_tokens(n)
        full = " ".join((*identity.given_names, *identity.family_names)).strip()
        if full:
            names.add(full)
            names.add(_strip_digits(full))
        for other in identity.other_names:
            other = other.strip()
            if not other:
                continue
            names.add(other)
            names.add(_strip_digits(other))
            words = {w.lower().strip(".,") for w in other.split()}
            if not words & ORG_WORDS:  # a person: given and family names separately
                names |= _name_tokens(other)
        places: set[str] = set()
        for addr in identity.addresses:
            p, z = _address_terms(addr)
            places |= p | z
        phones = {_digits(p)[-10:] for p in identity.phones if len(_digits(p)) >= 7}
        ids: set[str] = set()
        for _system, value in identity.identifiers:
            value = (value or "").strip()
            if len(value) >= 4:
                ids.add(value)
                d = _digits(value)
                if len(d) >= 6 and d != value:
                    ids.add(d)
        if identity.resource_id and len(identity.resource_id) >= 6:
            ids.add(identity.resource_id)
        emails = {e.strip() for e in identity.emails if e and "@" in e}
        bdates = _birth_date_forms(identity.birth_date) if identity.birth_date else set()
        return cls(
            names=frozenset(n for n in names if len(n) >= 2),
            places=frozenset(places),
            phones=frozenset(phones),
            identifiers=frozenset(ids),
            emails=frozenset(emails),
            birth_dates=frozenset(bdates),
        )

    @classmethod
    def merge(cls, items: Iterable["KnownIdentifiers"]) -> "KnownIdentifiers":
        items = list(items)
        return cls(**{
            f: frozenset().union(*(getattr(k, f) for k in items))
            for f in ("names", "places", "phones", "identifiers", "emails", "birth_dates")
        })

    def __bool__(self) -> bool:
        return bool(self.names or self.places or self.phones or self.identifiers or self.emails or self.birth_dates)

    def terms(self) -> dict[str, frozenset[str]]:
        """Entity type -> literal terms (phones are matched separately, by digits)."""
        return {
            "PERSON": self.names,
            "LOCATION": self.places,
            "ID": self.identifiers,
            "EMAIL_ADDRESS": self.emails,
            "DATE_TIME": self.birth_dates,
        }

    def patterns(self) -> dict[str, regex.Pattern]:
        """One compiled alternation per entity type (cached on the instance)."""
        if not self._compiled:
            for entity, terms in self.terms().items():
                if terms:
                    self._compiled[entity] = regex.compile(_alternation(terms), regex.IGNORECASE)
        return self._compiled

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, entity_type) of every known identifier in `text`."""
        hits: list[tuple[int, int, str]] = []
        for entity, pattern in self.patterns().items():
            hits.extend((m.start(), m.end(), entity) for m in pattern.finditer(text))
        if self.phones:
            for m in _PHONE_LIKE.finditer(text):
                d = _digits(m.group())
                if len(d) >= 7 and (d[-10:] in self.phones or any(p.endswith(d) and len(d) >= 7 for p in self.phones)):
                    hits.append((m.start(), m.end(), "PHONE_NUMBER"))
        return hits

    def recognizer(self) -> "KnownIdentifierRecognizer":
        return KnownIdentifierRecognizer(self)


def _alternation(terms: Iterable[str]) -> str:
    parts = []
    for t in sorted(set(terms), key=len, reverse=True):
        # Flexible whitespace; a bare name also matches its digit-suffixed form (Willena258).
        esc = r"[\s,]+".join(regex.escape(w) for w in t.split())
        parts.append(esc + (r"\d*" if t[-1:].isalpha() else ""))
    return r"(?<![\w])(?:" + "|".join(parts) + r")(?![\w])"


class KnownIdentifierRecognizer(EntityRecognizer):
    """Deny-list recognizer for one record's own identifiers (score 1.0)."""

    ENTITIES = ["PERSON", "LOCATION", "ID", "EMAIL_ADDRESS", "DATE_TIME", "PHONE_NUMBER"]

    def __init__(self, known: KnownIdentifiers) -> None:
        self.known = known
        super().__init__(supported_entities=list(self.ENTITIES), name="KnownIdentifierRecognizer",
                         supported_language="en")

    def load(self) -> None:  # nothing to load
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        wanted = set(entities) if entities else None
        return [
            RecognizerResult(entity_type=e, start=s, end=t, score=1.0)
            for s, t, e in self.known.find(text)
            if wanted is None or e in wanted
        ]
