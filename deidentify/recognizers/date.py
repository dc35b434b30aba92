"""Clinical date forms: 7/22, 7/22/93, 07-22-1993, 1993-07-22, Jan 3rd, January 3, 2020,
3 Jan 2020, March 2022, "last July", "last Thursday", and years next to birth context.

A year on its own is not an identifier under Safe Harbor ("diagnosed in 2019") and is kept.
"""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import MONTH, MONTH_FULL, ORDINAL, ClinicalPatternRecognizer

YEAR = r"(?:\d{4}|'\d{2})"
WEEKDAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
# m/d fractions that are not dates: "1/2 tablet", "3/10 pain", "5/5 strength", "2/6 murmur".
NOT_DATE_AFTER = r"(?![ \t]*(?:tab|tablet|cap|pill|dose|of[ \t]+a|inch|in\b|cup|pain|strength|murmur|scale|power|reflex|ratio|mg|ml|mcg|units?|%))"
NOT_DATE_BEFORE = r"(?<!(?:pain|score|strength|grade|murmur|rated|power|motor|reflexes|ratio|BP|blood[ \t]+pressure)[ \t]{0,3}(?:of[ \t]+|is[ \t]+|at[ \t]+|:[ \t]*|was[ \t]+)?)"


class ClinicalDateRecognizer(ClinicalPatternRecognizer):
    ENTITY = "DATE_TIME"
    PATTERNS = [
        Pattern("Date (m/d/y)", r"(?<![\w/.-])(?:0?[1-9]|1[0-2])([/.-])(?:0?[1-9]|[12]\d|3[01])\1(?:\d{4}|\d{2})(?![\w/-]|\.\d)", 0.9),
        Pattern("Date (ISO)", r"(?<![\w/.-])\d{4}([/-])(?:0?[1-9]|1[0-2])\1(?:0?[1-9]|[12]\d|3[01])(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?(?![\w/-])", 0.9),
        Pattern("Date (m/d)", rf"{NOT_DATE_BEFORE}(?<![\w/.-])(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01])(?![\w/-]|\.\d){NOT_DATE_AFTER}", 0.6),
        Pattern("Date (month d, y)", rf"\b{MONTH}\.?[ \t]+(?:the[ \t]+)?(?:0?[1-9]|[12]\d|3[01]){ORDINAL}?\b(?:,?[ \t]*(?:of[ \t]+)?{YEAR}\b)?", 0.85),
        Pattern("Date (d month y)", rf"\b(?:0?[1-9]|[12]\d|3[01]){ORDINAL}?[ \t]+(?:of[ \t]+)?{MONTH}\b\.?(?:,?[ \t]+{YEAR}\b)?", 0.85),
        Pattern("Date (month y)", rf"\b{MONTH}\.?,?[ \t]+(?:of[ \t]+)?{YEAR}\b", 0.8),
        Pattern("Date (d-mon-y)", rf"(?<![\w-])(?:0?[1-9]|[12]\d|3[01])-{MONTH}-(?:\d{{4}}|\d{{2}})(?![\w-])", 0.9),
        Pattern("Date (last month)", rf"\b(?:last|this|next|past)[ \t]+{MONTH_FULL}\b", 0.7),
        Pattern("Date (relative month)", rf"(?<=\b(?:early|late|mid|since|in|on|during|until|by|of|from)[ \t]+(?:early[ \t]+|late[ \t]+|mid-?)?){MONTH_FULL}\b", 0.6),
        Pattern("Date (weekday)", rf"\b(?:last|this|next|past)[ \t]+{WEEKDAY}\b", 0.6),
        Pattern("Date (on weekday)", rf"(?<=\b(?:on|since|until|by)[ \t]+){WEEKDAY}\b", 0.5),
        Pattern("Year (birth)", rf"(?<=\b(?:born|birth|b\.|dob|d\.o\.b\.?|date[ \t]+of[ \t]+birth|birth[ \t]*date|birth[ \t]+year|year[ \t]+of[ \t]+birth|yob)[ \t]*(?:in|on|:|-|was|is)?[ \t]*(?:in[ \t]+)?){YEAR}\b", 0.85),
    ]
    CONTEXT = ["date", "born", "dob", "seen", "admitted"]
