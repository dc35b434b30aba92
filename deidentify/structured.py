"""Safe Harbor for a `PatientRecord`: an allow-list copy into a `DeidentifiedRecord`.

Only the fields below are copied; names, telecom, street, city, county and identifiers never are.
Dates move back by the patient's own offset (intervals preserved); age is computed from the true
dates and capped at 90; ZIP keeps three digits ("000" where HHS lists the area as too small);
free text goes through the scrubber, or is dropped when there is none (fail closed). Last, the
whole payload is searched for the record's own identifiers: any hit raises `LeakDetected`.
"""
from __future__ import annotations

import functools

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from fhir_adapter.record import Coding, Identity, PatientRecord

from .leaks import IdentifierSet, LeakDetected, find_leaks, record_text
from .pseudonym import Pseudonymizer
from .record import DeidentifiedRecord, _mint

# Three-digit ZIPs whose combined population is 20,000 or fewer (2000 Census), listed in the HHS
# Safe Harbor guidance (section 164.514(b)(2)(i)(B)): reported as "000".
RESTRICTED_ZIP3: frozenset[str] = frozenset({
    "036", "059", "063", "102", "203", "556", "692", "790", "821",
    "823", "830", "831", "878", "879", "884", "890", "893",
})
AGE_CAP = 90  # Safe Harbor: ages over 89 aggregated into one "90+" category


class Scrubber(Protocol):
    """What `deidentify.text.TextScrubber` offers (typed here so the text side can land later)."""

    def scrub_many(self, texts: Sequence[str], *, known: Any = None,
                   date_shift_days: int | None = None) -> list[Any]: ...


def zip3(postal_code: str | None, restricted: frozenset[str] = RESTRICTED_ZIP3) -> str | None:
    """The first three digits of a US ZIP, "000" for restricted areas; None if not a ZIP."""
    if not postal_code:
        return None
    digits = re.sub(r"\D", "", postal_code)
    if len(digits) < 5:
        return None
    z = digits[:3]
    return "000" if z in restricted else z


def patient_key(identity: Identity) -> str:
    """The stable key a patient's pseudonym and date shift derive from."""
    if identity.resource_id:
        return identity.resource_id
    if identity.identifiers:
        system, value = identity.identifiers[0]
        return f"identifier|{system or ''}|{value}"
    # No id at all: derive from what identifies the person, so the shift is still stable.
    return "identity|" + "|".join(
        [*identity.given_names, *identity.family_names,
         identity.birth_date.isoformat() if identity.birth_date else ""]
    )


@functools.lru_cache(maxsize=32)
def known_identifiers(identity: Identity) -> Any:
    """The text side's `KnownIdentifiers` for this identity (cached: a dataset build
    de-identifies one patient's record once per encounter)."""
    from .known import KnownIdentifiers

    return KnownIdentifiers.from_identity(identity)


@functools.lru_cache(maxsize=32)
def _leak_terms(identity: Identity) -> IdentifierSet:
    return IdentifierSet.from_identity(identity)  # shared: only read below


def span_types(result: Any) -> Iterable[str]:
    for span in getattr(result, "spans", None) or ():
        t = span.get("entity_type") if isinstance(span, dict) else getattr(span, "entity_type", None)
        if t:
            yield str(t)


def scrub_texts(texts: list[str], scrubber: Scrubber | None, *, known: Any, shift: int,
                removed: Counter[str]) -> list[str | None]:
    """Scrub in one batch; with no scrubber every text is dropped (None)."""
    if not texts:
        return []
    if scrubber is None:
        removed["FREE_TEXT_DROPPED"] += len(texts)
        return [None] * len(texts)
    results = scrubber.scrub_many(texts, known=known, date_shift_days=shift)
    if len(results) != len(texts):
        raise RuntimeError("scrubber returned a different number of texts")
    out: list[str | None] = []
    for r in results:
        removed.update(span_types(r))
        out.append(r.text if hasattr(r, "text") else str(r))
    return out


class _TextBatch:
    """Collects free-text fields during the copy, scrubs them in one call, then fills them in."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.slots: list[Callable[[str | None], None]] = []

    def add(self, text: str | None, setter: Callable[[str | None], None]) -> None:
        if text is None or not text.strip():
            setter(None)
            return
        self.texts.append(text)
        self.slots.append(setter)

    def run(self, scrubber: Scrubber | None, *, known: Any, shift: int, removed: Counter[str]) -> None:
        for setter, value in zip(self.slots, scrub_texts(self.texts, scrubber, known=known,
                                                         shift=shift, removed=removed)):
            setter(value)


def _is_terminology(text: str | None, codings: Iterable[Coding]) -> bool:
    """A `text` equal to one of its codings' displays is terminology, not PHI: no scrub needed."""
    if not text:
        return False
    t = text.strip().casefold()
    return any(c.display and c.display.strip().casefold() == t for c in codings)


