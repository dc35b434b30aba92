"""Plain, FHIR-free views of one patient, extracted from R4 resources.

A `PatientRecord` still holds PHI (names, identifiers, dates, free text). It never leaves the API
process: `deidentify` turns it into a `DeidentifiedRecord` before anything else sees it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime


@dataclass(frozen=True)
class Coding:
    system: str | None
    code: str | None
    display: str | None = None


@dataclass(frozen=True)
class VitalSign:
    """The newest Observation for one LOINC code.

    `value` is numeric where the Observation had a Quantity; `value_code` holds a coded value
    (e.g. level of consciousness). `components` maps component LOINC codes to numeric values
    (blood-pressure panel 85354-9, oxygen flow 3151-8 / concentration 3150-0 on pulse oximetry).
    """

    loinc: str
    display: str | None
    value: float | None
    unit: str | None
    effective: datetime | None
    value_code: Coding | None = None
    components: dict[str, float] = field(default_factory=dict)
    component_units: dict[str, str] = field(default_factory=dict)
    text: str | None = None  # code.text / notes: free text, may hold PHI


@dataclass(frozen=True)
class ConditionEntry:
    codings: tuple[Coding, ...]
    text: str | None  # code.text: free text
    clinical_status: str | None
    verification_status: str | None
    onset: datetime | None
    recorded: datetime | None
    notes: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.clinical_status in ("active", "recurrence", "relapse")


@dataclass(frozen=True)
class AllergyEntry:
    codings: tuple[Coding, ...]
    text: str | None
    clinical_status: str | None
    criticality: str | None
    reactions: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class MedicationEntry:
    codings: tuple[Coding, ...]
    text: str | None
    status: str | None
    authored: datetime | None
    dosage: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EncounterInfo:
    id: str | None
    status: str | None
    class_code: str | None  # v3 ActCode: EMER, AMB, IMP, ...
    types: tuple[str, ...]
    reasons: tuple[str, ...]  # reasonCode text/display: the presenting complaint
    priority: str | None  # v3 ActPriority code (EM, UR, R, ...)
    start: datetime | None
    end: datetime | None


@dataclass(frozen=True)
class Complaint:
    """The chief complaint, from wherever the EHR put it (`source`): the current encounter's
    `reasonCode`, a chief-complaint Observation (LOINC 8661-1), or an encounter-diagnosis
    Condition of the current encounter. `text` is free text (may hold PHI until de-identified)."""

    text: str | None
    codings: tuple[Coding, ...] = ()
    source: str = "encounter-reason"


@dataclass(frozen=True)
class Address:
    lines: tuple[str, ...]
    city: str | None
    district: str | None  # county
    state: str | None
    postal_code: str | None
    country: str | None


@dataclass(frozen=True)
class Identity:
    """Everything that identifies the patient and the people around them.

    De-identification removes all of this from structured fields and uses it to build the
    known-identifier recognizer for the record's own free text.
    """

    resource_id: str | None
    given_names: tuple[str, ...] = ()
    family_names: tuple[str, ...] = ()
    identifiers: tuple[tuple[str | None, str], ...] = ()  # (system or type, value): MRN, SSN, ...
    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    addresses: tuple[Address, ...] = ()
    birth_date: date | None = None
    # Related persons, practitioners, organizations named in the record: (given, family) or name.
    other_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParseStats:
    """Entries seen and skipped while parsing; skipped entries never stop a request."""

    parsed: int = 0
    skipped: int = 0
    skipped_by_type: dict[str, int] = field(default_factory=dict)
    ignored: int = 0  # entries of types a PatientRecord does not use: not validated, not errors


@dataclass(frozen=True)
class PatientRecord:
    identity: Identity
    birth_date: date | None
    sex: str | None  # administrative gender: male, female, other, unknown
    as_of: datetime  # the moment the record describes (the hook's request time)
    conditions: tuple[ConditionEntry, ...] = ()
    vitals: dict[str, VitalSign] = field(default_factory=dict)  # LOINC -> newest
    allergies: tuple[AllergyEntry, ...] = ()
    medications: tuple[MedicationEntry, ...] = ()
    encounter: EncounterInfo | None = None
    notes: tuple[str, ...] = ()  # clinical notes (DocumentReference text), free text
    stats: ParseStats = field(default_factory=ParseStats)
    complaints: tuple[Complaint, ...] = ()  # the current visit's chief complaint(s)

    @property
    def age_years(self) -> int | None:
        if self.birth_date is None:
            return None
        ref = self.as_of.date()
        b = self.birth_date
        return ref.year - b.year - ((ref.month, ref.day) < (b.month, b.day))

    @property
    def age_days(self) -> int | None:
        if self.birth_date is None:
            return None
        return (self.as_of.date() - self.birth_date).days
