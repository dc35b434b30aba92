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
@click.option("--target-schema", type=click.Choice(["triage-report", "diagnosis-only"]), default="triage-report", show_default=True,
              help="triage-report: the serving TriageReport (acuity required; the ESI rules label what the record does not); "
                   "diagnosis-only: the report without acuity.")
@click.option("--no-rules-labels", is_flag=True, help="Do not label with the ESI rules (triage-report: unlabelled examples are dropped).")
@click.option("--rules-metrics", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The rules' `triage evaluate` metrics.json, cited in the card (default: eval/**/metrics.json).")
@click.option("--max-per-patient", type=click.IntRange(0), default=None,
              help="Examples per patient at most, evenly over the timeline (0: no cap). Default: 50, chosen by measurement.")
@click.option("--keep-near-duplicates", is_flag=True, help="Keep a patient's near-duplicate examples (collapsed by default).")
@click.option("--uninformative-keep", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of examples with no complaint and no finding kept (0 drops them, 1 keeps all).")
@click.option("--min-patients-per-split", type=click.IntRange(0), default=None,
              help="Warn when a split has fewer patients (default 5).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build_command(input_path: Path, output: Path, key_file: Path | None, seed: int, split: str, formats: str,
                  workers: int, resume: bool, overwrite: bool, max_encounters: int | None, no_class_acuity: bool,
                  shard: str | None, celery_shards: int | None, target_schema: str, no_rules_labels: bool,
                  rules_metrics: Path | None, max_per_patient: int | None, keep_near_duplicates: bool,
                  uninformative_keep: float, min_patients_per_split: int | None, quiet: bool) -> None:
    """Build a de-identified, leak-checked, patient-split fine-tuning set from a FHIR Bulk export."""
    from model.dataset import (
        CLASS_ACUITY, DEFAULT_MAX_PER_PATIENT, DEFAULT_MIN_PATIENTS_PER_SPLIT, BuildConfig, DatasetError, LeakFound,
        NoInputResources, build, parse_shard, parse_split,
    )

    try:
        cfg = BuildConfig(
            input=input_path, output=output, key_file=key_file, seed=seed, split=parse_split(split),
            formats=tuple(f.strip() for f in formats.split(",") if f.strip()), workers=workers, resume=resume,
            overwrite=overwrite, max_encounters=max_encounters, class_acuity={} if no_class_acuity else dict(CLASS_ACUITY),
            shard=parse_shard(shard) if shard else None, progress=not quiet,
            target_schema=target_schema, rules_labels=not no_rules_labels, rules_metrics=rules_metrics,
            max_per_patient=DEFAULT_MAX_PER_PATIENT if max_per_patient is None else (max_per_patient or None),
            collapse_near_duplicates=not keep_near_duplicates, uninformative_keep=uninformative_keep,
            min_patients_per_split=DEFAULT_MIN_PATIENTS_PER_SPLIT if min_patients_per_split is None else min_patients_per_split,
        )
        if celery_shards is not None:
            from model.dataset_queue import build_distributed

            result = build_distributed(cfg, celery_shards, echo=lambda line: click.echo(line, err=True))
        else:
            result = build(cfg, echo=lambda line: click.echo(line, err=True))
    except LeakFound as exc:
        _fail(str(exc), 3)
        return
    except NoInputResources as exc:
        _fail(str(exc), 2)
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
    at = next(i for i, (k, _) in enumerate(rows) if k == "labelled")
    rows[at:at] = [("labels by source", ", ".join(f"{k}: {v}" for k, v in c["labels"]["by_source"].items()) or "0")]
    rows += [(f"balance: {k}", v) for k, v in c["balance"]["removed"].items()]
    rows += [("largest patient", f"{c['balance']['largest_patient_examples']} examples ({c['balance']['largest_patient_share']:.1%})")]
    click.echo(f"dataset written to {result.output}\n" + _table(rows))
    for warning in result.manifest.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)


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


@click.command("import")
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Curated records: a JSON array (.json), JSON Lines (.jsonl) or a spreadsheet saved as CSV (.csv).")
@click.option("--output", "output", required=True, type=click.Path(path_type=Path, file_okay=False), help="Folder for the dataset.")
@click.option("--key-file", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Pseudonym key (else TRIAGE_PSEUDONYM_KEY_FILE).")
@click.option("--map", "column_map", default=None,
              help="Column names where they differ from the template: history=PMH,symptoms=CC,diagnosis_report=Report,"
                   "triage_priority=Priority (also id, name, mrn, birth_date, phone, email, address, city, zip, age, sex).")
@click.option("--priority-map", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="YAML `acuity:` table of priority -> level 1-5 (default: the shipped model/priority_acuity.yaml).")
@click.option("--seed", default=13, show_default=True, type=int, help="Split seed.")
@click.option("--split", "split", default="0.8,0.1,0.1", show_default=True, help="train,validation,test ratios (by patient).")
@click.option("--format", "formats", default="chat,seed,parquet", show_default=True, help="Outputs: chat (always), seed, parquet.")
@click.option("--overwrite", is_flag=True, help="Replace a previous dataset in --output.")
def import_command(input_path: Path, output: Path, key_file: Path | None, column_map: str | None, priority_map: Path | None,
                   seed: int, split: str, formats: str, overwrite: bool) -> None:
    """Import curated triage records (history, symptoms, diagnosis_report, triage_priority), de-identified."""
    from model.dataset import DatasetError, LeakFound, parse_split
    from model.dataset_import import ImportConfig, RecordImportError, parse_column_map, run_import

    shown = 0

    def echo(line: str) -> None:
        nonlocal shown
        shown += 1
        if shown <= 20:
            click.echo(line, err=True)

    try:
        cfg = ImportConfig(input=input_path, output=output, key_file=key_file, column_map=parse_column_map(column_map),
                           priority_map=priority_map, seed=seed, split=parse_split(split),
                           formats=tuple(f.strip() for f in formats.split(",") if f.strip()), overwrite=overwrite)
        result = run_import(cfg, echo=echo)
    except LeakFound as exc:
        _fail(str(exc), 3)
        return
    except (RecordImportError, DatasetError) as exc:
        if shown > 20:
            click.echo(f"... and {shown - 20} more skipped lines", err=True)
        _fail(str(exc))
        return
    if shown > 20:
        click.echo(f"... and {shown - 20} more skipped lines (all in manifest.json)", err=True)
    c = result.counts
    leak = result.manifest["leak_check"]
    rows: list[tuple[str, object]] = [("records", c["records"]), ("patients", c["patients"])]
    rows += [(f"examples: {s}", f"{n} ({c['patients_per_split'][s]} patients)") for s, n in c["examples_per_split"].items()]
    rows += [("labelled", ", ".join(f"acuity {k}: {v}" for k, v in c["labels"]["by_acuity"].items()))]
    rows += [(f"skipped: {k}", v) for k, v in c["bad_lines_by_reason"].items()]
    rows += [(f"dropped: {k}", v) for k, v in c["dropped"].items()]
    rows += [
        ("leak check", f"{leak['dropped_examples']} examples dropped before writing; "
                       f"{leak['output_hits']} hits in {leak['files_scanned']} output files ({'passed' if leak['passed'] else 'FAILED'})"),
        ("time", f"{result.elapsed_s:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()) + ")"),
    ]
    click.echo(f"dataset written to {result.output}\n" + _table(rows))


@click.command("import-text")
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path),
              help="A folder of text files (*.txt, *.md) or a JSONL of documents ({\"text\": ...}).")
