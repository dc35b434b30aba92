"""Each clinical recognizer against a table of (text, expected spans)."""
from __future__ import annotations

import pytest

from deidentify.recognizers.account import AccountNumberRecognizer
from deidentify.recognizers.address import AddressRecognizer
from deidentify.recognizers.age import AgeOver89Recognizer
from deidentify.recognizers.city_abbreviation import CityAbbreviationRecognizer
from deidentify.recognizers.clinician import ClinicianNameRecognizer
from deidentify.recognizers.date import ClinicalDateRecognizer
from deidentify.recognizers.dea import DeaRecognizer, dea_is_valid
from deidentify.recognizers.email import OfflineEmailRecognizer
from deidentify.recognizers.facility import FacilityRecognizer
from deidentify.recognizers.health_plan import HealthPlanNumberRecognizer
from deidentify.recognizers.id_number import IdNumberRecognizer
from deidentify.recognizers.mrn import MedicalRecordNumberRecognizer
from deidentify.recognizers.npi import NpiRecognizer, npi_is_valid
from deidentify.recognizers.person_name import FirstNameRecognizer
from deidentify.recognizers.phone import PhoneRecognizer
from deidentify.recognizers.ssn import SsnRecognizer
from deidentify.recognizers.visit_location import VisitLocationRecognizer
from deidentify.recognizers.zip_code import ZipCodeRecognizer

FLAGS = None  # registry default: DOTALL | MULTILINE | IGNORECASE
_CACHE: dict[type, object] = {}


def found(cls, text: str) -> list[str]:
    rec = _CACHE.setdefault(cls, cls())
    results = rec.analyze(text, entities=rec.supported_entities, regex_flags=None) \
        if FLAGS is None else rec.analyze(text, rec.supported_entities, regex_flags=FLAGS)
    return sorted(text[r.start:r.end] for r in results if r.score >= 0.4)


