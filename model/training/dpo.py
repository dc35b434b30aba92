"""Preference tuning from nurses' overrides (DPO): the report consistent with the nurse's call is
preferred to the one the nurse overrode.

Starting from the SFT adapter (`init_adapter`), TRL keeps a frozen copy of it as the reference
model (a second adapter, "ref"), so no second base model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trl import DPOConfig, DPOTrainer

from model.training.common import RunOptions, run_trainer
from model.training.data import dpo_datasets


@dataclass
class DpoRunConfig(RunOptions, DPOConfig):
    """DPO of a LoRA adapter on (prompt, chosen, rejected) rows (TRL's DPOConfig plus the run options)."""

    max_length: int | None = field(default=2048, metadata={"help": "Longest prompt + completion, in tokens."})
    beta: float = field(default=0.1, metadata={"help": "Strength of the pull towards the reference model."})


def train(config: DpoRunConfig) -> Path:
    return run_trainer(DPOTrainer, config, dpo_datasets(config), stage="dpo")
