"""Presidio's e-mail recognizer with offline domain validation.

Presidio validates with `tldextract.extract`, whose default extractor fetches the public suffix
list over the network on first use. This one reads only the snapshot bundled with tldextract.
"""
from __future__ import annotations

import tldextract
from presidio_analyzer.predefined_recognizers import EmailRecognizer

_EXTRACT = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


class OfflineEmailRecognizer(EmailRecognizer):
    def validate_result(self, pattern_text: str) -> bool:
        return _EXTRACT(pattern_text).fqdn != ""

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: D102
        # Presidio's pattern is costly on long notes; no "@" means no e-mail address.
        if "@" not in text:
            return []
        return super().analyze(text, entities, nlp_artifacts, regex_flags)
