"""Build a plain `PatientRecord` from parsed FHIR R4 resources.

Datetimes stay time-zone aware; a date-only value becomes midnight UTC; a partial date (`2020`,
`2020-05`) becomes its first day. Observations are keyed by every LOINC coding they carry, so an
SpO2 coded 2708-6 and 59408-5 is found under both.
"""
from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from fhir_core.fhirabstractmodel import FHIRAbstractModel

from . import codes
from .parse import Resource, StatsCounter, bundle_entries, parse_many
from .record import (
    Address,
    AllergyEntry,
    Coding,
    Complaint,
    ConditionEntry,
    EncounterInfo,
    Identity,
    MedicationEntry,
    ParseStats,
    PatientRecord,
    VitalSign,
)

log = logging.getLogger(__name__)

__all__ = ["RecordError", "build_record", "record_from_resources", "to_datetime"]

_EXCLUDED_OBS_STATUS = {"entered-in-error", "cancelled"}
_PHONE_SYSTEMS = {"phone", "fax", "sms", "pager"}


class RecordError(ValueError):
    """The resources do not describe a patient (no Patient resource)."""


# ---- small converters ------------------------------------------------------------------------

def to_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, str):  # partial dates stay strings in the models
        text = value.strip().replace("Z", "+00:00")
        if len(text) == 4:
            text += "-01-01"
        elif len(text) == 7:
            text += "-01"
        try:
            return to_datetime(datetime.fromisoformat(text))
        except ValueError:
            return None
    return None


def _to_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    dt = to_datetime(value)
    return dt.date() if dt else None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float, Decimal)):
        return float(value)
    return None


def _codings(concept: Any) -> tuple[Coding, ...]:
    if concept is None:
        return ()
    return tuple(Coding(c.system, c.code, c.display) for c in concept.coding or ())


def _concept_code(concept: Any) -> str | None:
    if concept is None:
        return None
    for c in concept.coding or ():
        if c.code:
            return c.code
    return None


def _concept_text(concept: Any) -> str | None:
    """code.text, else the first display: a human reading of a CodeableConcept."""
    if concept is None:
        return None
    if concept.text:
        return concept.text
    for c in concept.coding or ():
        if c.display:
            return c.display
    return None


def _notes(annotations: Any) -> tuple[str, ...]:
    return tuple(a.text for a in annotations or () if getattr(a, "text", None))


def _loincs(concept: Any) -> list[str]:
    if concept is None:
        return []
    out = []
    for c in concept.coding or ():
        if c.code and (c.system in (None, codes.LOINC)) and c.code not in out:
            out.append(c.code)
    return out


def _ref_id(ref: Any) -> str | None:
    """`Type/id` (or a bare id) of a Reference, last two segments of an absolute URL."""
    text = getattr(ref, "reference", None)
    if not text:
        return None
    parts = text.split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else text


# ---- observations ----------------------------------------------------------------------------

def _obs_time(obs: Any) -> datetime | None:
    if obs.effectiveDateTime is not None:
        return to_datetime(obs.effectiveDateTime)
    if obs.effectiveInstant is not None:
        return to_datetime(obs.effectiveInstant)
    if obs.effectivePeriod is not None and obs.effectivePeriod.start is not None:
        return to_datetime(obs.effectivePeriod.start)
    return to_datetime(obs.issued)


def _quantity(holder: Any) -> tuple[float | None, str | None]:
    q = getattr(holder, "valueQuantity", None)
    if q is not None:
        return _num(q.value), q.code or q.unit
    integer = getattr(holder, "valueInteger", None)
    if integer is not None:
        return float(integer), None
    return None, None


_MIN_DT = datetime.min.replace(tzinfo=timezone.utc)


def _vital_rank(v: VitalSign) -> tuple[bool, datetime, int]:
    # Newest reading with a value wins; a value-less reading (dataAbsentReason) never hides the
    # last known value; at equal times, the one with more components (e.g. O2 flow) wins.
    has_value = v.value is not None or v.value_code is not None or bool(v.components)
    return has_value, v.effective or _MIN_DT, len(v.components)


def _offer(vitals: dict[str, VitalSign], v: VitalSign) -> None:
    old = vitals.get(v.loinc)
    if old is None or _vital_rank(v) > _vital_rank(old):
        vitals[v.loinc] = v


