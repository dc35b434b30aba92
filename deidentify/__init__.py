"""De-identification: HIPAA Safe Harbor for FHIR and free text; the only maker of DeidentifiedRecord."""
from __future__ import annotations

from .deidentifier import Deidentifier
from .leaks import LeakDetected
from .pseudonym import MissingKeyError, load_key
from .record import DeidentifiedRecord

__all__ = ["Deidentifier", "DeidentifiedRecord", "LeakDetected", "MissingKeyError", "load_key"]
