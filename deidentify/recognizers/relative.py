"""Relatives' and proxies' names, found by the relation word next to them, in any letter case:
"daughter Ann at bedside", "son tom will call", "proxy is niece: Rosa", "Rosa (niece)",
"Tom, pt's son", "wife (Maria) here". Only name-like words are kept (`trim_name_words`).
"""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import ClinicalPatternRecognizer, trim_name_words

RELATION = (
    r"(?:daughter|son|wife|husband|spouse|sister|brother|niece|nephew|mother|mom|father|dad|friend"
    r"|neighbou?r|granddaughter|grandson|grandmother|grandfather|grandchild|cousin|aunt|uncle|partner"
    r"|fianc[eé]e?|girlfriend|boyfriend|significant[ \t]+other|(?-i:SO)|HCP|HCPOA|POA|proxy|guardian|caregiver"
    r"|step-?(?:son|daughter|mother|father)|in-law|daughter-in-law|son-in-law|roommate|sibling)"
)
TOKEN = r"[A-Za-z][A-Za-z'’-]*"  # no trailing period: "father Rik. wife Ann" is two names
NAME2 = rf"{TOKEN}(?:[ \t]+{TOKEN})?"


class RelativeNameRecognizer(ClinicalPatternRecognizer):
    ENTITY = "PERSON"
    PATTERNS = [
        # daughter Ann / proxy is niece: Rosa / wife (Maria) / HCP: Rosa / son named Tom
        Pattern("Relative (after relation)",
                rf"(?<![\w'’]){RELATION}\b(?:'s)?[ \t]*(?:is|named|name[ \t]+is)?[ \t]*(?:(?:the|pt'?s|his|her|a)[ \t]+)?(?:{RELATION}\b[ \t]*)?[:(,-]?[ \t]*(?P<v>{NAME2})", 0.8),
        # Rosa (niece) / Rosa (pt's daughter) / Rosa, pt's son / Rosa - daughter
        Pattern("Relative (before relation)",
                rf"(?<![\w'’])(?P<v>{NAME2})[ \t]*(?:\([ \t]*|,[ \t]*|[ \t]-[ \t]*)(?:the[ \t]+)?(?:pt'?s[ \t]+|patient'?s[ \t]+|his[ \t]+|her[ \t]+)?{RELATION}\b", 0.75),
    ]
    CONTEXT = ["daughter", "son", "wife", "husband", "proxy"]

    def refine(self, text: str, start: int, end: int, pattern: str) -> tuple[int, int] | None:
        if pattern == "Relative (before relation)":
            # keep the trailing name words before the relation: "visited by Rosa (niece)"
            words = text[start:end].split()
            while words and not _ok_tail(words):
                start = text.index(words[1], start) if len(words) > 1 else end
                words = words[1:]
            return trim_name_words(text, start, end) if words else None
        return trim_name_words(text, start, end)


def _ok_tail(words: list[str]) -> bool:
    from deidentify.recognizers.base import name_word_ok

    return all(name_word_ok(w.rstrip(".")) for w in words)