def _observation_vitals(obs: Any) -> list[VitalSign]:
    loincs = _loincs(obs.code)
    if not loincs:
        return []
    effective = _obs_time(obs)
    value, unit = _quantity(obs)
    value_code = None
    if obs.valueCodeableConcept is not None:
        cc = _codings(obs.valueCodeableConcept)
        value_code = cc[0] if cc else Coding(None, None, obs.valueCodeableConcept.text)
    components: dict[str, float] = {}
    component_units: dict[str, str] = {}
    for comp in obs.component or ():
        cvalue, cunit = _quantity(comp)
        if cvalue is None:
            continue
        for code in _loincs(comp.code):
            components.setdefault(code, cvalue)
            if cunit:
                component_units.setdefault(code, cunit)
    texts = [t for t in (obs.code.text, *_notes(obs.note)) if t]
    text = "; ".join(texts) or None
    out = []
    for loinc in loincs:
        out.append(VitalSign(loinc=loinc, display=_concept_text(obs.code), value=value, unit=unit,
                             effective=effective, value_code=value_code, components=dict(components),
                             component_units=dict(component_units), text=text))
    # Panel members (systolic/diastolic) also stand alone unless a newer stand-alone one exists.
    for panel in loincs:
        for member in codes.PANEL_COMPONENTS.get(panel, ()):
            if member in components:
                out.append(VitalSign(loinc=member, display=None, value=components[member],
                                     unit=component_units.get(member), effective=effective, text=None))
    return out


def _is_vital(obs: Any) -> bool:
    for cat in obs.category or ():
        for c in cat.coding or ():
            if c.code == codes.VITAL_SIGNS_CATEGORY:
                return True
    return any(code in codes.VITAL_LOINCS for code in _loincs(obs.code))


# ---- identity --------------------------------------------------------------------------------

def _human_names(names: Any) -> tuple[list[str], list[str], list[str]]:
    given: list[str] = []
    family: list[str] = []
    texts: list[str] = []
    for n in names or ():
        for g in n.given or ():
            if g and g not in given:
                given.append(g)
        if n.family and n.family not in family:
            family.append(n.family)
        if n.text:
            texts.append(n.text)
    return given, family, texts


def _full_names(names: Any) -> list[str]:
    out = []
    for n in names or ():
        if n.text:
            out.append(n.text)
        parts = [*(n.given or ()), *( [n.family] if n.family else [])]
        if parts:
            out.append(" ".join(parts))
    return out


def _address(a: Any) -> Address:
    return Address(lines=tuple(a.line or ()), city=a.city, district=a.district, state=a.state,
                   postal_code=a.postalCode, country=a.country)


# Reference.display names a person or organization only when it points at one of these; a
# display on any other reference (a Condition, an Encounter, a Medication) is clinical text.
_PARTY_TYPES = frozenset({"Patient", "Person", "Practitioner", "PractitionerRole", "RelatedPerson",
                          "Organization", "CareTeam", "Location"})
# Fields whose references point at a party even when the reference is a bare urn:uuid.
_PARTY_FIELDS = frozenset({"performer", "requester", "recorder", "asserter", "author", "individual",
                           "serviceProvider", "generalPractitioner", "managingOrganization", "custodian",
                           "practitioner", "organization", "provider", "insurer", "payor", "beneficiary",
                           "subscriber", "policyHolder", "authenticator", "enterer", "participant",
                           "actor", "location", "attester", "party", "sender", "recipient", "informant"})


def _is_party_reference(node: Mapping[str, Any], field_name: str | None) -> bool:
    """Does a Reference (its members: a model's `__dict__`, or its JSON) point at a party?"""
    ref = node.get("reference")
    if isinstance(ref, str) and not ref.startswith(("urn:", "#")):
        head = ref.split("?", 1)[0].rstrip("/").split("/")
        rtype = head[-2] if len(head) >= 2 else head[0]
        return rtype in _PARTY_TYPES
    declared = node.get("type")
    if isinstance(declared, str):
        return declared in _PARTY_TYPES
    return field_name in _PARTY_FIELDS


def _reference_displays(node: Any, out: list[str], field_name: str | None = None) -> None:
    """`Reference.display` of every reference to a person or organization under a resource
    (e.g. a performer "Dr. Jane Smith"); displays of clinical references are not identifiers."""
    if isinstance(node, FHIRAbstractModel):
        display = node.__dict__.get("display")
        if display and "reference" in type(node).model_fields and isinstance(display, str) \
                and _is_party_reference(node.__dict__, field_name):
            out.append(display)
        for key, value in node.__dict__.items():
            if value is not None and not isinstance(value, (str, int, float, bool, Decimal, date)):
                _reference_displays(value, out, key)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, (FHIRAbstractModel, list)):
                _reference_displays(item, out, field_name)