def deidentify_record(
    record: PatientRecord,
    pseudonymizer: Pseudonymizer,
    *,
    scrubber: Scrubber | None = None,
    restricted_zip3: frozenset[str] = RESTRICTED_ZIP3,
) -> DeidentifiedRecord:
    identity = record.identity
    key = patient_key(identity)
    shift = pseudonymizer.date_shift_days(key)
    delta = timedelta(days=shift)
    removed: Counter[str] = Counter()

    def sd(value: datetime | None) -> datetime | None:
        return value + delta if value is not None else None

    # What the allow-list leaves out, counted by type (values never recorded).
    removed["NAME"] += len(identity.given_names) + len(identity.family_names) + len(identity.other_names)
    removed["IDENTIFIER"] += len(identity.identifiers) + (1 if identity.resource_id else 0)
    removed["PHONE"] += len(identity.phones)
    removed["EMAIL"] += len(identity.emails)
    removed["ADDRESS"] += sum(len(a.lines) + bool(a.city) + bool(a.district) for a in identity.addresses)
    if record.birth_date is not None:
        removed["BIRTH_DATE"] += 1

    age = record.age_years
    age_days = record.age_days if age is not None and age < 1 else None
    if age is not None and age >= AGE_CAP:
        removed["AGE_OVER_89"] += 1
        age = AGE_CAP

    home = identity.addresses[0] if identity.addresses else None
    state = home.state if home else None
    z3 = zip3(home.postal_code if home else None, restricted_zip3)
    if home and home.postal_code:
        removed["ZIP"] += 1

    batch = _TextBatch()
    texts: dict[str, Any] = {}  # staged results, filled in by the batch

    def put(name: str) -> Callable[[str | None], None]:
        return lambda v: texts.__setitem__(name, v)

    def add_text(name: str, text: str | None, codings: Iterable[Coding] = ()) -> None:
        codings = tuple(codings)
        if _is_terminology(text, codings):
            texts[name] = text
        else:
            batch.add(text, put(name))

    for i, c in enumerate(record.conditions):
        add_text(f"c{i}.text", c.text, c.codings)
        for j, n in enumerate(c.notes):
            batch.add(n, put(f"c{i}.note{j}"))
    for k, v in record.vitals.items():
        codings = (Coding("http://loinc.org", v.loinc, v.display),)
        add_text(f"v{k}.text", v.text, codings)
    for i, a in enumerate(record.allergies):
        add_text(f"a{i}.text", a.text, a.codings)
        for j, r in enumerate(a.reactions):
            batch.add(r, put(f"a{i}.reaction{j}"))
        for j, n in enumerate(a.notes):
            batch.add(n, put(f"a{i}.note{j}"))
    for i, m in enumerate(record.medications):
        add_text(f"m{i}.text", m.text, m.codings)
        for j, d in enumerate(m.dosage):
            batch.add(d, put(f"m{i}.dosage{j}"))
        for j, n in enumerate(m.notes):
            batch.add(n, put(f"m{i}.note{j}"))
    enc = record.encounter
    if enc is not None:
        for j, t in enumerate(enc.types):
            batch.add(t, put(f"e.type{j}"))
        for j, r in enumerate(enc.reasons):
            batch.add(r, put(f"e.reason{j}"))
    for j, n in enumerate(record.notes):
        batch.add(n, put(f"note{j}"))
    for j, c in enumerate(record.complaints):
        add_text(f"cc{j}.text", c.text, c.codings)

    batch.run(scrubber, known=known_identifiers(identity) if scrubber else None,
              shift=shift, removed=removed)

    def many(prefix: str, n: int) -> tuple[str, ...]:
        return tuple(t for j in range(n) if (t := texts.get(f"{prefix}{j}")))

    conditions = tuple(
        replace(c, text=texts.get(f"c{i}.text"), onset=sd(c.onset), recorded=sd(c.recorded),
                notes=many(f"c{i}.note", len(c.notes)))
        for i, c in enumerate(record.conditions)
    )
    vitals = {
        k: replace(v, effective=sd(v.effective), text=texts.get(f"v{k}.text"))
        for k, v in record.vitals.items()
    }
    allergies = tuple(
        replace(a, text=texts.get(f"a{i}.text"), reactions=many(f"a{i}.reaction", len(a.reactions)),
                notes=many(f"a{i}.note", len(a.notes)))
        for i, a in enumerate(record.allergies)
    )
    medications = tuple(
        replace(m, text=texts.get(f"m{i}.text"), authored=sd(m.authored),
                dosage=many(f"m{i}.dosage", len(m.dosage)), notes=many(f"m{i}.note", len(m.notes)))
        for i, m in enumerate(record.medications)
    )
    encounter = None
    if enc is not None:
        encounter = replace(
            enc,
            id=pseudonymizer.pseudonym("resource", enc.id) if enc.id else None,
            types=many("e.type", len(enc.types)),
            reasons=many("e.reason", len(enc.reasons)),
            start=sd(enc.start),
            end=sd(enc.end),
        )

    # A complaint is clinical content: kept, its text scrubbed like any free text.
    complaints = tuple(replace(c, text=texts.get(f"cc{j}.text")) for j, c in enumerate(record.complaints))
    out = _mint(
        pseudonym=pseudonymizer.patient(key),
        age_years=age,
        age_days=age_days,
        sex=record.sex,
        as_of=record.as_of + delta,
        state=state,
        zip3=z3,
        conditions=conditions,
        vitals=vitals,
        allergies=allergies,
        medications=medications,
        encounter=encounter,
        notes=many("note", len(record.notes)),
        complaints=complaints,
        stats=record.stats,
        removed={k: v for k, v in sorted(removed.items()) if v},
    )
    check_record(out, identity)
    return out


def check_record(record: DeidentifiedRecord, identity: Identity) -> None:
    """Fail closed: raise `LeakDetected` if any of the identity's identifiers is in the payload."""
    # The payload's text (`payload_text(record.to_payload())`), "removed" left out: counts by type name only.
    hits = find_leaks(record_text(record, skip=("_mint", "removed")), _leak_terms(identity))
    if hits:
        raise LeakDetected(hits)
