"""`DeidentifiedRecord`: the only patient data type that may leave the API process.

Only code in `deidentify` can construct one (the constructor demands a private token), so a
`model` function typed to take a `DeidentifiedRecord` cannot be handed raw PHI by mistake.
It reuses the plain entry types of `fhir_adapter.record`, with every date shifted by the
patient's offset, every free-text field scrubbed, and every id replaced by a pseudonym.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from fhir_adapter.record import (
    AllergyEntry,
    Coding,
    Complaint,
    ConditionEntry,
    EncounterInfo,
    MedicationEntry,
    ParseStats,
    VitalSign,
)

_MINT = object()  # private: only this package passes it


class NotDeidentifiedError(TypeError):
    """Raised when something other than `deidentify` tries to make a DeidentifiedRecord."""


@dataclass(frozen=True)
class DeidentifiedRecord:
    pseudonym: str  # keyed HMAC of the patient's id
    age_years: int | None  # capped at 90 (Safe Harbor: ages over 89 aggregated)
    age_days: int | None  # only under one year (infant fever rule); None otherwise
    sex: str | None
    as_of: datetime  # the request time, shifted by the patient's offset
    state: str | None = None
    zip3: str | None = None  # "000" for restricted three-digit ZIPs
    conditions: tuple[ConditionEntry, ...] = ()
    vitals: dict[str, VitalSign] = field(default_factory=dict)
    allergies: tuple[AllergyEntry, ...] = ()
    medications: tuple[MedicationEntry, ...] = ()
    encounter: EncounterInfo | None = None
    notes: tuple[str, ...] = ()
    stats: ParseStats = field(default_factory=ParseStats)
    removed: dict[str, int] = field(default_factory=dict)  # identifiers removed, by type
    complaints: tuple[Complaint, ...] = ()  # chief complaint(s), text scrubbed
    _mint: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._mint is not _MINT:
            raise NotDeidentifiedError("DeidentifiedRecord can only be created by deidentify")

    @property
    def age_display(self) -> str | None:
        if self.age_years is None:
            return None
        return "90+" if self.age_years >= 90 else str(self.age_years)

    # --- JSON payloads (Celery tasks, database rows, datasets) -------------------------------

    def to_payload(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("_mint")
        return json.loads(json.dumps(data, default=_encode))

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> "DeidentifiedRecord":
        """Rebuild a record from `to_payload()` output (already de-identified data)."""
        return _mint(
            pseudonym=data["pseudonym"],
            age_years=data.get("age_years"),
            age_days=data.get("age_days"),
            sex=data.get("sex"),
            as_of=_dt(data["as_of"]),
            state=data.get("state"),
            zip3=data.get("zip3"),
            conditions=tuple(
                ConditionEntry(
                    codings=_codings(c["codings"]),
                    text=c.get("text"),
                    clinical_status=c.get("clinical_status"),
                    verification_status=c.get("verification_status"),
                    onset=_dt(c.get("onset")),
                    recorded=_dt(c.get("recorded")),
                    notes=tuple(c.get("notes", ())),
                )
                for c in data.get("conditions", ())
            ),
            vitals={
                k: VitalSign(
                    loinc=v["loinc"],
                    display=v.get("display"),
                    value=v.get("value"),
                    unit=v.get("unit"),
                    effective=_dt(v.get("effective")),
                    value_code=Coding(**v["value_code"]) if v.get("value_code") else None,
                    components=dict(v.get("components", {})),
                    component_units=dict(v.get("component_units", {})),
                    text=v.get("text"),
                )
                for k, v in data.get("vitals", {}).items()
            },
            allergies=tuple(
                AllergyEntry(
                    codings=_codings(a["codings"]),
                    text=a.get("text"),
                    clinical_status=a.get("clinical_status"),
                    criticality=a.get("criticality"),
                    reactions=tuple(a.get("reactions", ())),
                    notes=tuple(a.get("notes", ())),
                )
                for a in data.get("allergies", ())
            ),
            medications=tuple(
                MedicationEntry(
                    codings=_codings(m["codings"]),
                    text=m.get("text"),
                    status=m.get("status"),
                    authored=_dt(m.get("authored")),
                    dosage=tuple(m.get("dosage", ())),
                    notes=tuple(m.get("notes", ())),
                )
                for m in data.get("medications", ())
            ),
            encounter=(
                EncounterInfo(
                    **{
                        **data["encounter"],
                        "types": tuple(data["encounter"].get("types", ())),
                        "reasons": tuple(data["encounter"].get("reasons", ())),
                        "start": _dt(data["encounter"].get("start")),
                        "end": _dt(data["encounter"].get("end")),
                    }
                )
                if data.get("encounter")
                else None
            ),
            notes=tuple(data.get("notes", ())),
            stats=ParseStats(**data["stats"]) if data.get("stats") else ParseStats(),
            removed=dict(data.get("removed", {})),
            complaints=tuple(
                Complaint(text=c.get("text"), codings=_codings(c.get("codings")), source=c.get("source", ""))
                for c in data.get("complaints", ())
            ),
        )


def _mint(**fields: Any) -> DeidentifiedRecord:
    """Construct a DeidentifiedRecord. For use inside `deidentify` only."""
    return DeidentifiedRecord(**fields, _mint=_MINT)


def _encode(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _codings(items: Any) -> tuple[Coding, ...]:
    return tuple(Coding(**c) for c in items or ())
