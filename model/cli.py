"""`triage model ...`, `triage worker` and `triage dataset ...`.

Implementations are imported inside each command so the CLI starts without torch.
"""
from __future__ import annotations

import click


@click.group("model")
def model_group() -> None:
    """Build the tiny test model; train, evaluate and inspect adapters."""


@click.group("dataset")
def dataset() -> None:
    """Build de-identified fine-tuning datasets from clinic records."""


# `worker` (a click.Command) is defined below by the queue work.
