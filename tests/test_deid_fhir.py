"""Safe Harbor for raw FHIR: allow-list, pseudonyms, date shifts, R4B validity, `deid fhir`."""
from __future__ import annotations

import base64
import json
import re
import shutil
from datetime import date, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from fhir.resources.R4B import get_fhir_model_class

from deidentify import Deidentifier, LeakDetected
from deidentify.cli import deid
from deidentify.fhir import (
    AGE_90_PLUS_URL,
    FhirContext,
    UnsupportedResource,
    deidentify_bundle,
    deidentify_resource,
)
from deidentify.leaks import IdentifierSet, find_leaks
from deidentify.pseudonym import KEY_ENV, Pseudonymizer
from fhir_adapter.record import Identity, PatientRecord


import os

DATA = Path(os.environ.get("TRIAGE_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")) / "data"
KEY = b"fhir-test-key-fhir-test-key-0123456789"
PZ = Pseudonymizer(KEY)
BUNDLES = sorted((DATA / "fhir" / "synthea-bundles").glob("*.json")) + sorted(
    (DATA / "fhir" / "uscore-bundles").glob("*.json"))
BULK = DATA / "fhir" / "bulk-export-synthea-10"


def _validate(resource: dict) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def _raw_identifiers(resources: list[dict]) -> list[str]:
    """Names, phones, address lines, identifier values, full birth dates and ids, directly."""
    out: list[str] = []
    for r in resources:
        if r.get("resourceType") not in ("Patient", "Practitioner", "RelatedPerson"):
            continue
        out.append(r["id"])
        for n in r.get("name", []):
            out += [g for g in n.get("given", []) if len(g) >= 3]
            if len(n.get("family", "")) >= 3:
                out.append(n["family"])
        out += [t["value"] for t in r.get("telecom", [])]
        for a in r.get("address", []):
            out += a.get("line", [])
            if a.get("city"):
                out.append(a["city"])
        out += [i["value"] for i in r.get("identifier", []) if len(i.get("value", "")) >= 4]
        if r.get("birthDate"):
            out.append(r["birthDate"])
    return out


def _strip_suffix(s: str) -> str:
    return re.sub(r"(?<=[A-Za-z])\d+$", "", s)  # Synthea name suffixes only


@pytest.mark.parametrize("path", BUNDLES, ids=lambda p: p.name[:20])
def test_bundle_validates_and_holds_no_identifier(path: Path) -> None:
    bundle = json.loads(path.read_text())
    originals = [e["resource"] for e in bundle["entry"]]
    ctx = FhirContext()
    out = deidentify_bundle(bundle, PZ, ctx=ctx)
    # nothing silently lost: every input entry is either output or counted as dropped
    dropped = sum(v for k, v in ctx.stats.items() if k.startswith(("leak:", "unsupported:")))
    assert len(out["entry"]) + dropped == len(originals)
    assert not any(k.startswith("leak:") for k in ctx.stats)
    for e in out["entry"]:
        _validate(e["resource"])
    text = json.dumps(out)
    assert not find_leaks(text, IdentifierSet.from_resources(originals))
    lowered = text.lower()
    for raw in _raw_identifiers(originals):
        for variant in {raw, _strip_suffix(raw)}:
            if len(variant) >= 4:
                assert not re.search(r"(?<![a-z])" + re.escape(variant.lower()) + r"(?![a-z])", lowered)
    # references stay consistent inside the bundle
    full_urls = {e["fullUrl"] for e in out["entry"]}
    refs = re.findall(r'"reference": "(urn:uuid:[^"]+)"', text)
    resolved = [r for r in refs if r in full_urls]
    assert len(resolved) >= 0.9 * len(refs)  # the rest point at dropped (unsupported) entries
    patient = next(e["resource"] for e in out["entry"] if e["resource"]["resourceType"] == "Patient")
    raw_patient = next(r for r in originals if r["resourceType"] == "Patient")
    assert patient["id"] == PZ.pseudonym("resource", raw_patient["id"])
    for key in ("name", "telecom", "contact", "photo", "text"):
        assert key not in patient
    for a in patient.get("address", []):
        assert set(a) <= {"use", "type", "state", "country", "postalCode"}
        assert len(a.get("postalCode", "000")) == 3
    assert len(patient.get("birthDate", "1999")) == 4


