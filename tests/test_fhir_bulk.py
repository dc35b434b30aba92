"""The Bulk NDJSON reader on the real 10-patient Synthea export and a damaged copy of it."""
from __future__ import annotations

import base64
import gzip
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from fhir_adapter.bulk import BadLine, BulkError, BulkReader, iter_patients, iter_resources
from tests.conftest import DATA

EXPORT = DATA / "fhir" / "bulk-export-synthea-10"


def _raw_lines(name: str) -> list[dict]:
    return [json.loads(line) for line in (EXPORT / name).read_text().splitlines() if line.strip()]


def _by_patient(name: str) -> Counter:
    out: Counter = Counter()
    for r in _raw_lines(name):
        out[(r.get("subject") or r.get("patient"))["reference"].split("/")[-1]] += 1
    return out


@pytest.fixture(scope="module")
def patients() -> list:
    bad: list[BadLine] = []
    out = list(iter_patients(EXPORT, on_bad_line=bad.append))
    assert bad == []
    return out


def test_every_patient_with_encounters_conditions_and_notes(patients) -> None:
    raw_patients = _raw_lines("Patient.000.ndjson")
    assert sorted(p.patient_id for p in patients) == sorted(p["id"] for p in raw_patients)
    encounters, conditions = _by_patient("Encounter.000.ndjson"), _by_patient("Condition.000.ndjson")
    docs = {d["id"]: d for d in _raw_lines("DocumentReference.000.ndjson")}
    for p in patients:
        types = Counter(r.get_resource_type() for r in p.resources)
        assert types["Patient"] == 1 and p.resources[0].id == p.patient_id
        assert types["Encounter"] == encounters[p.patient_id] > 0
        assert types["Condition"] == conditions[p.patient_id] > 0
        assert p.stats.skipped == 0
        assert {r.get_resource_type() for r in p.shared} >= {"Practitioner", "Organization"}
        record = p.record()
        assert len(record.conditions) == conditions[p.patient_id]
        mine = [r for r in p.raw if r["resourceType"] == "DocumentReference"]
        assert len(record.notes) == len(mine) > 0
        decoded = {base64.b64decode(d["content"][0]["attachment"]["data"]).decode() for d in mine}
        assert set(record.notes) == decoded
        assert all(docs[d["id"]] == d for d in mine)
        # practitioner names come from the shared Practitioner resources and reference displays
        assert any(n.startswith("Dr.") for n in record.identity.other_names)


def test_index_is_compact_and_iteration_streams() -> None:
    with BulkReader(EXPORT) as reader:
        ids = reader.patient_ids()
        entries = sum(len(a) for a in reader._index.values())
        assert sum(a.itemsize * len(a) for a in reader._index.values()) == 8 * entries
        first = next(reader.iter_patients())
        assert first.patient_id == ids[0]
    assert entries == sum(1 for r in iter_resources(EXPORT) if r["resourceType"] not in
                          {"Practitioner", "PractitionerRole", "Organization", "Location"})


def _damaged_copy(tmp_path: Path) -> Path:
    out = tmp_path / "export"
    out.mkdir()
    for f in EXPORT.iterdir():
        shutil.copy(f, out / f.name)
    # Patient split over two files, Condition gzipped, a bad JSON line and a non-resource line.
    lines = (out / "Patient.000.ndjson").read_text().splitlines(keepends=True)
    (out / "Patient.000.ndjson").write_text("".join(lines[:5]))
    (out / "Patient.001.ndjson").write_text("".join(lines[5:]))
    with gzip.open(out / "Condition.000.ndjson.gz", "wt") as fh:
        fh.write((out / "Condition.000.ndjson").read_text())
    (out / "Condition.000.ndjson").unlink()
    enc = (out / "Encounter.000.ndjson").read_text().splitlines(keepends=True)
    enc[4] = enc[4][:50] + "\n"  # truncated JSON on line 5
    (out / "Encounter.000.ndjson").write_text("".join(enc))
    with (out / "Procedure.000.ndjson").open("a") as fh:
        fh.write("\n[1, 2, 3]\n")  # a blank line (fine) then a non-resource on line 2058
    names = ["Patient.000.ndjson", "Patient.001.ndjson", "Condition.000.ndjson.gz", "Encounter.000.ndjson",
             "Procedure.000.ndjson", "DocumentReference.000.ndjson", "Practitioner.000.ndjson",
             "Organization.000.ndjson"]
    manifest = {"transactionTime": "2024-08-06T18:12:57Z", "request": "https://example.com/fhir/$export",
                "requiresAccessToken": True, "error": [],
                "output": [{"type": n.split(".")[0], "url": f"https://example.com/bulk/{n}"} for n in names]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_damaged_copy_with_manifest_and_gzip(tmp_path: Path) -> None:
    folder = _damaged_copy(tmp_path)
    reported: list[BadLine] = []
    with BulkReader(folder, on_bad_line=reported.append, types=()) as reader:
        got = {p.patient_id: p for p in reader.iter_patients()}
        assert reader.bad_lines == reported
    assert reported == [BadLine("Encounter.000.ndjson", 5, "invalid JSON"),
                        BadLine("Procedure.000.ndjson", 2058, "not a FHIR resource (no resourceType)")]
    assert len(got) == len(_raw_lines("Patient.000.ndjson"))
    lost = _raw_lines("Encounter.000.ndjson")[4]
    owner = lost["subject"]["reference"].split("/")[-1]
    encounters, conditions = _by_patient("Encounter.000.ndjson"), _by_patient("Condition.000.ndjson")
    for pid, p in got.items():
        kinds = Counter(r["resourceType"] for r in p.raw)
        assert kinds["Condition"] == conditions[pid]  # read from the .gz
        assert kinds["Encounter"] == encounters[pid] - (pid == owner)
        assert kinds["MedicationRequest"] == 0  # not in the manifest


def test_manifest_naming_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"transactionTime": "x", "output": [{"type": "Patient", "url": "https://x/Patient.000.ndjson"}]}))
    with pytest.raises(BulkError, match="Patient.000.ndjson"):
        list(iter_patients(tmp_path))
    with pytest.raises(BulkError):
        list(iter_patients(tmp_path / "nope"))


def test_folder_of_bundles() -> None:
    folder = DATA / "fhir" / "uscore-bundles"
    got = list(iter_patients(folder))
    assert sorted(p.patient_id for p in got) == ["355", "85"]
    p355 = next(p for p in got if p.patient_id == "355")
    assert p355.stats.skipped_by_type == {"Observation": 1}
    assert "2708-6" in next(p for p in got if p.patient_id == "85").record().vitals
