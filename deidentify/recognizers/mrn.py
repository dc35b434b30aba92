"""Medical record numbers and patient/chart/case ids, found by their label."""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import ID_VALUE, LABEL_SEP_FWD, ClinicalPatternRecognizer

LABEL = (
    r"(?:MRN|MR|medical[ \t]+record(?:[ \t]+(?:number|no\.?|num|#))?|med(?:ical)?[ \t]*rec(?:ord)?"
    r"|chart|patient[ \t]*(?:id|identifier|number|#)|pt\.?[ \t]*(?:id|identifier|#)|case|record|encounter"
    r"|visit|admission|hospital[ \t]*(?:id|number|#))"
)


class MedicalRecordNumberRecognizer(ClinicalPatternRecognizer):
    ENTITY = "MEDICAL_RECORD_NUMBER"
    PATTERNS = [Pattern("MRN (labelled)", rf"\b{LABEL}{LABEL_SEP_FWD}(?P<v>{ID_VALUE})", 0.9)]
    CONTEXT = ["mrn", "medical record", "chart", "patient id"]
