"""ZIP codes (5 or 9 digits) after a state or a ZIP label; ZIP+4 on its own."""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import US_STATES, ClinicalPatternRecognizer

STATE_NAMES = (
    r"(?:alabama|alaska|arizona|arkansas|california|colorado|connecticut|delaware|florida|georgia"
    r"|hawaii|idaho|illinois|indiana|iowa|kansas|kentucky|louisiana|maine|maryland|massachusetts"
    r"|michigan|minnesota|mississippi|missouri|montana|nebraska|nevada|new[ \t]+hampshire"
    r"|new[ \t]+jersey|new[ \t]+mexico|new[ \t]+york|north[ \t]+carolina|north[ \t]+dakota|ohio"
    r"|oklahoma|oregon|pennsylvania|rhode[ \t]+island|south[ \t]+carolina|south[ \t]+dakota"
    r"|tennessee|texas|utah|vermont|virginia|washington|west[ \t]+virginia|wisconsin|wyoming)"
)


class ZipCodeRecognizer(ClinicalPatternRecognizer):
    ENTITY = "ZIP_CODE"
    PATTERNS = [
        Pattern("ZIP (after state)", rf"(?<=\b(?:{US_STATES}|{STATE_NAMES})\.?,?[ \t]+)\d{{5}}(?:-\d{{4}})?\b", 0.85),
        Pattern("ZIP (labelled)", r"(?<=\b(?:zip|zip[ \t]*code|zipcode|postal[ \t]*code)[ \t]*[:#]?[ \t]*)\d{5}(?:-\d{4})?\b", 0.9),
        Pattern("ZIP+4", r"(?<![\w-])\d{5}-\d{4}(?![\w-])", 0.6),
    ]
    CONTEXT = ["zip", "postal"]
