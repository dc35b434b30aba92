"""The sandbox's patients and the `patient-view` requests it builds for them.

Sources: the shared Synthea Bundles (a folder, `TRIAGE_SANDBOX_DATA`), the reference vignettes of
the evaluation (`eval/vignettes/dev.jsonl`, `TRIAGE_SANDBOX_VIGNETTES`; the held-out file is never
shown), four packaged examples (`vignettes.json`), or a Bundle the user uploads. The edited vital signs and chief complaint become new Observations and a new
emergency Encounter (reasonCode = the complaint) at the moment of the call; the prefetch is then
computed from the resources exactly as an EHR would answer the service's prefetch templates.
"""
from __future__ import annotations

import functools
import json
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fhir_adapter import codes
from fhir_adapter.prefetch import prefetch_from_resources, resolve_bundle_references

VIGNETTES: list[dict[str, Any]] = json.loads((Path(__file__).parent / "vignettes.json").read_text())
USER_ID = "Practitioner/sandbox-nurse"

# Form field -> (LOINC, display, UCUM unit). Blood pressure is one panel with two components.
VITALS = {
    "heart_rate": (codes.HEART_RATE, "Heart rate", "/min"),
    "respiratory_rate": (codes.RESPIRATORY_RATE, "Respiratory rate", "/min"),
    "temperature": (codes.BODY_TEMPERATURE, "Body temperature", "Cel"),
    "spo2": (codes.SPO2_PULSE_OXIMETRY, "Oxygen saturation by pulse oximetry", "%"),
    "pain": (codes.PAIN_SEVERITY, "Pain severity 0-10", "{score}"),
}
LIMITS = {"heart_rate": (0, 350), "respiratory_rate": (0, 120), "temperature": (25, 45), "spo2": (0, 100),
          "pain": (0, 10), "systolic": (0, 350), "diastolic": (0, 250)}


class SandboxInputError(ValueError):
    """A value the sandbox cannot use (the message names the field, never the value)."""


def synthea_files(folder: str | None) -> list[Path]:
    if not folder or not Path(folder).is_dir():
        return []
    return sorted(Path(folder).glob("*.json"))[:100]


@functools.lru_cache(maxsize=4)
def reference_cases(path: str | None) -> tuple[Any, ...]:
    """The reference vignettes (`eval/vignettes/dev.jsonl`, read with `model.evaluate`)."""
    if not path or not Path(path).is_file():
        return ()
    from model.evaluate import load_cases

    return tuple(load_cases(path))


@functools.lru_cache(maxsize=4)
def patient_list(folder: str | None, reference: str | None = None) -> tuple[dict[str, str], ...]:
    """Examples, the reference vignettes, then the Synthea patients (by number, sex and age: no
    names on the page)."""
    out = [{"id": f"vignette:{v['id']}", "label": f"Example: {v['label']}"} for v in VIGNETTES]
    for case in reference_cases(reference):
        age = f"{case.age_years} y" if case.age_years is not None else f"{case.age_months} mo"
        out.append({"id": f"reference:{case.id}",
                    "label": f"Reference vignette {case.id} ({case.sex or '?'}, {age}): {(case.complaint or '')[:60]}"})
    for index, path in enumerate(synthea_files(folder)):
        patient = _patient_of(resolve_bundle_references(_load(path)))
        age = _age(patient.get("birthDate")) if patient else None
        desc = ", ".join(x for x in (patient.get("gender") if patient else None,
                                     f"{age} y" if age is not None else None) if x)
        out.append({"id": f"synthea:{index}", "label": f"Synthea patient {index + 1}" + (f" ({desc})" if desc else "")})
    return tuple(out)


def _reference_case(source: str, reference: str | None) -> Any:
    case = next((c for c in reference_cases(reference) if f"reference:{c.id}" == source), None)
    if case is None:
        raise SandboxInputError("source: no such reference vignette")
    return case


