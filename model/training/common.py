"""What every training stage shares: run options, the base model and LoRA, the inputs, and saving.

A stage's config is TRL's own config class (SFTConfig, DPOConfig, KTOConfig) plus `RunOptions`,
so every option is one dataclass field with a `help` string; `parse_stage_args` reads a YAML file
(`--config`) and lets command-line flags override it (TRL's `TrlParser`). The resolved config is
written beside the adapter (`training_config.yaml`) and can be run again as it is.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOAD_MODES = ("bf16", "mxfp4_dequantize", "nf4")
MODEL_DTYPES = ("auto", "bfloat16", "float32")
SEED_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
CONFIG_FILE = "training_config.yaml"


class TrainingConfigError(ValueError):
    """A training option or input is missing or invalid (one-line message)."""


@dataclass
class RunOptions:
    """Options of every stage beyond TRL's own: base model, loading, LoRA and inputs."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local directory of the base model (a bf16 or MXFP4 gpt-oss checkpoint, or the tiny test "
                          "model). Nothing is downloaded."},
    )
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Name of the base model recorded in the model card (e.g. openai/gpt-oss-20b); defaults to "
                          "the checkpoint's own name."},
    )
    base_model_revision: str | None = field(
        default=None,
        metadata={"help": "Revision (commit) of the base model recorded in the model card."},
    )
    init_adapter: str | None = field(
        default=None,
        metadata={"help": "Start from this stage's predecessor: a PEFT adapter folder (e.g. the SFT adapter for DPO). "
                          "Its LoRA settings are kept and the lora_* options are ignored."},
    )
    load_mode: str = field(
        default="bf16",
        metadata={"help": "How the base weights are held: bf16 (a bf16 checkpoint as is), mxfp4_dequantize (the "
                          "hub's MXFP4 checkpoint dequantized to bf16 at load, the published recipe, ~42 GB of "
                          "weights) or nf4 (QLoRA: bitsandbytes nf4 for attention and MoE experts, ~12.5 GB)."},
    )
    model_dtype: str = field(
        default="auto",
        metadata={"help": "dtype of the unquantized weights: auto (bf16 on GPU, float32 on CPU), bfloat16 or float32."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention kernel (e.g. eager, or kernels-community/vllm-flash-attn3 on Hopper); default: "
                          "the model's."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(SEED_TARGET_MODULES),
        metadata={"help": "Modules that get LoRA: names, or all-linear (in gpt-oss: q/k/v/o only; the experts are not "
                          "nn.Linear)."},
    )
    lora_target_parameters: list[str] | None = field(
        default=None,
        metadata={"help": "nn.Parameters that get LoRA (MoE experts), e.g. 7.mlp.experts.gate_up_proj "
                          "7.mlp.experts.down_proj."},
    )
    dataset_path: list[str] | None = field(
        default=None,
        metadata={"help": "Inputs: folders written by `triage dataset build` (their train/validation JSONL), or "
                          "JSONL files (`import-reasoning`, `feedback` exports). Several are concatenated."},
    )
    train_split: str = field(default="train", metadata={"help": "Split file read from a dataset folder for training."})
    eval_split: str | None = field(
        default="validation",
        metadata={"help": "Split file read from a dataset folder for evaluation (none: no evaluation)."},
    )
    max_train_examples: int | None = field(default=None, metadata={"help": "Use at most N training examples."})
    max_eval_examples: int | None = field(default=None, metadata={"help": "Use at most N evaluation examples."})
    reasoning_effort: str = field(
        default="low",
        metadata={"help": "harmony reasoning effort written in each example's system message (as at inference), "
                          "where the example does not set one."},
    )
    check_dataset: bool = field(
        default=True,
        metadata={"help": "SFT: run `triage dataset check` on every built dataset folder first (schema-valid targets, leaks, "
                          "split disjointness, token lengths against max_length with this model's tokenizer) and "
                          "refuse a folder that fails; false trains anyway."},
    )
    dataset_manifest: str | None = field(
        default=None,
        metadata={"help": "manifest.json of the training set, hashed into the model card; default: the first dataset "
                          "folder's manifest.json."},
    )

    def check_run_options(self) -> None:
        if isinstance(self.eval_split, str) and self.eval_split.lower() in ("", "none", "null"):
            self.eval_split = None  # from the command line: --eval_split none
        if not self.model_name_or_path:
            raise TrainingConfigError("model_name_or_path is required (a local model directory)")
        if not (Path(self.model_name_or_path) / "config.json").is_file():
            raise TrainingConfigError(f"model_name_or_path: no model at {self.model_name_or_path} (config.json missing)")
        if self.load_mode not in LOAD_MODES:
            raise TrainingConfigError(f"load_mode must be one of {', '.join(LOAD_MODES)} (got {self.load_mode!r})")
        if self.model_dtype not in MODEL_DTYPES:
            raise TrainingConfigError(f"model_dtype must be one of {', '.join(MODEL_DTYPES)} (got {self.model_dtype!r})")
        if self.init_adapter and not (Path(self.init_adapter) / "adapter_config.json").is_file():
            raise TrainingConfigError(f"init_adapter: no PEFT adapter at {self.init_adapter}")
        if not self.dataset_path:
            raise TrainingConfigError("dataset_path is required (a dataset folder or JSONL file)")
        for path in self.dataset_path:
            if not Path(path).exists():
                raise TrainingConfigError(f"dataset_path: {path} does not exist")
        if self.lora_r < 1:
            raise TrainingConfigError("lora_r must be >= 1")


# --- parsing ------------------------------------------------------------------------------------


def parse_stage_args(config_class: type, argv: list[str], *, check: bool = True) -> Any:
    """`--config FILE.yaml` then `--option value` flags -> one config instance (TRL's TrlParser).

    Any error is a TrainingConfigError with a one-line message (argparse would print usage and exit).
    """
    import argparse

    from trl import TrlParser

    class _Parser(TrlParser):
        def error(self, message: str) -> None:  # argparse's exit -> our one-line error
            raise TrainingConfigError(message)

    argv = list(argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise TrainingConfigError("--config needs a YAML file")
        path = Path(argv[i + 1])
        if not path.is_file():
            raise TrainingConfigError(f"--config: no such file {path}")
        try:
            import yaml

            data = yaml.safe_load(path.read_text())
        except Exception as exc:  # noqa: BLE001 - yaml raises several types
            raise TrainingConfigError(f"--config: {path} is not valid YAML ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise TrainingConfigError(f"--config: {path} must hold a mapping of option: value")
        known = {f.name for f in dataclasses.fields(config_class) if f.init} | {"env"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainingConfigError(f"--config: unknown options in {path}: {', '.join(unknown)}")
    parser = _Parser(dataclass_types=[config_class], allow_abbrev=False)
    try:
        (config,) = parser.parse_args_and_config(args=argv)
    except TrainingConfigError:
        raise
    except (ValueError, TypeError, argparse.ArgumentError) as exc:
        raise TrainingConfigError(" ".join(str(exc).split())[:300]) from None
    if check:  # paths exist, choices valid (off to read a shipped config on a machine without the model)
        config.check_run_options()
    return config


def resolved_config(config: Any) -> dict[str, Any]:
    """Every init field of the config with its final value (JSON-safe): what `--config` reads back."""
    raw = config.to_dict()
    names = [f.name for f in dataclasses.fields(config) if f.init]
    out = {}
    for name in names:
        if name not in raw or name.startswith("_"):
            continue
        value = raw[name]
        out[name] = json.loads(json.dumps(value, default=str))
    return out


def save_resolved_config(config: Any, out_dir: str | os.PathLike[str]) -> Path:
    import yaml

    path = Path(out_dir) / CONFIG_FILE
    path.write_text(yaml.safe_dump(resolved_config(config), sort_keys=True, allow_unicode=True))
    return path


# --- model --------------------------------------------------------------------------------------


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(opts: RunOptions, device: str):
    import torch

    if opts.model_dtype == "auto":
        return torch.bfloat16 if device == "cuda" or opts.load_mode != "bf16" else torch.float32
    return getattr(torch, opts.model_dtype)


def load_base_model(opts: RunOptions):
    """The base model as `load_mode` says; never `peft.prepare_model_for_kbit_training` (it would upcast the
    bf16 experts of gpt-oss to fp32, ~76 GB)."""
    from transformers import AutoModelForCausalLM

    device = _device()
    dtype = _dtype(opts, device)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if opts.attn_implementation:
        kwargs["attn_implementation"] = opts.attn_implementation
    if device == "cuda" and os.environ.get("ACCELERATE_USE_FSDP", "").lower() not in ("1", "true"):
        # one process per GPU (accelerate launch): this process's own device; FSDP places shards itself
        from accelerate import PartialState

        kwargs["device_map"] = {"": PartialState().local_process_index}
    if opts.load_mode == "nf4":
        from model.quantize import load_nf4

        kwargs.pop("dtype")
        device_map = kwargs.pop("device_map", {"": "cpu"})
        model = load_nf4(opts.model_name_or_path, device=next(iter(device_map.values())), compute_dtype=dtype, **kwargs)
    elif opts.load_mode == "mxfp4_dequantize":
        from model.quantize import mxfp4_config

        model = AutoModelForCausalLM.from_pretrained(
            opts.model_name_or_path, quantization_config=mxfp4_config(dequantize=True), **kwargs
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(opts.model_name_or_path, **kwargs)
    model.config.use_cache = False  # training; gradient checkpointing refuses the cache
    return model


def lora_config(opts: RunOptions, *, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    modules: Any = opts.lora_target_modules
    if modules == ["all-linear"]:
        modules = "all-linear"
    return LoraConfig(
        r=opts.lora_r,
        lora_alpha=opts.lora_alpha,
        lora_dropout=opts.lora_dropout,
        target_modules=modules,
        target_parameters=list(opts.lora_target_parameters) if opts.lora_target_parameters else None,
        bias="none",
        task_type=task_type,
    )


def model_and_peft(opts: RunOptions) -> tuple[Any, Any]:
    """(model, peft_config): a fresh LoRA config for the trainer, or the predecessor's adapter, trainable."""
    model = load_base_model(opts)
    if opts.init_adapter:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, opts.init_adapter, is_trainable=True), None
    return model, lora_config(opts)


def load_tokenizer(opts: RunOptions):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(opts.model_name_or_path, local_files_only=True)
    tokenizer.padding_side = "right"  # training; the engine pads left for generation
    return tokenizer


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# --- data ---------------------------------------------------------------------------------------


def input_files(paths: Iterable[str], split: str | None) -> list[Path]:
    """The JSONL files to read: `<split>.jsonl` of each dataset folder, or each file as given."""
    files: list[Path] = []
    if split is None:
        return files
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidate = path / f"{split}.jsonl"
            if candidate.is_file():
                files.append(candidate)
        elif path.is_file():
            if split == "train":  # a bare file is training data
                files.append(path)
    return files


def iter_jsonl(paths: Iterable[Path]) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise TrainingConfigError(f"{path} line {n}: not valid JSON") from None
                if not isinstance(row, dict):
                    raise TrainingConfigError(f"{path} line {n}: not a JSON object")
                yield path, n, row


def template_kwargs(row: dict[str, Any], effort: str) -> dict[str, str]:
    """The example's own system-message variables, else the inference ones at `effort`."""
    from model.prompts import chat_template_kwargs

    kwargs = row.get("chat_template_kwargs")
    if isinstance(kwargs, dict) and kwargs:
        return {str(k): str(v) for k, v in kwargs.items()}
    return chat_template_kwargs(effort)


def manifest_path(opts: RunOptions) -> Path | None:
    if opts.dataset_manifest:
        return Path(opts.dataset_manifest)
    for raw in opts.dataset_path or []:
        candidate = Path(raw) / "manifest.json"
        if Path(raw).is_dir() and candidate.is_file():
            return candidate
    return None


# --- saving -------------------------------------------------------------------------------------


def run_trainer(trainer_class: Any, config: Any, datasets: tuple[Any, Any], *, stage: str,
                extra_counts: dict[str, int] | None = None) -> Path:
    """One stage's run: base model + LoRA, TRL's trainer for the stage, train, write the release."""
    train_ds, eval_ds = datasets
    model, peft_config = model_and_peft(config)
    trainer = trainer_class(model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                            processing_class=load_tokenizer(config), peft_config=peft_config)
    trainer.train()
    counts = {"train": len(train_ds), "eval": len(eval_ds) if eval_ds is not None else 0, **(extra_counts or {})}
    return finish(trainer, config, stage=stage, dataset_counts=counts)


def finish(trainer: Any, config: Any, *, stage: str, dataset_counts: dict[str, int]) -> Path:
    """Save the adapter, the resolved config and the model card into `config.output_dir`."""
    from model.training.card import write_card

    out = Path(config.output_dir)
    peft_config = getattr(trainer.model, "peft_config", {})
    if "ref" in peft_config and len(peft_config) > 1:  # DPO/KTO's frozen reference copy: not part of the release
        trainer.model.delete_adapter("ref")
    trainer.save_model(str(out))
    if not trainer.accelerator.is_main_process:
        return out
    save_resolved_config(config, out)
    history = [dict(h) for h in trainer.state.log_history]
    losses = [h["loss"] for h in history if "loss" in h]
    trainable, total = count_parameters(trainer.model)
    write_card(
        out,
        stage=stage,
        config=config,
        training={
            "global_steps": int(trainer.state.global_step),
            "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "losses": [round(float(x), 6) for x in losses],  # every logged step: the loss curve
            "train_loss": next((h["train_loss"] for h in reversed(history) if "train_loss" in h), None),
            "trainable_parameters": trainable,
            "total_parameters": total,
            "examples": dataset_counts,
            "processes": int(trainer.accelerator.num_processes),
        },
        manifest=manifest_path(config),
    )
    return out
