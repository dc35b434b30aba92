"""National Provider Identifiers: 10 digits whose Luhn check over "80840" + the digits holds."""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import ClinicalPatternRecognizer


def npi_is_valid(value: str) -> bool:
    digits = [int(c) for c in value if c.isdigit()]
    if len(digits) != 10:
        return False
    total = 0
    for i, d in enumerate(reversed([8, 0, 8, 4, 0] + digits)):
        if i % 2 == 1:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return total % 10 == 0


class NpiRecognizer(ClinicalPatternRecognizer):
    ENTITY = "NPI"
    PATTERNS = [Pattern("NPI", r"(?<![\w-])\d{10}(?![\w-])", 0.3)]
    CONTEXT = ["npi", "provider"]

    def validate_result(self, pattern_text: str) -> bool:
        return npi_is_valid(pattern_text)