# Coding members: a dict with one of these and a display is a Coding, whose display is terminology.
_CODING_KEYS = frozenset({"system", "code", "version", "userSelected"})


def raw_reference_displays(node: Any, out: list[str], field_name: str | None = None) -> None:
    """`_reference_displays` of a resource not validated (its JSON): the same displays, in JSON
    order (the model walk goes in schema order). A dict with a display is a Reference unless it has
    a Coding member; the party test is `_is_party_reference`. Tested equal on every
    resource of the test exports."""
    if isinstance(node, Mapping):
        display = node.get("display")
        if isinstance(display, str) and display and not _CODING_KEYS.intersection(node) \
                and _is_party_reference(node, field_name):
            out.append(display)
        for key, value in node.items():
            if isinstance(value, (Mapping, list)):
                raw_reference_displays(value, out, key)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, (Mapping, list)):
                raw_reference_displays(item, out, field_name)


def _identity(patient: Any, others: list[Any], displays: list[str]) -> Identity:
    given, family, texts = _human_names(patient.name)
    identifiers: list[tuple[str | None, str]] = []
    for ident in patient.identifier or ():
        if ident.value:
            kind = ident.system or _concept_text(ident.type)
            identifiers.append((kind, ident.value))
    phones: list[str] = []
    emails: list[str] = []
    addresses = [_address(a) for a in patient.address or ()]
    other_names: list[str] = list(texts)

    def telecom(points: Any) -> None:
        for t in points or ():
            if not t.value:
                continue
            if t.system == "email":
                emails.append(t.value)
            elif t.system in _PHONE_SYSTEMS or t.system is None:
                phones.append(t.value)
            else:  # url, other: still identifying, kept as a string to search for
                other_names.append(t.value)

    telecom(patient.telecom)
    for contact in patient.contact or ():
        if contact.name is not None:
            other_names.extend(_full_names([contact.name]))
        telecom(contact.telecom)
        if contact.address is not None:
            addresses.append(_address(contact.address))
    for res in others:
        rtype = res.get_resource_type()
        if rtype in ("RelatedPerson", "Practitioner"):
            other_names.extend(_full_names(res.name))
        elif rtype == "Organization" and res.name:
            other_names.append(res.name)
            other_names.extend(a for a in res.alias or () if a)
        if rtype == "RelatedPerson":
            telecom(res.telecom)
            addresses.extend(_address(a) for a in res.address or ())
    other_names.extend(displays)
    return Identity(
        resource_id=patient.id,
        given_names=tuple(given),
        family_names=tuple(family),
        identifiers=tuple(dict.fromkeys(identifiers)),
        phones=tuple(dict.fromkeys(phones)),
        emails=tuple(dict.fromkeys(emails)),
        addresses=tuple(dict.fromkeys(addresses)),
        birth_date=_to_date(patient.birthDate),
        other_names=tuple(dict.fromkeys(n for n in other_names if n)),
    )


# ---- other entries ---------------------------------------------------------------------------

def _condition(c: Any) -> ConditionEntry:
    onset = to_datetime(c.onsetDateTime)
    if onset is None and c.onsetPeriod is not None:
        onset = to_datetime(c.onsetPeriod.start)
    return ConditionEntry(
        codings=_codings(c.code), text=c.code.text if c.code is not None else None,
        clinical_status=_concept_code(c.clinicalStatus), verification_status=_concept_code(c.verificationStatus),
        onset=onset, recorded=to_datetime(c.recordedDate), notes=_notes(c.note),
    )


def _allergy(a: Any) -> AllergyEntry:
    reactions = []
    for r in a.reaction or ():
        reactions.extend(t for t in (_concept_text(m) for m in r.manifestation or ()) if t)
        if r.description:
            reactions.append(r.description)
    return AllergyEntry(codings=_codings(a.code), text=a.code.text if a.code is not None else None,
                        clinical_status=_concept_code(a.clinicalStatus), criticality=a.criticality,
                        reactions=tuple(reactions), notes=_notes(a.note))


