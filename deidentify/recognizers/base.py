"""Shared base: a PatternRecognizer whose PATTERNS, CONTEXT and ENTITY are class constants.

Context words that a pattern needs are written into the pattern itself (variable-length
look-behinds of the `regex` module), so a hit does not depend on the lemmatizer.
"""
from __future__ import annotations

from typing import ClassVar

from presidio_analyzer import Pattern, PatternRecognizer


class ClinicalPatternRecognizer(PatternRecognizer):
    ENTITY: ClassVar[str]
    PATTERNS: ClassVar[list[Pattern]]
    CONTEXT: ClassVar[list[str]] = []

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity=self.ENTITY,
            patterns=list(self.PATTERNS),
            context=list(self.CONTEXT),
            supported_language=supported_language,
            name=type(self).__name__,
        )


# Fragments shared by several recognizers.
MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|(?-i:May|MAY)|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
MONTH_FULL = (
    r"(?:january|february|march|april|(?-i:May|MAY)|june|july|august|september|october"
    r"|november|december)"
)
ORDINAL = r"(?:st|nd|rd|th)"
# An identifier value: starts alphanumeric (optionally '#'), contains a digit, 4+ characters.
ID_VALUE = r"#?(?=[A-Z0-9-]*\d)[A-Z0-9](?:[A-Z0-9]|-(?=[A-Z0-9])){3,}\b"
# Separator between a label and its value: "MRN: 123", "MRN #123", "MRN is 123", "MRN of 123".
LABEL_SEP = r"[ \t]*(?:(?:is|was|of|number|no\.?|num|#)[ \t]*)?[:#.]?[ \t]*(?:is[ \t]+)?"
US_STATES = (
    r"(?-i:AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV"
    r"|NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR)"
)
