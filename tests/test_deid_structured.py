"""Safe Harbor for PatientRecord -> DeidentifiedRecord, with planted identifiers."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import pytest

from deidentify import Deidentifier, DeidentifiedRecord, LeakDetected
from deidentify.leaks import IdentifierSet, find_leaks, payload_text
from deidentify.structured import RESTRICTED_ZIP3, zip3
from fhir_adapter.record import (
    Address,
    AllergyEntry,
    Coding,
    ConditionEntry,
    EncounterInfo,
    Identity,
    MedicationEntry,
    PatientRecord,
    VitalSign,
)

KEY = b"structured-test-key-0123456789abcdef"
AS_OF = datetime(2024, 3, 10, 14, 30, tzinfo=timezone.utc)
PLANTED = ["Willena258", "Kuhlman484", "MRN-4471923", "617-555-0142", "41 Larkspur Lane", "Quincy",
           "1975-04-07", "04/07/1975"]


def identity(**kw) -> Identity:
    base = dict(
        resource_id="pat-8c1d",
        given_names=("Willena258",),
        family_names=("Kuhlman484",),
        identifiers=(("http://hospital.example/mrn", "MRN-4471923"), ("ssn", "999-12-3456")),
        phones=("617-555-0142",),
        emails=("willena@example.org",),
        addresses=(Address(("41 Larkspur Lane",), "Quincy", "Norfolk County", "MA", "02169", "US"),),
        birth_date=date(1975, 4, 7),
        other_names=("Dr. Trent Krajcik",),
    )
    base.update(kw)
    return Identity(**base)


def record(*, birth: date = date(1975, 4, 7), ident: Identity | None = None, notes=()) -> PatientRecord:
    fever = Coding("http://snomed.info/sct", "386661006", "Fever")
    return PatientRecord(
        identity=ident or identity(birth_date=birth),
        birth_date=birth,
        sex="female",
        as_of=AS_OF,
        conditions=(
            ConditionEntry((fever,), "Fever", "active", "confirmed",
                           datetime(2024, 3, 8, 9, 0, tzinfo=timezone.utc),
                           datetime(2024, 3, 9, 9, 0, tzinfo=timezone.utc),
                           notes=("Willena258 called from 617-555-0142 about the fever",)),
            ConditionEntry((fever,), "fever per Kuhlman484 at 41 Larkspur Lane", "active", None,
                           None, None),
        ),
        vitals={"8310-5": VitalSign("8310-5", "Body temperature", 39.2, "Cel",
                                    datetime(2024, 3, 10, 14, 0, tzinfo=timezone.utc),
                                    text="temp taken by Willena258's mother")},
        allergies=(AllergyEntry((Coding("http://snomed.info/sct", "91936005", "Penicillin"),),
                                "Penicillin", "active", "high", ("hives",), ("MRN-4471923 note",)),),
        medications=(MedicationEntry((Coding("http://www.nlm.nih.gov/research/umls/rxnorm", "198440",
                                             "Acetaminophen 500 MG"),),
                                     "Acetaminophen 500 MG", "active",
                                     datetime(2024, 3, 9, tzinfo=timezone.utc),
                                     ("1 tab q6h",), ("born 04/07/1975",)),),
        encounter=EncounterInfo("enc-77", "in-progress", "EMER", ("Emergency visit",),
                                ("fever, seen by Dr. Trent Krajcik",), "EM",
                                datetime(2024, 3, 10, 13, 0, tzinfo=timezone.utc), None),
        notes=notes or ("Patient Willena258 Kuhlman484 (DOB 1975-04-07) lives in Quincy.",),
    )


@dataclass
class Result:
    text: str
    spans: list


class FakeScrubber:
    """Replaces every planted identifier with [X]; records the calls it got."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], object, int | None]] = []

    def scrub_many(self, texts, *, known=None, date_shift_days=None):
        self.calls.append((list(texts), known, date_shift_days))
        out = []
        for t in texts:
            spans = []
            for p in PLANTED + ["Dr. Trent Krajcik"]:
                if p in t:
                    t = t.replace(p, "[X]")
                    spans.append({"entity_type": "PERSON", "start": 0, "end": 1, "score": 1.0})
            out.append(Result(t, spans))
        return out


def test_allow_list_output_has_no_identifiers_and_shifts_dates() -> None:
    scrubber = FakeScrubber()
    d = Deidentifier(KEY, scrubber=scrubber)
    out = d.record(record())
    assert isinstance(out, DeidentifiedRecord)
    text = json.dumps(out.to_payload())
    for planted in PLANTED + ["pat-8c1d", "enc-77", "999-12-3456", "Norfolk", "02169", "willena@"]:
        assert planted not in text
    assert not find_leaks(payload_text(out.to_payload()), IdentifierSet.from_identity(identity()))
    shift = d.pseudonymizer.date_shift_days("pat-8c1d")
    assert -365 <= shift <= -1
    delta = timedelta(days=shift)
    assert out.as_of == AS_OF + delta
    assert out.conditions[0].onset == datetime(2024, 3, 8, 9, 0, tzinfo=timezone.utc) + delta
    assert out.vitals["8310-5"].effective == datetime(2024, 3, 10, 14, 0, tzinfo=timezone.utc) + delta
    assert out.encounter.start == datetime(2024, 3, 10, 13, 0, tzinfo=timezone.utc) + delta
    assert out.medications[0].authored == datetime(2024, 3, 9, tzinfo=timezone.utc) + delta
    # intervals preserved
    assert out.as_of - out.encounter.start == AS_OF - datetime(2024, 3, 10, 13, 0, tzinfo=timezone.utc)
    assert out.pseudonym == d.pseudonym("resource", "pat-8c1d")
    assert out.encounter.id == d.pseudonym("resource", "enc-77")
    assert (out.state, out.zip3, out.sex, out.age_years, out.age_days) == ("MA", "021", "female", 48, None)
    # codings kept; terminology text kept without a scrub
    assert out.conditions[0].codings[0].code == "386661006" and out.conditions[0].text == "Fever"
    assert out.conditions[1].text == "fever per [X] at [X]"
    assert out.vitals["8310-5"].value == 39.2
    # one batch, with the patient's shift, and terminology texts not sent
    (texts, _known, shift_arg), = scrubber.calls
    assert shift_arg == shift and "Fever" not in texts and "Penicillin" not in texts
    assert out.removed["NAME"] >= 2 and out.removed["PHONE"] == 1 and out.removed["PERSON"] >= 5