def _medication(m: Any, medications: Mapping[str, Any]) -> MedicationEntry:
    concept = m.medicationCodeableConcept
    if concept is None and m.medicationReference is not None:
        ref = m.medicationReference.reference or ""
        if ref.startswith("#"):
            contained = next((r for r in m.contained or () if r.id == ref[1:]), None)
            concept = getattr(contained, "code", None)
        else:
            target = medications.get(_ref_id(m.medicationReference) or "")
            concept = getattr(target, "code", None)
    text = concept.text if concept is not None else None
    if text is None and concept is None and m.medicationReference is not None:
        text = m.medicationReference.display
    dosage = tuple(d.text for d in m.dosageInstruction or () if d.text)
    return MedicationEntry(codings=_codings(concept), text=text, status=m.status,
                           authored=to_datetime(m.authoredOn), dosage=dosage, notes=_notes(m.note))


def _encounter(e: Any) -> EncounterInfo:
    period = e.period
    return EncounterInfo(
        id=e.id, status=e.status,
        class_code=e.class_fhir.code if e.class_fhir is not None else None,
        types=tuple(t for t in (_concept_text(c) for c in e.type or ()) if t),
        reasons=tuple(t for t in (_concept_text(c) for c in e.reasonCode or ()) if t),
        priority=_concept_code(e.priority),
        start=to_datetime(period.start) if period is not None else None,
        end=to_datetime(period.end) if period is not None else None,
    )


_CURRENT_ENCOUNTER_STATUS = ("in-progress", "arrived", "triaged", "onleave")
_COMPLAINT_WINDOW_S = 24 * 3600  # an unlinked chief-complaint Observation older than this is history


def _refers_to(ref: Any, encounter_id: str | None) -> bool:
    return encounter_id is not None and (_ref_id(ref) or "").split("/")[-1] == encounter_id


def _complaints(enc: Any, by_type: Mapping[str, list[Any]], encounter_id: str | None,
                as_of: datetime) -> tuple[Complaint, ...]:
    """The chief complaint wherever EHRs put it: the current encounter's reasonCode, chief-complaint
    Observations (LOINC 8661-1) of that encounter (or, unlinked, of the last 24 h), and
    encounter-diagnosis Conditions of that encounter."""
    out: list[Complaint] = []
    if enc is not None:
        out += [Complaint(text=c.text or _concept_text(c), codings=_codings(c), source="encounter-reason")
                for c in enc.reasonCode or ()]
    chief = [o for o in by_type.get("Observation", ())
             if o.status not in _EXCLUDED_OBS_STATUS and codes.CHIEF_COMPLAINT in _loincs(o.code)]
    linked = [o for o in chief if _refers_to(o.encounter, encounter_id)]
    if not linked:
        def recent(o: Any) -> bool:
            when = to_datetime(o.effectiveDateTime) or to_datetime(o.issued)
            return o.encounter is None and when is not None and 0 <= (as_of - when).total_seconds() <= _COMPLAINT_WINDOW_S
        linked = [o for o in chief if recent(o)]
    for o in linked:
        if o.valueString:
            out.append(Complaint(text=o.valueString, source="chief-complaint-observation"))
        elif o.valueCodeableConcept is not None:
            concept = o.valueCodeableConcept
            out.append(Complaint(text=_concept_text(concept), codings=_codings(concept),
                                 source="chief-complaint-observation"))
    for c in by_type.get("Condition", ()):
        categories = {cc.code for cat in c.category or () for cc in cat.coding or ()}
        if codes.ENCOUNTER_DIAGNOSIS in categories and _refers_to(c.encounter, encounter_id) \
                and _concept_code(c.verificationStatus) not in ("refuted", "entered-in-error"):
            out.append(Complaint(text=_concept_text(c.code), codings=_codings(c.code), source="encounter-diagnosis"))
    return tuple(dict.fromkeys(c for c in out if c.text or c.codings))


def _document_texts(doc: Any) -> list[str]:
    out = []
    for content in doc.content or ():
        att = content.attachment
        if att is None or not att.data:
            continue
        ctype = (att.contentType or "").split(";")[0].strip().lower()
        if ctype not in ("text/plain", ""):
            continue
        try:
            # fhir.resources decodes base64Binary to bytes on validation; a str is still encoded.
            raw = att.data if isinstance(att.data, bytes) else base64.b64decode(str(att.data), validate=False)
            text = raw.decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            log.warning("skipped a DocumentReference attachment that is not base64")
            continue
        if text.strip():
            out.append(text)
    return out


def _doc_time(doc: Any) -> datetime | None:
    if doc.context is not None and doc.context.period is not None and doc.context.period.start is not None:
        return to_datetime(doc.context.period.start)
    return to_datetime(doc.date)


