"""Issue 3, item 6: one patient, one key, one pseudonym, whichever path de-identified them.

The hook path (`Deidentifier.record`), `triage deid fhir` (`Deidentifier.resource`) and a data
steward's dataset build must agree, so that a card's patient pseudonym, a de-identified export and
a training example can be joined; a different key gives different pseudonyms; the key never
appears in any output.
"""
from __future__ import annotations

import json
from pathlib import Path

from conftest import DATA
from deidentify import Deidentifier
from fhir_adapter.bulk import iter_patients
from model.dataset import BuildConfig, build

EXPORT = DATA / "fhir" / "bulk-export-synthea-10"
KEY = b"0123456789abcdef" * 4  # a steward key file holds text like this
OTHER_KEY = b"fedcba9876543210" * 4


def _dataset_patients(out: Path) -> set[str]:
    patients: set[str] = set()
    for split in ("train", "validation", "test"):
        path = out / f"{split}.jsonl"
        if path.exists():
            patients |= {json.loads(line)["patient"] for line in path.read_text().splitlines() if line}
    return patients


def test_hook_deid_fhir_and_dataset_agree_on_the_patient_pseudonym(tmp_path: Path) -> None:
    key_file = tmp_path / "steward.key"
    key_file.write_bytes(KEY + b"\n")
    out = tmp_path / "dataset"
    build(BuildConfig(input=EXPORT, output=out, key_file=key_file, max_encounters=2,
                      split=(0.5, 0.25, 0.25), progress=False))
    in_dataset = _dataset_patients(out)
    assert in_dataset

    deid, other = Deidentifier(KEY), Deidentifier(OTHER_KEY)
    checked = 0
    for patient in iter_patients(EXPORT):
        raw_patient = next(r for r in patient.raw if r.get("resourceType") == "Patient")
        hook = deid.record(patient.record()).pseudonym
        assert deid.resource(raw_patient)["id"] == hook  # `triage deid fhir`
        assert other.record(patient.record()).pseudonym != hook  # another key, another pseudonym
        checked += hook in in_dataset
    assert checked == len(in_dataset)  # every dataset patient is one the hook would name the same

    for path in out.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_bytes(), path.name
