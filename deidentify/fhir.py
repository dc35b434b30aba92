"""Safe Harbor for raw FHIR R4 resources, Bundles and Bulk NDJSON, by allow-list.

Each supported resource type has a spec: the fields known to be safe and how to copy each one.
Everything else is DROPPED (names, telecom, photos, contacts, narratives, unknown extensions,
unknown fields, unsupported resource types). On what is kept:

- ids and references (`Type/id`, `urn:uuid:`, absolute URLs, `#contained`) become keyed
  pseudonyms of the resource id, so references stay consistent inside and across files and runs;
  `Practitioner?identifier=sys|value` keeps its form with the value pseudonymized. Reference
  `display` is always dropped (it is a name more often than not).
- `Identifier.value` (MRN, SSN, NPI, device UDI, ...) becomes a pseudonym keyed by its system.
- every date moves back by the patient's offset (the patient comes from `subject`/`patient`/
  `beneficiary`, or is the Patient itself), keeping its precision and time zone.
- addresses keep only `use`, `type`, `state`, `country` and the ZIP reduced to three digits.
- `Patient.birthDate` keeps only the year (of the shifted date, consistent with every other date);
  for a patient 90 or older (at death or today) it is removed and replaced by the extension
  `AGE_90_PLUS_URL` (valueBoolean true): Safe Harbor allows the year only up to age 89.
- free text (`CodeableConcept.text` unless it equals a coding display, notes, descriptions,
  `valueString`, text attachments of DocumentReference/DiagnosticReport, decoded from base64 and
  re-encoded) goes through the scrubber in one batch per patient; without a scrubber it is dropped.
- extensions: only US Core race, ethnicity, birth sex and gender identity are kept.
- a resource with a top-level `modifierExtension` is refused: dropping it would change meaning.

Every output is then searched for the known identifiers of the people in scope; a hit raises
`LeakDetected` (per resource: the caller drops that resource and counts it).
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from fhir_adapter.record import Address, Identity

from .leaks import IdentifierSet, LeakDetected, find_leaks, payload_text
from .pseudonym import Pseudonymizer
from .structured import RESTRICTED_ZIP3, AGE_CAP, Scrubber, known_identifiers, scrub_texts, zip3

AGE_90_PLUS_URL = "https://triage-cds.example.org/fhir/StructureDefinition/age-90-or-over"
REDACTED = "[REDACTED]"
_US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
_PEOPLE = ("Patient", "RelatedPerson", "Practitioner", "Organization", "Location")
_PATIENT_FIELDS = ("subject", "patient", "beneficiary")


class UnsupportedResource(ValueError):
    """A resource this allow-list does not cover (or not a resource at all): drop it."""


# --- specs: field -> handler ---------------------------------------------------------------
# Handler tokens: "keep" (primitive code/boolean/number/uri), "cc", "coding", "ref", "ident",
# "date", "period", "qty", "range", "ratio", "text", "annotation", "attachment", "dosage",
# "timing", "address", "meta", "ext", "uid"; or a nested dict for a backbone element.

def _choice(prefix: str, *kinds: str) -> dict[str, str]:
    names = {
        "DateTime": "date", "Date": "date", "Instant": "date", "Period": "period", "Age": "qty",
        "Range": "range", "String": "textdate", "Boolean": "keep", "Quantity": "qty", "Integer": "keep",
        "CodeableConcept": "cc", "Reference": "ref", "Ratio": "ratio", "Duration": "qty",
        "Timing": "timing", "Coding": "coding", "Decimal": "keep", "PositiveInt": "keep",
        "Attachment": "attachment", "Address": "address",
    }
    return {prefix + k: names[k] for k in kinds}


_VALUE = _choice("value", "Quantity", "CodeableConcept", "String", "Boolean", "Integer", "Range",
                 "Ratio", "DateTime", "Period")
_REF_RANGE = {"low": "qty", "high": "qty", "type": "cc", "appliesTo": "cc", "age": "range",
              "text": "text"}
_COMMON = {"id": "id", "meta": "meta", "implicitRules": "keep", "language": "keep"}

SPECS: dict[str, dict[str, Any]] = {
    "Patient": {
        "identifier": "ident", "active": "keep", "gender": "keep", "birthDate": "birthDate",
        "deceasedBoolean": "keep", "deceasedDateTime": "date", "address": "address",
        "maritalStatus": "cc", "multipleBirthBoolean": "keep", "multipleBirthInteger": "keep",
        "communication": {"language": "cc", "preferred": "keep"},
        "generalPractitioner": "ref", "managingOrganization": "ref",
        "link": {"other": "ref", "type": "keep"}, "extension": "ext",
    },
    "Practitioner": {
        "identifier": "ident", "active": "keep", "gender": "keep", "address": "address",
        "communication": "cc",
        "qualification": {"code": "cc", "period": "period", "issuer": "ref"},
    },
    "PractitionerRole": {
        "identifier": "ident", "active": "keep", "period": "period", "practitioner": "ref",
        "organization": "ref", "code": "cc", "specialty": "cc", "location": "ref",
        "healthcareService": "ref",
    },
    "Organization": {"identifier": "ident", "active": "keep", "type": "cc", "address": "address",
                     "partOf": "ref"},
    "Location": {
        "identifier": "ident", "status": "keep", "operationalStatus": "coding", "mode": "keep",
        "type": "cc", "address": "address", "physicalType": "cc", "managingOrganization": "ref",
        "partOf": "ref",
    },
    "RelatedPerson": {
        "identifier": "ident", "active": "keep", "patient": "ref", "relationship": "cc",
        "gender": "keep", "period": "period", "communication": {"language": "cc", "preferred": "keep"},
    },
    "Device": {
        "identifier": "ident", "udiCarrier": {"deviceIdentifier": "uid", "jurisdiction": "keep",
                                              "entryType": "keep"},
        "status": "keep", "statusReason": "cc", "manufactureDate": "date", "expirationDate": "date",
        "type": "cc", "patient": "ref", "owner": "ref", "location": "ref", "parent": "ref",
        "safety": "cc",
    },
    "Condition": {
        "identifier": "ident", "clinicalStatus": "cc", "verificationStatus": "cc",
        "category": "cc", "severity": "cc", "code": "cc", "bodySite": "cc", "subject": "ref",
        "encounter": "ref",
        **_choice("onset", "DateTime", "Age", "Period", "Range", "String"),
        **_choice("abatement", "DateTime", "Age", "Period", "Range", "String", "Boolean"),
        "recordedDate": "date", "recorder": "ref", "asserter": "ref",
        "stage": {"summary": "cc", "assessment": "ref", "type": "cc"},
        "evidence": {"code": "cc", "detail": "ref"}, "note": "annotation",
    },
    "Observation": {
        "identifier": "ident", "basedOn": "ref", "partOf": "ref", "status": "keep",
        "category": "cc", "code": "cc", "subject": "ref", "focus": "ref", "encounter": "ref",
        **_choice("effective", "DateTime", "Period", "Instant"), "issued": "date",
        "performer": "ref", **_VALUE, "dataAbsentReason": "cc", "interpretation": "cc",
        "note": "annotation", "bodySite": "cc", "method": "cc", "specimen": "ref",
        "device": "ref", "referenceRange": _REF_RANGE, "hasMember": "ref", "derivedFrom": "ref",
        "component": {"code": "cc", **_VALUE, "dataAbsentReason": "cc", "interpretation": "cc",
                      "referenceRange": _REF_RANGE},
    },
    "Encounter": {
        "identifier": "ident", "status": "keep", "statusHistory": {"status": "keep", "period": "period"},
        "class": "coding", "classHistory": {"class": "coding", "period": "period"}, "type": "cc",
        "serviceType": "cc", "priority": "cc", "subject": "ref", "episodeOfCare": "ref",
        "basedOn": "ref", "participant": {"type": "cc", "period": "period", "individual": "ref"},
        "appointment": "ref", "period": "period", "length": "qty", "reasonCode": "cc",
        "reasonReference": "ref", "diagnosis": {"condition": "ref", "use": "cc", "rank": "keep"},
        "account": "ref",
        "hospitalization": {"admitSource": "cc", "reAdmission": "cc", "dietPreference": "cc",
                            "specialCourtesy": "cc", "specialArrangement": "cc",
                            "dischargeDisposition": "cc"},
        "location": {"location": "ref", "status": "keep", "physicalType": "cc", "period": "period"},
        "serviceProvider": "ref", "partOf": "ref",
    },
    "AllergyIntolerance": {
        "identifier": "ident", "clinicalStatus": "cc", "verificationStatus": "cc", "type": "keep",
        "category": "keep", "criticality": "keep", "code": "cc", "patient": "ref",
        "encounter": "ref", **_choice("onset", "DateTime", "Age", "Period", "Range", "String"),
        "recordedDate": "date", "recorder": "ref", "asserter": "ref", "lastOccurrence": "date",
        "note": "annotation",
        "reaction": {"substance": "cc", "manifestation": "cc", "description": "text",
                     "onset": "date", "severity": "keep", "exposureRoute": "cc",
                     "note": "annotation"},
    },
    "MedicationRequest": {
        "identifier": "ident", "status": "keep", "statusReason": "cc", "intent": "keep",
        "category": "cc", "priority": "keep", "doNotPerform": "keep",
        **_choice("reported", "Boolean", "Reference"),
        **_choice("medication", "CodeableConcept", "Reference"), "subject": "ref",
        "encounter": "ref", "supportingInformation": "ref", "authoredOn": "date",
        "requester": "ref", "performer": "ref", "performerType": "cc", "recorder": "ref",
        "reasonCode": "cc", "reasonReference": "ref", "basedOn": "ref",
        "groupIdentifier": "ident", "courseOfTherapyType": "cc", "insurance": "ref",
        "note": "annotation", "dosageInstruction": "dosage",
        "dispenseRequest": {"initialFill": {"quantity": "qty", "duration": "qty"},
                            "dispenseInterval": "qty", "validityPeriod": "period",
                            "numberOfRepeatsAllowed": "keep", "quantity": "qty",
                            "expectedSupplyDuration": "qty", "performer": "ref"},
        "substitution": {**_choice("allowed", "Boolean", "CodeableConcept"), "reason": "cc"},
        "priorPrescription": "ref",
    },
    "MedicationDispense": {
        "identifier": "ident", "status": "keep", "category": "cc",
        **_choice("medication", "CodeableConcept", "Reference"), "subject": "ref",
        "context": "ref", "performer": {"function": "cc", "actor": "ref"},
        "authorizingPrescription": "ref", "type": "cc", "quantity": "qty", "daysSupply": "qty",
        "whenPrepared": "date", "whenHandedOver": "date", "note": "annotation",
        "dosageInstruction": "dosage",
    },
    "Medication": {
        "identifier": "ident", "code": "cc", "status": "keep", "form": "cc", "amount": "ratio",
        "ingredient": {**_choice("item", "CodeableConcept", "Reference"), "isActive": "keep",
                       "strength": "ratio"},
    },
    "Procedure": {
        "identifier": "ident", "basedOn": "ref", "partOf": "ref", "status": "keep",
        "statusReason": "cc", "category": "cc", "code": "cc", "subject": "ref",
        "encounter": "ref", **_choice("performed", "DateTime", "Period", "String", "Age", "Range"),
        "recorder": "ref", "asserter": "ref",
        "performer": {"function": "cc", "actor": "ref", "onBehalfOf": "ref"},
        "location": "ref", "reasonCode": "cc", "reasonReference": "ref", "bodySite": "cc",
        "outcome": "cc", "report": "ref", "complication": "cc", "complicationDetail": "ref",
        "followUp": "cc", "note": "annotation",
        "focalDevice": {"action": "cc", "manipulated": "ref"}, "usedReference": "ref",
        "usedCode": "cc",
    },
    "Immunization": {
        "identifier": "ident", "status": "keep", "statusReason": "cc", "vaccineCode": "cc",
        "patient": "ref", "encounter": "ref", **_choice("occurrence", "DateTime", "String"),
        "recorded": "date", "primarySource": "keep", "reportOrigin": "cc", "location": "ref",
        "manufacturer": "ref", "expirationDate": "date", "site": "cc", "route": "cc",
        "doseQuantity": "qty", "performer": {"function": "cc", "actor": "ref"},
        "note": "annotation", "reasonCode": "cc", "reasonReference": "ref",
        "isSubpotent": "keep", "subpotentReason": "cc",
        "protocolApplied": {"authority": "ref", "targetDisease": "cc",
                            **_choice("doseNumber", "PositiveInt", "String"),
                            **_choice("seriesDoses", "PositiveInt", "String")},
    },
    "DocumentReference": {
        "masterIdentifier": "ident", "identifier": "ident", "status": "keep", "docStatus": "keep",
        "type": "cc", "category": "cc", "subject": "ref", "date": "date", "author": "ref",
        "authenticator": "ref", "custodian": "ref",
        "relatesTo": {"code": "keep", "target": "ref"}, "description": "text",
        "securityLabel": "cc", "content": {"attachment": "attachment", "format": "coding"},
        "context": {"encounter": "ref", "event": "cc", "period": "period",
                    "facilityType": "cc", "practiceSetting": "cc",
                    "sourcePatientInfo": "ref", "related": "ref"},
    },
    "DiagnosticReport": {
        "identifier": "ident", "basedOn": "ref", "status": "keep", "category": "cc",
        "code": "cc", "subject": "ref", "encounter": "ref",
        **_choice("effective", "DateTime", "Period"), "issued": "date", "performer": "ref",
        "resultsInterpreter": "ref", "specimen": "ref", "result": "ref", "imagingStudy": "ref",
        "media": {"comment": "text", "link": "ref"}, "conclusion": "text",
        "conclusionCode": "cc", "presentedForm": "attachment",
    },
    "ServiceRequest": {
        "identifier": "ident", "basedOn": "ref", "replaces": "ref", "requisition": "ident",
        "status": "keep", "intent": "keep", "category": "cc", "priority": "keep",
        "doNotPerform": "keep", "code": "cc", "orderDetail": "cc", "subject": "ref",
        "encounter": "ref", **_choice("occurrence", "DateTime", "Period"), "authoredOn": "date",
        "requester": "ref", "performerType": "cc", "performer": "ref", "reasonCode": "cc",
        "reasonReference": "ref", "bodySite": "cc", "note": "annotation",
    },
    "CarePlan": {
        "identifier": "ident", "basedOn": "ref", "replaces": "ref", "partOf": "ref",
        "status": "keep", "intent": "keep", "category": "cc", "subject": "ref",
        "encounter": "ref", "period": "period", "created": "date", "author": "ref",
        "careTeam": "ref", "addresses": "ref", "goal": "ref", "note": "annotation",
        "activity": {"outcomeCodeableConcept": "cc", "outcomeReference": "ref", "reference": "ref",
                     "detail": {"kind": "keep", "code": "cc", "reasonCode": "cc",
                                "reasonReference": "ref", "goal": "ref", "status": "keep",
                                "statusReason": "cc", "doNotPerform": "keep",
                                **_choice("scheduled", "Period", "String"),
                                "location": "ref", "performer": "ref",
                                **_choice("product", "CodeableConcept", "Reference"),
                                "dailyAmount": "qty", "quantity": "qty"}},
    },
    "CareTeam": {
        "identifier": "ident", "status": "keep", "category": "cc", "subject": "ref",
        "encounter": "ref", "period": "period",
        "participant": {"role": "cc", "member": "ref", "onBehalfOf": "ref", "period": "period"},
        "reasonCode": "cc", "reasonReference": "ref", "managingOrganization": "ref",
    },
    "Goal": {
        "identifier": "ident", "lifecycleStatus": "keep", "achievementStatus": "cc",
        "category": "cc", "priority": "cc", "description": "cc", "subject": "ref",
        **_choice("start", "Date", "CodeableConcept"),
        "target": {"measure": "cc", **_choice("detail", "Quantity", "Range", "CodeableConcept",
                                               "Boolean", "Integer", "Ratio"),
                   **_choice("due", "Date", "Duration")},
        "statusDate": "date", "expressedBy": "ref", "addresses": "ref", "outcomeCode": "cc",
        "outcomeReference": "ref",
    },
    "ImagingStudy": {
        "identifier": "ident", "status": "keep", "modality": "coding", "subject": "ref",
        "encounter": "ref", "started": "date", "basedOn": "ref", "referrer": "ref",
        "numberOfSeries": "keep", "numberOfInstances": "keep", "procedureCode": "cc",
        "location": "ref", "reasonCode": "cc", "reasonReference": "ref",
        "series": {"uid": "uid", "number": "keep", "modality": "coding", "numberOfInstances": "keep",
                   "bodySite": "coding", "laterality": "coding", "started": "date",
                   "instance": {"uid": "uid", "sopClass": "coding", "number": "keep"}},
    },
    "Provenance": {
        "target": "ref", **_choice("occurred", "Period", "DateTime"), "recorded": "date",
        "reason": "cc", "activity": "cc",
        "agent": {"type": "cc", "role": "cc", "who": "ref", "onBehalfOf": "ref"},
    },
    "Coverage": {
        "identifier": "ident", "status": "keep", "type": "cc", "beneficiary": "ref",
        "relationship": "cc", "period": "period", "payor": "ref", "order": "keep",
        "network": "text", "subrogation": "keep",
    },
}

_ITEM_COMMON = {
    "sequence": "keep", "careTeamSequence": "keep", "diagnosisSequence": "keep",
    "procedureSequence": "keep", "informationSequence": "keep", "revenue": "cc",
    "category": "cc", "productOrService": "cc", "modifier": "cc", "programCode": "cc",
    **_choice("serviced", "Date", "Period"), "locationCodeableConcept": "cc",
    "locationAddress": "address", "locationReference": "ref", "quantity": "qty",
    "unitPrice": "qty", "factor": "keep", "net": "qty", "udi": "ref", "bodySite": "cc",
    "subSite": "cc", "encounter": "ref", "noteNumber": "keep",
}
_ADJUDICATION = {"category": "cc", "reason": "cc", "amount": "qty", "value": "keep"}
_CLAIM_COMMON = {
    "identifier": "ident", "status": "keep", "type": "cc", "subType": "cc", "use": "keep",
    "patient": "ref", "billablePeriod": "period", "created": "date", "enterer": "ref",
    "insurer": "ref", "provider": "ref", "priority": "cc", "referral": "ref", "facility": "ref",
    "prescription": "ref", "originalPrescription": "ref",
    "payee": {"type": "cc", "party": "ref"},
    "careTeam": {"sequence": "keep", "provider": "ref", "responsible": "keep", "role": "cc",
                 "qualification": "cc"},
    "supportingInfo": {"sequence": "keep", "category": "cc", "code": "cc",
                       **_choice("timing", "Date", "Period"),
                       **_choice("value", "Boolean", "String", "Quantity", "Reference"),
                       "reason": "coding"},
    "diagnosis": {"sequence": "keep", "diagnosisCodeableConcept": "cc",
                  "diagnosisReference": "ref", "type": "cc", "onAdmission": "cc",
                  "packageCode": "cc"},
    "procedure": {"sequence": "keep", "type": "cc", "date": "date",
                  "procedureCodeableConcept": "cc", "procedureReference": "ref", "udi": "ref"},
    "accident": {"date": "date", "type": "cc", "locationAddress": "address",
                 "locationReference": "ref"},
}
SPECS["Claim"] = {
    **_CLAIM_COMMON,
    "insurance": {"sequence": "keep", "focal": "keep", "identifier": "ident", "coverage": "ref",
                  "claimResponse": "ref"},
    "item": {**_ITEM_COMMON, "detail": {**_ITEM_COMMON,
                                        "subDetail": dict(_ITEM_COMMON)}},
    "total": "qty",
}
SPECS["ExplanationOfBenefit"] = {
    **_CLAIM_COMMON, "claim": "ref", "claimResponse": "ref", "outcome": "keep",
    "precedence": "keep", "contained": "contained",
    "insurance": {"focal": "keep", "coverage": "ref"},
    "item": {**_ITEM_COMMON, "adjudication": _ADJUDICATION,
             "detail": {**_ITEM_COMMON, "adjudication": _ADJUDICATION,
                        "subDetail": {**_ITEM_COMMON, "adjudication": _ADJUDICATION}}},
    "adjudication": _ADJUDICATION,
    "total": {"category": "cc", "amount": "qty"},
    "payment": {"type": "cc", "adjustment": "qty", "adjustmentReason": "cc", "date": "date",
                "amount": "qty"},
}
for _spec in SPECS.values():
    _spec.update(_COMMON)

_EXT_ALLOWED = {
    _US_CORE + "us-core-race": {"ombCategory": "valueCoding", "detailed": "valueCoding",
                                "text": "valueString"},
    _US_CORE + "us-core-ethnicity": {"ombCategory": "valueCoding", "detailed": "valueCoding",
                                     "text": "valueString"},
    _US_CORE + "us-core-birthsex": "valueCode",
    _US_CORE + "us-core-genderIdentity": "valueCodeableConcept",
}

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(T.*)?$")
_TYPE_ID = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_CONDITIONAL = re.compile(r"^([A-Z][A-Za-z]+)\?identifier=([^|&]*)\|([^&]+)$")


# --- context: what the walker needs to know beyond one resource ---------------------------


@dataclass
class FhirContext:
    """Per-run state: who each `urn:uuid:` is, the people in scope, and counts (never values)."""

    urns: dict[str, tuple[str, str]] = field(default_factory=dict)  # fullUrl -> (type, id)
    identities: dict[str, Identity] = field(default_factory=dict)  # patient id -> identity
    patient_ids: dict[str, IdentifierSet] = field(default_factory=dict)  # patient id -> leak set
    others: IdentifierSet = field(default_factory=IdentifierSet)  # practitioners, orgs, ...
    stats: Counter[str] = field(default_factory=Counter)
    today: date = field(default_factory=date.today)

    def add_resources(self, resources: Iterable[Mapping[str, Any]],
                      full_urls: Iterable[str | None] | None = None) -> None:
        """Learn the people in `resources` (Patients, practitioners, ...) and their fullUrls."""
        urls = list(full_urls) if full_urls is not None else None
        for i, r in enumerate(resources):
            if not isinstance(r, Mapping):
                continue
            rtype, rid = r.get("resourceType"), r.get("id")
            url = urls[i] if urls is not None and i < len(urls) else None
            if isinstance(url, str) and isinstance(rtype, str) and isinstance(rid, str):
                self.urns[url] = (rtype, rid)
            if rtype == "Patient" and isinstance(rid, str):
                self.identities[rid] = identity_from_patient(r)
                self.patient_ids[rid] = IdentifierSet.from_resources([r])
            elif rtype in _PEOPLE:
                self.others.update(IdentifierSet.from_resources([r]))

    def leak_set(self, patient: str | None) -> IdentifierSet:
        s = IdentifierSet().update(self.others)
        if patient is not None and patient in self.patient_ids:
            s.update(self.patient_ids[patient])
        return s


def identity_from_patient(p: Mapping[str, Any]) -> Identity:
    """An `Identity` from a raw Patient resource (for the known-identifier recognizer)."""
    given: list[str] = []
    family: list[str] = []
    for n in p.get("name") or []:
        if isinstance(n, Mapping):
            given += [g for g in n.get("given") or [] if isinstance(g, str)]
            if isinstance(n.get("family"), str):
                family.append(n["family"])
    phones, emails = [], []
    for t in p.get("telecom") or []:
        if isinstance(t, Mapping) and isinstance(t.get("value"), str):
            (emails if t.get("system") == "email" else phones).append(t["value"])
    addresses = []
    for a in p.get("address") or []:
        if isinstance(a, Mapping):
            addresses.append(Address(tuple(x for x in a.get("line") or [] if isinstance(x, str)),
                                     a.get("city"), a.get("district"), a.get("state"),
                                     a.get("postalCode"), a.get("country")))
    idents = tuple((i.get("system"), i["value"]) for i in p.get("identifier") or []
                   if isinstance(i, Mapping) and isinstance(i.get("value"), str))
    birth = None
    if isinstance(p.get("birthDate"), str):
        try:
            birth = date.fromisoformat(p["birthDate"][:10])
        except ValueError:
            birth = None
    others = []
    for c in p.get("contact") or []:
        n = c.get("name") if isinstance(c, Mapping) else None
        if isinstance(n, Mapping):
            others.append(" ".join([*(n.get("given") or []), n.get("family") or ""]).strip())
    return Identity(
        resource_id=p.get("id") if isinstance(p.get("id"), str) else None,
        given_names=tuple(dict.fromkeys(given)), family_names=tuple(dict.fromkeys(family)),
        identifiers=idents, phones=tuple(phones), emails=tuple(emails),
        addresses=tuple(addresses), birth_date=birth, other_names=tuple(o for o in others if o),
    )


# --- the walker ------------------------------------------------------------------------------


class _Walker:
    """Copies one resource by its spec. Pass 1 (`texts` is a list) only collects free text;
    pass 2 (`scrubbed` given) builds the output with the scrubbed text."""

    def __init__(self, pz: Pseudonymizer, ctx: FhirContext, shift: int, *,
                 scrubbed: Mapping[str, str | None] | None, removed: Counter[str]) -> None:
        self.pz, self.ctx, self.shift = pz, ctx, shift
        self.scrubbed = scrubbed
        self.collected: list[str] = []
        self.removed = removed

    # primitives
    def rid(self, value: str) -> str:
        return self.pz.pseudonym("resource", value)

    def text(self, value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return None
        if self.scrubbed is None:
            self.collected.append(value)
            return value
        return self.scrubbed.get(value)

    def textdate(self, value: Any) -> str | None:
        """A string choice (`onsetString`, `occurrenceString`): a date shifts, other text scrubs."""
        if isinstance(value, str) and _DATE.match(value.strip()):
            return self.date(value.strip())
        return self.text(value)

    def date(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return None
        m = _DATE.match(value)
        if not m:
            self.removed["DATE_UNPARSEABLE"] += 1
            return None
        y, mo, d, rest = m.group(1), m.group(2), m.group(3), m.group(4) or ""
        try:
            base = date(int(y), int(mo or 7), int(d or (15 if mo else 1)))
        except ValueError:
            self.removed["DATE_UNPARSEABLE"] += 1
            return None
        s = base + timedelta(days=self.shift)
        self.removed["DATE_SHIFTED"] += 1
        if d:
            return s.isoformat() + rest
        return f"{s.year:04d}-{s.month:02d}" if mo else f"{s.year:04d}"

    def ref(self, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            return None
        out: dict[str, Any] = {}
        r = value.get("reference")
        if isinstance(r, str):
            new = self.reference(r)
            if new:
                out["reference"] = new
        if isinstance(value.get("type"), str):
            out["type"] = value["type"]
        if isinstance(value.get("identifier"), Mapping):
            ident = self.ident(value["identifier"])
            if ident:
                out["identifier"] = ident
        if value.get("display"):
            self.removed["REFERENCE_DISPLAY"] += 1
        if not out:  # keep required references valid without saying who
            out["display"] = REDACTED
        return out

    def reference(self, r: str) -> str | None:
        if r.startswith("#"):
            return "#" + self.rid(r[1:]) if len(r) > 1 else None
        if r.startswith("urn:uuid:"):
            known = self.ctx.urns.get(r)
            return "urn:uuid:" + self.rid(known[1] if known else r[len("urn:uuid:"):])
        m = _CONDITIONAL.match(r)
        if m:
            rtype, system, value = m.groups()
            return f"{rtype}?identifier={system}|{self.pz.pseudonym('identifier|' + system, value)}"
        m = _TYPE_ID.search(r)
        if m and "?" not in r:
            return f"{m.group(1)}/{self.rid(m.group(2))}"
        self.removed["REFERENCE_UNRESOLVED"] += 1
        return None

    def ident(self, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, Mapping) or not isinstance(value.get("value"), str):
            return None
        system = value.get("system") if isinstance(value.get("system"), str) else ""
        out: dict[str, Any] = {}
        if value.get("use") in ("usual", "official", "temp", "secondary", "old"):
            out["use"] = value["use"]
        if isinstance(value.get("type"), Mapping):
            cc = self.cc(value["type"])
            if cc:
                out["type"] = cc
        if system:
            out["system"] = system
        out["value"] = self.pz.pseudonym("identifier|" + system, value["value"])
        self.removed["IDENTIFIER"] += 1
        return out

    def uid(self, value: Any) -> str | None:
        """Device and DICOM identifiers: an OID under 2.25 (UUID-derived) keeps the syntax."""
        if not isinstance(value, str):
            return None
        self.removed["IDENTIFIER"] += 1
        return "2.25." + str(int(self.pz.pseudonym("uid", value).replace("-", ""), 16))

    def coding(self, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            return None
        out = {k: value[k] for k in ("system", "version", "code", "display", "userSelected")
               if isinstance(value.get(k), (str, bool))}
        return out or None

    def cc(self, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            return None
        codings = [c for c in (self.coding(x) for x in value.get("coding") or []) if c]
        out: dict[str, Any] = {}
        if codings:
            out["coding"] = codings
        t = value.get("text")
        if isinstance(t, str) and t.strip():
            displays = {str(c.get("display", "")).strip().casefold() for c in codings}
            if t.strip().casefold() in displays:
                out["text"] = t  # terminology text, not PHI
            else:
                s = self.text(t)
                if s:
                    out["text"] = s
        return out or None

    def qty(self, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            return None
        out = {k: value[k] for k in ("value", "comparator", "unit", "system", "code", "currency")
               if isinstance(value.get(k), (str, int, float)) and not isinstance(value.get(k), bool)}
        return out or None

    def range(self, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            return None
        out = {k: q for k in ("low", "high") if (q := self.qty(value.get(k)))}
        return out or None

    def ratio(self, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            return None
        out = {k: q for k in ("numerator", "denominator") if (q := self.qty(value.get(k)))}
        return out or None

    def period(self, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            return None
        out = {k: d for k in ("start", "end") if (d := self.date(value.get(k)))}
        return out or None

    def annotation(self, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            return None
        t = self.text(value.get("text"))
        if not t:
            return None  # Annotation.text is required
        out: dict[str, Any] = {"text": t}
        if (d := self.date(value.get("time"))):
            out["time"] = d
        return out

    def attachment(self, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            return None
        out: dict[str, Any] = {}
        ctype = value.get("contentType") if isinstance(value.get("contentType"), str) else None
        for k in ("contentType", "language"):
            if isinstance(value.get(k), str):
                out[k] = value[k]
        if (t := self.text(value.get("title"))):
            out["title"] = t
        if (d := self.date(value.get("creation"))):
            out["creation"] = d
        data = value.get("data")
        if isinstance(data, str) and data:
            decoded = None
            if ctype and ctype.lower().startswith("text/"):
                try:
                    decoded = base64.b64decode(data, validate=True).decode("utf-8")
                except (binascii.Error, ValueError):
                    decoded = None
            if decoded is None:
                self.removed["ATTACHMENT_DROPPED"] += 1
            elif (s := self.text(decoded)):
                out["data"] = base64.b64encode(s.encode("utf-8")).decode("ascii")
        if value.get("url"):
            self.removed["URL"] += 1
        return out or None

    def dosage(self, value: Any) -> dict[str, Any] | None:
        spec = {"sequence": "keep", "text": "text", "additionalInstruction": "cc",
                "patientInstruction": "text", "timing": "timing", "asNeededBoolean": "keep",
                "asNeededCodeableConcept": "cc", "site": "cc", "route": "cc", "method": "cc",
                "doseAndRate": {"type": "cc", "doseRange": "range", "doseQuantity": "qty",
                                "rateRatio": "ratio", "rateRange": "range", "rateQuantity": "qty"},
                "maxDosePerPeriod": "ratio", "maxDosePerAdministration": "qty",
                "maxDosePerLifetime": "qty"}
        return self.backbone(value, spec)

    def timing(self, value: Any) -> dict[str, Any] | None:
        spec = {"event": "date", "code": "cc",
                "repeat": {"boundsDuration": "qty", "boundsRange": "range",
                           "boundsPeriod": "period", "count": "keep", "countMax": "keep",
                           "duration": "keep", "durationMax": "keep", "durationUnit": "keep",
                           "frequency": "keep", "frequencyMax": "keep", "period": "keep",
                           "periodMax": "keep", "periodUnit": "keep", "dayOfWeek": "keep",
                           "timeOfDay": "keep", "when": "keep", "offset": "keep"}}
        return self.backbone(value, spec)

    def address(self, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            return None
        out = {k: value[k] for k in ("use", "type", "state", "country") if isinstance(value.get(k), str)}
        z = zip3(value.get("postalCode") if isinstance(value.get("postalCode"), str) else None,
                 RESTRICTED_ZIP3)
        if z:
            out["postalCode"] = z
        for k in ("line", "city", "district", "postalCode", "period", "extension", "text"):
            if value.get(k):
                self.removed["ADDRESS" if k != "postalCode" else "ZIP"] += 1
        return out or None

    def meta(self, value: Any) -> dict[str, Any] | None:
        if isinstance(value, Mapping) and isinstance(value.get("profile"), list):
            profiles = [p for p in value["profile"] if isinstance(p, str)]
            return {"profile": profiles} if profiles else None
        return None

    def ext(self, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            return None
        rule = _EXT_ALLOWED.get(value.get("url"))
        if rule is None:
            self.removed["EXTENSION"] += 1
            return None
        if isinstance(rule, str):
            v = value.get(rule)
            v = self.cc(v) if rule == "valueCodeableConcept" else v if isinstance(v, str) else None
            return {"url": value["url"], rule: v} if v else None
        subs = [s for s in value.get("extension") or [] if isinstance(s, Mapping)]
        displays = {str((s.get("valueCoding") or {}).get("display", "")).casefold() for s in subs}
        kept = []
        for s in subs:
            kind = rule.get(s.get("url"))
            if kind == "valueCoding" and (c := self.coding(s.get("valueCoding"))):
                kept.append({"url": s["url"], "valueCoding": c})
            elif kind == "valueString" and isinstance(s.get("valueString"), str):
                if s["valueString"].casefold() in displays:  # category label, not free text
                    kept.append({"url": s["url"], "valueString": s["valueString"]})
        return {"url": value["url"], "extension": kept} if kept else None

    def keep(self, value: Any) -> Any:
        return value if isinstance(value, (str, int, float, bool)) else None

    def backbone(self, value: Any, spec: Mapping[str, Any]) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            return None
        out: dict[str, Any] = {}
        for key, v in value.items():
            handler = spec.get(key)
            if handler is None:
                if key not in ("resourceType",):
                    self.removed["FIELD_DROPPED"] += 1
                continue
            res = self.apply(handler, v)
            if res is not None and res != []:
                out[key] = res
        return out or None

    def apply(self, handler: Any, value: Any) -> Any:
        if isinstance(value, list):
            items = [self.apply(handler, v) for v in value]
            return [i for i in items if i is not None] or None
        if isinstance(handler, dict):
            return self.backbone(value, handler)
        if handler == "id":
            return self.rid(value) if isinstance(value, str) else None
        if handler == "contained":
            return None  # handled by the resource walker
        return getattr(self, handler)(value)

    # resources
    def resource(self, r: Mapping[str, Any]) -> dict[str, Any]:
        rtype = r.get("resourceType")
        spec = SPECS.get(rtype) if isinstance(rtype, str) else None
        if spec is None:
            raise UnsupportedResource(f"unsupported resource type {rtype!r}" if isinstance(rtype, str)
                                      else "not a FHIR resource")
        if r.get("modifierExtension"):
            raise UnsupportedResource(f"{rtype} with a modifierExtension")
        out: dict[str, Any] = {"resourceType": rtype}
        body = self.backbone(r, spec) or {}
        out.update(body)
        if isinstance(r.get("contained"), list) and "contained" in spec:
            contained = []
            for c in r["contained"]:
                try:
                    contained.append(self.resource(c))
                except UnsupportedResource:
                    self.removed["CONTAINED_DROPPED"] += 1
            if contained:
                out["contained"] = contained
        if rtype == "Patient":
            self.patient_birth(r, out)
        if rtype == "Immunization" and not any(k.startswith("occurrence") for k in out):
            out["occurrenceString"] = REDACTED  # required choice whose text was dropped
        if r.get("text"):
            self.removed["NARRATIVE"] += 1
        return out

    def birthDate(self, value: Any) -> str | None:  # noqa: N802 - FHIR field name
        return None  # decided in patient_birth, which sees the whole Patient

    def patient_birth(self, r: Mapping[str, Any], out: dict[str, Any]) -> None:
        b = r.get("birthDate")
        if not isinstance(b, str) or not _DATE.match(b):
            return
        self.removed["BIRTH_DATE"] += 1
        year, month, day = int(b[:4]), int(b[5:7] or 1) if len(b) >= 7 else 1, int(b[8:10]) if len(b) >= 10 else 1
        ref = self.ctx.today
        death = r.get("deceasedDateTime")
        if isinstance(death, str) and _DATE.match(death):
            ref = date(int(death[:4]), int(death[5:7]) if len(death) >= 7 else 12,
                       int(death[8:10]) if len(death) >= 10 else 28)
        age = ref.year - year - ((ref.month, ref.day) < (month, day))
        if age >= AGE_CAP:
            self.removed["AGE_OVER_89"] += 1
            out.setdefault("extension", []).append({"url": AGE_90_PLUS_URL, "valueBoolean": True})
            return
        shifted = self.date(b if len(b) >= 10 else b[:4])
        if shifted:
            out["birthDate"] = shifted[:4]


# --- public API -----------------------------------------------------------------------------


def leak_text(resource: Mapping[str, Any]) -> str:
    """Every string of a resource for the leak check, text attachments decoded from base64."""
    parts = [payload_text(resource)]

    def walk(v: Any) -> None:
        if isinstance(v, Mapping):
            data, ctype = v.get("data"), v.get("contentType")
            if isinstance(data, str) and isinstance(ctype, str):
                try:
                    parts.append(base64.b64decode(data).decode("utf-8", errors="replace"))
                except (binascii.Error, ValueError):
                    pass
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(resource)
    return "\n".join(parts)


def patient_of(resource: Mapping[str, Any], ctx: FhirContext | None = None) -> str | None:
    """The raw id of the patient a resource belongs to (for its date shift and leak check)."""
    if resource.get("resourceType") == "Patient":
        return resource.get("id") if isinstance(resource.get("id"), str) else None
    for f in _PATIENT_FIELDS:
        ref = resource.get(f)
        if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str):
            r = ref["reference"]
            if r.startswith("urn:uuid:"):
                known = ctx.urns.get(r) if ctx else None
                return known[1] if known else r[len("urn:uuid:"):]
            m = _TYPE_ID.search(r)
            if m and m.group(1) == "Patient" and "?" not in r:
                return m.group(2)
    return None


def deidentify_resources(
    resources: list[Mapping[str, Any]],
    pseudonymizer: Pseudonymizer,
    *,
    scrubber: Scrubber | None = None,
    ctx: FhirContext | None = None,
) -> list[dict[str, Any] | Exception]:
    """De-identify many resources, scrubbing free text in one batch per patient.

    Returns one item per input: the de-identified resource, or the exception that rejected it
    (`UnsupportedResource`, `LeakDetected`): the caller drops that resource and counts it.
    """
    ctx = ctx or FhirContext()
    groups: dict[str | None, list[int]] = {}
    for i, r in enumerate(resources):
        key = patient_of(r, ctx) if isinstance(r, Mapping) else None
        groups.setdefault(key, []).append(i)
    out: list[dict[str, Any] | Exception] = [UnsupportedResource("not processed")] * len(resources)
    for patient, idx in groups.items():
        removed: Counter[str] = Counter()
        # Resources without a patient (practitioners, organizations) shift by their own key.
        shifts = {i: pseudonymizer.date_shift_days(patient if patient is not None else
                                                   _own_key(resources[i])) for i in idx}
        collector = _Walker(pseudonymizer, ctx, 0, scrubbed=None, removed=Counter())
        for i in idx:
            try:
                collector.resource(resources[i]) if isinstance(resources[i], Mapping) else None
            except UnsupportedResource:
                pass
        unique = list(dict.fromkeys(collector.collected))
        shift = pseudonymizer.date_shift_days(patient) if patient is not None else None
        known = None
        if scrubber is not None and unique and patient in ctx.identities:
            known = known_identifiers(ctx.identities[patient])
        scrubbed = dict(zip(unique, scrub_texts(unique, scrubber, known=known,
                                                shift=shift if shift is not None else 0,
                                                removed=removed)))
        leak_set = ctx.leak_set(patient)
        for i in idx:
            r = resources[i]
            walker = _Walker(pseudonymizer, ctx, shifts[i], scrubbed=scrubbed, removed=removed)
            try:
                if not isinstance(r, Mapping):
                    raise UnsupportedResource("not a FHIR resource")
                res = walker.resource(r)
                hits = find_leaks(leak_text(res), leak_set)
                if hits:
                    raise LeakDetected(hits)
                out[i] = res
                ctx.stats[f"deidentified:{res['resourceType']}"] += 1
            except (UnsupportedResource, LeakDetected) as exc:
                rtype = r.get("resourceType") if isinstance(r, Mapping) else None
                ctx.stats[f"{'leak' if isinstance(exc, LeakDetected) else 'unsupported'}:"
                          f"{rtype if isinstance(rtype, str) else '?'}"] += 1
                out[i] = exc
        ctx.stats.update({f"removed:{k}": v for k, v in removed.items()})
    return out


def _own_key(r: Any) -> str:
    if isinstance(r, Mapping):
        return f"{r.get('resourceType')}/{r.get('id')}"
    return "?"


def deidentify_resource(
    resource: Mapping[str, Any],
    pseudonymizer: Pseudonymizer,
    *,
    scrubber: Scrubber | None = None,
    patient_key: str | None = None,
    ctx: FhirContext | None = None,
) -> dict[str, Any]:
    """One resource; raises `UnsupportedResource` or `LeakDetected` (fail closed).

    `patient_key` overrides the patient found in the resource (its raw Patient id)."""
    ctx = ctx or FhirContext()
    if isinstance(resource, Mapping) and resource.get("resourceType") in _PEOPLE:
        ctx.add_resources([resource])
    if patient_key is not None and isinstance(resource, Mapping):
        result = _with_patient(resource, pseudonymizer, scrubber, ctx, patient_key)
    else:
        (result,) = deidentify_resources([resource], pseudonymizer, scrubber=scrubber, ctx=ctx)
    if isinstance(result, Exception):
        raise result
    return result


def _with_patient(resource: Mapping[str, Any], pz: Pseudonymizer, scrubber: Scrubber | None,
                  ctx: FhirContext, patient: str) -> dict[str, Any] | Exception:
    removed: Counter[str] = Counter()
    collector = _Walker(pz, ctx, 0, scrubbed=None, removed=Counter())
    try:
        collector.resource(resource)
    except UnsupportedResource as exc:
        return exc
    shift = pz.date_shift_days(patient)
    unique = list(dict.fromkeys(collector.collected))
    known = known_identifiers(ctx.identities[patient]) if scrubber and patient in ctx.identities else None
    scrubbed = dict(zip(unique, scrub_texts(unique, scrubber, known=known, shift=shift, removed=removed)))
    res = _Walker(pz, ctx, shift, scrubbed=scrubbed, removed=removed).resource(resource)
    hits = find_leaks(leak_text(res), ctx.leak_set(patient))
    return LeakDetected(hits) if hits else res


def deidentify_bundle(
    bundle: Mapping[str, Any],
    pseudonymizer: Pseudonymizer,
    *,
    scrubber: Scrubber | None = None,
    ctx: FhirContext | None = None,
) -> dict[str, Any]:
    """A Bundle: entries de-identified one by one; a rejected entry is dropped and counted in
    `ctx.stats` (never its content). The Bundle keeps its type; fullUrls become `urn:uuid:`
    pseudonyms that match the references."""
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise UnsupportedResource("not a FHIR Bundle")
    ctx = ctx or FhirContext()
    entries = [e for e in bundle.get("entry") or [] if isinstance(e, Mapping)]
    resources = [e.get("resource") for e in entries]
    ctx.add_resources([r if isinstance(r, Mapping) else {} for r in resources],
                      [e.get("fullUrl") for e in entries])
    results = deidentify_resources([r if isinstance(r, Mapping) else {} for r in resources],
                                   pseudonymizer, scrubber=scrubber, ctx=ctx)
    out_entries = []
    for entry, res in zip(entries, results):
        if isinstance(res, Exception):
            continue
        e: dict[str, Any] = {}
        if isinstance(entry.get("fullUrl"), str):
            e["fullUrl"] = "urn:uuid:" + pseudonymizer.pseudonym("resource", _raw_id(entry))
        e["resource"] = res
        req = entry.get("request")
        if isinstance(req, Mapping) and isinstance(req.get("method"), str):
            url = req.get("url") if isinstance(req.get("url"), str) else ""
            if re.fullmatch(r"[A-Z][A-Za-z]+", url):
                new_url = url
            else:
                m = _TYPE_ID.search(url)
                new_url = f"{m.group(1)}/{pseudonymizer.pseudonym('resource', m.group(2))}" if m and "?" not in url else res["resourceType"]
            e["request"] = {"method": req["method"], "url": new_url}
        if isinstance(entry.get("search"), Mapping) and isinstance(entry["search"].get("mode"), str):
            e["search"] = {"mode": entry["search"]["mode"]}
        out_entries.append(e)
    out: dict[str, Any] = {"resourceType": "Bundle"}
    if isinstance(bundle.get("id"), str):
        out["id"] = pseudonymizer.pseudonym("resource", bundle["id"])
    if isinstance(bundle.get("type"), str):
        out["type"] = bundle["type"]
    if out_entries:
        out["entry"] = out_entries
    return out


def _raw_id(entry: Mapping[str, Any]) -> str:
    """The raw id a fullUrl stands for, so the new fullUrl equals the new references."""
    r = entry.get("resource")
    if isinstance(r, Mapping) and isinstance(r.get("id"), str):
        return r["id"]
    url = entry.get("fullUrl", "")
    return url[len("urn:uuid:"):] if url.startswith("urn:uuid:") else url


def dumps(resource: Mapping[str, Any]) -> str:
    """Compact JSON, one line (NDJSON)."""
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":"))


# --- files: a Bundle, a folder of Bundles, a Bulk NDJSON export -------------------------------

CHUNK = 64  # NDJSON lines scrubbed per batch


@dataclass
class PathReport:
    """What `deidentify_path` did: counts and one line per problem (file:line, never content)."""

    written: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    ctx: FhirContext = field(default_factory=FhirContext)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def resources_read(self) -> int:
        """FHIR resources met (de-identified or dropped); 0 means the input held none."""
        return sum(v for k, v in self.ctx.stats.items()
                   if k.split(":", 1)[0] in ("deidentified", "leak", "unsupported") and not k.endswith(":?"))


def _reason(exc: Exception) -> str:
    if isinstance(exc, LeakDetected):
        return "dropped: leak check failed (" + ", ".join(f"{k}={v}" for k, v in sorted(exc.types.items())) + ")"
    return f"dropped: {exc}"


def _atomic_write(path: Any, lines: Iterable[str]) -> None:
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(line)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def deidentify_path(src: Any, dest: Any, pseudonymizer: Pseudonymizer, *,
                    scrubber: Scrubber | None = None, on_problem: Any = None) -> PathReport:
    """De-identify a Bundle/resource `.json` file, an `.ndjson` file, or a folder of them into
    `dest` with the same relative layout. Each output is written atomically. A malformed line,
    an unsupported resource or a failed leak check is reported as `file:line: ...` and skipped."""
    from pathlib import Path

    src, dest = Path(src), Path(dest)
    report = PathReport()
    ctx = report.ctx

    def problem(msg: str) -> None:
        report.problems.append(msg)
        if on_problem:
            on_problem(msg)

    # An NDJSON file's resource type, as the bulk reader decides it (manifest, name, first line);
    # NDJSON that is not FHIR (a server's log.ndjson) is skipped.
    from fhir_adapter.bulk import manifest_types, ndjson_type

    types: dict[Path, str | None] = {}
    if src.is_dir():
        manifests: dict[Path, dict[str, str]] = {}
        files = []
        for p in sorted(src.rglob("*")):
            if not p.is_file() or p.name.startswith(".") or p.name == "manifest.json":
                continue
            if p.suffix == ".ndjson":
                if p.parent not in manifests:
                    manifests[p.parent] = manifest_types(p.parent)
                types[p] = ndjson_type(p, manifests[p.parent])
                if types[p] is not None:
                    files.append(p)
            elif p.suffix == ".json":
                files.append(p)
        pairs = [(p, dest / p.relative_to(src)) for p in files]
    elif src.is_file():
        pairs = [(src, dest / src.name)]
    else:
        raise FileNotFoundError(f"input not found: {src}")

    # Bulk exports: learn the people first (Patient.000.ndjson, Practitioner..., ...) so every
    # resource's notes are scrubbed with its own patient's known identifiers.
    for p, _ in pairs:
        if p.suffix == ".ndjson" and types.get(p) in _PEOPLE:
            try:
                with p.open(encoding="utf-8") as fh:
                    people = []
                    for line in fh:
                        try:
                            r = json.loads(line)
                        except ValueError:
                            continue  # reported when the file itself is processed
                        if isinstance(r, Mapping):
                            people.append(r)
                    ctx.add_resources(people)
            except (OSError, UnicodeDecodeError):
                pass  # reported below

    for p, out in pairs:
        try:
            if p.suffix == ".ndjson":
                _ndjson(p, out, pseudonymizer, scrubber, ctx, problem, types.get(p))
            else:
                _json_file(p, out, pseudonymizer, scrubber, ctx, problem)
            report.written.append(str(out))
        except _Skip:
            pass
        except (OSError, UnicodeDecodeError) as exc:
            problem(f"{p}: cannot read: {getattr(exc, 'strerror', None) or type(exc).__name__}")
    return report


def _json_file(p: Any, out: Any, pz: Pseudonymizer, scrubber: Scrubber | None, ctx: FhirContext,
               problem: Any) -> None:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        problem(f"{p}:{getattr(exc, 'lineno', '?')}: malformed JSON: file skipped")
        raise _Skip from None
    if isinstance(data, Mapping) and data.get("resourceType") == "Bundle":
        before = Counter(ctx.stats)
        result = deidentify_bundle(data, pz, scrubber=scrubber, ctx=ctx)
        dropped = {k: v - before.get(k, 0) for k, v in ctx.stats.items()
                   if (k.startswith("leak:") or k.startswith("unsupported:")) and v - before.get(k, 0)}
        for k, v in sorted(dropped.items()):
            problem(f"{p}: {v} {k.split(':', 1)[1]} entr{'y' if v == 1 else 'ies'} dropped "
                    f"({k.split(':', 1)[0]})")
    else:
        if isinstance(data, Mapping):
            ctx.add_resources([data])
        (result,) = deidentify_resources([data], pz, scrubber=scrubber, ctx=ctx)
        if isinstance(result, Exception):
            problem(f"{p}: {_reason(result)}")
            raise _Skip
    _atomic_write(out, [json.dumps(result, ensure_ascii=False, indent=1) + "\n"])


class _Skip(Exception):
    """The whole file was reported and skipped."""


def _ndjson(p: Any, out: Any, pz: Pseudonymizer, scrubber: Scrubber | None, ctx: FhirContext,
            problem: Any, rtype: str | None = None) -> None:
    """`rtype`: the one resource type of an export file; a line of another type stops the run
    (`BulkError` naming the file): a file mixing types is not an export file."""
    from fhir_adapter.bulk import mixed_types_error

    def lines() -> Iterable[str]:
        with p.open(encoding="utf-8") as fh:
            chunk: list[tuple[int, Any]] = []
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    chunk.append((n, json.loads(line)))
                except ValueError:
                    problem(f"{p}:{n}: malformed JSON line skipped")
                    continue
                if len(chunk) >= CHUNK:
                    yield from _chunk(chunk)
                    chunk = []
            if chunk:
                yield from _chunk(chunk)

    def _chunk(chunk: list[tuple[int, Any]]) -> Iterable[str]:
        if rtype is not None:
            other = {r["resourceType"] for _, r in chunk
                     if isinstance(r, Mapping) and isinstance(r.get("resourceType"), str)} - {rtype}
            if other:
                raise mixed_types_error(p.name, {rtype, *(str(t) for t in other)})
        people = [r for _, r in chunk if isinstance(r, Mapping) and r.get("resourceType") in _PEOPLE]
        ctx.add_resources(people)
        results = deidentify_resources([r for _, r in chunk], pz, scrubber=scrubber, ctx=ctx)
        for (n, _), res in zip(chunk, results):
            if isinstance(res, Exception):
                problem(f"{p}:{n}: {_reason(res)}")
            else:
                yield dumps(res) + "\n"

    _atomic_write(out, lines())
