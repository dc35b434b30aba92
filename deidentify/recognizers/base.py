"""Shared base: a PatternRecognizer whose PATTERNS, CONTEXT and ENTITY are class constants.

A subclass may define `refine(text, start, end, pattern_name) -> (start, end) | None` to trim or
reject a match by word lists (the vocabulary veto); patterns stay data.

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
        refine = getattr(self, "refine", None)
        for pattern, rx in compiled:
            grouped = "v" in rx.groupindex
            # with `refine`, a match that refine trims must not hide the next one: overlapped
            for m in rx.finditer(text, overlapped=refine is not None and grouped):
                start, end = m.span("v") if grouped else m.span()
                if refine is not None:  # the class trims or rejects a match (word lists)
                    got = refine(text, start, end, pattern.name)
                    if got is None:
                        continue
                    start, end = got
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
        results = EntityRecognizer.remove_duplicates(results)
        # a hit inside another hit of this recognizer adds nothing ("Jones" inside "NP Jones")
        return [r for r in results if not any(o is not r and o.start <= r.start and r.end <= o.end
                                              and (o.start, o.end) != (r.start, r.end) for o in results)]


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


def name_word_ok(word: str, *, strict: bool = False) -> bool:
    """A word after a title or a relation word can be a name: not a stop word, and not a vetoed
    word (clinical or common English) unless it is also a census name and `strict` is off."""
    from deidentify.casing import STOP_WORDS_SET, _is_in, word_classes
    from deidentify.recognizers.names import census_first_names, census_last_names
    from deidentify.vocabulary import clinical_vocabulary, veto_words

    w = word.lower().replace("’", "'").removesuffix("'s")
    if len(w) < 2 or not w[0].isalpha() or w in STOP_WORDS_SET() or w in NOT_NAME_WORDS or w in RELATION_WORDS:
        return False
    if w not in veto_words() and not _is_in(w, word_classes()[0]):  # English words (any form) that are not names
        return True
    if strict or w in clinical_vocabulary():
        return False
    return w in census_first_names() or w in census_last_names()


TITLE_WORDS = frozenset("dr doctor mr mrs ms miss np rn pa pa-c md aprn crna lpn nurse resident fellow attending".split())
RELATION_WORDS = frozenset(
    """daughter son wife husband spouse sister brother niece nephew mother mom father dad friend neighbor
    neighbour granddaughter grandson grandmother grandfather grandchild cousin aunt uncle partner fiance
    fiancee girlfriend boyfriend significant other so hcp hcpoa poa proxy guardian caregiver roommate
    sibling stepson stepdaughter""".split()
)
# Note verbs and words that follow a title or a relation word and are not names.
NOT_NAME_WORDS = frozenset(
    """aware notified paged called updated here present bedside visited visiting phoned states stated
    reports reported says said will would wants wanted at in on to by with and or from via per re
    the a an is was has had are were be been feels felt asked requested came left arrived gave given
    plans planned agrees agreed informed notes noted ordered spoke discussed d/w made signed consent
    consented available unavailable involved pt patient family md rn np pa team service""".split()
)


def trim_name_words(text: str, start: int, end: int, *, strict: bool = False) -> tuple[int, int] | None:
    """Keep the leading run of name-like words of text[start:end] (see `name_word_ok`)."""
    import regex as _re

    last = None
    leading = True
    for m in _re.finditer(r"[^\s,;:()]+", text[start:end]):
        word = m.group().rstrip(".")
        if leading and word.lower() in TITLE_WORDS:  # "fellow np Persijn"
            continue
        leading = False
        if len(word) == 1 and word.isalpha():  # an initial
            last = start + m.end()
            continue
        if not name_word_ok(word, strict=strict):
            break
        last = start + m.start() + len(word)
    return (start, last) if last else None
