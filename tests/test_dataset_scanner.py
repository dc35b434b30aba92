"""LeakScanner (Aho-Corasick candidates, `IdentifierSet.find` on them) answers exactly like
`IdentifierSet.find`, including at the edges where a term's boundaries let the text go on."""
from __future__ import annotations

import pytest

from deidentify.leaks import IdentifierSet
from model.dataset import LeakScanner

pytest.importorskip("ahocorasick")


def _ids() -> IdentifierSet:
    ids = IdentifierSet()
    for kind, value in [
        ("NAME", "Willena258 Kuhn96"), ("NAME", "Willena258"), ("NAME", "Ann"), ("NAME", "Li Wu"),
        ("NAME", "Straße"), ("NAME", "O'Conner"), ("NAME", "Mary Ann"),
        ("ADDRESS", "125 Main St Apt 4"), ("CITY", "Fall River"), ("ZIP", "02101"),
        ("PHONE", "555-201-7788"), ("PHONE", "(617) 555-0101"), ("IDENTIFIER", "999-94-5397"),
        ("IDENTIFIER", "AB-12"), ("IDENTIFIER", "X62322185X"), ("EMAIL", "ann.lee@example.com"),
        ("BIRTH_DATE", "1987-11-19"), ("NAME", "CAMBRIDGE HEALTH ALLIANCE"), ("NAME", "Ilse"),
        ("NAME", "İpek"), ("CITY", "12 Oaks"), ("IDENTIFIER", "01ff6f95-9cc2-51c7-90aa-54bb4a0a6a57"),
        ("IDENTIFIER", "A139cfa5-0cb8-50ee-abb3-7e0b615da1d7"), ("NAME", "Li Wu Al"),
    ]:
        ids.add(kind, value)
    return ids


TEXTS = [
    "seen by Willena today", "WILLENA258 and kuhn96", "willena  kuhn again", "started Willenaish",
    "annual planned visit", "Ann was here", "ann_x", "ann2", "2ann", "Li  Wu", "li-wu", "liwu",
    "STRASSE 5", "strasse", "o'conner", "o conner", "OConner", "mary\nann", "Mary Annabel",
    "125 main st apt 4", "125 Main St Apt 45", "1125 main st apt 4", "fall river", "Fallriver",
    "zip 02101", "021015", "x02101", "call (555) 201 7788", "5552017788123", "1-555-201-7788",
    "617.555.0101", "555 0101", "SSN 999-94-5397.", "x999-94-5397", "ab-12", "ab 12", "ab12", "xab-12",
    "X62322185X", "x62322185x1", "mail ann.lee@example.com", "born November 19, 1987", "11/19/1987",
    "Cambridge Health Alliance", "cambridge health", "ordinary note", "", "²ann", "ann½", "١٢٣ ann",
    "Ⅻann", "ǅann ǅ", "ﬁann", "Kuhn961", "willena2580 kuhn96", "éX62322185X", "X62322185Xé", "١999-94-5397",
    "999-94-5397١", "ab-12é", "ılse", "İLSE", "ipek", "İpek", "i̇pek", "312 oaks", "12 oaksy", "902101", "021019",
    "ann.lee@example.com.au", "xann.lee@example.com", "2ann", "ann2", "Straße", "STRAẞE",
    "id 01FF6F95-9CC2-51C7-90AA-54BB4A0A6A57.", "x01ff6f95-9cc2-51c7-90aa-54bb4a0a6a57", "01ff6f95-9cc2-51c7-90aa-54bb4a0a6a579",
    "01ff6f95 9cc2-51c7-90aa-54bb4a0a6a57", "éa139cfa5-0cb8-50ee-abb3-7e0b615da1d7é", "a139cfa5-0cb8-50ee-abb3-7e0b615da1d",
    "li wu al", "li  wu\nal", "Li Wu", "wu al",
]


@pytest.mark.parametrize("text", TEXTS)
def test_same_answers_as_tokens_and_identifier_set(text: str) -> None:
    ids = _ids()
    assert LeakScanner(ids).find(text) == ids.find(text)


def test_same_answers_on_joined_parts() -> None:
    ids = _ids()
    scanner = LeakScanner(ids)
    for i in range(len(TEXTS) - 2):
        parts = TEXTS[i : i + 3]
        assert scanner.find_parts(parts) == ids.find("\n".join(parts)), parts


def test_hits_found_at_all() -> None:
    ids = _ids()
    hits = sum(bool(ids.find(t)) for t in TEXTS)
    assert hits > 40  # the table is mostly hits, so equality above means something


def test_nothing_to_find() -> None:
    empty = LeakScanner(IdentifierSet())
    assert empty.find("Willena 555 201 7788") == {}
    phones = IdentifierSet()
    phones.add("PHONE", "555-201-7788")
    assert LeakScanner(phones).find("call 555 201 7788") == {"PHONE": 1}
