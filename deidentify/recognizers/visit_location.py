"""The place after a visit verb: "seen at Cedar Crest on ...", "transferred to Glenview".

The capitalised words that follow "seen/treated/admitted/... at/to/in/from" name a facility or a
town in clinical text; the guard words stop the run at dates and prepositions.
"""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import MONTH, ClinicalPatternRecognizer

VERB = (
    r"(?:seen|treated|admitted|evaluated|operated|visited|discharged|transferred|followed|referred"
    r"|hospitalized|hospitalised|presented|presenting|examined|managed|diagnosed|delivered|born|lives|living|resides|residing"
    r"|moved|works|worked|tested|scanned|imaged|screened|vaccinated|immunized|consulted|biopsied|visit|visits|admission|stay|stayed|care|lives)"
)
STOP = rf"(?:(?-i:[A-Z]{{1,3}}[ \t]*\d)|least|risk|rest|home|time|times|night|baseline|bedside|monday|tuesday|wednesday|thursday|friday|saturday|sunday|on|in|at|for|with|and|or|by|from|the|last|this|next|{MONTH}|who|which|where|after|before|since|due|because|ER|ED|ICU)\b"
WORD = r"(?-i:[A-Z])[\w'’&.-]*"


class VisitLocationRecognizer(ClinicalPatternRecognizer):
    ENTITY = "LOCATION"
    PATTERNS = [
        Pattern(
            "Location (after visit verb)",
            rf"(?<=\b{VERB}[ \t]+(?:(?:at|to|in|from|near)[ \t]+)(?:the[ \t]+)?(?:our[ \t]+)?)(?!{STOP}){WORD}(?:[ \t]+(?:&[ \t]+)?(?!{STOP}){WORD}){{0,3}}",
            0.55,
        ),
        # "at UCSF", "@ Stanford", "at Johns Hopkins on ...": only on lines that also have
        # lower-case words (in ALL CAPS text everything after "AT" would look like a name).
        Pattern(
            "Location (after at)",
            rf"(?<=(?-i:[a-z]{{3}})[^\n]{{0,200}}?(?:\bat|@)[ \t]+(?:the[ \t]+)?)(?!{STOP}|(?-i:[A-Z][a-z]*[ \t]+(?:least|risk|rest|home|times?|night|baseline|bedside)\b)){WORD}(?:[ \t]+(?:&[ \t]+)?(?!{STOP}){WORD}){{0,3}}",
            0.5,
        ),
    ]
    CONTEXT = ["seen", "admitted", "treated"]
