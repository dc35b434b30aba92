"""`Deidentifier`: one object holding the key, the scrubber and the date-shift policy.

The hook path, `triage deid fhir` and the dataset builder all go through it, so the same key gives
the same pseudonyms and shifts everywhere. The key itself is never exposed: not in repr, logs,
exceptions or outputs; `fingerprint` identifies it safely.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fhir_adapter.record import PatientRecord

from .pseudonym import DEFAULT_SHIFT_RANGE, Pseudonymizer, demo_key, load_key
from .record import DeidentifiedRecord
from .structured import RESTRICTED_ZIP3, Scrubber, deidentify_record


class Deidentifier:
    def __init__(self, key: bytes, *, scrubber: Scrubber | None = None,
                 shift_range: tuple[int, int] = DEFAULT_SHIFT_RANGE,
                 restricted_zip3: frozenset[str] = RESTRICTED_ZIP3) -> None:
        self._pseudonymizer = Pseudonymizer(key, shift_range=shift_range)
        self.scrubber = scrubber
        # Called with each DeidentifiedRecord made (counts for metrics); never with PHI, and an
        # observer's failure never fails the record.
        self.observers: list[Callable[[DeidentifiedRecord], None]] = []
        self.restricted_zip3 = restricted_zip3

    @classmethod
    def from_config(cls, key_file: str | Path | None, *, demo_instance_dir: Path | None = None,
                    scrubber: Scrubber | None = None,
                    shift_range: tuple[int, int] = DEFAULT_SHIFT_RANGE) -> Deidentifier:
        """Key from `key_file` or TRIAGE_PSEUDONYM_KEY_FILE; the embedded demo (and only it)
        passes `demo_instance_dir` to make and keep its own key when none is configured."""
        if key_file is None and demo_instance_dir is not None:
            from .pseudonym import KEY_ENV
            import os

            if not os.environ.get(KEY_ENV):
                return cls(demo_key(demo_instance_dir), scrubber=scrubber, shift_range=shift_range)
        return cls(load_key(key_file), scrubber=scrubber, shift_range=shift_range)

    @property
    def fingerprint(self) -> str:
        return self._pseudonymizer.fingerprint

    @property
    def pseudonymizer(self) -> Pseudonymizer:
        return self._pseudonymizer

    def __repr__(self) -> str:
        return f"Deidentifier(fingerprint={self.fingerprint!r}, scrubber={type(self.scrubber).__name__})"

    def __reduce__(self):
        raise TypeError("Deidentifier holds the pseudonym key and cannot be pickled")

    def pseudonym(self, kind: str, value: str) -> str:
        return self._pseudonymizer.pseudonym(kind, value)

    def patient_pseudonym(self, patient_id: str) -> str:
        """What the hook, `deid fhir` and dataset builds all call this patient."""
        return self._pseudonymizer.patient(patient_id)

    def record(self, record: PatientRecord) -> DeidentifiedRecord:
        out = deidentify_record(record, self._pseudonymizer, scrubber=self.scrubber,
                                restricted_zip3=self.restricted_zip3)
        for observe in self.observers:
            try:
                observe(out)
            except Exception:  # noqa: BLE001 - counting must not refuse a record
                pass
        return out

    def resource(self, resource: dict[str, Any]) -> dict[str, Any]:
        from .fhir import deidentify_resource

        return deidentify_resource(resource, self._pseudonymizer, scrubber=self.scrubber)

    def bundle(self, bundle: dict[str, Any]) -> dict[str, Any]:
        from .fhir import deidentify_bundle

        return deidentify_bundle(bundle, self._pseudonymizer, scrubber=self.scrubber)
