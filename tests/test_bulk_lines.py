"""`BulkReader.iter_patient_lines` (undecoded lines, references found in the bytes) gives what
`iter_patients` gives, on the real export, a damaged copy and a folder of Bundles."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_adapter.bulk import BulkReader, _references, decode_line, line_references
from tests.conftest import DATA
from tests.test_fhir_bulk import EXPORT, _damaged_copy


def _same(folder: Path, load: set[str] | None) -> int:
    with BulkReader(folder, types=()) as a, BulkReader(folder, types=()) as b:
        full = list(a.iter_patients())
        lines = list(b.iter_patient_lines(load))
        assert a.bad_lines == b.bad_lines
    assert [p.patient_id for p in full] == [p.patient_id for p in lines]
    for p, q in zip(full, lines):
        want = [r for r in p.raw if load is None or r["resourceType"] in load]
        assert q.decoded() == want
        assert [t for t, _ in q.items] == [r["resourceType"] for r in want]
        assert q.shared_raw == p.shared_raw
    return len(full)


@pytest.mark.parametrize("load", [None, {"Patient", "Encounter", "Condition", "DocumentReference"}])
def test_lines_match_decoded_patients(load, tmp_path: Path) -> None:
    assert _same(EXPORT, load) == 13
    assert _same(_damaged_copy(tmp_path), load) == 13
    assert _same(DATA / "fhir" / "uscore-bundles", load) == 2


REF_CASES = [
    {"resourceType": "X", "subject": {"reference": "Patient/1"}, "a": [{"reference": "Practitioner/2/_history/3"}]},
    {"resourceType": "X", "note": 'he said ,"reference":"Organization/9" in text', "b": {"reference": 5}},
    {"resourceType": "X", "c": {"display": "x", "reference": "Location/\u00e9\"q"}, "d": ["reference", {"reference": ""}]},
    {"resourceType": "X", "e": {"reference": "Loc\\ation/1"}, "f": {"x": {"reference": "urn:uuid:abc"}}},
    {"resourceType": "X", "a\"reference": "Practitioner/7", "g": {"reference": "Patient/8"}},
    {"resourceType": "X", "a\\": {"reference": "Practitioner/9"}, "h": "reference\\"},
]


@pytest.mark.parametrize("res", REF_CASES)
@pytest.mark.parametrize("indent", [None, 2])
def test_line_references_equal_the_decoded_walk(res, indent) -> None:
    for ensure_ascii in (True, False):
        line = json.dumps(res, indent=indent, ensure_ascii=ensure_ascii).replace("\n", " ").encode()
        want: set[str] = set()
        _references(decode_line(line), want)
        got: set[str] = set()
        line_references(line, got)
        assert got == want


def test_line_references_with_an_escaped_key() -> None:
    line = b'{"resourceType":"X","a":{"r\\u0065ference":"Practitioner/5","display":"D"},"b":{"reference":"Patient/6"}}'
    want: set[str] = set()
    _references(decode_line(line), want)
    got: set[str] = set()
    line_references(line, got)
    assert got == want == {"Practitioner/5", "Patient/6"}