CASES = [
    # facility names with "&", curly apostrophes, street names, a town's own hospital
    (VisitLocationRecognizer, "seen at Brigham & Women’s on 08/22", ["Brigham & Women’s"]),
    (VisitLocationRecognizer, "seen last week at Baylor Scott & White.", ["Baylor Scott & White."]),
    (FacilityRecognizer, "seen at our 5th avenue clinic today", ["5th avenue clinic"]),
    (FacilityRecognizer, "seeing Dr. Lee at the county hospital", ["county hospital"]),
    (FacilityRecognizer, "who came to General Hospital on Apr 5th", ["General Hospital"]),
    (FacilityRecognizer, "under general anesthesia in a general hospital ward", []),
    # large-city initials after a place preposition, in capitals only
    (CityAbbreviationRecognizer, "pt is Jack W. from NYC, last seen", ["NYC"]),
    (CityAbbreviationRecognizer, "moved to L.A. in 2019", ["L.A."]),
    (CityAbbreviationRecognizer, "lives in SF", ["SF"]),
    (CityAbbreviationRecognizer, "rise in LA pressure; NYC", []),
    # MRN / account / health plan / other ids, with their labels
    (MedicalRecordNumberRecognizer, "MRN: 00123456 on file", ["00123456"]),
    (MedicalRecordNumberRecognizer, "mrn #CS123456", ["#CS123456"]),
    (MedicalRecordNumberRecognizer, "medical record number 998877", ["998877"]),
    (MedicalRecordNumberRecognizer, "Patient ID: ABCD1234", ["ABCD1234"]),
    (MedicalRecordNumberRecognizer, "MRN: pending", []),
    (AccountNumberRecognizer, "acct # 55-66778", ["55-66778"]),
    (AccountNumberRecognizer, "Account Number: 9876543210", ["9876543210"]),
    (HealthPlanNumberRecognizer, "Insurance ID: HX-223344", ["HX-223344"]),
    (HealthPlanNumberRecognizer, "member id W123456789", ["W123456789"]),
    (HealthPlanNumberRecognizer, "policy #DB-2345678", ["#DB-2345678"]),
    (HealthPlanNumberRecognizer, "insurance is pending", []),
    (IdNumberRecognizer, "License No: CLN-112233", ["CLN-112233"]),
    (IdNumberRecognizer, "HbA1c of 10 and ICD-10 E11.9", []),
    # SSN, including the dummy ones Presidio rejects
    (SsnRecognizer, "SSN: 123-45-6789", ["123-45-6789"]),
    (SsnRecognizer, "ssn 000-12-3456 and 987-65-4321", ["000-12-3456", "987-65-4321"]),
    (SsnRecognizer, "social security number 123456789", ["123456789"]),
    # phone and fax
    (PhoneRecognizer, "call (617) 555-0199", ["(617) 555-0199"]),
    (PhoneRecognizer, "cell 617-555-0199 or 617.555.0199", ["617-555-0199", "617.555.0199"]),
    (PhoneRecognizer, "Fax: 650 123 4567", ["650 123 4567"]),
    (PhoneRecognizer, "+1 800 555 1212 x123", ["+1 800 555 1212 x123"]),
    (PhoneRecognizer, "tel 6175550199", ["6175550199"]),
    (PhoneRecognizer, "BP 120/80, HR 88", []),
    # NPI (Luhn with 80840) and DEA (check digit)
    (NpiRecognizer, "NPI 1234567893", ["1234567893"]),
    (NpiRecognizer, "NPI 1234567890", []),
    (DeaRecognizer, "DEA AB1234563", ["AB1234563"]),
    (DeaRecognizer, "DEA AB1234567", []),
    # ages over 89 only
    (AgeOver89Recognizer, "a 94 yo woman", ["94"]),
    (AgeOver89Recognizer, "94-year-old male", ["94"]),
    (AgeOver89Recognizer, "aged 92, lives alone", ["92"]),
    (AgeOver89Recognizer, "A 101 YEAR OLD MAN", ["101"]),
    (AgeOver89Recognizer, "a 64-year-old and a 89 yo", []),
    # dates
    (ClinicalDateRecognizer, "seen 7/22 for f/u", ["7/22"]),
    (ClinicalDateRecognizer, "DOS 7/22/93", ["7/22/93"]),
    (ClinicalDateRecognizer, "on 07-22-1993", ["07-22-1993"]),
    (ClinicalDateRecognizer, "since Jan 3rd", ["Jan 3rd"]),
    (ClinicalDateRecognizer, "January 3, 2020", ["January 3, 2020"]),
    (ClinicalDateRecognizer, "3 Jan 2020", ["3 Jan 2020"]),
    (ClinicalDateRecognizer, "ON MARCH 5TH, 2021", ["MARCH 5TH, 2021"]),
    (ClinicalDateRecognizer, "born in 1931", ["1931"]),
    (ClinicalDateRecognizer, "seen last Thursday", ["last Thursday"]),
    (ClinicalDateRecognizer, "17-Feb-2023", ["17-Feb-2023"]),
    (ClinicalDateRecognizer, "diagnosed in 2019; pain 3/10; take 1/2 tablet; BP 120/80", []),
    (ClinicalDateRecognizer, "you may 2 tabs", []),
    # ZIP
    (ZipCodeRecognizer, "Boston, MA 02118", ["02118"]),
    (ZipCodeRecognizer, "zip code 66801-2504", ["66801-2504"]),
    (ZipCodeRecognizer, "Texas 77001", ["77001"]),
    (ZipCodeRecognizer, "in 12345 cases", []),
    # facilities
    (FacilityRecognizer, "at St. Mary's Hospital today", ["St. Mary's Hospital"]),
    (FacilityRecognizer, "Mercy Medical Center", ["Mercy Medical Center"]),
    (FacilityRecognizer, "Hopkins Clinic", ["Hopkins Clinic"]),
    (FacilityRecognizer, "ADMITTED TO MERCY MEDICAL CENTER", ["MERCY MEDICAL CENTER"]),
    (FacilityRecognizer, "seen in an outpatient clinic; the hospital", []),
    # names after titles / before credentials
    (ClinicianNameRecognizer, "seen by Dr. Emily Clark today", ["Dr. Emily Clark"]),
    (ClinicianNameRecognizer, "Dr Smith", ["Dr Smith"]),
    (ClinicianNameRecognizer, "NP Jones called", ["NP Jones"]),
    (ClinicianNameRecognizer, "John Lee, MD", ["John Lee"]),
    (ClinicianNameRecognizer, "SEEN BY DR SMITH AT MERCY", ["DR SMITH"]),
    (ClinicianNameRecognizer, "Dr. recommended rest", []),
    (FirstNameRecognizer, "for Anna S., 34F", ["Anna S."]),
    (FirstNameRecognizer, "PT MARY JOHNSON", ["MARY JOHNSON"]),
    (FirstNameRecognizer, "vitamin D. and Hepatitis B.", []),
    # places
    (AddressRecognizer, "lives at 123 Elm St, Springfield", ["123 Elm St, Springfield"]),
    (AddressRecognizer, "Houston, TX", ["Houston, TX"]),
    (VisitLocationRecognizer, "seen at Cedar Crest on May 2", ["Cedar Crest"]),
    (VisitLocationRecognizer, "follow-up at UCSF next week", ["UCSF"]),
    (VisitLocationRecognizer, "at least twice, at risk", []),
    # e-mail, validated offline
    (OfflineEmailRecognizer, "mail john.doe@example.com", ["john.doe@example.com"]),
]


@pytest.mark.parametrize(("cls", "text", "expected"), CASES, ids=[f"{c.__name__}:{t[:30]}" for c, t, _ in CASES])
def test_recognizer_table(cls, text, expected):
    assert found(cls, text) == sorted(expected)


def test_checksums():
    assert npi_is_valid("1234567893") and not npi_is_valid("1234567890")
    assert dea_is_valid("AB1234563") and not dea_is_valid("AB1234564")


def test_one_class_per_file_in_presidio_style():
    from deidentify.recognizers import clinical_recognizers

    recs = clinical_recognizers()
    assert len({type(r).__module__ for r in recs}) == len(recs)
    for r in recs:
        assert type(r).PATTERNS and isinstance(type(r).CONTEXT, list)