@click.option("--output", "output", required=True, type=click.Path(path_type=Path, file_okay=False), help="Folder for the text set.")
@click.option("--key-file", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Pseudonym key (else TRIAGE_PSEUDONYM_KEY_FILE).")
@click.option("--tokenizer", envvar="TRIAGE_MODEL_PATH", default=None, show_envvar=True,
              help="Model folder whose tokenizer measures chunks (default: the configured model, TRIAGE_MODEL_PATH).")
@click.option("--max-tokens", default=2048, show_default=True, type=click.IntRange(8), help="Tokens per chunk at most.")
@click.option("--text-field", default="text", show_default=True, help="JSONL field holding the document's text.")
@click.option("--seed", default=13, show_default=True, type=int, help="Split seed.")
@click.option("--split", "split", default="0.9,0.1,0", show_default=True, help="train,validation,test ratios (by document).")
@click.option("--overwrite", is_flag=True, help="Replace a previous text set in --output.")
def import_text_command(input_path: Path, output: Path, key_file: Path | None, tokenizer: str | None, max_tokens: int,
                        text_field: str, seed: int, split: str, overwrite: bool) -> None:
    """Scrub transcripts and notes and chunk them for continual pre-training (`triage train cpt`)."""
    from model.dataset import DatasetError, LeakFound, parse_split
    from model.text_import import TextImportConfig, TextImportError, run_text_import

    try:
        cfg = TextImportConfig(input=input_path, output=output, key_file=key_file, tokenizer=tokenizer,
                               max_tokens=max_tokens, text_field=text_field, seed=seed, split=parse_split(split),
                               overwrite=overwrite)
        result = run_text_import(cfg, echo=lambda line: click.echo(line, err=True))
    except LeakFound as exc:
        _fail(str(exc), 3)
        return
    except (TextImportError, DatasetError) as exc:
        _fail(str(exc))
        return
    c = result.counts
    rows: list[tuple[str, object]] = [("documents", f"{c['documents']} ({c['documents_used']} used, {c['bad_lines']} skipped)")]
    rows += [(f"chunks: {s}", f"{n} ({c['documents_per_split'][s]} documents, {c['tokens_per_split'][s]} tokens)")
             for s, n in c["chunks_per_split"].items()]
    rows += [(f"dropped: {k}", v) for k, v in c["dropped"].items()]
    leak = result.manifest["leak_check"]
    rows += [("leak check", f"{leak['output_hits']} hits in {leak['files_scanned']} output files ({'passed' if leak['passed'] else 'FAILED'})"),
             ("time", f"{result.elapsed_s:.1f} s")]
    click.echo(f"text set written to {result.output}\n" + _table(rows))


@click.command("check")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--tokenizer", envvar="TRIAGE_MODEL_PATH", default=None, show_envvar=True,
              help="Model folder whose tokenizer and chat template measure example lengths (default: the configured model).")
