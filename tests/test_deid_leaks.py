"""Leak check: known identifiers found by type, with boundaries, never echoing values."""
from __future__ import annotations

import re

from datetime import date

import pytest

from deidentify.leaks import IdentifierSet, LeakDetected, date_forms, find_leaks, payload_text
from fhir_adapter.record import Address, Identity

IDENT = Identity(
    resource_id="pat-77a1",
    given_names=("Willena258", "Ted"),
    family_names=("Kuhlman484",),
    identifiers=(("mrn", "MRN4471923"), ("ssn", "999-12-3456"), ("x", "12")),
    phones=("(617) 555-0142",),
    emails=("willena@example.org",),
    addresses=(Address(("41 Larkspur Lane",), "Quincy", "Norfolk", "MA", "02169", "US"),),
    birth_date=date(1975, 4, 7),
    other_names=("Trent Krajcik",),
)
IDS = IdentifierSet.from_identity(IDENT)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("seen WILLENA today", {"NAME": 1}),
        ("Willena258 Kuhlman484 came in", {"NAME": 1}),  # full name counted once
        ("kuhlman said", {"NAME": 1}),
        ("Ted called", {"NAME": 1}),
        ("symptoms started yesterday", {}),  # "Ted" inside a word is not a name
        ("call 617.555.0142 or +1 617 555 0142", {"PHONE": 2}),
        ("6175550142", {"PHONE": 1}),
        ("ref 96175550142999", {}),  # digits inside a longer number
        ("MRN4471923", {"IDENTIFIER": 1}),
        ("ssn 999-12-3456.", {"IDENTIFIER": 1}),
        ("dose 12 mg", {}),  # too short to be checked
        ("lives at 41 larkspur   lane", {"ADDRESS": 1}),
        ("moved to QUINCY", {"CITY": 1}),
        ("zip 02169", {"ZIP": 1}),
        ("zip 021", {}),
        ("mail willena@example.org", {"EMAIL": 1, "NAME": 1}),
        ("Dr. Trent Krajcik", {"NAME": 1}),
        ("Krajcik", {"NAME": 1}),
        ("id pat-77a1", {"IDENTIFIER": 1}),
        ("no identifiers here: fever 39.2, BP 120/80", {}),
    ],
)
def test_find_leaks(text, expected) -> None:
    assert dict(find_leaks(text, IDS)) == expected


@pytest.mark.parametrize(
    "written", ["1975-04-07", "04/07/1975", "4/7/1975", "April 7, 1975", "7 April 1975", "19750407",
                "APR 7, 1975", "7 Apr 1975"],
)
def test_birth_date_forms(written) -> None:
    assert find_leaks(f"DOB {written}.", IDS) == {"BIRTH_DATE": 1}
    assert not find_leaks(f"DOB {written}".replace("1975", "1976"), IDS)


def test_date_forms_cover_the_brief() -> None:
    forms = date_forms(date(1975, 4, 7))
    assert {"1975-04-07", "04/07/1975", "4/7/1975", "April 7, 1975", "7 April 1975", "19750407"} <= forms


def test_from_resources_collects_people() -> None:
    resources = [
        {"resourceType": "Patient", "id": "p1", "name": [{"given": ["Aleta"], "family": "Wintheiser"}],
         "telecom": [{"system": "phone", "value": "555-712-4709"}],
         "address": [{"line": ["850 Kertzmann Heights"], "city": "Everett", "postalCode": "02149"}],
         "identifier": [{"value": "999-33-6284"}], "birthDate": "1971-04-05"},
        {"resourceType": "Practitioner", "name": [{"given": ["Jani"], "family": "Swift"}],
         "identifier": [{"value": "9999999729"}]},
        {"resourceType": "Organization", "name": "HALLMARK HEALTH SYSTEM",
         "address": [{"city": "MELROSE"}]},
        {"resourceType": "Condition", "note": [{"text": "Aleta"}]},  # not a person: ignored
    ]
    ids = IdentifierSet.from_resources(resources)
    text = ("Aleta Wintheiser (555) 712 4709, 850 Kertzmann Heights, Everett 02149, 999-33-6284, "
            "4/5/1971, Dr. Jani Swift NPI 9999999729 at Hallmark Health System, Melrose")
    found = find_leaks(text, ids)
    assert set(found) == {"NAME", "PHONE", "ADDRESS", "CITY", "ZIP", "IDENTIFIER", "BIRTH_DATE"}
    assert found["NAME"] >= 3
    assert not find_leaks("Condition note: patient swiftly improved", ids)


