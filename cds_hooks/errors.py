"""Errors whose message we wrote ourselves and that are safe to send back (no PHI, no values)."""
from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str | None = None) -> None:
        super().__init__(message or error)
        self.status = status
        self.error = error
        self.message = message


class PreconditionFailed(ApiError):
    """CDS Hooks 412: required FHIR data is neither prefetched nor fetchable."""

    def __init__(self, message: str) -> None:
        super().__init__(412, "precondition_failed", message)
