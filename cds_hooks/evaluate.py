"""`triage evaluate`: labelled cases through the real hook path, figures side by side.

Each case becomes what an EHR would send: a Patient, an in-progress emergency Encounter with the
complaint in `reasonCode.text`, and vital-sign Observations (heart rate, respiratory rate, blood
pressure panel, temperature, SpO2, AVPU, pain 0-10), answered as the service's own prefetch
templates ask. It is POSTed as a `patient-view` to the service (`create_app`, JSON parsing,
prefetch, de-identification, rules, cards) and the level is read off the returned cards the way a
nurse reads them: the ESI level the rules card's summary names, and the AI card's suggested acuity.
"""
from __future__ import annotations

import json
import re
import sys
import tempfile
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
from faker import Faker

from deidentify.leaks import IdentifierSet, find_leaks
from fhir_adapter.prefetch import prefetch_from_resources
from model.evaluate import DEFAULT_MAX_UNDER_TRIAGE, Case, CaseError, TriagerResult, gate, load_cases, metrics, write_report

_SUMMARY_LEVEL = re.compile(r"\bESI (\d)\b")
_AI_LEVEL = re.compile(r"Suggested acuity: ESI (\d)")
_DAYS_OLD = re.compile(r"\b(\d{1,2})\s*(?:-\s*)?(?:days?|d)\s*(?:-\s*)?old\b", re.I)
_AVPU_CODES = {"A": ("248234008", "Mentally alert"), "C": ("130987000", "Acute confusion"),
               "V": ("300202002", "Responds to voice"), "P": ("450847001", "Responds to pain"),
               "U": ("422768004", "Unresponsive")}
_VITALS_CATEGORY = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                 "code": "vital-signs"}]}]


def _birth_date(case: Case, now: datetime) -> str | None:
    if case.age_years is None and case.age_months is None:
        return None
    if case.age_months is not None and (case.age_years or 0) < 3:
        days = case.age_months * 30.44 + 15
        if case.age_months == 0:
            found = _DAYS_OLD.search(case.complaint or "")
            days = int(found.group(1)) if found else 14
        return (now - timedelta(days=days)).date().isoformat()
    # A birthday half a year ago: the age in years is exact whatever the day.
    half_year_ago = (now - timedelta(days=182)).date()
    return half_year_ago.replace(year=half_year_ago.year - int(case.age_years or 0), day=min(half_year_ago.day, 28)).isoformat()


def _quantity(code: str, display: str, value: float, unit: str, ucum: str) -> dict[str, Any]:
    return {"code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": ucum}}


