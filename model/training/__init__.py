"""Fine-tuning stages on TRL and PEFT: continual pre-training, SFT, DPO and KTO.

One module per stage (`cpt`, `sft`, `dpo`, `kto`), each with its config dataclass (TRL's config
plus `common.RunOptions`: base model, LoRA, inputs) and its `train(config)`. `common` loads the
model and the data and saves the adapter with its resolved config and model card.
"""
