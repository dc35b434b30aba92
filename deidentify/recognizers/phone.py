"""US phone and fax numbers in the common written forms."""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import LABEL_SEP, ClinicalPatternRecognizer

EXT = r"(?:[ \t]*(?:x|ext\.?|extension)[ \t]*\d{1,5})?"
LABEL = r"(?:phone|tel|telephone|cell|mobile|fax|facsimile|pager|beeper|home|work|contact|call|ph|c|h|w|f)"


class PhoneRecognizer(ClinicalPatternRecognizer):
    ENTITY = "PHONE_NUMBER"
    PATTERNS = [
        # (555) 123-4567, 555-123-4567, 555.123.4567, 555 123 4567, +1 555 123 4567, 1-800-...
        Pattern(
            "Phone (10 digit)",
            rf"(?<![\w-])(?:\+?1[ \t.-]?)?(?:\(\d{{3}}\)[ \t]?|\d{{3}}([ \t./-]))\d{{3}}(?(1)\1|[ \t.-])\d{{4}}{EXT}(?![\w-])",
            0.7,
        ),
        Pattern("Phone (labelled digits)", rf"(?<=\b{LABEL}{LABEL_SEP})(?:\+?1)?\d{{10}}{EXT}\b", 0.9),
        Pattern("Phone (labelled 7 digit)", rf"(?<=\b{LABEL}{LABEL_SEP})\d{{3}}[ .-]\d{{4}}{EXT}\b", 0.9),
        # 555-0199: seven digits, dashed, not a time range or a volume range ("800-1000 ml")
        Pattern("Phone (7 digit)", r"(?<![\w/.-])[2-9]\d{2}-\d{4}(?![\w/-]|[.,]\d|[ \t]*(?:ml|cc|mg|mcg|units?|kcal|cal|g|kg|l)\b)", 0.5),
        Pattern("Phone (international)", r"(?<![\w+])\+\d{1,3}(?:[ \t.-]\d{2,4}){2,4}(?![\w-])", 0.6),
    ]
    CONTEXT = ["phone", "fax", "tel", "call", "cell"]