def test_dates_shift_per_patient_and_keep_intervals() -> None:
    bundle = json.loads(BUNDLES[0].read_text())
    out = deidentify_bundle(bundle, PZ)
    raw_patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    shift = PZ.date_shift_days(raw_patient["id"])
    raw_enc = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter")
    new_enc = next(e["resource"] for e in out["entry"]
                   if e["resource"]["id"] == PZ.pseudonym("resource", raw_enc["id"]))

    def dt(s: str) -> datetime:
        return datetime.fromisoformat(s)

    assert (dt(new_enc["period"]["start"]) - dt(raw_enc["period"]["start"])).days == shift
    assert dt(new_enc["period"]["end"]) - dt(new_enc["period"]["start"]) == \
        dt(raw_enc["period"]["end"]) - dt(raw_enc["period"]["start"])
    assert new_enc["period"]["start"][-6:] == raw_enc["period"]["start"][-6:]  # zone kept
    # the same patient in another run gets the same shift
    again = deidentify_bundle(bundle, Pseudonymizer(KEY))
    assert again == out


def _patient(**extra) -> dict:
    p = {
        "resourceType": "Patient", "id": "p-1",
        "extension": [
            {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
             "extension": [{"url": "ombCategory", "valueCoding": {
                 "system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3", "display": "White"}},
                 {"url": "text", "valueString": "White"}]},
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
             "valueString": "Marquetta Schamberger"},
            {"url": "http://example.org/unknown", "valueString": "whatever"},
        ],
        "identifier": [{"system": "http://hospital.example/mrn", "value": "MRN-4471923"}],
        "name": [{"family": "Kuhlman484", "given": ["Willena258"]}],
        "telecom": [{"system": "phone", "value": "617-555-0142"}],
        "gender": "female", "birthDate": "1975-04-07",
        "address": [{"line": ["41 Larkspur Lane"], "city": "Quincy", "district": "Norfolk",
                     "state": "MA", "postalCode": "02169", "country": "US",
                     "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/geolocation",
                                    "extension": [{"url": "latitude", "valueDecimal": 42.2}]}]}],
        "unknownField": "secret",
        "contact": [{"name": {"family": "Kuhlman484"}}],
    }
    p.update(extra)
    return p


