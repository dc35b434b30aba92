"""`triage train cpt|sft|dpo|kto --config FILE.yaml [--option value ...]`.

Options are the stage config's fields (`triage train sft --help` lists them with their help);
a YAML file holds a run and flags override it. Works under `accelerate launch` (one process per
device; only the main process writes the card and prints). Expected failures are one line on
stderr and exit status 1.
"""
from __future__ import annotations

import importlib
import sys

import click

STAGES = {
    "cpt": ("model.training.cpt", "CptRunConfig", "Continual pre-training on de-identified clinic text (packed)."),
    "sft": ("model.training.sft", "SftRunConfig", "Supervised fine-tuning on chat examples (assistant-only loss)."),
    "dpo": ("model.training.dpo", "DpoRunConfig", "DPO on nurse-preferred vs overridden reports."),
    "kto": ("model.training.kto", "KtoRunConfig", "KTO on accepted (desirable) and overridden (undesirable) reports."),
}


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def run_stage(stage: str, argv: list[str]) -> None:
    from model.training.common import TrainingConfigError, parse_stage_args

    module_name, class_name, _ = STAGES[stage]
    module = importlib.import_module(module_name)
    config_class = getattr(module, class_name)
    if "--help" in argv or "-h" in argv:
        from trl import TrlParser

        click.echo(TrlParser(dataclass_types=[config_class], prog=f"triage train {stage}").format_help())
        return
    try:
        config = parse_stage_args(config_class, argv)
        if stage == "sft" and getattr(config, "check_dataset", False):  # report targets: what the check validates
            _check_datasets(config)
        out = module.train(config)
    except TrainingConfigError as exc:
        _fail(str(exc))
        return
    except (ValueError, RuntimeError, KeyError) as exc:  # TRL/transformers refusing the data or options
        first = " ".join(str(exc).split())[:300]
        _fail(f"training failed: {type(exc).__name__}: {first}")
        return
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    from model.training.card import read_card, summary_rows

    card = read_card(out)
    width = max(len(k) for k, _ in summary_rows(card))
    click.echo(f"{stage} adapter written to {out}")
    click.echo("\n".join(f"  {k.ljust(width)}  {v}" for k, v in summary_rows(card)))


def _check_datasets(config: object) -> None:
    """`triage dataset check` on each input folder written by `triage dataset build`/`import`
    (one with a manifest.json); other inputs (feedback and text exports) have their own formats."""
    from pathlib import Path

    from model.dataset_check import CheckError, check_dataset

    for path in getattr(config, "dataset_path", None) or ():
        folder = Path(path)
        if not (folder.is_dir() and (folder / "manifest.json").is_file()):
            continue
        try:
            report = check_dataset(folder, tokenizer_name=getattr(config, "model_name_or_path", None),
                                   max_tokens=getattr(config, "max_length", None) or 2048)
        except CheckError as exc:
            _fail(f"dataset check: {exc}")
        if not report.passed:
            click.echo(report.table(), err=True)
            _fail(f"dataset check failed for {folder} (fix the dataset, or --check_dataset false to train anyway)")


@click.group("train")
def train_group() -> None:
    """Train LoRA adapters: cpt -> sft -> dpo / kto (TRL + PEFT; configs in configs/)."""


def _stage_command(stage: str) -> click.Command:
    @click.command(stage, help=STAGES[stage][2] + " Options: --config FILE.yaml and any config field as --name value "
                                                  "(--help lists them).",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                     "help_option_names": []})
    @click.pass_context
    def command(ctx: click.Context) -> None:
        run_stage(stage, list(ctx.args))

    return command


for _stage in STAGES:
    train_group.add_command(_stage_command(_stage))
