"""Writers for dataset builds: atomic files, the dataset card, the manifest and the audit report.

Everything here is deterministic: the same build inputs give the same bytes (sorted keys, no
timestamps), so a rebuild with the same seed and key can be compared byte for byte.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import yaml

CARD_NAME = "README.md"
MANIFEST_NAME = "manifest.json"
AUDIT_NAME = "audit.json"


# ---- atomic files ------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash leaves either the old file or none, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        kwargs = {"encoding": "utf-8", "newline": "\n"} if "b" not in mode else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dumps_line(row: Mapping[str, Any]) -> str:
    """One JSONL line, canonical: sorted keys, UTF-8 kept, no trailing spaces."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    n = 0
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(dumps_line(row))
            n += 1
    return n


def write_json(path: Path, data: Any) -> None:
    with atomic_open(path) as fh:
        json.dump(data, fh, sort_keys=True, ensure_ascii=False, indent=2)
        fh.write("\n")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---- Parquet -----------------------------------------------------------------------------------

ROW_GROUP_BYTES = 8 << 20  # JSON bytes per Parquet row group: about the most of a split held at once


def write_parquet(path: Path, jsonl_path: Path, row_group_bytes: int = ROW_GROUP_BYTES) -> None:
    """Parquet copy of a JSONL split with an explicit schema (stable across builds and splits).

    Streamed: the split is read in runs of whole lines of about `row_group_bytes`, each parsed by
    Arrow's JSON reader (several times faster than building rows in Python, and the same table:
    tested) and written as one row group, so memory stays flat however large the split (Arrow's
    own streaming reader buffered a growing share of the file). The runs depend only on the input,
    so the same split gives the same bytes; a split of one run, the bytes of one `write_table`.
    A run Arrow refuses is built from Python rows instead, the whole split in that case.
    """
    import pyarrow as pa

    schema = parquet_schema()
    try:
        _write_groups(path, _arrow_tables(jsonl_path, schema, row_group_bytes), schema)
    except pa.ArrowInvalid:  # the partial file is removed by atomic_open
        _write_groups(path, _groups(_python_batches(jsonl_path, schema), row_group_bytes, schema), schema)


def _write_groups(path: Path, tables: Iterable[Any], schema: Any) -> None:
    import pyarrow.parquet as pq

    with atomic_open(path, "wb") as fh:
        # No created_by/time metadata varies between runs of the same pyarrow: bytes are stable.
        with pq.ParquetWriter(fh, schema, compression="zstd") as writer:
            for table in tables:
                writer.write_table(table)


def _arrow_tables(jsonl_path: Path, schema: Any, run_bytes: int) -> Iterator[Any]:
    """One table per run of whole lines of at least `run_bytes` (the last may be shorter)."""
    import pyarrow as pa
    import pyarrow.json as pj

    parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    with open(jsonl_path, "rb") as fh:
        while lines := fh.readlines(run_bytes):
            data = b"".join(lines)
            del lines
            read = pj.ReadOptions(block_size=len(data) + 1, use_threads=False)  # one block: any row length
            yield pj.read_json(pa.BufferReader(data), read_options=read, parse_options=parse).combine_chunks()


def _python_batches(jsonl_path: Path, schema: Any, rows: int = 1024) -> Iterator[Any]:
    import pyarrow as pa

    with open(jsonl_path, encoding="utf-8") as fh:
        while lines := list(itertools.islice(fh, rows)):
            yield pa.RecordBatch.from_pydict(_python_columns(lines, schema), schema=schema)


def _groups(batches: Iterable[Any], limit: int, schema: Any) -> Iterator[Any]:
    """Record batches gathered into tables of about `limit` bytes, each one contiguous."""
    import pyarrow as pa

    held: list[Any] = []
    size = 0
    for batch in batches:
        held.append(batch)
        size += batch.nbytes
        if size >= limit:
            yield pa.Table.from_batches(held, schema=schema).combine_chunks()
            held, size = [], 0
    if held:
        yield pa.Table.from_batches(held, schema=schema).combine_chunks()


def parquet_schema() -> Any:
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string()), ("thinking", pa.string())])
    return pa.schema(
        [
            ("id", pa.string()),
            ("patient", pa.string()),
            ("acuity", pa.int8()),
            ("label_source", pa.string()),
            ("label_detail", pa.string()),
            ("messages", pa.list_(message)),
            ("chat_template_kwargs", pa.struct([("model_identity", pa.string()), ("reasoning_effort", pa.string())])),
        ]
    )


def _python_columns(lines: Iterable[str], schema: Any) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for line in lines:
        row = json.loads(line)
        for name in schema.names:
            value = row.get(name)
            if name == "messages":
                value = [{"role": m["role"], "content": m["content"], "thinking": m.get("thinking")} for m in value]
            columns[name].append(value)
    return columns


# ---- dataset card ------------------------------------------------------------------------------

