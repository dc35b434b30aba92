"""The `triage dataset` commands: build, import-reasoning, feedback.

Heavy modules (spaCy, Presidio, pyarrow) are imported inside each command. Every expected failure
is a one-line message and a non-zero exit; nothing here prints record content.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click


def _table(rows: list[tuple[str, object]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.command("build")
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path), help="Bulk export folder, NDJSON file, or folder of Bundles.")
@click.option("--output", "output", required=True, type=click.Path(path_type=Path, file_okay=False), help="Folder for the dataset.")
@click.option("--key-file", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Pseudonym key (else TRIAGE_PSEUDONYM_KEY_FILE).")
@click.option("--seed", default=13, show_default=True, type=int, help="Split seed.")
@click.option("--split", "split", default="0.8,0.1,0.1", show_default=True, help="train,validation,test ratios (by patient).")
@click.option("--format", "formats", default="chat,seed,parquet", show_default=True, help="Outputs: chat (always), seed, parquet.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256), help="De-identification processes.")
@click.option("--resume", is_flag=True, help="Continue an interrupted build in --output.")
@click.option("--overwrite", is_flag=True, help="Replace a previous build in --output.")
@click.option("--max-encounters", type=click.IntRange(1), default=None, help="Use only each patient's first N encounters.")
@click.option("--no-class-acuity", is_flag=True, help="Do not label emergency-class encounters (Encounter.priority only).")
@click.option("--shard", default=None, help="K/N: build only this machine's patients (merge with a final run without --shard).")
@click.option("--celery", "celery_shards", type=click.IntRange(1), default=None,
              help="N: build as N shard tasks on the `triage dataset worker`s (TRIAGE_BROKER_URL; shared storage), then merge here.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build_command(input_path: Path, output: Path, key_file: Path | None, seed: int, split: str, formats: str,
                  workers: int, resume: bool, overwrite: bool, max_encounters: int | None, no_class_acuity: bool,
                  shard: str | None, celery_shards: int | None, quiet: bool) -> None:
    """Build a de-identified, leak-checked, patient-split fine-tuning set from a FHIR Bulk export."""
    from model.dataset import CLASS_ACUITY, BuildConfig, DatasetError, LeakFound, build, parse_shard, parse_split

    try:
        cfg = BuildConfig(
            input=input_path, output=output, key_file=key_file, seed=seed, split=parse_split(split),
            formats=tuple(f.strip() for f in formats.split(",") if f.strip()), workers=workers, resume=resume,
            overwrite=overwrite, max_encounters=max_encounters, class_acuity={} if no_class_acuity else dict(CLASS_ACUITY),
            shard=parse_shard(shard) if shard else None, progress=not quiet,
        )
        if celery_shards is not None:
            from model.dataset_queue import build_distributed

            result = build_distributed(cfg, celery_shards, echo=lambda line: click.echo(line, err=True))
        else:
            result = build(cfg, echo=lambda line: click.echo(line, err=True))
    except LeakFound as exc:
        _fail(str(exc), 3)
        return
    except DatasetError as exc:
        _fail(str(exc))
        return
    except KeyboardInterrupt:
        _fail("interrupted: run again with --resume to continue", 130)
        return
    c = result.counts
    if not result.merged:
        click.echo(f"shard {cfg.shard[0]}/{cfg.shard[1]}: {c['patients']} patients ({c['built_now']} built now) "
                   f"in {result.elapsed_s:.1f} s; run without --shard (with --resume) to merge")
        return
    leak = result.manifest["leak_check"]
    rows: list[tuple[str, object]] = [
        ("patients", f"{c['patients']} ({c['patients_with_examples']} with examples, {c['built_now']} built now)"),
        ("encounters", f"{c['encounters']}" + (f" ({c['encounters_over_cap']} over --max-encounters)" if c["encounters_over_cap"] else "")),
    ]
    rows += [(f"examples: {s}", f"{n} ({c['patients_per_split'][s]} patients)") for s, n in c["examples_per_split"].items()]
    rows += [
        ("labelled", ", ".join(f"acuity {k}: {v}" for k, v in c["labels"]["by_acuity"].items()) or "0"),
        ("unlabelled", c["labels"]["unlabelled"]),
    ]
    rows += [(f"dropped: {k}", v) for k, v in c["dropped"].items()] or [("dropped", 0)]
    rows += [
        ("leak check", f"{leak['dropped_examples']} examples dropped before writing; "
                       f"{leak['output_hits']} hits in {leak['files_scanned']} output files ({'passed' if leak['passed'] else 'FAILED'})"),
        ("bad lines", c["bad_lines"]),
        ("time", f"{result.elapsed_s:.1f} s"),
    ]
    click.echo(f"dataset written to {result.output}\n" + _table(rows))


@click.command("import-reasoning")
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path, dir_okay=False), help="JSON array, JSONL or Parquet with Question, Complex_CoT, Response.")
@click.option("--output", "output", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Chat JSONL to write.")
@click.option("--source", default="medical-o1-reasoning-SFT", show_default=True, help="Name recorded in each row.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Write at most N examples.")
def import_reasoning_command(input_path: Path, output: Path, source: str, limit: int | None) -> None:
    """Turn a local reasoning set into the chat format, with Complex_CoT as the assistant's thinking."""
    from model.reasoning_import import ReasoningImportError, import_reasoning

    try:
        result = import_reasoning(input_path, output, source=source, limit=limit)
    except ReasoningImportError as exc:
        _fail(str(exc))
        return
    except OSError as exc:
        _fail(f"{output}: cannot write ({exc.strerror or type(exc).__name__})")
        return
    for row, reason in result.bad_rows[:20]:
        click.echo(f"skipped row {row}: {reason}", err=True)
    if result.skipped > 20:
        click.echo(f"... and {result.skipped - 20} more bad rows", err=True)
    click.echo(f"{result.written} examples written to {output} ({result.rows_read} rows read, {result.skipped} skipped)")


