"""Clinical recognizers in the Presidio style: one PatternRecognizer subclass per file."""
from __future__ import annotations

from presidio_analyzer import EntityRecognizer


def clinical_recognizers() -> list[EntityRecognizer]:
    from deidentify.recognizers.account import AccountNumberRecognizer
    from deidentify.recognizers.address import AddressRecognizer
    from deidentify.recognizers.age import AgeOver89Recognizer
    from deidentify.recognizers.city_abbreviation import CityAbbreviationRecognizer
    from deidentify.recognizers.clinician import ClinicianNameRecognizer
    from deidentify.recognizers.date import ClinicalDateRecognizer
    from deidentify.recognizers.dea import DeaRecognizer
    from deidentify.recognizers.facility import FacilityRecognizer
    from deidentify.recognizers.health_plan import HealthPlanNumberRecognizer
    from deidentify.recognizers.id_number import IdNumberRecognizer
    from deidentify.recognizers.mrn import MedicalRecordNumberRecognizer
    from deidentify.recognizers.npi import NpiRecognizer
    from deidentify.recognizers.person_name import FirstNameRecognizer
    from deidentify.recognizers.phone import PhoneRecognizer
    from deidentify.recognizers.ssn import SsnRecognizer
    from deidentify.recognizers.visit_location import VisitLocationRecognizer
    from deidentify.recognizers.zip_code import ZipCodeRecognizer
    from deidentify.recognizers.pager import PagerRecognizer
    from deidentify.recognizers.patient_name import PatientNameRecognizer
    from deidentify.recognizers.relative import RelativeNameRecognizer
    from deidentify.recognizers.ward import WardRecognizer

    return [
        MedicalRecordNumberRecognizer(),
        AccountNumberRecognizer(),
        HealthPlanNumberRecognizer(),
        IdNumberRecognizer(),
        SsnRecognizer(),
        PhoneRecognizer(),
        NpiRecognizer(),
        DeaRecognizer(),
        AgeOver89Recognizer(),
        ClinicalDateRecognizer(),
        ZipCodeRecognizer(),
        AddressRecognizer(),
        FacilityRecognizer(),
        VisitLocationRecognizer(),
        CityAbbreviationRecognizer(),
        ClinicianNameRecognizer(),
        FirstNameRecognizer(),
        RelativeNameRecognizer(),
        PatientNameRecognizer(),
        PagerRecognizer(),
        WardRecognizer(),
    ]
