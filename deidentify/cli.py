"""`triage deid ...`: de-identification commands for data stewards and evaluation.

Each command imports its implementation lazily so the CLI starts fast.
"""
from __future__ import annotations

import click


@click.group("deid")
def deid() -> None:
    """De-identify free text and FHIR data; evaluate the de-identifier."""


# --- commands are added below: `scrub` and `evaluate` (free text), `fhir` (structured) -------


@deid.command("scrub")
@click.option("--input", "input_path", required=True, help='JSONL, one {"id", "text"} per line.')
@click.option("--output", "output_path", required=True, help='JSONL of {"id", "text", "spans"} (written atomically).')
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="Worker processes.")
@click.option("--mode", type=click.Choice(["placeholder", "surrogate"]), default="placeholder", show_default=True)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 10000))
def scrub_cmd(input_path: str, output_path: str, workers: int, mode: str, batch_size: int) -> None:
    """Scrub free text line by line; span offsets refer to the original text."""
    import sys

    from .text import scrub_jsonl

    def report(line_no: int, reason: str) -> None:
        click.echo(f"{input_path}:{line_no}: skipped malformed line ({reason})", err=True)

    try:
        stats = scrub_jsonl(input_path, output_path, mode=mode, workers=workers,  # type: ignore[arg-type]
                            batch_size=batch_size, on_error=report)
    except OSError as exc:
        click.echo(f"error: cannot process {exc.filename or input_path}: {exc.strerror or exc}", err=True)
        sys.exit(2)
    click.echo(f"scrubbed {stats.written} lines, skipped {stats.skipped} malformed", err=True)


@deid.command("evaluate")
@click.option("--asq-dir", default=None, help="ASQ-PHI folder (default: ../shared/data/deid/asq-phi).")
@click.option("--synthea-dir", default=None, help="Synthea bulk export folder with DocumentReference NDJSON.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Evaluate a deterministic subset of ASQ-PHI and Synthea.")
@click.option("--nursing-notes", default=300, show_default=True, type=click.IntRange(0),
              help="Notes per part of the generated nursing corpus (dev and held-back); 0 skips it.")
@click.option("--seed", default=7, show_default=True, type=int, help="Seed of the nursing corpus.")
@click.option("--corpus", "corpora", multiple=True, type=click.Path(dir_okay=False),
              help="A labelled JSONL corpus of your own (see docs/deidentification.md); repeatable.")
@click.option("--details", is_flag=True, help="Also print the missed spans of each corpus (PHI: local use only).")
def evaluate_cmd(asq_dir: str | None, synthea_dir: str | None, limit: int | None, nursing_notes: int, seed: int,
                 corpora: tuple[str, ...], details: bool) -> None:
    """Each corpus on its own line, with whether the rules were tuned on it, then recall and
    precision per type: ASQ-PHI, Synthea notes, nursing notes (dev, held-back), your corpora."""
    import sys
    from pathlib import Path

    from .corpus import CorpusError, evaluate_corpus, format_report, load_jsonl
    from .evaluate import asq_notes, evaluate_asq, evaluate_synthea, format_asq, format_synthea
    from .text import TextScrubber

    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    asq = Path(asq_dir) if asq_dir else shared / "deid" / "asq-phi"
    syn = Path(synthea_dir) if synthea_dir else shared / "fhir" / "bulk-export-synthea-10"
    for p in (asq, syn):
        if not p.is_dir():
            click.echo(f"error: not a folder: {p}", err=True)
            sys.exit(2)
    own = []
    for c in corpora:
        try:
            own.append((c, load_jsonl(c)))
        except (OSError, CorpusError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    scrubber = TextScrubber()
    summary: list[str] = []
    blocks: list[str] = []

    a = evaluate_asq(scrubber, asq, limit=limit)
    ap = evaluate_corpus(scrubber, "ASQ-PHI", asq_notes(asq, limit=limit))
    summary.append(f"ASQ-PHI          tuned: yes  recall {a.overall.recall:.3f}  span precision {ap.flagged.precision:.3f}  "
                   f"hard negatives altered {a.negatives_altered}/{a.negatives}")
    blocks.append("ASQ-PHI (values, every character covered)\n" + format_asq(a) + "\n" + format_report(ap, "yes"))
    sr = evaluate_synthea(scrubber, syn, limit=limit)
    summary.append(f"Synthea notes    tuned: yes  surviving known identifiers {sr.survivor_count}  "
                   f"other tokens kept {sr.kept_share:.3f}")
    blocks.append("Synthea notes\n" + format_synthea(sr))
    reports = []
    if nursing_notes:
        from .nursing import generate

        for part, tuned in (("dev", "yes"), ("held-back", "no")):
            notes = generate(part, nursing_notes, seed)
            reports.append((evaluate_corpus(scrubber, f"nursing {part}", notes), tuned))
    for name, notes in own:
        reports.append((evaluate_corpus(scrubber, name, notes), "no"))
    for r, tuned in reports:
        summary.append(f"{r.name:16} tuned: {tuned:3}  recall {r.overall.recall:.3f}  span precision {r.flagged.precision:.3f}  "
                       f"({r.notes} notes, {r.overall.n} spans)")
        block = format_report(r, tuned)
        if details:
            block += "\n" + "\n".join(f"  missed {t}: {v!r} in ...{c}..." for t, v, c in r.missed)
        blocks.append(block)
    click.echo("\n".join(summary))
    click.echo("\n" + "\n\n".join(blocks))


@deid.command("corpus")
@click.option("--part", type=click.Choice(["dev", "held-back"]), required=True)
@click.option("--notes", "n", default=300, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=7, show_default=True, type=int)
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="JSONL of labelled notes.")
def corpus_cmd(part: str, n: int, seed: int, output: str) -> None:
    """Write the generated nursing-notes corpus (labelled JSONL, see docs/deidentification.md)."""
    from .corpus import write_jsonl
    from .nursing import generate

    notes = generate(part, n, seed)
    write_jsonl(notes, output)
    click.echo(f"{len(notes)} notes, {sum(len(x.spans) for x in notes)} labelled spans -> {output}", err=True)


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
    from fhir_adapter.bulk import BulkError

    try:
        report = deidentify_path(src, Path(output_dir), pz, scrubber=scrubber,
                                 on_problem=lambda m: click.echo(m, err=True))
    except BulkError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if not report.resources_read:
        click.echo(f"error: {src}: no FHIR resources found (NDJSON named after a resource type, "
                   "listed in manifest.json, or Bundle/resource .json)", err=True)
        sys.exit(2)
    done = sum(v for k, v in report.ctx.stats.items() if k.startswith("deidentified:"))
    click.echo(f"{done} resources de-identified into {len(report.written)} files in {output_dir} "
               f"(key {pz.fingerprint}); {len(report.problems)} problems reported", err=True)
    sys.exit(1 if report.problems else 0)
