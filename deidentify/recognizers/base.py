"""Shared base: a PatternRecognizer whose PATTERNS, CONTEXT and ENTITY are class constants.

Context words that a pattern needs are written into the pattern itself, so a hit does not
depend on the lemmatizer: either as a look-behind, or (cheaper: a look-behind is tried at every
position) as a forward match whose reported span is its named group `v` ("MRN: (?P<v>...)").
"""
from __future__ import annotations

from typing import ClassVar

import regex
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult


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
        self._compiled: dict[int, list[tuple[Pattern, regex.Pattern]]] = {}

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: D102
        """Presidio's pattern loop without its per-match explanation objects and timing, and
        with group `v` as the span when a pattern has one."""
        flags = regex_flags or self.global_regex_flags
        compiled = self._compiled.get(flags)
        if compiled is None:
            compiled = self._compiled[flags] = [(p, regex.compile(p.regex, flags)) for p in self.patterns]
        meta = {RecognizerResult.RECOGNIZER_NAME_KEY: self.name, RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}
        results = []
        for pattern, rx in compiled:
            grouped = "v" in rx.groupindex
            for m in rx.finditer(text):
                start, end = m.span("v") if grouped else m.span()
                if start >= end:
                    continue
                value = text[start:end]
                score = pattern.score
                valid = self.validate_result(value)
                if valid is not None:
                    score = EntityRecognizer.MAX_SCORE if valid else EntityRecognizer.MIN_SCORE
                if self.invalidate_result(value):
                    score = EntityRecognizer.MIN_SCORE
                if score > EntityRecognizer.MIN_SCORE:
                    results.append(RecognizerResult(self.supported_entities[0], start, end, score,
                                                    recognition_metadata=dict(meta)))
        return EntityRecognizer.remove_duplicates(results)


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
# The same, lazy, for forward patterns: a "#" before the value stays part of the value.
LABEL_SEP_FWD = r"[ \t]*(?:(?:is|was|of|number|no\.?|num|#)[ \t]*)??[:#.]??[ \t]*(?:is[ \t]+)?"
US_STATES = (
    r"(?-i:AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV"
    r"|NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR)"
)