@click.option("--max-tokens", default=2048, show_default=True, type=click.IntRange(1), help="Longest example allowed, in tokens.")
@click.option("--max-patient-share", default=0.25, show_default=True, type=click.FloatRange(0, 1),
              help="Largest share of the examples one patient may hold.")
@click.option("--min-patients-per-split", default=5, show_default=True, type=click.IntRange(0), help="Warn below this.")
@click.option("--identifiers-from", type=click.Path(path_type=Path), default=None,
              help="The Bulk export the folder was built from: its identifiers are searched in every row.")
@click.option("--target-schema", type=click.Choice(["triage-report", "diagnosis-only"]), default=None,
              help="Schema of the targets (default: the manifest's, else triage-report).")
def check_command(folder: Path, tokenizer: str | None, max_tokens: int, max_patient_share: float, min_patients_per_split: int,
                  identifiers_from: Path | None, target_schema: str | None) -> None:
    """Check a dataset folder before training: targets, labels, splits, identifiers, lengths; exit 1 on a hard failure."""
    from model.dataset import DatasetError, export_identifiers
    from model.dataset_check import CheckError, check_dataset

    identifiers = None
    if identifiers_from is not None:
        if not identifiers_from.exists():
            _fail(f"--identifiers-from {identifiers_from} does not exist")
            return
        try:
            identifiers = export_identifiers(identifiers_from)
        except (DatasetError, OSError) as exc:
            _fail(f"--identifiers-from {identifiers_from}: cannot be read ({type(exc).__name__})")
            return
    try:
        report = check_dataset(folder, tokenizer_name=tokenizer, max_tokens=max_tokens, max_patient_share=max_patient_share,
                               min_patients_per_split=min_patients_per_split, identifiers=identifiers, target_schema=target_schema)
    except CheckError as exc:
        _fail(str(exc))
        return
    click.echo(f"dataset check of {folder}\n{report.table()}")
    if not report.passed:
        _fail(f"{folder}: {sum(f.status == 'FAIL' for f in report.findings)} checks failed: do not train on it")


def add_dataset_commands(group: click.Group) -> None:
    for cmd in (build_command, import_command, import_text_command, check_command, import_reasoning_command,
                feedback_command):
        group.add_command(cmd)
