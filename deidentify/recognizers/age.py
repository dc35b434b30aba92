"""Ages over 89 (Safe Harbor aggregates them as 90+); younger ages are not identifiers."""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import ClinicalPatternRecognizer

AGE = r"(?:9\d|1[0-2]\d)"
UNIT = r"(?:y/?o\b|y\.o\.?|yrs?\b|years?\b|yr\b)"


class AgeOver89Recognizer(ClinicalPatternRecognizer):
    ENTITY = "AGE"
    PATTERNS = [
        # 94 yo, 94yo, 94-year-old, 94 y.o., 94 years old, 94 years of age, 94 yr old
        Pattern("Age (unit)", rf"(?<![\w.])({AGE})(?=[ \t]*-?[ \t]*{UNIT})", 0.9),
        # aged 92, age 92, age: 92, age of 92
        Pattern("Age (label)", rf"(?<=\b(?:aged?|age[ \t]+of|age:)[ \t]*){AGE}\b(?![.,]\d)", 0.9),
    ]
    CONTEXT = ["year", "old", "age", "yo"]
