"""Presidio's URL recognizer behind a cheap pre-check (its pattern is costly on long notes)."""
from __future__ import annotations

import regex
from presidio_analyzer.predefined_recognizers import UrlRecognizer

_MAYBE_URL = regex.compile(r"://|www\.|\w\.(?:[a-z]{2,})\b", regex.IGNORECASE)


class FastUrlRecognizer(UrlRecognizer):
    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: D102
        if not _MAYBE_URL.search(text):
            return []
        return super().analyze(text, entities, nlp_artifacts, regex_flags)
