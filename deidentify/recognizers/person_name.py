"""Person names that start with a common US first name: "Anna S.", "John D", "Mary Johnson".

The first-name list is Faker's en_US list (census-derived). It backs up spaCy's NER, which
misses short "First I." forms and most names in ALL CAPS; the name must still be followed by
a surname-shaped word or an initial, so "Grace" or "Bill" on their own are not flagged.
"""
from __future__ import annotations

from functools import lru_cache

from presidio_analyzer import Pattern

from deidentify.recognizers.base import ClinicalPatternRecognizer
from deidentify.recognizers.clinician import INITIAL, NAME, NOT_NAME


@lru_cache(maxsize=1)
def first_names() -> tuple[str, ...]:
    from faker.providers.person.en_US import Provider

    names = set(Provider.first_names_female) | set(Provider.first_names_male)
    return tuple(sorted((n for n in names if len(n) >= 3 and n.isalpha()), key=len, reverse=True))


def _first_name_regex() -> str:
    names = first_names()
    mixed = "|".join(names)
    caps = "|".join(n.upper() for n in names)
    return rf"(?-i:(?:{mixed}|{caps}))"


NOT_FIRST = (
    r"(?:vitamin|hepatitis|type|group|stage|class|grade|factor|lead|phase|strep|influenza|protein"
    r"|complex|plan|option|section|appendix|figure|table|schedule|part|level|zone|category|cluster"
    r"|cohort|arm|step|tier|list|form|unit|ward|room|bed|floor|wing|building|pod|team|antigen|panel)"
)


class FirstNameRecognizer(ClinicalPatternRecognizer):
    ENTITY = "PERSON"
    CONTEXT = ["patient", "name"]

    def __init__(self, supported_language: str = "en") -> None:
        first = _first_name_regex()
        caps_surname = rf"(?-i:(?!{NOT_NAME}\b)[A-Z]{{2,}}(?:['’-][A-Z]+)*)"
        type(self).PATTERNS = [
            Pattern("Name (first + initial)", rf"\b{first}[ \t]+{INITIAL}", 0.7),
            # "Anne-Marie B.", "Sam J.": any capitalised word + initial, except medical heads
            Pattern(
                "Name (word + initial)",
                rf"\b(?!{NOT_FIRST}\b)(?-i:[A-Z][a-z]+(?:-[A-Z][a-z]+)?)[ \t]+(?-i:[A-Z])\.(?![\w])",
                0.55,
            ),
            Pattern("Name (first + surname)", rf"\b{first}(?:[ \t]+{INITIAL})?[ \t]+(?:{NAME}|{caps_surname})\b", 0.6),
        ]
        super().__init__(supported_language)