def load_source(source: str, folder: str | None, upload: Any = None,
                reference: str | None = None) -> list[dict[str, Any]]:
    """The resources of `source` (`vignette:<id>`, `reference:<case id>`, `synthea:<n>`, or
    `upload` with a Bundle). A vignette gives its Patient only: the vitals and the complaint come
    from the (edited) form."""
    if source.startswith("reference:"):
        from cds_hooks.evaluate import case_bundle

        bundle = case_bundle(_reference_case(source, reference))
        return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    if source == "upload":
        if not isinstance(upload, dict) or upload.get("resourceType") != "Bundle":
            raise SandboxInputError("bundle: upload a FHIR Bundle (JSON)")
        resources = resolve_bundle_references(upload)
    elif source.startswith("vignette:"):
        vignette = next((v for v in VIGNETTES if f"vignette:{v['id']}" == source), None)
        if vignette is None:
            raise SandboxInputError("source: no such vignette")
        resources = [_vignette_patient(vignette)]
    elif source.startswith("synthea:"):
        files = synthea_files(folder)
        try:
            index = int(source.split(":", 1)[1])
            path = files[index]
        except (ValueError, IndexError):
            raise SandboxInputError("source: no such Synthea patient") from None
        resources = resolve_bundle_references(_load(path))
    else:
        raise SandboxInputError("source: choose a patient, a vignette or an upload")
    if _patient_of(resources) is None:
        raise SandboxInputError("bundle: no Patient resource")
    return resources


def defaults(source: str, folder: str | None, upload: Any = None, reference: str | None = None) -> dict[str, Any]:
    """The form's starting values: the vignette's, or the newest vitals of the record."""
    if source.startswith("reference:"):
        case = _reference_case(source, reference)
        values = {"heart_rate": case.hr, "respiratory_rate": case.rr, "systolic": case.sbp, "diastolic": case.dbp,
                  "temperature": case.temp_c, "spo2": case.spo2, "pain": case.pain, "avpu": case.avpu}
        return {"vitals": {k: v for k, v in values.items() if v is not None}, "complaint": case.complaint or ""}
    if source.startswith("vignette:"):
        vignette = next((v for v in VIGNETTES if f"vignette:{v['id']}" == source), None)
        if vignette is None:
            raise SandboxInputError("source: no such vignette")
        return {"vitals": vignette["vitals"], "complaint": vignette["complaint"]}
    from fhir_adapter.extract import build_record

    resources = load_source(source, folder, upload, reference)
    patient = _patient_of(resources)
    context = {"userId": USER_ID, "patientId": patient["id"]}
    record = build_record(prefetch_from_resources(resources, context), as_of=datetime.now(timezone.utc))
    vitals: dict[str, Any] = {}
    for name, (loinc, _, _) in VITALS.items():
        sign = record.vitals.get(loinc) or (record.vitals.get(codes.SPO2) if name == "spo2" else None)
        if sign is not None and sign.value is not None:
            vitals[name] = round(sign.value, 1)
    bp = record.vitals.get(codes.SYSTOLIC_BP)
    if bp is not None and bp.value is not None:
        vitals["systolic"] = round(bp.value)
    dia = record.vitals.get(codes.DIASTOLIC_BP)
    if dia is not None and dia.value is not None:
        vitals["diastolic"] = round(dia.value)
    return {"vitals": vitals, "complaint": ""}


def hook_request(resources: list[dict[str, Any]], vitals: dict[str, Any], complaint: str,
                 *, now: datetime | None = None) -> dict[str, Any]:
    """A patient-view request for these resources plus the edited vitals and complaint."""
    now = now or datetime.now(timezone.utc)
    patient = _patient_of(resources)
    pid = patient["id"]
    added = list(resources)
    encounter_id = f"sandbox-{uuid.uuid4().hex[:12]}"
    encounter: dict[str, Any] = {
        "resourceType": "Encounter", "id": encounter_id, "status": "in-progress",
        "class": {"system": codes.V3_ACT_CODE, "code": "EMER", "display": "emergency"},
        "subject": {"reference": f"Patient/{pid}"}, "period": {"start": now.isoformat()},
    }
    complaint = " ".join(str(complaint or "").split())[:500]
    if complaint:
        encounter["reasonCode"] = [{"text": complaint}]
    added.append(encounter)
    for obs in vital_observations(pid, encounter_id, vitals, now):
        added.append(obs)
    context = {"userId": USER_ID, "patientId": pid, "encounterId": encounter_id}
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "context": context,
            "prefetch": prefetch_from_resources(added, context)}


