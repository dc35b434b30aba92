"""Bulk export file names as real servers and clients write them, for `triage deid fhir` and
`triage dataset build` alike: `1.Patient.ndjson` (SMART bulk-data client), `Patient.ndjson`,
`Patient.000.ndjson`, `Patient_1.ndjson`, and names with no type in them (type from manifest.json
`output[].type`, else from the first line). A file mixing types is an error naming it; an input
with no FHIR resources exits with status 2.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import DATA
from deidentify.cli import deid
from fhir_adapter.bulk import BulkReader, NoResourcesError, type_from_name
from model.cli import dataset as dataset_group

EXPORT = DATA / "fhir" / "bulk-export-synthea-10"
TYPES = ("Patient", "Practitioner", "Organization", "Location", "Encounter", "Condition", "DocumentReference")
N_PATIENTS = 2


def _lines() -> dict[str, list[str]]:
    """The first two patients' resources (a few of each type) and every shared resource."""
    patients = (EXPORT / "Patient.000.ndjson").read_text().splitlines()[:N_PATIENTS]
    ids = {json.loads(p)["id"] for p in patients}
    out = {"Patient": patients}
    for t in TYPES[1:]:
        lines = (EXPORT / f"{t}.000.ndjson").read_text().splitlines()
        if t in ("Practitioner", "Organization", "Location"):
            out[t] = lines
        else:
            mine = [ln for ln in lines if json.loads(ln)["subject"]["reference"].split("/")[-1] in ids]
            out[t] = mine[:4]
    return out


NAMINGS = {
    "standard": lambda i, t: f"{t}.000.ndjson",
    "smart-client": lambda i, t: f"{i}.{t}.ndjson",
    "plain": lambda i, t: f"{t}.ndjson",
    "underscore": lambda i, t: f"{t}_1.ndjson",
    "manifest": lambda i, t: f"output-{i}.ndjson",
    "first-line": lambda i, t: f"part{i}.ndjson",
}


def _export(root: Path, naming: str) -> tuple[Path, dict[str, str]]:
    """The small export under `naming`; returns it and {file name: type}."""
    d = root / naming
    d.mkdir()
    names = {}
    for i, (t, lines) in enumerate(_lines().items(), 1):
        name = NAMINGS[naming](i, t)
        (d / name).write_text("\n".join(lines) + "\n")
        names[name] = t
    # a server's own log is NDJSON too, and not FHIR
    (d / "log.ndjson").write_text((EXPORT / "log.ndjson").read_text())
    if naming == "manifest":
        # the manifest, not the first line, decides: put a Patient line first in no file
        (d / "manifest.json").write_text(json.dumps({
            "transactionTime": "2024-08-06T14:12:57Z", "request": "https://example.com/$export",
            "requiresAccessToken": False, "error": [],
            "output": [{"type": t, "url": f"https://example.com/files/{n}"} for n, t in names.items()],
        }))
    return d, names


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "steward.key"
    path.write_text("9f" * 32 + "\n")
    return path


@pytest.mark.parametrize(("name", "expected"), [
    ("1.Patient.ndjson", "Patient"), ("12.DocumentReference.ndjson.gz", "DocumentReference"),
    ("Patient.ndjson", "Patient"), ("Patient.000.ndjson", "Patient"), ("Patient_1.ndjson", "Patient"),
    ("Condition-2.ndjson", "Condition"), ("output-1.ndjson", None), ("log.ndjson", None),
    ("Patient.Condition.ndjson", None),
])
def test_type_from_name(name: str, expected: str | None) -> None:
    assert type_from_name(name) == expected


def _deid(src: Path, out: Path, key: Path, *extra: str):
    return CliRunner().invoke(deid, ["fhir", "--input", str(src), "--output", str(out), "--key-file", str(key), *extra])


@pytest.fixture(scope="module")
def deid_reference(tmp_path_factory: pytest.TempPathFactory, key_file: Path) -> dict[str, bytes]:
    """`triage deid fhir` output per resource type on the standard naming."""
    root = tmp_path_factory.mktemp("ref")
    src, names = _export(root, "standard")
    res = _deid(src, root / "out", key_file)
    assert res.exit_code == 0, res.output
    return {names[n]: (root / "out" / n).read_bytes() for n in names}