def test_patient_allow_list() -> None:
    out = deidentify_resource(_patient(), PZ)
    _validate(out)
    assert set(out) <= {"resourceType", "id", "extension", "identifier", "gender", "birthDate", "address"}
    assert [e["url"] for e in out["extension"]] == [
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"]
    assert out["address"] == [{"state": "MA", "country": "US", "postalCode": "021"}]
    assert out["identifier"][0]["value"] == PZ.pseudonym("identifier|http://hospital.example/mrn",
                                                         "MRN-4471923")
    shifted = date(1975, 4, 7).toordinal() + PZ.date_shift_days("p-1")
    assert out["birthDate"] == str(date.fromordinal(shifted).year)
    text = json.dumps(out)
    for s in ("Kuhlman", "Willena", "617", "Larkspur", "Quincy", "Norfolk", "MRN-4471923",
              "1975-04-07", "secret", "Marquetta", "whatever", "42.2", '"p-1"'):
        assert s not in text


def test_restricted_zip_and_age_over_89() -> None:
    out = deidentify_resource(_patient(birthDate="1920-01-01",
                                       address=[{"state": "NH", "postalCode": "03601"}]), PZ)
    _validate(out)
    assert "birthDate" not in out
    assert {"url": AGE_90_PLUS_URL, "valueBoolean": True} in out["extension"]
    assert out["address"] == [{"state": "NH", "postalCode": "000"}]
    # died at 85: the year may stay
    young = deidentify_resource(_patient(birthDate="1920-01-01", deceasedDateTime="2005-06-01"), PZ)
    assert "birthDate" in young and "deceasedDateTime" in young


def test_references_identifiers_and_dropped_displays() -> None:
    cond = {
        "resourceType": "Condition", "id": "c-1",
        "subject": {"reference": "Patient/p-1", "display": "Willena Kuhlman"},
        "encounter": {"reference": "urn:uuid:e-9"},
        "recorder": {"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999974592",
                     "display": "Dr. Liane Kunze"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "386661006", "display": "Fever"}],
                 "text": "Fever"},
        "onsetDateTime": "2024-03-08", "recordedDate": "2024-03",
        "note": [{"text": "Seen by Dr. Kunze", "authorString": "Kunze"}],
        "modifierExtensionX": 1,
    }
    out = deidentify_resource(cond, PZ)
    _validate(out)
    assert out["subject"] == {"reference": "Patient/" + PZ.pseudonym("resource", "p-1")}
    assert out["encounter"] == {"reference": "urn:uuid:" + PZ.pseudonym("resource", "e-9")}
    npi = PZ.pseudonym("identifier|http://hl7.org/fhir/sid/us-npi", "9999974592")
    assert out["recorder"]["reference"] == f"Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|{npi}"
    assert out["code"]["text"] == "Fever"  # terminology kept
    assert "note" not in out  # free text dropped without a scrubber
    shift = PZ.date_shift_days("p-1")
    assert out["onsetDateTime"] == date.fromordinal(date(2024, 3, 8).toordinal() + shift).isoformat()
    assert re.fullmatch(r"\d{4}-\d{2}", out["recordedDate"])  # precision kept
    assert "Kunze" not in json.dumps(out) and "Willena" not in json.dumps(out)


def test_unsupported_and_modifier_extension_refused() -> None:
    with pytest.raises(UnsupportedResource):
        deidentify_resource({"resourceType": "Specimen", "id": "s"}, PZ)
    with pytest.raises(UnsupportedResource):
        deidentify_resource({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
                             "modifierExtension": [{"url": "http://x", "valueBoolean": True}]}, PZ)
    with pytest.raises(UnsupportedResource):
        deidentify_resource(["not", "a", "resource"], PZ)  # type: ignore[arg-type]


