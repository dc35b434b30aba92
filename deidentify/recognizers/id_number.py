"""Other identifiers: labelled ids (license, certificate, reference, device) and id-shaped codes.

Shape-only patterns (a letter prefix with 4+ digits, 6+ plain digits, digit groups) score lower
than labelled ones; a bare run of 6+ digits is rarely anything but an identifier in a note.
"""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import ID_VALUE, LABEL_SEP_FWD, ClinicalPatternRecognizer

LABEL = (
    r"(?:id|identifier|license|licence|certificate|cert|ref|reference|serial|device|badge|employee"
    r"|vehicle|plate|VIN|passport|driver'?s?[ \t]+license|DL|rx|prescription|specimen|accession|order|ticket)"
)


class IdNumberRecognizer(ClinicalPatternRecognizer):
    ENTITY = "ID"
    PATTERNS = [
        Pattern("Id (labelled)", rf"\b{LABEL}[ \t]*(?:number|no\.?|num|id|#)??{LABEL_SEP_FWD}(?P<v>{ID_VALUE})", 0.85),
        # AB-123456, #XY-654321, RX-87654321, LA15234
        Pattern("Id (letter prefix)", r"(?<![\w.-])#?[A-Z]{1,5}-?\d{4,}[A-Z]{0,3}(?![\w-])", 0.6),
        # 87342GH, 12345-JHU, 12345A
        Pattern("Id (letter suffix)", r"(?<![\w.-])\d{4,}-?[A-Z]{1,4}(?![\w-])", 0.55),
        # 12345-678, 789-123-456, 99887-65432
        Pattern("Id (digit groups)", r"(?<![\w./-])\d{2,}(?:-\d{2,}){1,3}(?![\w/-]|\.\d)", 0.5),
        # 6+ plain digits
        Pattern("Id (digits)", r"(?<![\w.,/-])\d{6,}(?![\w/-]|[.,]\d)", 0.5),
    ]
    CONTEXT = ["id", "identifier", "license", "number"]

    def invalidate_result(self, pattern_text: str) -> bool:
        """Ranges, times and ratios are not identifiers: "95-98", "0700-1900", "18-22"."""
        groups = pattern_text.split("-")
        if len(groups) == 2 and all(g.isdigit() for g in groups):
            digits = sum(len(g) for g in groups)
            a, b = (int(g) for g in groups)
            times = all(len(g) == 4 and int(g[:2]) <= 24 and int(g[2:]) < 60 for g in groups)
            return digits < 6 or times or (len(groups[0]) == len(groups[1]) and a < b and digits <= 8 and b - a < a)
        return False
