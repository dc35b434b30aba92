"""Wards, units and hospitals named after places or people, found by the preposition before them,
in any letter case: "to Kessler 4 when bed available", "await bed on Lundh 7 North", "seen at GH on
7/18", "tx'd from Riverside Adventist", "came over from LKH". Words of the clinical vocabulary are
not names ("to OR", "from ED", "at HS", "on 4L NC"): see `deidentify.vocabulary`.
"""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import ClinicalPatternRecognizer

PREP = r"(?:to|on|from|at|via|@|into|onto|in|back[ \t]+to|bed[ \t]+on|tx'?d[ \t]+(?:to|from)|transferred[ \t]+(?:to|from)|transfer[ \t]+to)"
WORD = r"[A-Za-z][A-Za-z'’-]+"
CAP = r"(?-i:[A-Z][a-z'’-]+|[A-Z]{2,4}\b)"
HEAD = (
    r"(?:hospital|hosp|medical[ \t]+center|med[ \t]+ctr|regional|general|memorial|adventist|lutheran|methodist"
    r"|baptist|presbyterian|episcopal|community|clinic|infirmary|rehab|nursing[ \t]+home|health[ \t]+center)"
)
DIRECTION = r"(?:north|south|east|west|[NSEW]|tower|wing|pavilion)"
# Hospitals' initials: 2-4 capitals (GH, LKH, SJMC), only written in capitals.
ABBR = r"(?-i:[A-Z]{2,4})"
# Where a place name ends: punctuation, a line end, or a word that starts the next phrase.
END = r"(?=[ \t]*(?:[,.;:?!)(\n]|$|(?:on|in|at|for|with|when|w/|and|since|until|today|tonight|this|x|\d{1,2}/\d{1,2}|\d{1,2}-\d{1,2})\b))"


class WardRecognizer(ClinicalPatternRecognizer):
    ENTITY = "LOCATION"
    PATTERNS = [
        # Kessler 4, Lundh 7 North, Blake 12 West
        Pattern("Ward (name + number)", rf"\b{PREP}[ \t]+(?:the[ \t]+)?(?P<v>{WORD}(?:[ \t]+{WORD})?[ \t]+\d{{1,2}}(?:[ \t]+{DIRECTION})?)\b(?![/.:-]?\d)", 0.7),
        # "Jorlink 4th floor", "saint dierk's": a ward's floor, a saint's name in any case
        Pattern("Ward (name + floor)", rf"\b{PREP}[ \t]+(?:the[ \t]+)?(?P<v>{WORD}(?:[ \t]+{WORD})?)(?=[ \t]+\d{{1,2}}(?:st|nd|rd|th)?[ \t]+(?:floor|fl)\b)", 0.7),
        Pattern("Saint (any case)", r"\b(?:st\.?|saint)[ \t]+(?P<v>[A-Za-z][a-z'’-]*['’]s)\b", 0.7),
        # GH, LKH, SJMC after a place preposition, ending the phrase
        Pattern("Hospital initials", rf"\b{PREP}[ \t]+(?P<v>{ABBR}){END}", 0.6),
        # lower-case initials after "seen at"/"from" and before a date or the phrase's end: "seen at rkh on 8/9"
        Pattern("Hospital initials (lower case)", rf"\b(?:seen|treated|admitted|tx'?d|transferred|came)[ \t]+(?:at|from|to)[ \t]+(?P<v>(?-i:[a-z]{{2,4}})){END}", 0.5),
        # (LKH): a hospital's initials in brackets after a place
        Pattern("Hospital initials (bracketed)", rf"(?<=\b(?:ED|ER|hospital|center|general|regional|memorial)[ \t]*\()(?P<v>{ABBR})(?=\))", 0.6),
        # "tx'd from Riverside Adventist", "came over from Glen Oaks": capitalised words after a
        # transfer phrase (mixed-case text; ALL CAPS lines are re-cased first)
        Pattern("Place (after transfer)", rf"\b(?:tx'?d|transferred|transfer|came(?:[ \t]+over)?|sent|returned|arrived|brought|admitted|discharged|moved)[ \t]+(?:to|from|via)[ \t]+(?:the[ \t]+)?(?P<v>{CAP}(?:[ \t]+{CAP}){{0,3}})", 0.55),
        # "lives in haskerhorne", "at hotel in Roswinkel", "from gronsveld": home towns, any case
        Pattern("Town (after lives in)", rf"\b(?:lives|living|resides|residing|home|hotel|motel|staying|stays|lived|moved|originally|relocated)[ \t]+(?:alone[ \t]+)?(?:in|at|near|from|to)[ \t]+(?P<v>{WORD}(?:[ \t]+{WORD})?)", 0.6),
        # "haarlo regional medical center", "ederveen adventist clinic": a place before a facility head
        Pattern("Facility (any case)", rf"\b(?P<v>{WORD}(?:[ \t]+{WORD})?[ \t]+{HEAD}(?:[ \t]+{HEAD}){{0,2}})\b", 0.6),
    ]
    CONTEXT = ["transfer", "bed", "unit"]

    def refine(self, text: str, start: int, end: int, pattern: str) -> tuple[int, int] | None:
        from deidentify.vocabulary import is_setting_abbreviation, is_vetoed

        value = text[start:end]
        words = [w for w in value.split() if not w.isdigit()]
        if pattern in ("Town (after lives in)", "Facility (any case)"):
            import regex

            heads = regex.compile(rf"(?i:{HEAD})")
            words = value.split()
            if pattern == "Facility (any case)":
                # the words before the head; the first one must name something
                names = [w for w in words if not heads.fullmatch(w)]
                while names and (is_vetoed(names[0]) or names[0].lower() in _NOT_WARD):
                    start = text.index(names[1], start) if len(names) > 1 else end
                    names = names[1:]
                return (start, end) if names else None
            keep = []
            for w in words:
                if is_vetoed(w.rstrip(".,")) or w.lower() in _NOT_WARD:
                    break
                keep.append(w)
            return (start, start + len(" ".join(keep).rstrip(".,"))) if keep else None
        if pattern == "Place (after transfer)":
            words = value.split()
            while words and (is_vetoed(words[-1]) or words[-1].lower() in _NOT_WARD):
                words.pop()
            if not words or all(is_vetoed(w) for w in words):
                return None
            return start, start + len(" ".join(words)) if value.startswith(words[0]) else None
        if pattern == "Saint (any case)":
            import regex

            m = regex.search(r"(?i:\b(?:st\.?|saint)[ \t]+)$", text[max(0, start - 12):start])
            return (start - len(m.group()) if m else start), end
        if pattern in ("Ward (name + number)", "Ward (name + floor)"):
            # the first word names the ward; "to bed 4", "on room 12", "at 4L NC" are not places
            if is_vetoed(words[0]) or words[0].lower() in _NOT_WARD:
                return None
            return start, end
        from deidentify.vocabulary import medical_abbreviations

        # an English or clinical word is not initials, unless it is a medical abbreviation of
        # something other than a setting (GH: growth hormone, and a hospital's initials)
        if pattern == "Hospital initials (lower case)" and is_vetoed(value):
            return None
        if is_setting_abbreviation(value) or value.lower() in _NOT_WARD or value in _US_STATES or (
                is_vetoed(value) and value.upper() not in medical_abbreviations()):
            return None
        return start, end


_NOT_WARD = frozenset(
    """bed room rm floor level unit pod bay station stage grade step phase day days week weeks month
    months hour hours hr hrs min mins time times dose doses stat pt patient page ext x am pm ap""".split()
)
_US_STATES = frozenset(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC "
    "ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR US USA".split()
)
