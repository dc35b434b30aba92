"""US Social Security numbers, including the dummy and invalid ones Presidio rejects.

Presidio's UsSsnRecognizer drops 123-45-6789, 000-/666-/9xx- areas and xx-00-/xxxx-0000 groups
as "not a real SSN"; a note that contains one still discloses what was typed, so keep them.
"""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import LABEL_SEP, ClinicalPatternRecognizer

LABEL = r"(?:SSN|SS#|SS|social[ \t]+security(?:[ \t]+(?:number|no\.?|#))?|soc[ \t]*sec)"


class SsnRecognizer(ClinicalPatternRecognizer):
    ENTITY = "US_SSN"
    PATTERNS = [
        Pattern("SSN (labelled)", rf"(?<=\b{LABEL}{LABEL_SEP})\d{{3}}[- .]?\d{{2}}[- .]?\d{{4}}\b", 0.95),
        Pattern("SSN (dashed)", r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])", 0.7),
        Pattern("SSN (spaced/dotted)", r"(?<![\w.])\d{3}([ .])\d{2}\1\d{4}(?![\w.])", 0.5),
    ]
    CONTEXT = ["ssn", "social security"]