def vital_observations(pid: str, encounter_id: str, vitals: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    values = {name: _number(name, vitals.get(name)) for name in LIMITS}
    out = []

    def observation(code: str, display: str, **value: Any) -> dict[str, Any]:
        return {
            "resourceType": "Observation", "id": f"sandbox-{uuid.uuid4().hex[:12]}", "status": "final",
            "category": [{"coding": [{"system": codes.OBSERVATION_CATEGORY, "code": codes.VITAL_SIGNS_CATEGORY}]}],
            "code": {"coding": [{"system": codes.LOINC, "code": code, "display": display}], "text": display},
            "subject": {"reference": f"Patient/{pid}"}, "encounter": {"reference": f"Encounter/{encounter_id}"},
            "effectiveDateTime": now.isoformat(), **value,
        }

    for name, (loinc, display, unit) in VITALS.items():
        if values[name] is not None:
            out.append(observation(loinc, display, valueQuantity={"value": values[name], "unit": unit,
                                                                  "system": "http://unitsofmeasure.org", "code": unit}))
    avpu = str(vitals.get("avpu") or "").strip().upper()
    if avpu:
        from cds_hooks.evaluate import _AVPU_CODES  # the same SNOMED codes the evaluation sends

        if avpu not in _AVPU_CODES:
            raise SandboxInputError("vitals.avpu: one of A, C, V, P, U")
        code, display = _AVPU_CODES[avpu]
        out.append(observation(codes.LEVEL_OF_RESPONSIVENESS, "Level of responsiveness",
                               valueCodeableConcept={"coding": [{"system": codes.SNOMED, "code": code,
                                                                 "display": display}]}))
    if values["systolic"] is not None or values["diastolic"] is not None:
        components = [
            {"code": {"coding": [{"system": codes.LOINC, "code": code, "display": label}]},
             "valueQuantity": {"value": values[name], "unit": "mm[Hg]", "system": "http://unitsofmeasure.org",
                               "code": "mm[Hg]"}}
            for name, code, label in (("systolic", codes.SYSTOLIC_BP, "Systolic blood pressure"),
                                      ("diastolic", codes.DIASTOLIC_BP, "Diastolic blood pressure"))
            if values[name] is not None
        ]
        out.append(observation(codes.BP_PANEL, "Blood pressure panel", component=components))
    return out


def _number(name: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SandboxInputError(f"vitals.{name}: must be a number") from None
    low, high = LIMITS[name]
    if not low <= number <= high:
        raise SandboxInputError(f"vitals.{name}: must be between {low} and {high}")
    return number


def _vignette_patient(vignette: dict[str, Any]) -> dict[str, Any]:
    born = date.today() - timedelta(days=int(vignette["age_days"]))
    return {"resourceType": "Patient", "id": f"vignette-{vignette['id']}", "gender": vignette["gender"],
            "birthDate": born.isoformat()}


def _patient_of(resources: Any) -> dict[str, Any] | None:
    items = resources
    if isinstance(resources, dict):
        items = [e.get("resource") for e in resources.get("entry") or [] if isinstance(e, dict)]
    return next((r for r in items if isinstance(r, dict) and r.get("resourceType") == "Patient"
                 and isinstance(r.get("id"), str)), None)


def _age(birth: Any) -> int | None:
    try:
        born = date.fromisoformat(str(birth))
    except ValueError:
        return None
    today = date.today()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