def test_without_scrubber_free_text_is_dropped() -> None:
    out = Deidentifier(KEY).record(record())
    assert out.notes == ()
    assert out.conditions[1].text is None and out.conditions[0].notes == ()
    assert out.conditions[0].text == "Fever"  # terminology, equal to the coding display
    assert out.vitals["8310-5"].text is None
    assert out.encounter.reasons == () and out.medications[0].dosage == ()
    assert out.removed["FREE_TEXT_DROPPED"] >= 8


def test_consistent_across_calls_and_keys() -> None:
    a = Deidentifier(KEY).record(record())
    b = Deidentifier(KEY).record(record())
    c = Deidentifier(b"another-key-another-key-another-key!").record(record())
    assert a.pseudonym == b.pseudonym and a.as_of == b.as_of
    assert a.pseudonym != c.pseudonym
    assert KEY.decode() not in json.dumps(a.to_payload())
    assert DeidentifiedRecord.from_payload(a.to_payload()) == a


def test_same_patient_same_shift_other_patient_other_shift() -> None:
    d = Deidentifier(KEY)
    shifts = {d.record(record(ident=identity(resource_id=f"p{i}"))).as_of for i in range(20)}
    assert len(shifts) > 10


@pytest.mark.parametrize(
    ("birth", "years", "display", "days"),
    [
        (date(1930, 1, 1), 90, "90+", None),  # 94: aggregated
        (date(1934, 3, 11), 89, "89", None),
        (date(1934, 3, 10), 90, "90+", None),  # exactly 90
        (date(2023, 12, 10), 0, "0", 91),  # infant: age in days kept
        (date(2023, 3, 10), 1, "1", None),
    ],
)
def test_age(birth, years, display, days) -> None:
    out = Deidentifier(KEY).record(record(birth=birth))
    assert (out.age_years, out.age_display, out.age_days) == (years, display, days)
    if years == 90 and birth.year == 1930:
        assert out.removed["AGE_OVER_89"] == 1


@pytest.mark.parametrize("z3", sorted(RESTRICTED_ZIP3))
def test_restricted_zip3(z3) -> None:
    assert zip3(z3 + "12") == "000"
    addr = Address(("1 Main St",), "Town", None, "NH", z3 + "12-3456", "US")
    out = Deidentifier(KEY).record(record(ident=identity(addresses=(addr,))))
    assert out.zip3 == "000"


def test_zip3_plain_and_invalid() -> None:
    assert len(RESTRICTED_ZIP3) == 17
    assert zip3("02169-1234") == "021"
    assert zip3("0216") is None and zip3(None) is None and zip3("") is None


def test_leak_fails_closed_without_the_value() -> None:
    class LeakyScrubber:
        def scrub_many(self, texts, *, known=None, date_shift_days=None):
            return [Result(t, []) for t in texts]  # returns text unchanged

    with pytest.raises(LeakDetected) as e:
        Deidentifier(KEY, scrubber=LeakyScrubber()).record(record())
    msg = str(e.value) + repr(e.value.types)
    assert "NAME" in e.value.types
    for planted in PLANTED:
        assert planted not in msg


def test_record_cannot_be_made_outside_deidentify() -> None:
    from deidentify.record import NotDeidentifiedError

    with pytest.raises(NotDeidentifiedError):
        DeidentifiedRecord(pseudonym="x", age_years=1, age_days=None, sex=None, as_of=AS_OF)


def test_known_identifiers_passed_when_text_side_present() -> None:
    s = FakeScrubber()
    Deidentifier(KEY, scrubber=s).record(record())
    try:
        from deidentify.known import KnownIdentifiers
    except ImportError:
        assert s.calls[0][1] is None
    else:
        assert isinstance(s.calls[0][1], KnownIdentifiers)


def test_record_leak_check_reads_the_same_text_as_the_payload() -> None:
    """`check_record` reads the record itself; its text must be the payload's, value for value:
    dates as ISO strings, floats and ints as JSON writes them, dict values, no keys, no None."""
    from deidentify.leaks import record_text

    out = Deidentifier(KEY, scrubber=FakeScrubber()).record(record())
    payload = out.to_payload()
    assert record_text(out, skip=("_mint",)) == payload_text(payload)
    payload.pop("removed")
    text = record_text(out, skip=("_mint", "removed"))
    assert text == payload_text(payload)
    assert "39.2" in text.splitlines() and out.as_of.isoformat() in text.splitlines()
