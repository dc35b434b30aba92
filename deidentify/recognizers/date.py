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
NOT_DATE_AFTER = r"(?![ \t]*(?:ns\b|nss|normal|saline|strength|str|tab|tablet|cap|pill|dose|of[ \t]+a|inch|in\b|cup|pain|strength|murmur|scale|power|reflex|ratio|mg|ml|mcg|units?|%))"
# Words after which m-d and m/10 are dates: "on 7-8", "since 3/10", "last BM 1-10".
DATE_WORD = (
    r"(?:on|since|until|till|thru|through|from|dated|of|by|BM|done|due|last|next|starting|started|before|after|d/c'?d?"
    r"|changed|placed|removed|inserted|drawn|sent|obtained|performed|resumed|stopped|held|admitted|discharged"
    r"|cxr|ct|mri|echo|ekg|ecg|eeg|egd|labs|cx|culture|cultures)"
)
# Ordinals that count things, not days: "the 5th floor", "4th ICS", "the 3rd dose".
NOT_DAY = (
    r"floor|fl|ics|intercostal|dose|doses|time|times|day|week|month|year|grade|degree|percentile|toe|finger|digit"
    r"|rib|ventricle|nerve|cranial|trimester|attempt|episode|cycle|line|generation|decade|round|stage|order|heart"
)
NOT_DATE_BEFORE = r"(?<!(?:pain|score|strength|grade|murmur|rated|power|motor|reflexes|ratio|BP|blood[ \t]+pressure)[ \t]{0,3}(?:of[ \t]+|is[ \t]+|at[ \t]+|:[ \t]*|was[ \t]+)?)"


class ClinicalDateRecognizer(ClinicalPatternRecognizer):
    ENTITY = "DATE_TIME"
    PATTERNS = [
        Pattern("Date (m/d/y)", r"(?<![\w/.-])(?:0?[1-9]|1[0-2])([/.-])(?:0?[1-9]|[12]\d|3[01])\1(?:\d{4}|\d{2})(?![\w/-]|\.\d)", 0.9),
        Pattern("Date (ISO)", r"(?<![\w/.-])\d{4}([/-])(?:0?[1-9]|1[0-2])\1(?:0?[1-9]|[12]\d|3[01])(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?(?![\w/-])", 0.9),
        # m/d, except scores out of 5 and 10 ("pain 6/10", "4/5 strength") unless a date word precedes
        Pattern("Date (m/d)", rf"{NOT_DATE_BEFORE}(?<![\w/.-])(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01])(?<!/(?:10|5))(?![\w/-]|\.\d){NOT_DATE_AFTER}", 0.6),
        Pattern("Date (m/d after date word)", rf"(?<=\b{DATE_WORD}[ \t]+)(?:0?[1-9]|1[0-2])/(?:10|5)(?![\w/-]|\.\d)", 0.6),
        # m-d only after a date word: "on 7-8", "last BM 1-10" (a bare 7-8 is a range)
        Pattern("Date (m-d after date word)", rf"(?<=\b{DATE_WORD}[ \t]+)(?:0?[1-9]|1[0-2])-(?:0?[1-9]|[12]\d|3[01])(?![\w/-]|\.\d)", 0.6),
        # two-digit years after an apostrophe: "CABG x3 '92", "MI in '81"
        Pattern("Year (apostrophe)", r"(?<![\w'’])['’]\d{2}(?![\w'’])", 0.7),
        # ordinal days: "the 11th", "on the 3rd", "on 22nd" (not "the 5th floor", "4th ICS")
        Pattern("Date (ordinal day)", rf"(?<=\b(?:the|on|since|until|by|from)[ \t]+)(?:0?[1-9]|[12]\d|3[01]){ORDINAL}\b(?![ \t]*(?:{NOT_DAY})\b)", 0.6),
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
