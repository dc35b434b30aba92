"""Hospital, clinic and facility names: "St. Mary's Hospital", "Mercy Medical Center",
"Hopkins Clinic", "Mt. Sinai", "Denver General", "UCLA Med Ctr", "Hospital of ...".

Capitalised words before a facility noun; a determiner or generic adjective ("the clinic",
"an outpatient clinic") is not a name.
"""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.address import SUFFIX as STREET
from deidentify.recognizers.base import ClinicalPatternRecognizer

FACILITY = (
    r"(?:hospitals?|medical[ \t]+(?:center|centre|ctr|group|campus|college)|med[ \t]+(?:center|ctr)|med\b|clinics?"
    r"|health(?:care)?(?:[ \t]+(?:system|center|centre|network|partners|services|clinic))?|infirmary|sanatorium|hospice"
    r"|nursing[ \t]+(?:home|facility|center)|rehab(?:ilitation)?(?:[ \t]+(?:center|hospital|facility))?"
    r"|urgent[ \t]+care|emergency[ \t]+(?:center|department)|surgery[ \t]+center|surgical[ \t]+center|care[ \t]+center"
    r"|memorial|general|regional|presbyterian|methodist|baptist|adventist|lutheran|episcopal|children'?s|cancer[ \t]+(?:center|institute)"
    r"|institute|pavilion|physicians|associates|pediatrics|family[ \t]+practice|practice|pharmacy|laboratory|labs?"
    r"|university|VA|VAMC|center|centre)"
)
# Words that start a generic (non-name) facility mention.
GENERIC = (
    r"(?:the|a|an|our|this|that|his|her|their|your|my|same|local|outpatient|inpatient|community|rural|urban"
    r"|primary|private|public|teaching|general|regional|any|another|other|each|every|specialty|walk-in|free"
    r"|county|state|federal|acute|tertiary|academic|nearby|new|old|previous|current|and|or|of|at|in|to|from|by"
    r"|with|for|on|was|is|seen|admitted|treated|mental|dental|medical|pediatric|cardiology|oncology|eye|sleep"
    r"|pain|diabetes|heart|kidney|wound|weight|fertility|allergy|cancer|lung|memory|mayo)\b"
)
# Function words and note verbs never start or continue a name (matters in ALL CAPS text).
NOT_NAME = (
    r"(?:the|a|an|at|to|on|in|of|by|for|from|with|and|or|was|is|were|seen|admitted|treated|pt|patient"
    r"|transferred|discharged|referred|visit|visited|evaluated|follow|followed|up|per|via|s/p|c/o|hx)\b"
)
WORD = rf"(?!{NOT_NAME})(?-i:[A-Z])[\w'’&.-]*"


class FacilityRecognizer(ClinicalPatternRecognizer):
    ENTITY = "HOSPITAL"
    PATTERNS = [
        # Up to four capitalised words, the first not generic, then a facility noun.
        Pattern(
            "Facility (name + noun)",
            rf"\b(?!{GENERIC}){WORD}(?:[ \t]+(?:of[ \t]+|&[ \t]+|and[ \t]+)?{WORD}){{0,3}}[ \t]+{FACILITY}\b(?:[ \t]+(?-i:[A-Z])[\w]+)?",
            0.75,
        ),
        # Saint / Mount names with or without the noun: St. Vincent's, Mt. Sinai, Saint Luke's
        Pattern("Facility (saint)", r"\b(?:st|saint|mt|mount)\.?[ \t]+(?-i:[A-Z])[\w'’-]+(?:[ \t]+(?-i:[A-Z])[\w'’-]+){0,3}", 0.8),
        # Hospital/University of <Name>, Hospital for Special Surgery
        Pattern("Facility (noun of name)", rf"\b(?:hospital|university|clinic|medical[ \t]+center)[ \t]+(?:of|for)[ \t]+(?:the[ \t]+)?{WORD}(?:[ \t]+{WORD}){{0,3}}", 0.75),
        # "the county hospital", "City General Hospital", "General Hospital" (a town's own hospital)
        Pattern("Facility (county/city)", r"\b(?:county|city)[ \t]+(?:general[ \t]+)?(?:hospital|hosp\b\.?|medical[ \t]+center)", 0.6),
        Pattern("Facility (General Hospital)", r"\b(?-i:General)[ \t]+(?:hospital|hosp\b\.?)", 0.7),
        # "our 5th Avenue clinic": a street name before a facility noun
        Pattern("Facility (street)", rf"\b\d{{1,5}}(?:st|nd|rd|th)?[ \t]+(?:[a-z]+[ \t]+)?{STREET}[ \t]+(?:clinic|hospital|office|center|centre|practice)\b", 0.7),
        # Hyphenated names of well-known form: Cedars-Sinai, Wake Forest-Baptist, NewYork-Presbyterian
        Pattern("Facility (hyphenated)", r"\b(?-i:[A-Z][a-z]+)-(?:sinai|presbyterian|baptist|methodist|lutheran)\b", 0.8),
    ]
    CONTEXT = ["hospital", "clinic", "center", "admitted", "seen at"]