def case_bundle(case: Case, now: datetime | None = None) -> dict[str, Any]:
    """The FHIR R4 resources an EHR would hold for this visit at `now` (default: the real now,
    since the service scores at the request time), as a collection Bundle."""
    now = now or datetime.now(timezone.utc)
    pid, eid = f"p-{uuid.uuid5(uuid.NAMESPACE_URL, case.id)}", f"e-{uuid.uuid5(uuid.NAMESPACE_DNS, case.id)}"
    taken = (now - timedelta(minutes=5)).isoformat()
    # A made-up name and MRN per case, so the leak check of the outputs has identifiers to look for.
    fake = Faker()
    fake.seed_instance(case.id)
    patient: dict[str, Any] = {
        "resourceType": "Patient", "id": pid,
        "name": [{"family": fake.last_name(), "given": [fake.first_name()]}],
        "identifier": [{"system": "urn:triage-cds:evaluation-mrn", "value": f"MRN{fake.random_number(digits=8, fix_len=True)}"}],
    }
    if case.sex:
        patient["gender"] = case.sex if case.sex in ("male", "female", "other") else "unknown"
    if (born := _birth_date(case, now)) is not None:
        patient["birthDate"] = born
    encounter: dict[str, Any] = {
        "resourceType": "Encounter", "id": eid, "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
        "subject": {"reference": f"Patient/{pid}"}, "period": {"start": taken},
    }
    if case.complaint:
        encounter["reasonCode"] = [{"text": case.complaint}]
    resources: list[dict[str, Any]] = [patient, encounter]

    def observation(n: int, body: dict[str, Any]) -> None:
        resources.append({"resourceType": "Observation", "id": f"{eid}-o{n}", "status": "final",
                          "category": _VITALS_CATEGORY, "subject": {"reference": f"Patient/{pid}"},
                          "encounter": {"reference": f"Encounter/{eid}"}, "effectiveDateTime": taken, **body})

    if case.hr is not None:
        observation(1, _quantity("8867-4", "Heart rate", case.hr, "/min", "/min"))
    if case.rr is not None:
        observation(2, _quantity("9279-1", "Respiratory rate", case.rr, "/min", "/min"))
    if case.temp_c is not None:
        observation(3, _quantity("8310-5", "Body temperature", case.temp_c, "Cel", "Cel"))
    if case.spo2 is not None:
        observation(4, _quantity("59408-5", "Oxygen saturation by pulse oximetry", case.spo2, "%", "%"))
    if case.pain is not None:
        observation(5, _quantity("72514-3", "Pain severity 0-10", case.pain, "{score}", "{score}"))
    if case.sbp is not None or case.dbp is not None:
        components = [_quantity(code, name, value, "mm[Hg]", "mm[Hg]")
                      for code, name, value in (("8480-6", "Systolic", case.sbp), ("8462-4", "Diastolic", case.dbp))
                      if value is not None]
        observation(6, {"code": {"coding": [{"system": "http://loinc.org", "code": "85354-9",
                                             "display": "Blood pressure panel"}]}, "component": components})
    if case.avpu is not None:
        code, display = _AVPU_CODES[case.avpu]
        observation(7, {"code": {"coding": [{"system": "http://loinc.org", "code": "67775-7",
                                             "display": "Level of responsiveness"}]},
                        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": code,
                                                             "display": display}]}})
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]}


def _request(bundle: dict[str, Any]) -> dict[str, Any]:
    entries = [e.get("resource", {}) for e in bundle.get("entry", ())]
    patient = next(r for r in entries if r.get("resourceType") == "Patient")
    context: dict[str, Any] = {"userId": "Practitioner/evaluation", "patientId": patient.get("id")}
    encounter = next((r for r in entries if r.get("resourceType") == "Encounter"
                      and r.get("status") == "in-progress"), None)
    if encounter is not None:
        context["encounterId"] = encounter.get("id")
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "context": context,
            "prefetch": prefetch_from_resources(bundle, context)}


def _identifiers(bundle: dict[str, Any]) -> IdentifierSet:
    from fhir_adapter.extract import build_record

    data = {"bundle": bundle}
    record = build_record(data, as_of=datetime.now(timezone.utc))
    return IdentifierSet.from_identity(record.identity)


def run_cases(cases: list[Case], *, rules: bool, model_path: str | None, adapter: str | None,
              instance: Path, report_timeout_s: float = 120.0) -> list[TriagerResult]:
    """Fire every case at the service; the rules level from every response, the AI level (when a
    model is named) from the AI card, waiting for each report as long as `report_timeout_s`."""
    from cds_hooks.app import create_app

    config: dict[str, Any] = {
        "TRIAGE_INSECURE_NO_AUTH": True,
        "TRIAGE_INSTANCE_DIR": str(instance),
        "TRIAGE_DATABASE_URL": f"sqlite:///{instance / 'evaluate.sqlite'}",
    }
    if model_path:
        config.update({"TRIAGE_MODEL_PATH": model_path, "TRIAGE_HOOK_DEADLINE_MS": int(report_timeout_s * 1000)})
        if adapter:
            config["TRIAGE_ADAPTER_PATH"] = adapter
    app = create_app(config)
    client = app.test_client()
    rules_result = TriagerResult("rules", leaks=0)
    model_result = TriagerResult("model", schema_valid=0, answered=0, leaks=0) if model_path else None
    for case in cases:
        bundle = case.bundle or case_bundle(case)
        started = time.perf_counter()
        response = client.post("/cds-services/triage", json=_request(bundle))
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise CaseError(f"case {case.id}: the service answered {response.status_code}")
        cards = response.get_json()["cards"]
        rules_card = next((c for c in cards if "rules" in c["source"]["label"].lower()), None)
        level = _SUMMARY_LEVEL.search(rules_card["summary"]) if rules_card else None
        rules_result.levels[case.id] = int(level.group(1)) if level else None
        rules_result.seconds += elapsed
        known = _identifiers(bundle)
        if rules_card is not None:
            rules_result.leaks += sum(find_leaks(json.dumps(rules_card), known).values())
        if model_result is not None:
            model_result.seconds += elapsed
            ai = next((c for c in cards if c["summary"].startswith("AI (preliminary)")), None)
            found = _AI_LEVEL.search(ai.get("detail", "")) if ai else None
            model_result.levels[case.id] = int(found.group(1)) if found else None
            if ai is not None:
                model_result.answered += 1
                model_result.schema_valid += 1 if found else 0  # cards are built only from valid reports
                text = json.dumps(ai)
                model_result.leaks += sum(find_leaks(text, known).values())
    return [r for r in (rules_result if rules else None, model_result) if r is not None]


