"""Continual pre-training on de-identified clinic text: SFT on plain text, packed, loss on every token.

The text is a row's `text` (the seed format) or, for chat examples from `triage dataset build`,
their messages' contents: the same de-identified, leak-checked records, read as prose.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trl import SFTConfig, SFTTrainer

from model.training.common import RunOptions, run_trainer
from model.training.data import text_datasets


@dataclass
class CptRunConfig(RunOptions, SFTConfig):
    """Continual pre-training of a LoRA adapter on plain text (TRL's SFTConfig plus the run options)."""

    packing: bool = field(
        default=True, metadata={"help": "Pack texts into max_length blocks (no padding, no wasted tokens)."}
    )
    dataset_text_field: str = field(default="text", metadata={"help": "Column of plain text."})
    max_length: int | None = field(default=2048, metadata={"help": "Block length of packed sequences."})
    assistant_only_loss: bool = field(default=False, metadata={"help": "Must stay false: plain text has no turns."})
    completion_only_loss: bool | None = field(default=False, metadata={"help": "Must stay false: loss on all text."})


def train(config: CptRunConfig) -> Path:
    return run_trainer(SFTTrainer, config, text_datasets(config), stage="cpt")
