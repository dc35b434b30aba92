"""DEA registration numbers: 2 letters + 7 digits with the DEA check digit."""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import ClinicalPatternRecognizer


def dea_is_valid(value: str) -> bool:
    value = value.strip().upper()
    if len(value) != 9 or not value[:2].isalpha() and not (value[0].isalpha() and value[1] == "9"):
        return False
    d = value[2:]
    if not d.isdigit():
        return False
    n = [int(c) for c in d]
    check = (n[0] + n[2] + n[4]) + 2 * (n[1] + n[3] + n[5])
    return check % 10 == n[6]


class DeaRecognizer(ClinicalPatternRecognizer):
    ENTITY = "DEA_NUMBER"
    # First letter: registrant type; second: registrant's surname initial (or 9).
    PATTERNS = [Pattern("DEA", r"(?<![\w-])[ABCDEFGHJKLMPRSTUX][A-Z9]\d{7}(?![\w-])", 0.4)]
    CONTEXT = ["dea"]

    def validate_result(self, pattern_text: str) -> bool:
        return dea_is_valid(pattern_text)