class Fake:
    """A scrubber that replaces the planted name; counts texts and remembers the shift."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.shift: int | None = None

    def scrub_many(self, texts, *, known=None, date_shift_days=None):
        from types import SimpleNamespace

        self.seen += list(texts)
        self.shift = date_shift_days
        return [SimpleNamespace(text=t.replace("Willena258", "[NAME]"), spans=[]) for t in texts]


def _docref(text: str) -> dict:
    return {
        "resourceType": "DocumentReference", "id": "d-1", "status": "current",
        "subject": {"reference": "Patient/p-1"},
        "content": [{"attachment": {"contentType": "text/plain; charset=utf-8",
                                    "data": base64.b64encode(text.encode()).decode()}}],
        "description": "Note about Willena258",
    }


def test_document_reference_attachment_scrubbed_and_reencoded() -> None:
    fake = Fake()
    ctx = FhirContext()
    ctx.add_resources([_patient()])
    out = deidentify_resource(_docref("Willena258 has a cough."), PZ, scrubber=fake, ctx=ctx)
    _validate(out)
    note = base64.b64decode(out["content"][0]["attachment"]["data"]).decode()
    assert note == "[NAME] has a cough."
    assert out["description"] == "Note about [NAME]"
    assert fake.shift == PZ.date_shift_days("p-1")
    # without a scrubber the text is dropped, and the resource stays valid
    bare = deidentify_resource(_docref("Willena258 has a cough."), PZ)
    _validate(bare)
    assert "data" not in bare["content"][0]["attachment"] and "description" not in bare


def test_leak_after_scrubbing_fails_closed() -> None:
    class Leaky:
        def scrub_many(self, texts, *, known=None, date_shift_days=None):
            from types import SimpleNamespace

            return [SimpleNamespace(text=t, spans=[]) for t in texts]

    ctx = FhirContext()
    ctx.add_resources([_patient()])
    with pytest.raises(LeakDetected) as e:
        deidentify_resource(_docref("Willena258 Kuhlman484, 617-555-0142"), PZ, scrubber=Leaky(), ctx=ctx)
    assert e.value.types["NAME"] >= 2 and e.value.types["PHONE"] == 1
    assert "Willena" not in str(e.value) and "555" not in str(e.value)


# --- the command line --------------------------------------------------------------------


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch) -> Path:
    f = tmp_path / "pseudonym.key"
    f.write_bytes(KEY)
    monkeypatch.setenv(KEY_ENV, str(f))
    return f


def _run(*args: str):
    return CliRunner().invoke(deid, ["fhir", *args, "--no-scrub"], catch_exceptions=False)


@pytest.fixture
def small_bulk(tmp_path: Path) -> Path:
    """Patients, practitioners and the first 40 lines of the larger files of the bulk export."""
    d = tmp_path / "bulk"
    d.mkdir()
    for f in sorted(BULK.glob("*.ndjson")):
        if f.name == "log.ndjson":
            continue
        lines = f.read_text().splitlines(keepends=True)
        (d / f.name).write_text("".join(lines[:40]))
    return d


def test_cli_bulk_export_layout_validity_and_consistency(small_bulk, tmp_path, key_file) -> None:
    res = _run("--input", str(small_bulk), "--output", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in small_bulk.iterdir())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    originals = [json.loads(l) for f in small_bulk.iterdir() for l in f.read_text().splitlines()]
    ids = IdentifierSet.from_resources(originals)
    raw = _raw_identifiers(originals)
    out_resources = []
    for f in (tmp_path / "out").iterdir():
        text = f.read_text()
        assert not find_leaks(text, ids), f.name
        assert KEY.decode() not in text and KEY.hex() not in text
        for s in raw:
            if len(s) >= 5:
                assert s not in text, f.name
        for line in text.splitlines():
            r = json.loads(line)
            _validate(r)
            out_resources.append(r)
    assert len(out_resources) == len(originals)
    # the same patient: same pseudonym in `deid fhir` output and in Deidentifier.record
    raw_patient = json.loads((small_bulk / "Patient.000.ndjson").read_text().splitlines()[0])
    record = PatientRecord(identity=Identity(resource_id=raw_patient["id"]), birth_date=None,
                           sex=None, as_of=datetime(2024, 1, 1))
    pseudo = Deidentifier(KEY).record(record).pseudonym
    patients = [r for r in out_resources if r["resourceType"] == "Patient"]
    assert pseudo in {p["id"] for p in patients}
    subjects = {r["subject"]["reference"] for r in out_resources
                if r["resourceType"] == "DocumentReference"}
    assert subjects <= {"Patient/" + p["id"] for p in patients}
    # a second run gives byte-identical files; another key gives other pseudonyms
    res2 = _run("--input", str(small_bulk), "--output", str(tmp_path / "out2"))
    assert res2.exit_code == 0
    for f in (tmp_path / "out").iterdir():
        assert f.read_bytes() == (tmp_path / "out2" / f.name).read_bytes()
    other = tmp_path / "other.key"
    other.write_bytes(b"z" * 40)
    _run("--input", str(small_bulk), "--output", str(tmp_path / "out3"), "--key-file", str(other))
    assert pseudo not in (tmp_path / "out3" / "Patient.000.ndjson").read_text()


def test_cli_bulk_export_skips_non_resource_ndjson(tmp_path, key_file) -> None:
    """The export's log.ndjson is not FHIR: skipped (not reported as bad lines), exit 0."""
    d = tmp_path / "bulk"
    d.mkdir()
    (d / "Patient.000.ndjson").write_text("".join((BULK / "Patient.000.ndjson").read_text().splitlines(True)[:3]))
    (d / "log.ndjson").write_text((BULK / "log.ndjson").read_text())
    res = _run("--input", str(d), "--output", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    assert "log.ndjson" not in res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Patient.000.ndjson"]


def test_cli_reports_corrupted_line_and_goes_on(tmp_path, key_file) -> None:
    lines = (BULK / "Condition.000.ndjson").read_text().splitlines()[:5]
    lines.insert(2, '{"resourceType": "Condition", "id": broken')
    src = tmp_path / "Condition.000.ndjson"
    src.write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(deid, ["fhir", "--input", str(src), "--output", str(tmp_path / "o"),
                                    "--no-scrub"])
    assert res.exit_code == 1
    assert f"{src}:3: malformed JSON line skipped" in res.output
    assert len((tmp_path / "o" / src.name).read_text().splitlines()) == 5
    assert "Traceback" not in res.output


def test_cli_bundle_file_and_folder(tmp_path, key_file) -> None:
    folder = tmp_path / "bundles"
    folder.mkdir()
    for p in BUNDLES[:2]:
        shutil.copy(p, folder / p.name)
    res = _run("--input", str(folder / BUNDLES[0].name), "--output", str(tmp_path / "one"))
    assert res.exit_code == 0, res.output
    one = json.loads((tmp_path / "one" / BUNDLES[0].name).read_text())
    assert one["resourceType"] == "Bundle" and one["entry"]
    res = _run("--input", str(folder), "--output", str(tmp_path / "many"))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == sorted(p.name for p in folder.iterdir())
    assert json.loads((tmp_path / "many" / BUNDLES[0].name).read_text()) == one
    assert not list((tmp_path / "many").glob(".*tmp"))  # atomic writes leave no temp files


def test_cli_missing_key_and_bad_input(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    res = CliRunner().invoke(deid, ["fhir", "--input", str(BUNDLES[0]), "--output", str(tmp_path)])
    assert res.exit_code == 2
    assert KEY_ENV in res.output and len(res.output.strip().splitlines()) == 1
    f = tmp_path / "k"
    f.write_bytes(KEY)
    res = CliRunner().invoke(deid, ["fhir", "--input", str(tmp_path / "nope.json"), "--output",
                                    str(tmp_path / "o"), "--key-file", str(f), "--no-scrub"])
    assert res.exit_code == 2 and "nope.json" in res.output and "Traceback" not in res.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = CliRunner().invoke(deid, ["fhir", "--input", str(bad), "--output", str(tmp_path / "o"),
                                    "--key-file", str(f), "--no-scrub"])
    # nothing FHIR was read: an error (status 2), with the malformed file named
    assert res.exit_code == 2 and "bad.json" in res.output and "malformed JSON" in res.output
    assert "no FHIR resources" in res.output


def test_facade_matches_module_functions_and_record_path() -> None:
    d = Deidentifier(KEY)
    bundle = json.loads(BUNDLES[1].read_text())
    assert d.bundle(bundle) == deidentify_bundle(bundle, PZ)
    raw_patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    assert d.resource(raw_patient) == deidentify_resource(raw_patient, PZ)
    record = PatientRecord(identity=Identity(resource_id=raw_patient["id"]), birth_date=None, sex=None,
                           as_of=datetime(2024, 1, 1))
    assert d.record(record).pseudonym == d.resource(raw_patient)["id"]
    assert d.record(record).as_of.toordinal() - datetime(2024, 1, 1).toordinal() == \
        PZ.date_shift_days(raw_patient["id"])
