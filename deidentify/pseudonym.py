"""Pseudonym keys, keyed HMAC-SHA256 pseudonyms and per-patient date shifts.

A pseudonym is the first 128 bits of HMAC-SHA256(key, "pseudonym" | kind | value), written as a
UUID string (36 characters, lowercase hex). That shape is a valid FHIR `id` and a valid
`urn:uuid:` reference, so the same pseudonym serves `DeidentifiedRecord.pseudonym`, FHIR ids and
references alike. Resource ids use the kind "resource" (FHIR ids are unique across the types we
see, and `urn:uuid:` references do not name their type), so a patient's record pseudonym equals
its de-identified `Patient.id`; identifiers use "identifier|<system>".
Every use is domain-separated (pseudonyms, date shifts and the fingerprint use different labels),
so no output reveals another, and none reveals the key.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from pathlib import Path

KEY_ENV = "TRIAGE_PSEUDONYM_KEY_FILE"
MIN_KEY_BYTES = 32
DEMO_KEY_NAME = "pseudonym.key"
DEFAULT_SHIFT_RANGE = (1, 365)  # days back; never 0, so no date survives unshifted


class MissingKeyError(KeyError):
    """No usable pseudonym key. The message names the setting, never key material."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "pseudonym key missing"


def load_key(path: str | Path | None = None) -> bytes:
    """The key from `path`, else from the file named by TRIAGE_PSEUDONYM_KEY_FILE.

    The file's bytes are the key (a trailing newline is ignored); at least 32 bytes, e.g.
    `python -c "import secrets; print(secrets.token_hex(32))" > key`. Never a default.
    """
    source = path if path not in (None, "") else os.environ.get(KEY_ENV)
    if not source:
        raise MissingKeyError(
            f"no pseudonym key: set {KEY_ENV} to a key file (at least {MIN_KEY_BYTES} bytes) "
            "or pass --key-file"
        )
    p = Path(source)
    try:
        key = p.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise MissingKeyError(
            f"pseudonym key file {p} is unreadable ({exc.strerror or type(exc).__name__}); "
            f"check {KEY_ENV} or --key-file"
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise MissingKeyError(
            f"pseudonym key file {p} is too short: {MIN_KEY_BYTES} bytes at least "
            f"(check {KEY_ENV} or --key-file)"
        )
    return key


def demo_key(instance_dir: str | Path) -> bytes:
    """The embedded demo's own key: made once (mode 0600) in `instance_dir`, then reused."""
    d = Path(instance_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / DEMO_KEY_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_key(path)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    return load_key(path)


def _mac(key: bytes, *parts: str) -> bytes:
    msg = b"\x00".join(p.encode("utf-8") for p in parts)
    return hmac.new(key, msg, hashlib.sha256).digest()


def key_fingerprint(key: bytes) -> str:
    """16 hex characters identifying the key (safe for dataset cards and logs)."""
    return hashlib.sha256(_mac(key, "triage-cds", "key-fingerprint", "v1")).hexdigest()[:16]


class Pseudonymizer:
    """Keyed pseudonyms and date shifts. The key stays private: repr shows only the fingerprint."""

    __slots__ = ("__key", "_shift_lo", "_shift_hi", "fingerprint")

    def __init__(self, key: bytes, *, shift_range: tuple[int, int] = DEFAULT_SHIFT_RANGE) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
            raise MissingKeyError(f"pseudonym key must be at least {MIN_KEY_BYTES} bytes")
        lo, hi = int(shift_range[0]), int(shift_range[1])
        if not 1 <= lo <= hi:
            raise ValueError("shift_range must be (lo, hi) with 1 <= lo <= hi days")
        self.__key = bytes(key)
        self._shift_lo, self._shift_hi = lo, hi
        self.fingerprint = key_fingerprint(self.__key)

    def __repr__(self) -> str:
        return f"Pseudonymizer(fingerprint={self.fingerprint!r})"

    def __reduce__(self):  # never pickle the key into a queue or a file
        raise TypeError("Pseudonymizer cannot be pickled")

    def pseudonym(self, kind: str, value: str) -> str:
        """UUID-shaped 128-bit HMAC of `value` in the domain `kind` (e.g. "Patient")."""
        return str(uuid.UUID(bytes=_mac(self.__key, "pseudonym", kind, str(value))[:16]))

    def patient(self, patient_id: str) -> str:
        """The patient's pseudonym: the same as the pseudonymized Patient.id in de-identified FHIR
        (every resource id lives in the one "resource" domain, since urn:uuid references carry
        no type), so the hook, `deid fhir` and dataset builds all name a patient alike."""
        return self.pseudonym("resource", patient_id)

    def date_shift_days(self, patient_key: str) -> int:
        """The patient's offset in days, negative (dates move back), in -hi..-lo, never 0."""
        n = int.from_bytes(_mac(self.__key, "date-shift", str(patient_key))[:8], "big")
        return -(self._shift_lo + n % (self._shift_hi - self._shift_lo + 1))
