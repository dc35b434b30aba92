"""Preference tuning from every nurse decision (KTO): accepted reports are desirable, overridden ones
undesirable; no pairs needed, so every card with feedback counts."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trl import KTOConfig, KTOTrainer

from model.training.common import RunOptions, run_trainer
from model.training.data import kto_datasets


@dataclass
class KtoRunConfig(RunOptions, KTOConfig):
    """KTO of a LoRA adapter on (prompt, completion, label) rows (TRL's KTOConfig plus the run options)."""

    max_length: int | None = field(default=2048, metadata={"help": "Longest prompt + completion, in tokens."})


def train(config: KtoRunConfig) -> Path:
    train_ds, eval_ds = kto_datasets(config)
    desirable = sum(bool(x) for x in train_ds["label"])
    return run_trainer(KTOTrainer, config, (train_ds, eval_ds), stage="kto",
                       extra_counts={"desirable": desirable, "undesirable": len(train_ds) - desirable})
