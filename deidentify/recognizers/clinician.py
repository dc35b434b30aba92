"""Person names after a title ("Dr. Emily Clark", "Mr. James T.", "NP Jones") or before a
credential ("John Lee, MD", "Ann Wu RN"). The title is part of the span: "Dr." next to a
redacted name says nothing, and a name value often includes it.
"""
from __future__ import annotations

import regex
from presidio_analyzer import Pattern

from deidentify.recognizers.base import ClinicalPatternRecognizer, name_word_ok, trim_name_words

# A name token: Capitalised (Smith, O'Neil, McDonald, Smith-Jones) or an initial (J., J).
NAME = r"(?-i:[A-Z](?:[a-z]+|[A-Z]*[a-z]+)(?:['’-][A-Z]?[a-z]+)*)"
# In ALL CAPS a name run stops at function words and note verbs ("DR SMITH AT MERCY").
NOT_NAME = (
    r"(?:AT|TO|ON|IN|OF|BY|FOR|FROM|WITH|AND|OR|WAS|IS|ARE|WERE|HAS|HAD|THE|SEEN|SAW|SAYS|STATES"
    r"|REPORTS|NOTED|CALLED|ORDERED|AWARE|NOTIFIED|UPDATED|PAGED|RE|PER|VIA|TODAY|YESTERDAY)"
)
CAPS_NAME = rf"(?-i:(?!{NOT_NAME}\b)[A-Z]{{2,}}(?:['’-][A-Z]+)*)"
INITIAL = r"(?-i:[A-Z])(?:\.|(?![\w'’]))"
STRONG_TITLE = r"(?:dr|doctor|mr|mrs|ms|miss|mx|prof|professor)"
WEAK_TITLE = r"(?-i:NP|RN|PA|PA-C|APRN|LPN|CNA|Nurse|nurse|Pt|pt|Patient|patient|Provider|provider|Attending|attending)"
# Titles written in any case before a name ("np opmans", "RN Jurgen", "pa k. lind").
ANY_CASE_TITLE = r"(?:np|rn|pa|pa-c|aprn|crna|nurse|resident|fellow|attending|intern|hospitalist|surgeon)"
ANY_WORD = r"[A-Za-z][A-Za-z'’-]*\.?"
CREDENTIAL = r"(?-i:MD|M\.D\.|DO|D\.O\.|RN|R\.N\.|NP|PA-C|PA|APRN|FNP|FNP-C|CNP|DNP|PhD|LPN|CNA|CRNA|DPM|DDS|PharmD|MSN|BSN)"


def _run(token: str) -> str:
    # 1-3 name tokens or initials on one line
    return rf"(?:{token}|{INITIAL})(?:[ \t]+(?:{token}|{INITIAL})){{0,2}}"


class ClinicianNameRecognizer(ClinicalPatternRecognizer):
    ENTITY = "PERSON"
    PATTERNS = [  # noqa: RUF012
        Pattern("Name (strong title)", rf"\b{STRONG_TITLE}\.?[ \t]+(?:{_run(NAME)}|{_run(CAPS_NAME)})", 0.85),
        Pattern("Name (weak title)", rf"\b{WEAK_TITLE}\.?:?[ \t]+(?!(?-i:Has|Is|Was|Will|With|The|Reports|Denies|States|Presents|Seen|Admitted)\b){_run(NAME)}", 0.6),
        Pattern("Name (credential)", rf"\b(?:{NAME}|{CAPS_NAME})(?:[ \t]+(?:{NAME}|{CAPS_NAME}|{INITIAL})){{1,2}}(?=,?[ \t]+{CREDENTIAL}\b)", 0.8),
        # any letter case: "spoke with dr hale", "mrs quinn back from cath lab", "np opmans",
        # "per DR DRUBIN"; the words kept are name-like (`refine`)
        Pattern("Name (title, any case)", rf"\b(?:{STRONG_TITLE}|{ANY_CASE_TITLE})\.?:?[ \t]+(?P<v>{ANY_WORD}(?:[ \t]+{ANY_WORD}){{0,2}})", 0.8),
        # "borjesson md", "lether MD", "ann wu, rn": one or two name-like words before a credential
        Pattern("Name (credential, any case)", rf"(?<![\w'’])(?P<v>{ANY_WORD}(?:[ \t]+{ANY_WORD})?)(?=,?[ \t]+(?:md|np|rn|pa-c|do|aprn|crna|lpn)\b(?![/-]|\.\w))", 0.7),
    ]
    CONTEXT = ["dr", "doctor", "md", "rn", "np"]

    def refine(self, text: str, start: int, end: int, pattern: str) -> tuple[int, int] | None:
        if pattern == "Name (title, any case)":
            return trim_name_words(text, start, end)
        if pattern == "Name (credential, any case)":
            # keep the trailing name-like words just before the credential
            words = list(regex.finditer(r"\S+", text[start:end]))
            while words and not all(name_word_ok(w.group().rstrip(".,"), strict=True) for w in words):
                words = words[1:]
            return (start + words[0].start(), end) if words else None
        return start, end