# ---- entry points ----------------------------------------------------------------------------

def record_from_resources(
    resources: Iterable[Resource | Mapping[str, Any]],
    patient_id: str | None = None,
    as_of: datetime | None = None,
    *,
    encounter_id: str | None = None,
    history_only: bool = False,
    stats: ParseStats | None = None,
    identity: Identity | None = None,
    displays: Iterable[str] = (),
) -> PatientRecord:
    """A PatientRecord from a flat list of resources (parsed models or raw dicts).

    `patient_id` picks the Patient (default: the only/first one). `encounter_id` names the current
    encounter. With `history_only`, entries dated after `as_of` are left out (dataset building:
    the record as it stood at an encounter); the hook keeps everything, since EHR clocks drift.
    `identity`: one the caller already built from a superset of these resources (a dataset's
    per-visit records), used as is instead of walking every reference again. `displays`: more
    party reference displays for the identity, from resources the caller did not validate.
    """
    counter = StatsCounter()
    if stats is not None:
        counter.merge(stats)
    models: list[Resource] = []
    raw: list[Any] = []
    for item in resources:
        (models if isinstance(item, FHIRAbstractModel) else raw).append(item)
    if raw:
        models.extend(parse_many(raw, stats=counter))
    as_of = to_datetime(as_of) or datetime.now(timezone.utc)

    def in_window(when: datetime | None) -> bool:
        return not history_only or when is None or when <= as_of

    by_type: dict[str, list[Any]] = {}
    for res in models:
        by_type.setdefault(res.get_resource_type(), []).append(res)
    patients = by_type.get("Patient", [])
    patient = next((p for p in patients if patient_id is None or p.id == patient_id), None)
    if patient is None:
        raise RecordError("no Patient resource" + (" with the requested id" if patient_id else ""))

    vitals: dict[str, VitalSign] = {}
    for obs in by_type.get("Observation", ()):
        if obs.status in _EXCLUDED_OBS_STATUS or not _is_vital(obs):
            continue
        for v in _observation_vitals(obs):
            if in_window(v.effective):
                _offer(vitals, v)

    conditions = tuple(
        c for c in (_condition(r) for r in by_type.get("Condition", ())
                    if _concept_code(r.verificationStatus) != "entered-in-error")
        if in_window(c.onset or c.recorded)
    )
    allergies = tuple(_allergy(a) for a in by_type.get("AllergyIntolerance", ())
                      if _concept_code(a.verificationStatus) != "entered-in-error"
                      and in_window(to_datetime(a.recordedDate)))
    medications_by_id = {f"Medication/{m.id}": m for m in by_type.get("Medication", ()) if m.id}
    medications = tuple(
        _medication(m, medications_by_id) for m in by_type.get("MedicationRequest", ())
        if m.status == "active" and in_window(to_datetime(m.authoredOn))
    )
    encounter = None
    enc = None
    if encounter_id is not None:
        enc = next((e for e in by_type.get("Encounter", ()) if e.id == encounter_id), None)
        encounter = _encounter(enc) if enc is not None else None
    complaints = _complaints(enc, by_type, encounter_id, as_of)
    notes: list[str] = []
    docs = [d for d in by_type.get("DocumentReference", ())
            if d.status != "entered-in-error" and in_window(_doc_time(d))]
    docs.sort(key=lambda d: _doc_time(d) or _MIN_DT)
    for doc in docs:
        notes.extend(_document_texts(doc))

    if identity is None:
        found: list[str] = []
        for res in models:
            _reference_displays(res, found)
        others = [r for t in ("RelatedPerson", "Practitioner", "Organization") for r in by_type.get(t, ())]
        identity = _identity(patient, others, [*found, *displays])
    return PatientRecord(
        identity=identity, birth_date=identity.birth_date, sex=patient.gender, as_of=as_of,
        conditions=conditions, vitals=vitals, allergies=allergies, medications=medications,
        encounter=encounter, notes=tuple(notes), stats=counter.freeze(), complaints=complaints,
    )


