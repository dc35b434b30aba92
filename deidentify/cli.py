"""`triage deid ...`: de-identification commands for data stewards and evaluation.

Each command imports its implementation lazily so the CLI starts fast.
"""
from __future__ import annotations

import click


@click.group("deid")
def deid() -> None:
    """De-identify free text and FHIR data; evaluate the de-identifier."""


# --- commands are added below: `scrub` and `evaluate` (free text), `fhir` (structured) -------


@deid.command("fhir")
@click.option("--input", "input_path", required=True, type=click.Path(path_type=str),
              help="A FHIR Bundle or resource (.json), an NDJSON file, or a folder of them "
                   "(e.g. a Bulk Data export).")
@click.option("--output", "output_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for the de-identified files (same names and layout).")
@click.option("--key-file", default=None, type=str,
              help="Pseudonym key file (default: $TRIAGE_PSEUDONYM_KEY_FILE).")
@click.option("--no-scrub", is_flag=True, help="Drop free text instead of scrubbing it (faster).")
def fhir_cmd(input_path: str, output_dir: str, key_file: str | None, no_scrub: bool) -> None:
    """De-identify FHIR R4 data by allow-list (HIPAA Safe Harbor); output stays valid R4."""
    import sys
    from pathlib import Path

    from .fhir import deidentify_path
    from .pseudonym import MissingKeyError, Pseudonymizer, load_key

    try:
        pz = Pseudonymizer(load_key(key_file))
    except MissingKeyError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    src = Path(input_path)
    if not src.exists():
        click.echo(f"error: cannot read {src}: no such file or folder", err=True)
        sys.exit(2)
    scrubber = None
    if not no_scrub:
        try:
            from .text import TextScrubber

            scrubber = TextScrubber()
        except ImportError:
            click.echo("warning: free-text scrubber unavailable: free text is dropped", err=True)
    report = deidentify_path(src, Path(output_dir), pz, scrubber=scrubber,
                             on_problem=lambda m: click.echo(m, err=True))
    done = sum(v for k, v in report.ctx.stats.items() if k.startswith("deidentified:"))
    click.echo(f"{done} resources de-identified into {len(report.written)} files in {output_dir} "
               f"(key {pz.fingerprint}); {len(report.problems)} problems reported", err=True)
    sys.exit(1 if report.problems else 0)
