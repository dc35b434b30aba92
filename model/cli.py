"""`triage model ...`, `triage worker` and `triage dataset ...`.

Implementations are imported inside each command so the CLI starts without torch.
"""
from __future__ import annotations

import click


@click.group("model")
def model_group() -> None:
    """Build the tiny test model; train, evaluate and inspect adapters."""


@model_group.command("tiny")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option("--seed", default=0, show_default=True, type=int, help="Weight initialisation seed.")
@click.option("--data", "data_dir", default=None, type=click.Path(file_okay=False), help="Shared data (tokenizer corpus).")
def tiny_command(out_dir: str, seed: int, data_dir: str | None) -> None:
    """Build the tiny offline gpt-oss model (weights, tokenizer, harmony template)."""
    from model.tiny import build_tiny_model

    try:
        path = build_tiny_model(out_dir, seed=seed, data_dir=data_dir)
    except (FileNotFoundError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"tiny model written to {path}")


@click.group("dataset")
def dataset() -> None:
    """Build de-identified fine-tuning datasets from clinic records."""


from model.dataset_cli import add_dataset_commands  # noqa: E402 - build, import-reasoning, feedback

add_dataset_commands(dataset)


# `worker` (a click.Command) is defined below by the queue work.