def build_record(
    data: Mapping[str, Mapping[str, Any] | None],
    *,
    as_of: datetime,
    encounter_id: str | None = None,
) -> PatientRecord:
    """A PatientRecord from resolved prefetch (`key -> resource | searchset Bundle | None`).

    Every key's resources are used (extra keys too, e.g. DocumentReferences); invalid entries are
    skipped and counted in `record.stats`. The `encounter` key is the current encounter.
    """
    counter = StatsCounter()
    models: list[Resource] = []
    observations: list[dict[str, Any]] = []
    for key, value in data.items():
        if value is None:
            continue
        others = []
        for raw in bundle_entries(value):
            is_obs = isinstance(raw, dict) and raw.get("resourceType") == "Observation"
            (observations if is_obs else others).append(raw)
        models.extend(parse_many(others, stats=counter))
    models.extend(_newest_vitals(observations, counter))
    patient = data.get("patient")
    is_patient = isinstance(patient, Mapping) and patient.get("resourceType") == "Patient"
    patient_id = patient.get("id") if is_patient else None
    enc = data.get("encounter")
    if encounter_id is None and isinstance(enc, Mapping) and enc.get("resourceType") == "Encounter":
        encounter_id = enc.get("id")
    if encounter_id is None:
        encounter_id = _current_encounter_id(models)
    return record_from_resources(models, patient_id, as_of, encounter_id=encounter_id, stats=counter.freeze())


def _current_encounter_id(models: Iterable[Any]) -> str | None:
    """With no encounterId in the context, the one encounter that is under way, if exactly one."""
    current = [m.id for m in models if m.get_resource_type() == "Encounter" and m.id
               and m.status in _CURRENT_ENCOUNTER_STATUS]
    return current[0] if len(set(current)) == 1 else None


def _raw_obs_time(raw: Mapping[str, Any]) -> datetime | None:
    period = raw.get("effectivePeriod")
    when = (raw.get("effectiveDateTime") or raw.get("effectiveInstant")
            or (period.get("start") if isinstance(period, Mapping) else None) or raw.get("issued"))
    try:
        return to_datetime(when)
    except (TypeError, ValueError):
        return None


def _raw_obs_codes(raw: Mapping[str, Any]) -> set[str]:
    out: set[str] = set()
    for holder in (raw, *(c for c in raw.get("component") or () if isinstance(c, Mapping))):
        code = holder.get("code")
        for c in (code.get("coding") or ()) if isinstance(code, Mapping) else ():
            if isinstance(c, Mapping) and isinstance(c.get("code"), str):
                out.add(c["code"])
    return out


def _newest_vitals(observations: list[dict[str, Any]], counter: StatsCounter) -> list[Resource]:
    """Validate vital-sign Observations newest first, only until each code has a reading.

    A chart carries years of vitals and the record keeps only the newest per LOINC; validating
    every old reading cost ~75% of the hook's time. Entries with the same time as a used reading
    are all validated (so an invalid twin is still skipped and counted); older readings of codes
    already satisfied, and non-vital Observations, are counted as ignored, never used.
    """
    keyed = []
    for raw in observations:
        codes_ = _raw_obs_codes(raw) if isinstance(raw, Mapping) else set()
        keyed.append((_raw_obs_time(raw) if isinstance(raw, Mapping) else None, codes_, raw))
    keyed.sort(key=lambda item: item[0] or _MIN_DT, reverse=True)
    satisfied: set[str] = set()
    out: list[Resource] = []
    i = 0
    while i < len(keyed):
        when = keyed[i][0]
        group = []
        while i < len(keyed) and keyed[i][0] == when:
            group.append(keyed[i])
            i += 1
        found: set[str] = set()
        for _, codes_, raw in group:
            if codes.CHIEF_COMPLAINT in codes_:  # not a vital, but the rules read it
                out.extend(parse_many([raw], stats=counter))
                continue
            vital_codes = codes_ & codes.VITAL_LOINCS
            category_vital = any(
                isinstance(c, Mapping) and c.get("code") == codes.VITAL_SIGNS_CATEGORY
                for cat in (raw.get("category") or () if isinstance(raw, Mapping) else ())
                if isinstance(cat, Mapping) for c in cat.get("coding") or ()
            )
            if codes_ and not vital_codes and not category_vital:
                counter.ignored += 1  # labs and other non-vital Observations: not used here
                continue
            key = vital_codes or codes_
            if key and key <= satisfied:
                counter.ignored += 1  # an older reading of codes that already have a newer one
                continue
            for res in parse_many([raw], stats=counter):
                out.append(res)
                if res.status in _EXCLUDED_OBS_STATUS:
                    continue
                for v in _observation_vitals(res):
                    if v.value is not None or v.value_code is not None or v.components:
                        found.add(v.loinc)
                        found.update(v.components)
        satisfied |= found
    return out
