"""The build reads undecoded lines (`iter_patient_lines` + `decode_used`): its plan of every
patient equals the plan from fully decoded resources (`iter_patients`), capped or not."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from deidentify.leaks import IdentifierSet
from fhir_adapter.bulk import BulkReader, reference_pairs, decode_line, line_reference_displays, lines_reference_displays
from model import dataset as ds
from tests.test_dataset_build import EXPORT


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "k"
    path.write_text("5a" * 32)
    return path


def _loose_copy(tmp: Path) -> Path:
    """The export with Procedure references written with extra members and spaces (the byte
    reading of displays must give up and decode) and one Immunization line pretty-printed."""
    out = tmp / "export"
    out.mkdir()
    for f in EXPORT.iterdir():
        text = f.read_text()
        if f.name.startswith("Procedure"):
            text = text.replace('{"reference":', '{"type": "X", "reference" :')
        if f.name.startswith("Immunization"):
            lines = text.splitlines()
            lines[0] = json.dumps(json.loads(lines[0]), indent=None, separators=(" , ", " : "))
            text = "\n".join(lines) + "\n"
        (out / f.name).write_text(text)
    return out


@pytest.mark.parametrize("cap", [None, 3, 1])
@pytest.mark.parametrize("loose", [False, True])
def test_plan_from_lines_equals_plan_from_resources(cap, loose, key: Path, tmp_path: Path) -> None:
    folder = _loose_copy(tmp_path) if loose else EXPORT
    cfg = ds.BuildConfig(input=folder, output=Path("unused"), key_file=key, max_encounters=cap, progress=False)
    state = ds.make_worker(cfg, IdentifierSet(), scrubber=object())  # planning never scrubs
    with BulkReader(folder, types=()) as a, BulkReader(folder, types=()) as b:
        pairs = list(zip(a.iter_patients(), b.iter_patient_lines(), strict=True))
    skipped = 0
    for p, q in pairs:
        d = ds.decode_used(q.items, cap)
        skipped += len(p.raw) - len(d.raw)
        want, got = ds._plan(p.raw, p.shared_raw, state), ds._plan(d.raw, q.shared_raw, state, d.displays)
        now = want.history.as_of  # the history record is "as of now"
        assert (got.identity, replace(got.history, as_of=now), got.visits, got.counts, got.drops) == \
            (want.identity, want.history, want.visits, want.counts, want.drops)
    assert skipped > (3000 if cap else 2000)  # Procedures, Immunizations... (and notes of other visits)


@pytest.mark.parametrize(("obj", "from_bytes"), [
    ({"a": {"reference": "Location/1", "display": "Clinic"}, "b": [{"reference": "Patient/2"}]}, True),
    ({"a": {"reference": "Practitioner/1", "display": "Dr. \u00c9 \"Q\""}, "n": "x,\"reference\":\"y\""}, True),
    ({"a": {"display": "first", "reference": "Organization/1"}}, False),
    ({"a": {"reference": "Organization/1", "display": "D", "type": "Organization"}}, False),
    ({"a": {"reference": "Organization/1", "display": 5}}, False),
])
def test_reference_displays_from_bytes(obj, from_bytes) -> None:
    """Read from the bytes only when the line is plainly written; otherwise None (decode)."""
    for sep in ((",", ":"), (", ", ": ")):
        line = json.dumps(obj, separators=sep, ensure_ascii=False).encode()
        got = line_reference_displays(line)
        want: list = []
        reference_pairs(decode_line(line), want)
        assert (got is not None) == from_bytes
        assert got is None or sorted(got) == sorted(want)


def test_reference_displays_of_many_lines() -> None:
    objs = [
        {"a": {"reference": "Location/1", "display": "Clinic"}, "b": [{"reference": "Patient/2"}]},
        {"a": {"reference": "Practitioner/1", "display": "Dr. \u00c9 \"Q\""}, "n": "x,\"reference\":\"y\""},
        {"a": {"display": "first", "reference": "Organization/1"}},
        {"a": {"reference": "Organization/1", "display": "D", "type": "Organization"}},
        {"x": ["reference", {"reference": "Organization/2", "display": ""}]},
    ]
    lines = [json.dumps(o, ensure_ascii=False).encode() for o in objs]
    for chosen in (lines[:2], lines[4:], lines, lines[2:4], [lines[1].replace(b"Q", b"\\u0051")]):
        want: list = []
        for line in chosen:
            reference_pairs(decode_line(line), want)
        assert sorted(lines_reference_displays(chosen)) == sorted(want)


def test_unshown_medication_requests_still_name_known_people(key: Path) -> None:
    """Requests that are not active are never shown, so the build does not validate them; a
    person named only on one of them is still one of the patient's known identifiers."""
    cfg = ds.BuildConfig(input=EXPORT, output=Path("unused"), key_file=key, progress=False)
    state = ds.make_worker(cfg, IdentifierSet(), scrubber=object())
    with BulkReader(EXPORT, types=()) as reader:
        p = next(p for p in reader.iter_patients()
                 if any(r["resourceType"] == "MedicationRequest" and r.get("status") != "active" for r in p.raw))
    raw = json.loads(json.dumps(p.raw))
    stopped = next(r for r in raw if r["resourceType"] == "MedicationRequest" and r.get("status") != "active")
    stopped["requester"] = {"reference": "Practitioner/only-here", "display": "Dr. Quill Nowhere"}
    stopped["medicationCodeableConcept"]["coding"][0]["display"] = "Not A Person 5 MG"
    plan = ds._plan(raw, p.shared_raw, state)
    assert "Dr. Quill Nowhere" in plan.identity.other_names
    assert "Not A Person 5 MG" not in plan.identity.other_names
    assert all(m.status == "active" for m in plan.history.medications)
