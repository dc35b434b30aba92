"""Supervised fine-tuning: history and symptoms -> preliminary report, on TRL's SFTTrainer + LoRA.

Loss on the assistant's turns only (`assistant_only_loss`): TRL swaps in its gpt-oss training
template (`gptoss_training.jinja`, the shipped harmony template with generation markers), so the
`thinking` of an example is trained as the analysis channel and its report as the final channel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trl import SFTConfig, SFTTrainer

from model.training.common import RunOptions, run_trainer
from model.training.data import chat_datasets


@dataclass
class SftRunConfig(RunOptions, SFTConfig):
    """SFT of a LoRA adapter on chat examples (TRL's SFTConfig plus the run options)."""

    assistant_only_loss: bool = field(
        default=True,
        metadata={"help": "Loss on the assistant's turns only (analysis and final channels), not on the prompt."},
    )
    max_length: int | None = field(
        default=2048, metadata={"help": "Longest tokenized example; longer ones are truncated (keep_start)."}
    )


def train(config: SftRunConfig) -> Path:
    return run_trainer(SFTTrainer, config, chat_datasets(config), stage="sft")