@click.command("evaluate")
@click.argument("cases_path", metavar="CASES", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("var/evaluation"),
              show_default=True, help="Folder for report.md, metrics.json and the PNG plots.")
@click.option("--rules/--no-rules", default=True, show_default=True, help="Evaluate the rules card.")
@click.option("--model", "model_path", default=None, help="Model folder: also evaluate the AI card.")
@click.option("--adapter", default=None, help="LoRA adapter folder for --model.")
@click.option("--limit", type=int, default=None, help="Only the first N cases of each split (model runs are slow on CPU).")
@click.option("--gate/--no-gate", "use_gate", default=False,
              help="Exit 1 when a triager under-triages more than --max-under-triage, or a model more than the rules.")
@click.option("--max-under-triage", type=float, default=DEFAULT_MAX_UNDER_TRIAGE, show_default=True)
def evaluate(cases_path: Path, out_dir: Path, rules: bool, model_path: str | None, adapter: str | None,
             limit: int | None, use_gate: bool, max_under_triage: float) -> None:
    """Run labelled CASES (a .jsonl/.csv file, a folder of them, or FHIR Bundles with labels.jsonl)
    through the hook and report agreement with the reference ESI level."""
    if not rules and not model_path:
        raise click.UsageError("nothing to evaluate: give --model or keep --rules")
    try:
        cases = load_cases(cases_path)
    except CaseError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if limit is not None:
        by_split: dict[str, list[Case]] = {}
        for case in cases:
            by_split.setdefault(case.split, []).append(case)
        cases = [c for split in by_split.values() for c in split[:limit]]
    with tempfile.TemporaryDirectory(prefix="triage-evaluate-") as tmp:
        try:
            results = run_cases(cases, rules=rules, model_path=model_path, adapter=adapter, instance=Path(tmp))
        except CaseError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    report = metrics(cases, results)
    report["gate"] = gate(report, max_under_triage=max_under_triage)
    write_report(report, out_dir)
    for name, entry in report["triagers"].items():
        for split, block in [("all", entry["overall"]), *entry["by_split"].items()]:
            click.echo(f"{name:<6} {split:<10} n={block['n']:<4} exact={_f(block['exact'])} "
                       f"within1={_f(block['within_one'])} kappa={_f(block['kappa'])} "
                       f"under={_f(block['under_triage'])} over={_f(block['over_triage'])} "
                       f"sens1-2={_f(block['sensitivity_1_2'])}")
    verdict = "passed" if report["gate"]["passed"] else "FAILED: " + "; ".join(report["gate"]["failures"])
    click.echo(f"gate {verdict}; report in {out_dir}")
    if use_gate and not report["gate"]["passed"]:
        sys.exit(1)


def _f(value: float | None) -> str:
    return "  —  " if value is None else f"{value:.3f}"
