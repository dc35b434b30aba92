"""What replaces a found identifier: a typed placeholder, a consistent surrogate, or (for dates)
the same date shifted by the patient's offset and written in ISO form.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import string
from datetime import date, timedelta

PLACEHOLDERS = {
    "PERSON": "[NAME]",
    "LOCATION": "[LOCATION]",
    "ZIP_CODE": "[LOCATION]",
    "HOSPITAL": "[ORGANIZATION]",
    "ORGANIZATION": "[ORGANIZATION]",
    "DATE_TIME": "[DATE]",
    "AGE": "[AGE]",
    "PHONE_NUMBER": "[PHONE]",
    "EMAIL_ADDRESS": "[EMAIL]",
    "URL": "[URL]",
    "IP_ADDRESS": "[IP]",
    "US_SSN": "[ID]",
    "MEDICAL_RECORD_NUMBER": "[ID]",
    "ACCOUNT_NUMBER": "[ID]",
    "HEALTH_PLAN_NUMBER": "[ID]",
    "NPI": "[ID]",
    "DEA_NUMBER": "[ID]",
    "ID": "[ID]",
}
ID_TYPES = frozenset(k for k, v in PLACEHOLDERS.items() if v == "[ID]") | {"PHONE_NUMBER", "ZIP_CODE"}


def placeholder(entity_type: str) -> str:
    return PLACEHOLDERS.get(entity_type, "[REDACTED]")


# --- date shifting ---------------------------------------------------------------------------

_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december"]
_MON = r"(?P<mon>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
_DAY = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_YEAR = r"(?P<year>\d{4}|'\d{2})"
_DATE_FORMS = [
    re.compile(r"^(?P<m>\d{1,2})([/.-])(?P<d>\d{1,2})\2(?P<y>\d{4}|\d{2})$"),
    re.compile(r"^(?P<y>\d{4})([/-])(?P<m>\d{1,2})\2(?P<d>\d{1,2})(?:[T ].*)?$"),
    re.compile(r"^(?P<m>\d{1,2})/(?P<d>\d{1,2})$"),
    re.compile(rf"^{_MON}\s+(?:the\s+)?{_DAY}(?:,?\s*(?:of\s+)?{_YEAR})?$", re.I),
    re.compile(rf"^{_DAY}\s+(?:of\s+)?{_MON}(?:,?\s+{_YEAR})?$", re.I),
    re.compile(rf"^{_MON},?\s+(?:of\s+)?{_YEAR}$", re.I),
]
_NO_YEAR = 2000  # a leap year, so Feb 29 without a year still parses


def _year(y: str) -> int:
    y = y.lstrip("'")
    if len(y) == 4:
        return int(y)
    yy = int(y)
    return 2000 + yy if yy <= (date.today().year % 100) else 1900 + yy


def _month(name: str) -> int:
    name = name.lower().rstrip(".")
    return next(i for i, m in enumerate(_MONTHS, 1) if m.startswith(name[:3]))


def shift_date_text(value: str, days: int) -> str | None:
    """`value` shifted by `days`, re-written in a safe form; None if it cannot be parsed.

    Full dates -> ISO (YYYY-MM-DD); month and day -> "Month D"; month and year -> "Month YYYY"
    (the 15th is shifted, so whole-month precision is kept).
    """
    v = value.strip()
    for i, rx in enumerate(_DATE_FORMS):
        m = rx.match(v)
        if not m:
            continue
        g = m.groupdict()
        try:
            if i in (0, 1):
                d = date(_year(g["y"]), int(g["m"]), int(g["d"]))
                return (d + timedelta(days=days)).isoformat()
            if i == 2:
                d = date(_NO_YEAR, int(g["m"]), int(g["d"])) + timedelta(days=days)
                return f"{d.month}/{d.day}"
            if i in (3, 4):
                if g.get("year"):
                    d = date(_year(g["year"]), _month(g["mon"]), int(g["day"]))
                    return (d + timedelta(days=days)).isoformat()
                d = date(_NO_YEAR, _month(g["mon"]), int(g["day"])) + timedelta(days=days)
                return f"{_MONTHS[d.month - 1].capitalize()} {d.day}"
            d = date(_year(g["year"]), _month(g["mon"]), 15) + timedelta(days=days)
            return f"{_MONTHS[d.month - 1].capitalize()} {d.year}"
        except (ValueError, StopIteration):
            return None
    return None


# --- surrogates ------------------------------------------------------------------------------


class Surrogates:
    """Consistent fake values: the same (type family, value) under the same key gives the same
    surrogate; the key never appears in the output (values are HMAC-SHA256 derived)."""

    def __init__(self, key: bytes | str | None = None) -> None:
        if key is None:
            key = os.urandom(32)  # per-process: consistent within a run, unlinkable across runs
        self._key = key.encode() if isinstance(key, str) else key
        self._faker = None

    def _digest(self, family: str, value: str) -> bytes:
        norm = re.sub(r"[\W_]+", "", value.casefold())
        return hmac.new(self._key, f"{family}|{norm}".encode(), hashlib.sha256).digest()

    def _fake(self, seed: bytes):
        if self._faker is None:
            from faker import Faker

            self._faker = Faker("en_US")
        self._faker.seed_instance(int.from_bytes(seed[:8], "big"))
        return self._faker

    def replace(self, entity_type: str, value: str) -> str:
        if entity_type == "AGE":
            return "90+"
        if entity_type in ID_TYPES:
            return self._reshape(entity_type, value)
        family = {"HOSPITAL": "ORG", "ORGANIZATION": "ORG", "ZIP_CODE": "ID"}.get(entity_type, entity_type)
        seed = self._digest(family, value)
        if entity_type == "PERSON":
            f = self._fake(seed)
            n = len(value.split())
            out = f.last_name() if n == 1 else f"{f.first_name()} {f.last_name()}"
            return out.upper() if value.isupper() else out
        if entity_type in ("HOSPITAL", "ORGANIZATION"):
            return f"{self._fake(seed).last_name()} Medical Center"
        if entity_type == "LOCATION":
            return self._fake(seed).city()
        if entity_type == "EMAIL_ADDRESS":
            return f"user{seed.hex()[:8]}@example.org"
        if entity_type == "URL":
            return f"https://example.org/{seed.hex()[:8]}"
        if entity_type == "IP_ADDRESS":
            return f"192.0.2.{seed[0] % 254 + 1}"
        return placeholder(entity_type)

    def _reshape(self, entity_type: str, value: str) -> str:
        """Same shape (digits stay digits, letters stay letters, separators kept)."""
        stream = self._digest("ID", value) * 4
        out = []
        for i, c in enumerate(value):
            b = stream[i % len(stream)]
            if c.isdigit():
                out.append(str(b % 10))
            elif c.isalpha():
                letters = string.ascii_uppercase if c.isupper() else string.ascii_lowercase
                out.append(letters[b % 26])
            else:
                out.append(c)
        return "".join(out)