@click.command("feedback")
@click.option("--database", required=True, help="SQLAlchemy URL of the service's database.")
@click.option("--output", "output", default=None, type=click.Path(path_type=Path, dir_okay=False), help="KTO JSONL to write (KTO only).")
@click.option("--output-dir", "output_dir", default=None, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the preference stages: kto.jsonl, dpo.jsonl, preferences.json (counts, balance).")
@click.option("--identifiers", "identifiers", default=None, type=click.Path(path_type=Path),
              help="The clinic's Bulk export: its people's identifiers are searched for in every row (fail closed).")
def feedback_command(database: str, output: Path | None, output_dir: Path | None, identifiers: Path | None) -> None:
    """Export nurses' card feedback as preference data: KTO (accepted / overridden) and DPO pairs
    (an overridden report against the one consistent with the nurse's call)."""
    from model.feedback_export import FeedbackExportError, PreferenceLeak, export_feedback, export_preferences

    if (output is None) == (output_dir is None):
        _fail("give one of --output (KTO JSONL) or --output-dir (KTO + DPO folder)")
        return
    if output is not None:
        try:
            result = export_feedback(database, output)
        except FeedbackExportError as exc:
            _fail(str(exc))
            return
        counts = result.as_dict()
        click.echo(f"{result.examples} KTO examples written to {output}\n"
                   + _table([(k, v) for k, v in counts.items() if k != "examples"] or [("cards with feedback", 0)]))
        return
    ids = None
    if identifiers is not None:
        from model.dataset import DatasetError, export_identifiers

        if not identifiers.exists():
            _fail(f"--identifiers: {identifiers} does not exist")
            return
        try:
            ids = export_identifiers(identifiers)
        except (DatasetError, OSError) as exc:
            _fail(f"--identifiers: cannot read {identifiers} ({type(exc).__name__})")
            return
    try:
        pref = export_preferences(database, output_dir, identifiers=ids)
    except PreferenceLeak as exc:
        _fail(str(exc), 3)
        return
    except FeedbackExportError as exc:
        _fail(str(exc))
        return
    summary = pref.as_dict()
    balance = summary["balance"]
    rows: list[tuple[str, object]] = [
        ("KTO examples", f"{pref.kto} ({balance['desirable']} accepted, {balance['undesirable']} overridden)"),
        ("DPO pairs", pref.dpo),
        ("suggested undesirable_weight", balance["suggested_undesirable_weight"]),
        ("leak check", summary["leak_check"]["status"] + (f" ({pref.counts['leak_check_dropped']} dropped)"
                                                         if pref.counts["leak_check_dropped"] else "")),
    ]
    rows += [(k, v) for k, v in summary["counts"].items() if not k.startswith("kto_")]
    click.echo(f"preference data written to {output_dir}\n" + _table(rows))


def add_dataset_commands(group: click.Group) -> None:
    for cmd in (build_command, import_reasoning_command, feedback_command):
        group.add_command(cmd)
