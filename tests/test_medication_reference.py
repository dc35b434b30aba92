"""A MedicationRequest that names its drug by `medicationReference` keeps the drug's codes: included
by the EHR (`_include`), contained, or read from the FHIR server; in the hook and in datasets."""
from __future__ import annotations

import copy
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from cds_hooks.hook import load_deidentified
from cds_hooks.schemas import HookRequest, PatientViewContext
from conftest import DATA
from fhir_adapter.client import missing_medication_references
from fhir_adapter.prefetch import PREFETCH_TEMPLATES, prefetch_from_resources, render_prefetch
from tests.support.cds_app import load, make_app, patient_view
from tests.support.fhir_server import serve_fhir

BUNDLE = DATA / "fhir" / "uscore-bundles" / "uscore_bundle_patient_85.json"
FUROSEMIDE = ("http://www.nlm.nih.gov/research/umls/rxnorm", "1719286")  # the Medication of patient 85
AS_OF = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("meds"), TRIAGE_SCRUB_FREE_TEXT=False)


def deidentified(app, body):
    request = HookRequest.model_validate(body)
    context = PatientViewContext.model_validate(request.context)
    service = app.extensions["triage_registry"].get("triage")
    with app.test_request_context():
        return load_deidentified(request, context, app.extensions["triage_runtime"], service, now=AS_OF)


def med_codes(record) -> set[tuple[str, str]]:
    return {(c.system, c.code) for m in record.medications for c in m.codings}


def test_the_template_asks_for_the_medication():
    assert "_include=MedicationRequest:medication" in PREFETCH_TEMPLATES["medications"]
    assert render_prefetch({"patientId": "85"})["medications"] == (
        "MedicationRequest?patient=85&status=active&_include=MedicationRequest:medication")


def test_included_medication_keeps_its_codes(app):
    body = patient_view(load(BUNDLE))
    modes = [e["search"]["mode"] for e in body["prefetch"]["medications"]["entry"]]
    assert modes.count("include") == 1 and body["prefetch"]["medications"]["total"] == modes.count("match")
    assert FUROSEMIDE in med_codes(deidentified(app, body))


def test_without_the_include_the_medication_is_read_from_the_fhir_server(app):
    bundle = load(BUNDLE)
    body = patient_view(bundle)
    meds = body["prefetch"]["medications"]
    meds["entry"] = [e for e in meds["entry"] if e["search"]["mode"] == "match"]  # an EHR ignoring _include
    with serve_fhir(bundle) as url:
        body["fhirServer"] = url
        body["fhirAuthorization"] = {"access_token": "t0k", "token_type": "Bearer", "expires_in": 300,
                                     "scope": "patient/*.read", "subject": "triage-cds"}
        record = deidentified(app, body)
        reads = [r for r in url.requests if r.path.startswith("/Medication/")]
    assert FUROSEMIDE in med_codes(record)
    assert len(reads) == 1 and reads[0].authorized
    # With no FHIR server to ask, the drug has no code (and nothing fails).
    body.pop("fhirServer"), body.pop("fhirAuthorization")
    assert FUROSEMIDE not in med_codes(deidentified(app, body))


def test_contained_medication_keeps_its_codes(app):
    bundle = load(BUNDLE)
    body = patient_view(bundle)
    entries = body["prefetch"]["medications"]["entry"]
    medication = next(e["resource"] for e in entries if e["search"]["mode"] == "include")
    request = next(e["resource"] for e in entries if "medicationReference" in e["resource"])
    request["contained"] = [{**copy.deepcopy(medication), "id": "med1"}]
    request["medicationReference"] = {"reference": "#med1"}
    body["prefetch"]["medications"]["entry"] = [e for e in entries if e["search"]["mode"] == "match"]
    assert FUROSEMIDE in med_codes(deidentified(app, body))


def test_only_relative_medication_references_are_read():
    data = {"medications": {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "MedicationRequest", "id": "a", "medicationReference": {"reference": "Medication/m1"}}},
        {"resource": {"resourceType": "MedicationRequest", "id": "b",
                      "medicationReference": {"reference": "http://169.254.169.254/Medication/x"}}},
        {"resource": {"resourceType": "MedicationRequest", "id": "c", "medicationReference": {"reference": "#c1"}}},
        {"resource": {"resourceType": "MedicationRequest", "id": "d", "medicationReference": {"reference": "Medication/m2"}}},
        {"resource": {"resourceType": "Medication", "id": "m2"}},
        {"resource": {"resourceType": "MedicationRequest", "id": "e", "medicationReference": ["Medication/m3"]}},
    ]}}
    assert missing_medication_references(data) == ["Medication/m1"]


@pytest.mark.slow  # two builds of the 10-patient export (~35 s each on 2 busy cores)
def test_datasets_keep_the_codes_of_referenced_medications(tmp_path):
    """The same export with every drug moved into Medication resources builds the same examples."""
    from model.cli import dataset as dataset_group

    export = DATA / "fhir" / "bulk-export-synthea-10"
    moved = tmp_path / "export"
    shutil.copytree(export, moved)
    lines, medications, active_names = [], {}, set()
    for line in (export / "MedicationRequest.000.ndjson").read_text().splitlines():
        request = json.loads(line)
        concept = request.pop("medicationCodeableConcept", None)
        if concept is not None:
            if request.get("status") == "active":
                active_names |= {c["display"] for c in concept.get("coding", []) if c.get("display")}
            key = json.dumps(concept, sort_keys=True)
            med_id = medications.setdefault(key, f"med-{len(medications)}")
            request["medicationReference"] = {"reference": f"Medication/{med_id}"}
        lines.append(json.dumps(request))
    assert medications
    (moved / "MedicationRequest.000.ndjson").write_text("\n".join(lines) + "\n")
    (moved / "Medication.000.ndjson").write_text("".join(
        json.dumps({"resourceType": "Medication", "id": med_id, "code": json.loads(key)}) + "\n"
        for key, med_id in medications.items()))
    key_file = tmp_path / "steward.key"
    key_file.write_text("9f" * 32 + "\n")
    outputs = {}
    for name, source in (("original", export), ("moved", moved)):
        out = tmp_path / name
        result = CliRunner().invoke(dataset_group, ["build", "--input", str(source), "--output", str(out),
                                                    "--key-file", str(key_file),
                                                    "--format", "chat", "--quiet"])
        assert result.exit_code == 0, result.output
        outputs[name] = {p.name: p.read_text() for p in sorted(out.glob("*.jsonl"))}
    assert outputs["original"] and outputs["moved"] == outputs["original"]
    text = "".join(outputs["moved"].values())
    shown = {name for name in active_names if name in text}
    assert shown, "no active drug named in the examples"  # the codes' names reach the examples
