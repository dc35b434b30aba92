"""Patients' names where a note introduces or addresses the patient, in any letter case:
"Quinn, Rosa is a 74 y/o F", "rosa quinn is an 80 yo", "pt Joep agitated", "patient: Rosa Quinn".
Only name-like words are kept (`trim_name_words`): "pt is a 74 y/o" flags nothing.
"""
from __future__ import annotations

import regex
from presidio_analyzer import Pattern

from deidentify.recognizers.base import ClinicalPatternRecognizer, name_word_ok, trim_name_words

WORD = r"[A-Za-z][A-Za-z'’-]*\.?"
AGE_PHRASE = r"is[ \t]+an?[ \t]+\d{1,3}[ \t]*(?:-?[ \t]*(?:y/?o|y\.o\.?|yr|year|years?)\b|(?:M|F)\b)"


class PatientNameRecognizer(ClinicalPatternRecognizer):
    ENTITY = "PERSON"
    PATTERNS = [  # noqa: RUF012
        # "<name> is a 74 y/o": the subject of the opening sentence
        Pattern("Patient (introduced)", rf"(?:^|(?<=[\n.;:]))[ \t]*(?:(?:mr|mrs|ms|miss)\.?[ \t]+)?(?P<v>{WORD}(?:,?[ \t]+{WORD}){{0,2}})[ \t]+(?={AGE_PHRASE})", 0.75),
        # "pt Joep", "patient: Rosa Quinn"
        Pattern("Patient (after pt)", rf"\b(?:pt|patient)\.?[ \t]*(?:name[ \t]*)?:?[ \t]+(?P<v>{WORD}(?:[ \t]+{WORD})?)", 0.6),
    ]
    CONTEXT = ["patient", "pt"]

    def refine(self, text: str, start: int, end: int, pattern: str) -> tuple[int, int] | None:
        if pattern == "Patient (introduced)":
            words = list(regex.finditer(r"[^\s,]+", text[start:end]))
            if not words or not all(name_word_ok(w.group().rstrip(".")) for w in words):
                return None
            return start, end
        return trim_name_words(text, start, end, strict=True)
