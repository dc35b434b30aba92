"""The `triage` command: a thin layer that composes each package's own commands.

Package command groups are imported lazily so `triage serve` never loads torch or spaCy.
"""
from __future__ import annotations

import importlib
import sys

import click


class _LazyGroup(click.Group):
    """Subcommands named here are imported only when used: `name -> "module:attribute"`."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._lazy = lazy or {}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._lazy))

    def get_command(self, ctx, name):
        if name in self._lazy:
            module, attr = self._lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(
    cls=_LazyGroup,
    lazy={
        "serve": "cds_hooks.serve:serve",
        "prescreen": "cds_hooks.bulk_prescreen:prescreen",
        "deid": "deidentify.cli:deid",
        "model": "model.cli:model_group",
        "worker": "model.cli:worker",
        "flower": "model.cli:flower",
        "dataset": "model.cli:dataset",
        "train": "model.training.cli:train_group",
        "evaluate": "cds_hooks.evaluate:evaluate",
        "monitor": "cds_hooks.monitor_cli:monitor",
    },
)
def cli() -> None:
    """Triage CDS: CDS Hooks triage service, de-identification and model tooling."""


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