def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_card(manifest: Mapping[str, Any], audit: Mapping[str, Any]) -> str:
    """A Hugging Face style dataset card (YAML header + Markdown) from the manifest and audit."""
    counts = manifest["counts"]
    splits = counts["examples_per_split"]
    formats = manifest["settings"]["formats"]
    configs: list[dict[str, Any]] = [
        {
            "config_name": "default",
            "default": True,
            "data_files": [{"split": s, "path": f"{s}.jsonl"} for s in splits],
        }
    ]
    if "parquet" in formats:
        configs.append({"config_name": "parquet", "data_files": [{"split": s, "path": f"{s}.parquet"} for s in splits]})
    if "seed" in formats:
        configs.append({"config_name": "seed", "data_files": [{"split": s, "path": f"seed/{s}.jsonl"} for s in splits]})
    header = {
        "pretty_name": "Triage CDS clinic fine-tuning set (de-identified)",
        "language": ["en"],
        "license": "other",
        "task_categories": ["text-generation"],
        "tags": ["medical", "triage", "de-identified", "fhir", "synthetic" if manifest.get("synthetic") else "clinical"],
        "size_categories": [_size_category(sum(splits.values()))],
        "configs": configs,
        "dataset_info": {
            "splits": [{"name": s, "num_examples": n} for s, n in splits.items()],
        },
    }
    settings = manifest["settings"]
    deid = manifest["deidentification"]
    leak = manifest["leak_check"]
    labels = counts["labels"]
    label_rows = [(k, v) for k, v in sorted(labels["by_acuity"].items())] + [("unlabelled", labels["unlabelled"])]
    source_rows = sorted(labels["by_source"].items())
    drop_rows = sorted(counts["dropped"].items()) or [("(none)", 0)]
    leak_rows = sorted(leak["dropped_by_identifier_type"].items()) or [("(none)", 0)]
    audit_rows = [
        (rtype, itype, n)
        for rtype, by_type in sorted(audit.get("removed_by_resource_type", {}).items())
        for itype, n in sorted(by_type.items())
    ] or [("(none)", "", 0)]
    input_rows = [(f["path"], f["bytes"], f["sha256"][:16] + "…") for f in manifest["inputs"]]
    per_split = [(s, n, counts["patients_per_split"].get(s, 0)) for s, n in splits.items()]
    class_map = ", ".join(f"{k} → {v}" for k, v in sorted(settings["class_acuity"].items())) or "off"
    prio_map = ", ".join(f"{k} → {v}" for k, v in sorted(settings["priority_acuity"].items()))

    # A tool other than `build` (`triage dataset import`) describes its own examples and labels.
    text = manifest.get("card_text") or {}
    intro = text.get("intro") or f"""De-identified examples built from a FHIR Bulk Data export by `triage dataset build`
(tool version {manifest['tool_version']}). One example per encounter with something to learn from:
the user turn is the patient as they stood **before** the encounter (history, active medications,
allergies, age and sex, presenting complaint from the encounter reason and the note's chief
complaint and history of present illness, the vital signs nearest the encounter); the assistant
turn is a preliminary report drawn from the record (the note's assessment and plan, the
encounter's diagnoses) with an acuity only where the record carries one."""
    schema = settings.get("target_schema", "triage-report")
    labels_text = text.get("labels") or f"""Acuity on the ESI-aligned scale of `model/acuity.py`. `label_source` says where each label
comes from: `record` (the record's own label: `Encounter.priority` ({prio_map}) or, where enabled,
the encounter class ({class_map}); `label_detail` says which), `rules` (no label in the record: the
ESI rules, `model.rules.score_record`, applied to the de-identified record as the example shows
it){'' if settings.get('rules_labels', True) else ' (off in this build)'}. Target schema of this build: **{schema}**
({'the serving `TriageReport`: every target has an acuity; an example that neither the record nor the rules can label is not written' if schema == 'triage-report' else '`DiagnosisReport`, the serving report without `acuity`: no target carries one; the row field `acuity` keeps the label for analysis'})."""
    totals = text["totals"].format(**counts) if text.get("totals") else f"""Patients: {counts['patients']} ({counts['patients_with_examples']} with examples); encounters seen:
{counts['encounters']}; examples written: {counts['examples']}."""

    leak_scope = text.get("leak_scope") or """every Patient, RelatedPerson, Practitioner,
Organization and Location in the export"""
    split_source_rows = [
        (sp, src, *[by.get(str(k), 0) for k in range(1, 6)], by.get("unlabelled", 0))
        for sp, by_src in labels.get("by_split_and_source", {}).items() for src, by in by_src.items()
    ]
    rl = manifest.get("rules_labeller") or {}
    if rl.get("overall"):
        held = {k: v for k, v in rl.get("by_split", {}).items() if "held" in k}
        labeller = (f"Rules labeller's own measured agreement with reference ESI levels (`{rl['source']}`): "
                    + ", ".join(f"{k} {v}" for k, v in rl["overall"].items() if v is not None)
                    + "".join(f"; {name} (never tuned on): " + ", ".join(f"{k} {v}" for k, v in b.items() if v is not None)
                              for name, b in held.items()) + ".")
    elif "rules_labeller" in manifest:
        labeller = f"Rules labeller's measured agreement: {rl.get('note', 'not available')}."
    else:
        labeller = ""
    bal = counts.get("balance")
    balance_text = ""
    if bal is not None:
        removed_rows = sorted(bal["removed"].items()) or [("(none)", 0)]
        balance_text = f"""
## Balance

Per patient at most {settings.get('max_per_patient') or 'any number of'} examples (evenly over the patient's timeline);
near-duplicates of one patient {'collapsed' if settings.get('collapse_near_duplicates') else 'kept'} (user turn and target equal once digits are
ignored); examples with no complaint and no finding kept at a share of {settings.get('uninformative_keep')}
({bal['uninformative_kept']} kept). Largest patient: {bal['largest_patient_examples']} examples
({bal['largest_patient_share']:.1%} of the set).

{_table(removed_rows, ("removed", "examples"))}
"""
    for warning in manifest.get("warnings", []):
        balance_text += f"\n**Warning:** {warning}.\n"

    build_limits = "" if text else """- Dates are shifted, not removed: intervals within a patient are exact, so long histories keep
  their shape.
- Medications are those still `active` in the export and authored before the encounter; a
  medication stopped later than the encounter is missing from that encounter's history.
- Acuity labels derived from the encounter class describe the setting, not the patient's
  severity; filter on `label_source` to exclude them.
- Reports are drawn from documentation written after the encounter (assessment and plan, coded
  diagnoses); they are what the clinician concluded, not what a triage nurse knew.
"""

    body = f"""# Triage CDS clinic fine-tuning set

{intro}

## Files and format

- `train.jsonl`, `validation.jsonl`, `test.jsonl`: TRL conversational language-modelling format
  (`messages`: a `user` and an `assistant` turn; `thinking` on the assistant turn only where
  reasoning text exists), plus `id`, `patient` (keyed pseudonym), `acuity` (1-5 or null) and
  `label_source`.{' Parquet copies: `<split>.parquet`.' if 'parquet' in formats else ''}{' The seed format (`###Human: ... ###Assistant: ...` in `text`): `seed/<split>.jsonl`.' if 'seed' in formats else ''}
- `manifest.json`: input hashes, settings, counts and drops; `audit.json`: identifiers removed.

```python
from datasets import load_dataset
ds = load_dataset("json", data_files={{"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}})
```

## Sources

{_table(input_rows, ("input file", "bytes", "sha256"))}

## Splits

Split by patient: a patient's examples all go to one split. Patients with examples are ordered by
a keyed hash of their pseudonym and the seed ({settings['seed']}); the first share goes to train, the
next to validation, the rest to test, with shares from the ratios {settings['split']} (largest
remainder). Every split with a non-zero ratio gets at least one patient when there are at least as
many patients as such splits, so a small export still has a test split.

{_table(per_split, ("split", "examples", "patients"))}

{totals}

## Labels

{labels_text}

{_table(label_rows, ("acuity", "examples"))}

{_table(source_rows or [("(none)", 0)], ("label source", "examples"))}

{_table(split_source_rows or [("(none)", "", *[0] * 6)], ("split", "label source", "1", "2", "3", "4", "5", "unlabelled"))}

{labeller}
{balance_text}
## De-identification

- Method: `deidentify` (HIPAA Safe Harbor for structured fields; free text scrubbed by
  {deid['scrubber']} with this patient's known identifiers); ages over 89 reported as 90+; every
  date shifted by a per-patient offset of {deid['date_shift_days']} days derived from the key.
- Pseudonym key fingerprint: `{deid['key_fingerprint']}` (the key itself is never written).
- Identifiers removed: see `audit.json`.

{_table(audit_rows, ("resource type", "identifier type", "removed"))}

## Leak check

Before writing, every example is searched for every identifier (names, address parts, phones,
identifiers, birth dates in their written forms) of {leak_scope}; an example with a hit is dropped. After writing, every
output file is scanned again and the build fails if anything is found.

- Examples dropped by the pre-write check: {leak['dropped_examples']}
- Identifier strings searched after writing: {leak['identifiers_searched']}; files scanned:
  {leak['files_scanned']}; hits: **{leak['output_hits']}** ({'passed' if leak['passed'] else 'FAILED'})

{_table(leak_rows, ("identifier type (pre-write drops)", "hits"))}

## Dropped records

{_table(drop_rows, ("reason", "count"))}

Bad NDJSON lines skipped: {counts['bad_lines']}.

## Known limits and residual risks

- De-identification of free text is statistical: a name, place or number that is neither a known
  identifier of this export nor recognised by the scrubber can remain. The leak check only finds
  identifiers that appear in the export's structured resources.
- The check does not see identifiers of people who have no resource in the export (e.g. a
  relative named only in a note) nor quasi-identifiers (rare diagnoses, exact vital values,
  free-text occupations) that could re-identify a patient in combination.
{build_limits}{''.join(f'- {line}' + chr(10) for line in manifest.get('limits', []))}"""
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def write_card(path: Path, manifest: Mapping[str, Any], audit: Mapping[str, Any]) -> None:
    with atomic_open(path) as fh:
        fh.write(render_card(manifest, audit))
