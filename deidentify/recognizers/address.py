"""Street addresses ("123 Elm St, Springfield", "45 Oak Avenue Apt 3B") and "City, ST"."""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import US_STATES, ClinicalPatternRecognizer

SUFFIX = (
    r"(?:st|street|ave|avenue|rd|road|blvd|boulevard|dr|drive|ln|lane|way|ct|court|pl|place|pkwy"
    r"|parkway|hwy|highway|ter|terrace|cir|circle|sq|square|loop|trail|trl|pike|row|alley|crossing"
    r"|run|path|plaza|walk|expressway|route|rte)"
)
UNIT = r"(?:,?[ \t]*(?:apt|apartment|suite|ste|unit|fl|floor|rm|room|bldg|#)\.?[ \t]*#?[\w-]+)?"
CITY = r"(?-i:[A-Z][a-zA-Z.'-]+)(?:[ \t]+(?-i:[A-Z][a-zA-Z.'-]+)){0,2}"


class AddressRecognizer(ClinicalPatternRecognizer):
    ENTITY = "LOCATION"
    PATTERNS = [
        Pattern(
            "Street address",
            rf"\b\d{{1,6}}[ \t]+(?:[NSEW]\.?[ \t]+)?(?:(?-i:[A-Z0-9])[\w.'-]*[ \t]+){{1,4}}{SUFFIX}\b\.?{UNIT}(?:,[ \t]*{CITY})?",
            0.8,
        ),
        Pattern("PO box", r"\bp\.?[ \t]*o\.?[ \t]*box[ \t]+\d+\b", 0.8),
        Pattern("City, ST", rf"\b{CITY},[ \t]*{US_STATES}\b(?![\w-])", 0.75),
    ]
    CONTEXT = ["address", "lives", "street"]