@pytest.mark.parametrize("naming", [n for n in NAMINGS if n != "standard"])
def test_deid_fhir_reads_every_naming_the_same(naming: str, tmp_path: Path, key_file: Path, deid_reference) -> None:
    src, names = _export(tmp_path, naming)
    res = _deid(src, tmp_path / "out", key_file)
    assert res.exit_code == 0, res.output
    total = sum(len(v) for v in _lines().values())
    assert f"{total} resources de-identified into {len(names)} files" in res.output
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert written == set(names)  # same names out; log.ndjson and manifest.json are not FHIR
    for n, t in names.items():  # byte-identical to the standard naming: people were learned first
        assert (tmp_path / "out" / n).read_bytes() == deid_reference[t], n


@pytest.fixture(scope="module")
def build_reference(tmp_path_factory: pytest.TempPathFactory, key_file: Path) -> dict:
    root = tmp_path_factory.mktemp("bref")
    src, _ = _export(root, "standard")
    return _build(src, root / "out", key_file)


def _build(src: Path, out: Path, key: Path) -> dict:
    res = CliRunner().invoke(dataset_group, ["build", "--input", str(src), "--output", str(out), "--key-file", str(key),
                                             "--format", "chat", "--quiet", "--max-encounters", "2"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    files = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    return {"counts": manifest["counts"], "leak_check": manifest["leak_check"], "files": files}


@pytest.mark.parametrize("naming", ["smart-client", "manifest", "first-line"])
def test_dataset_build_reads_every_naming_the_same(naming: str, tmp_path: Path, key_file: Path, build_reference) -> None:
    src, _ = _export(tmp_path, naming)
    got = _build(src, tmp_path / "out", key_file)
    assert got["counts"]["patients"] == N_PATIENTS
    assert got == build_reference


@pytest.mark.parametrize("command", ["deid", "dataset"])
def test_a_file_mixing_types_is_an_error_naming_it(command: str, tmp_path: Path, key_file: Path) -> None:
    src, _ = _export(tmp_path, "first-line")
    lines = _lines()
    (src / "part9.ndjson").write_text("\n".join([lines["Condition"][0], lines["Encounter"][0]]) + "\n")
    if command == "deid":
        res = _deid(src, tmp_path / "out", key_file)
    else:
        res = CliRunner().invoke(dataset_group, ["build", "--input", str(src), "--output", str(tmp_path / "out"),
                                                 "--key-file", str(key_file), "--quiet"])
    assert res.exit_code != 0
    assert "part9.ndjson: mixes resource types (Condition, Encounter)" in res.output
    assert "Traceback" not in res.output and res.output.count("\n") <= 2


def _no_fhir(root: Path, kind: str) -> Path:
    d = root / kind
    d.mkdir()
    if kind == "log-only":
        (d / "log.ndjson").write_text((EXPORT / "log.ndjson").read_text())
    elif kind == "not-fhir-lines":
        (d / "Patient.000.ndjson").write_text('{"hello": 1}\n{"id": "x"}\n')
    return d


@pytest.mark.parametrize("kind", ["empty", "log-only", "not-fhir-lines"])
@pytest.mark.parametrize("command", ["deid", "dataset"])
def test_input_without_fhir_resources_exits_2(command: str, kind: str, tmp_path: Path, key_file: Path) -> None:
    src = _no_fhir(tmp_path, kind)
    if command == "deid":
        res = _deid(src, tmp_path / "out", key_file, "--no-scrub")
    else:
        res = CliRunner().invoke(dataset_group, ["build", "--input", str(src), "--output", str(tmp_path / "out"),
                                                 "--key-file", str(key_file), "--quiet"])
    assert res.exit_code == 2, res.output
    assert "no FHIR" in res.output and "Traceback" not in res.output
    assert "0 resources de-identified" not in res.output


def test_reader_raises_no_resources(tmp_path: Path) -> None:
    src = _no_fhir(tmp_path, "log-only")
    with BulkReader(src) as reader, pytest.raises(NoResourcesError):
        reader.patient_ids()
