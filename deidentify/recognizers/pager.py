"""Pager and beeper numbers ("Pager 4471", "PG 23456", "beeper #3321", "pgr: 5-1234") and
in-house extensions ("x4-5521", "ext 2231"): short numbers that only their label makes PHI."""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import ClinicalPatternRecognizer

LABEL = r"(?:pager|pgr|pg|beeper|bpr|bleep|p\#|pager[ \t]*\#|pg\#|ext\.?|extension|x)"


class PagerRecognizer(ClinicalPatternRecognizer):
    ENTITY = "PHONE_NUMBER"
    PATTERNS = [
        Pattern("Pager (labelled)", rf"\b{LABEL}[ \t]*(?:no\.?|number|num)?[ \t]*[:#]?[ \t]*(?P<v>\d{{1,2}}-?\d{{3,5}})\b(?![.,]\d)", 0.8),
    ]
    CONTEXT = ["pager", "beeper"]

    def refine(self, text: str, start: int, end: int, pattern: str) -> tuple[int, int] | None:
        # "x3" (times three) and "x 10 days" are counts, not extensions: an extension has 4+ digits
        label_start = text.rfind(" ", 0, max(0, start - 1)) + 1
        label = text[label_start:start].strip().lower()
        if label in ("x", "x:") and "-" not in text[start:end]:
            return None  # "x 1000": a count; an extension after a bare x is written x4-5521
        if label in ("ext", "ext.") and sum(c.isdigit() for c in text[start:end]) < 4:
            return None
        return start, end
