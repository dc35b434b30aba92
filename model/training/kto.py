"""Preference tuning from every nurse decision (KTO): accepted reports are desirable, overridden ones
undesirable; no pairs needed, so every card with feedback counts."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trl import KTOConfig, KTOTrainer

from model.training.common import RunOptions, finish, load_tokenizer, model_and_peft
from model.training.data import kto_datasets


@dataclass
class KtoRunConfig(RunOptions, KTOConfig):
    """KTO of a LoRA adapter on (prompt, completion, label) rows (TRL's KTOConfig plus the run options)."""

    max_length: int | None = field(default=2048, metadata={"help": "Longest prompt + completion, in tokens."})


def train(config: KtoRunConfig) -> Path:
    train_ds, eval_ds = kto_datasets(config)
    model, peft_config = model_and_peft(config)
    trainer = KTOTrainer(
        model=model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=load_tokenizer(config),
        peft_config=peft_config,
    )
    trainer.train()
    counts = {"train": len(train_ds), "eval": len(eval_ds) if eval_ds is not None else 0,
              "desirable": sum(bool(x) for x in train_ds["label"])}
    counts["undesirable"] = counts["train"] - counts["desirable"]
    return finish(trainer, config, stage="kto", dataset_counts=counts)
