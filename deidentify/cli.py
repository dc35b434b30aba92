"""`triage deid ...`: de-identification commands for data stewards and evaluation.

Each command imports its implementation lazily so the CLI starts fast.
"""
from __future__ import annotations

import click


@click.group("deid")
def deid() -> None:
    """De-identify free text and FHIR data; evaluate the de-identifier."""


# --- commands are added below: `scrub` and `evaluate` (free text), `fhir` (structured) -------