def test_leak_detected_carries_types_only() -> None:
    hits = find_leaks("Willena258 at 41 Larkspur Lane", IDS)
    exc = LeakDetected(hits)
    assert exc.types == {"NAME": 1, "ADDRESS": 1}
    assert "Willena" not in str(exc) and "Larkspur" not in str(exc)


def test_payload_text_walks_nested_values() -> None:
    text = payload_text({"a": [{"b": "Quincy"}, 6175550142], "c": True})
    assert find_leaks(text, IDS) == {"CITY": 1, "PHONE": 1}


def test_large_set_is_fast() -> None:
    import time

    ids = IdentifierSet()
    for i in range(3000):
        ids.add("NAME", f"Name{i}x")
        ids.add("PHONE", f"617555{i:04d}")
    text = "the patient improved and was discharged home in stable condition. " * 2000
    start = time.perf_counter()
    assert not find_leaks(text, ids)
    assert time.perf_counter() - start < 5


def test_organization_words_are_not_identifiers_on_their_own() -> None:
    from fhir_adapter.record import Identity

    ids = IdentifierSet.from_identity(Identity(resource_id=None, other_names=("Harbor Urgent Care Clinic", "Ada Quill")))
    assert not find_leaks("Seen at urgent care; clinic follow-up.", ids)
    assert find_leaks("Seen at Harbor Urgent Care Clinic", ids)
    assert find_leaks("Spoke with Quill today", ids)  # a person's family name alone still counts


def _regex_only(ids: IdentifierSet, text: str) -> dict[str, int]:
    """The reference: every kind's regex over the text, no substring probes."""
    counts = {kind: sum(1 for _ in re.compile(source, re.IGNORECASE).finditer(text))
              for kind, source, _ in ids._patterns()}
    return {k: n for k, n in counts.items() if n}


def test_substring_probes_never_change_what_is_found() -> None:
    import random

    ascii_ids = IdentifierSet.from_identity(IDENT)
    ids = IdentifierSet.from_identity(IDENT)
    ids.add("NAME", "Joſé Ærøe")  # non-ASCII terms: that kind goes to the regex unprobed
    assert dict((k, p) for k, _, p in ids._patterns())["NAME"] is None
    assert all(p for _, _, p in ascii_ids._patterns())
    terms = [t for values in ids.terms.values() for t in values]
    rng = random.Random(7)
    fillers = ["Pt seen today.", "BP 120/80", "Kelvin \u212a", "İstanbul", "ſ", "call 555", "(", ")", "-",
               "no identifiers here", "1", "+", "\t", "x"]
    texts = []
    for _ in range(600):
        parts = [rng.choice(fillers) for _ in range(rng.randint(0, 4))]
        if rng.random() < 0.6:
            term = rng.choice(terms)
            if rng.random() < 0.5:
                term = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in term)
            if term.isdigit() and rng.random() < 0.7:  # a phone written with separators
                term = "".join(c + rng.choice(["", " ", "-", ".", ") ("]) for c in term)
            parts.insert(rng.randint(0, len(parts)), term)
        texts.append(rng.choice(["", " ", "\n", "x"]).join(parts))
    hits = 0
    for text in texts:
        for one in (ids, ascii_ids):
            assert dict(one.find(text)) == _regex_only(one, text), text
        hits += bool(_regex_only(ascii_ids, text))
    assert hits > 200  # the texts do hit, across kinds
