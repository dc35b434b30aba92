"""Presidio's URL recognizer behind a cheap pre-check (its pattern is costly on long notes), keeping
only what is written as a web address: a scheme ("https://"), "www.", or a host under a common
generic or US top-level domain. Presidio's pattern alone takes any "word.xx" with a country-code
ending for a URL, which in notes is shorthand ("pt.in", "d/c'd foley.pt", "tol.po").
"""
from __future__ import annotations

import regex
from presidio_analyzer.predefined_recognizers import UrlRecognizer

_MAYBE_URL = regex.compile(r"://|www\.|\w\.(?:[a-z]{2,})\b", regex.IGNORECASE)
_WEB_ADDRESS = regex.compile(
    r"^(?:[a-z][a-z0-9+.-]*://|www\.)|\.(?:com|org|net|edu|gov|mil|int|io|info|health|us|biz)(?::\d+)?(?:[/?#]|$)",
    regex.IGNORECASE,
)


class FastUrlRecognizer(UrlRecognizer):
    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: D102
        if not _MAYBE_URL.search(text):
            return []
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in results if _WEB_ADDRESS.search(text[r.start:r.end])]
