"""`triage dataset import`: data stewards' curated triage records -> the same de-identified,
leak-checked, patient-split fine-tuning set as `triage dataset build`.

The records follow the source design's template (JSON array, JSON Lines, or a spreadsheet saved as
CSV), column names mappable with `--map history=PMH,symptoms=CC,...`:

    {"history": "...", "symptoms": "...", "diagnosis_report": "...", "triage_priority": "High"}

Each record becomes a `PatientRecord` (history as one free-text history entry, symptoms as the
reason for the visit, the report as a note) and goes through `deidentify.Deidentifier`: every free
text through the free-text scrubber with the record's own identifiers (optional identity columns:
name, MRN, phone... ), then the record's leak check (fail closed). The de-identified record gives the
user turn (`model.prompts`, as at inference); the scrubbed report gives a `TriageReport` target with
the acuity mapped from the priority (`model/priority_acuity.yaml`; unknown values are reported,
never guessed), `label_source: "imported"`. Every example is then searched for every identifier of
the file (the build's `LeakScanner`), and every output file again after writing.

Records without an identifier column get a stable pseudonymous id: the keyed pseudonym of a hash of
their content. Bad rows are reported by file and line (never their content) and skipped.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from .dataset_card import AUDIT_NAME, CARD_NAME, MANIFEST_NAME, atomic_open, dumps_line, sha256_file, write_card, write_json, write_parquet

TEMPLATE_FIELDS = ("history", "symptoms", "diagnosis_report", "triage_priority")
REQUIRED_FIELDS = ("symptoms", "diagnosis_report", "triage_priority")
# Optional columns that identify the patient: never copied, used as known identifiers for the
# scrubber and the leak checks. `id` (an MRN or a clinic key) also groups a patient's records.
IDENTITY_FIELDS = ("id", "name", "mrn", "birth_date", "phone", "email", "address", "city", "zip")
OTHER_FIELDS = ("age", "sex")
ALL_FIELDS = TEMPLATE_FIELDS + IDENTITY_FIELDS + OTHER_FIELDS
DEFAULT_PRIORITY_MAP = Path(__file__).with_name("priority_acuity.yaml")
LABEL_SOURCE = "imported"
# Imported records carry no visit time: every record describes the same moment (then shifted per
# patient by the key, as any record). Prompts show only times relative to it.
AS_OF = datetime(2020, 1, 1, tzinfo=timezone.utc)
UNMAPPED = "priority not in the mapping"
_NORMALISE = re.compile(r"[\s\-_:./]+")
_SEXES = {"m": "male", "male": "male", "f": "female", "female": "female", "other": "other", "o": "other",
          "unknown": "unknown", "u": "unknown"}


class RecordImportError(RuntimeError):
    """The import cannot run or produced nothing: a one-line message naming the file, no content."""


# ---- settings ---------------------------------------------------------------------------------

def parse_column_map(text: str | None) -> dict[str, str]:
    """`history=PMH,symptoms=CC` -> {"history": "PMH", "symptoms": "CC"}; other fields keep their name."""
    out = {f: f for f in ALL_FIELDS}
    if not text:
        return out
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, column = part.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not column:
            raise RecordImportError(f"--map takes field=column pairs separated by commas (got {part.strip()!r})")
        if name not in ALL_FIELDS:
            raise RecordImportError(f"--map: unknown field {name!r} (fields: {', '.join(ALL_FIELDS)})")
        out[name] = column
    return out


def normalise_priority(value: Any) -> str:
    if isinstance(value, bool):
        return ""
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        return ""
    return _NORMALISE.sub(" ", value.casefold()).strip()


def load_priority_map(path: Path | None = None) -> dict[str, int]:
    """The normalised priority -> acuity table of a mapping file (the shipped default if None)."""
    path = Path(path) if path is not None else DEFAULT_PRIORITY_MAP
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecordImportError(f"priority map {path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    except yaml.YAMLError:
        raise RecordImportError(f"priority map {path}: not valid YAML") from None
    table = data.get("acuity") if isinstance(data, Mapping) else None
    if not isinstance(table, Mapping) or not table:
        raise RecordImportError(f"priority map {path}: expected a mapping `acuity:` of priority -> level 1-5")
    out: dict[str, int] = {}
    for k, v in table.items():
        key = normalise_priority(k)
        if not key or isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 5:
            raise RecordImportError(f"priority map {path}: entry {str(k)[:40]!r} must map a priority to a level 1-5")
        if key in out and out[key] != v:
            raise RecordImportError(f"priority map {path}: {key!r} is mapped to two levels")
        out[key] = v
    return out


@dataclass
class ImportConfig:
    input: Path
    output: Path
    key_file: Path | None
    column_map: dict[str, str] = field(default_factory=lambda: parse_column_map(None))
    priority_map: Path | None = None  # None: the shipped default
    seed: int = 13
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    formats: tuple[str, ...] = ("chat", "seed", "parquet")
    overwrite: bool = False


@dataclass
class ImportResult:
    output: Path
    manifest: dict[str, Any]
    elapsed_s: float
    bad_rows: list[tuple[int, str]]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest["counts"]


# ---- reading ----------------------------------------------------------------------------------

class _Bad:
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _line_of(text: str, pos: int, start_line: int, start_pos: int) -> int:
    return start_line + text.count("\n", start_pos, pos)


def _iter_json_array(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """Elements of a JSON array with the line each starts on. One malformed element makes the
    whole array unreadable (JSON has no way to resynchronise): a one-line error with its line."""
    dec = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")
    pos = ws.match(text, 0).end()
    if text[pos:pos + 1] != "[":
        raise RecordImportError(f"{path}: a .json file must hold an array of records")
    pos = ws.match(text, pos + 1).end()
    line, at = 1, 0
    if text[pos:pos + 1] == "]":
        return
    while True:
        line, at = _line_of(text, pos, line, at), pos
        try:
            value, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise RecordImportError(f"{path} line {exc.lineno}: malformed JSON ({exc.msg})") from None
        yield line, value
        pos = ws.match(text, end).end()
        if text[pos:pos + 1] == ",":
            pos = ws.match(text, pos + 1).end()
            continue
        if text[pos:pos + 1] == "]":
            return
        ln = _line_of(text, pos, line, at)
        raise RecordImportError(f"{path} line {ln}: malformed JSON (expected ',' or ']')")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError:
                yield n, _Bad("malformed JSON")


def _iter_csv(path: Path, columns: Mapping[str, str]) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        sample = fh.read(65536)
        fh.seek(0)
        try:
            dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        reader = csv.reader(fh, dialect)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise RecordImportError(f"{path} line 1: malformed CSV header ({exc})") from None
        header = [h.strip() for h in header]
        missing = [f"{f} (column {columns[f]!r})" if columns[f] != f else f
                   for f in REQUIRED_FIELDS if columns[f] not in header]
        if missing:
            raise RecordImportError(f"{path} line 1: missing column: {', '.join(missing)}; use --map field=column")
        last = reader.line_num
        while True:
            start = last + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error:
                last = reader.line_num
                yield start, _Bad("malformed CSV row")
                continue
            last = reader.line_num
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                yield start, _Bad(f"{len(row)} fields where the header has {len(header)}")
                continue
            yield start, dict(zip(header, row))


def iter_records(path: Path, columns: Mapping[str, str]) -> Iterator[tuple[int, Any]]:
    """(line number, record or _Bad) of a .json, .jsonl/.ndjson or .csv/.tsv file."""
    if not path.is_file():
        raise RecordImportError(f"{path}: no such file")
    suffix = path.suffix.casefold()
    if path.stat().st_size == 0:
        raise RecordImportError(f"{path}: the file is empty")
    if suffix == ".json":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise RecordImportError(f"{path}: not UTF-8 text") from None
        if not text.strip():
            raise RecordImportError(f"{path}: the file is empty")
        yield from _iter_json_array(path, text)
    elif suffix in (".jsonl", ".ndjson"):
        yield from _iter_jsonl(path)
    elif suffix in (".csv", ".tsv"):
        yield from _iter_csv(path, columns)
    else:
        raise RecordImportError(f"{path}: expected .json (an array), .jsonl or .csv")


# ---- one record -------------------------------------------------------------------------------

@dataclass
class _Row:
    line: int
    values: dict[str, str]
    acuity: int
    record: Any  # PatientRecord


def _text(row: Mapping[str, Any], column: str, name: str) -> str:
    value = row.get(column)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"field {name} is not text")
    return str(value).strip()


def _birth_date(text: str) -> date:
    for fmt in ("%Y-%m-%d", "%m/%d/%Y", "%d.%m.%Y"):
        try:
            return datetime.strptime(text[:10], fmt).date()
        except ValueError:
            continue
    raise ValueError("birth_date is not a date (YYYY-MM-DD or MM/DD/YYYY)")


def parse_row(row: Any, columns: Mapping[str, str], priorities: Mapping[str, int]) -> tuple[dict[str, str], int]:
    """The record's fields and its acuity, or ValueError with a reason that quotes no content."""
    if isinstance(row, _Bad):
        raise ValueError(row.reason)
    if not isinstance(row, Mapping):
        raise ValueError(f"not an object ({type(row).__name__})")
    values = {}
    for name in ALL_FIELDS:
        if name in REQUIRED_FIELDS and columns[name] not in row:
            raise ValueError(f"missing field {name}" + (f" (column {columns[name]!r})" if columns[name] != name else ""))
        values[name] = _text(row, columns[name], name)
    for name in REQUIRED_FIELDS:
        if not values[name]:
            raise ValueError(f"empty field {name}")
    level = priorities.get(normalise_priority(values["triage_priority"]))
    if level is None:
        raise ValueError(UNMAPPED)
    return values, level


def content_key(values: Mapping[str, str]) -> str:
    """What a record without an identifier is known by: a hash of its content (then keyed by the
    pseudonymizer, so the id in the dataset is stable for one key and reveals nothing)."""
    text = "\x1f".join(values.get(f, "") for f in TEMPLATE_FIELDS)
    return "record|" + hashlib.sha256(text.encode()).hexdigest()


def identity_of(values: Mapping[str, str]) -> Any:
    """The `Identity` the identity columns give (the content key stands in for a missing id)."""
    from fhir_adapter.record import Address, Identity

    values = {f: values.get(f, "") for f in ALL_FIELDS}
    names = values["name"].split()
    birth = _birth_date(values["birth_date"]) if values["birth_date"] else None
    address = None
    if values["address"] or values["city"] or values["zip"]:
        address = Address(lines=(values["address"],) if values["address"] else (), city=values["city"] or None,
                          district=None, state=None, postal_code=values["zip"] or None, country=None)
    return Identity(
        resource_id=values["id"] or content_key(values),
        given_names=tuple(names[:-1]),
        family_names=tuple(names[-1:]),
        identifiers=(("MRN", values["mrn"]),) if values["mrn"] else (),
        phones=(values["phone"],) if values["phone"] else (),
        emails=(values["email"],) if values["email"] else (),
        addresses=(address,) if address else (),
        birth_date=birth,
    )


def to_patient_record(values: Mapping[str, str]) -> Any:
    """A `PatientRecord` of one curated record (still PHI: it goes to `deidentify` only)."""
    from fhir_adapter.record import ConditionEntry, EncounterInfo, PatientRecord

    identity = identity_of(values)
    age_birth = None
    if values["age"]:
        try:
            age = int(float(values["age"]))
        except ValueError:
            raise ValueError("age is not a number") from None
        if not 0 <= age <= 130:
            raise ValueError("age is out of range")
        age_birth = date(AS_OF.year - age, AS_OF.month, AS_OF.day)  # the age the record states
    sex = _SEXES.get(values["sex"].casefold()) if values["sex"] else None
    if values["sex"] and sex is None:
        raise ValueError("sex is not one of male, female, other, unknown")
    history = ()
    if values["history"]:
        history = (ConditionEntry(codings=(), text=values["history"], clinical_status=None,
                                  verification_status=None, onset=None, recorded=None),)
    encounter = EncounterInfo(id=None, status=None, class_code=None, types=(), reasons=(values["symptoms"],),
                              priority=None, start=None, end=None)
    return PatientRecord(identity=identity, birth_date=age_birth, sex=sex, as_of=AS_OF, conditions=history,
                         encounter=encounter, notes=(values["diagnosis_report"],))


# ---- the target -------------------------------------------------------------------------------

_SENTENCE = re.compile(r"(?<=[.;!?])\s+|\n+")
_LABEL = re.compile(r"^(?:impression|assessment|diagnosis|dx|ddx|differential(?: diagnosis)?|plan|a/p|recommendations?)\s*:\s*", re.I)
_ACTION = re.compile(
    r"^(?:please\s+)?(?:recommend(?:ed|s|ation)?|refer(?:ral)?|order|obtain|start|begin|give|administer|admit|discharge"
    r"|arrange|consult|check|monitor|repeat|continue|stop|hold|follow(?:[- ]up)?|review|send|perform|schedule|advise"
    r"|needs?|requires?|return|encourage|prescribe|treat|observe|call|transfer|ecg|ekg|x-?ray|ct|mri|labs?\b)",
    re.I,
)
# Sentences about the encounter rather than the patient's condition ("Discussed with Dr. [NAME]"), or
# holding a scrubbed identifier, are neither impression nor action: they stay in reasoning_summary.
_CONTEXT = re.compile(
    r"^(?:seen|discussed|spoke|talked|called|reviewed|examined|patient|pt|he|she|they|family|wife|husband|mother"
    r"|father|son|daughter|parent|note|history|hx|signed|dictated|electronically)\b|\[[A-Z_]+\]", re.I)
_RECOMMEND = re.compile(r"^(?:please\s+)?recommend(?:ed|s|ation)?\s*:?\s*", re.I)
_HEDGES = (
    (re.compile(r"^(?:unlikely|less likely|doubt(?:ful)?)\s*:?\s+", re.I), "low"),
    (re.compile(r"^(?:possible|possibly|consider|query|\?|r/o|rule out|cannot exclude|may be|might be|maybe)\s*:?\s+", re.I), "moderate"),
    (re.compile(r"^(?:likely|probable|probably|suspected|suspect|presumed|consistent with)\s*:?\s+", re.I), "high"),
)


def report_from_text(report: str, acuity: int) -> dict[str, Any] | None:
    """A `TriageReport` from a curated free-text report (already scrubbed), or None.

    Sentences that recommend or order something become `recommended_actions`; the others are the
    impression, each one a differential item, its likelihood from its hedge word ("possible" ->
    moderate, "unlikely" -> low, none or "likely" -> high). `reasoning_summary` is the whole report.
    Nothing is added: no red flags or questions (the record holds none). A report with no
    impression (only actions) gives None: there is no diagnosis to learn.
    """
    from pydantic import ValidationError

    from .dataset import _one_line
    from .report import TriageReport

    conditions: list[tuple[str, str]] = []
    actions: list[str] = []
    for raw in _SENTENCE.split(report):
        s = _LABEL.sub("", raw.strip().strip("-*• ").strip())
        s = s.rstrip(".;!? ")
        if not s:
            continue
        if _ACTION.match(s):
            action = _one_line(_RECOMMEND.sub("", s), 160)
            action = action[:1].upper() + action[1:]
            if action and action not in actions:
                actions.append(action)
            continue
        if _CONTEXT.search(s):
            continue
        likelihood = "high"
        for pattern, level in _HEDGES:
            if pattern.match(s):
                s, likelihood = pattern.sub("", s, count=1), level
                break
        name = _one_line(s, 80)
        if name and all(name != c for c, _ in conditions):
            conditions.append((name[:1].upper() + name[1:], likelihood))
    if not conditions:
        return None
    conditions = conditions[:5]
    summary = _one_line("Preliminary: " + "; ".join(c for c, _ in conditions), 139)
    data = {
        "acuity": acuity,
        "summary": summary,
        "differential": [{"condition": c, "likelihood": lk, "rationale": "Stated in the curated report"
                          if lk == "high" else f"Stated in the curated report as {'possible' if lk == 'moderate' else 'unlikely'}"}
                         for c, lk in conditions],
        "red_flags": [],
        "recommended_actions": actions[:6],
        "questions_to_ask": [],
        "reasoning_summary": _one_line(report, 400),
    }
    try:
        return TriageReport.model_validate(data).model_dump(mode="json")
    except ValidationError:
        return None


# ---- the import -------------------------------------------------------------------------------

def _file_identifiers(rows: list[_Row]) -> Any:
    """Every identifier of every record of the file (the build's export-wide identifier set)."""
    from deidentify.leaks import IdentifierSet

    ids = IdentifierSet()
    for r in rows:
        ids.update(IdentifierSet.from_identity(r.record.identity))
    return ids


def _shown_priority(value: str, scrubber: Any) -> str:
    """The unknown priority as it may be shown: short, and untouched by the scrubber; else withheld."""
    if len(value) <= 24 and re.fullmatch(r"[\w .+/-]+", value):
        res = scrubber.scrub_many([value])[0]
        if not getattr(res, "spans", None):
            return f" ({value!r})"
    return " (value withheld)"


def run_import(cfg: ImportConfig, *, echo: Callable[[str], None] | None = None,
               scrubber: Any = None) -> ImportResult:
    """Import one file (see the module docstring). Raises RecordImportError with a one-line message."""
    from deidentify import Deidentifier, LeakDetected
    from deidentify.pseudonym import MissingKeyError, key_fingerprint, load_key

    from . import prompts
    from .dataset import (
        FORMATS, SPLITS, DatasetError, LeakScanner, _output_files, assign_splits, json_parts, make_scrubber,
        prepare_output, scan_outputs, tool_version,
    )

    t0 = time.monotonic()
    timings: dict[str, float] = {}
    unknown = set(cfg.formats) - set(FORMATS)
    if unknown or "chat" not in cfg.formats:
        raise RecordImportError(f"--format takes chat (always), seed, parquet; got {','.join(sorted(cfg.formats))}")
    priorities = load_priority_map(cfg.priority_map)
    try:
        key = load_key(cfg.key_file)
    except MissingKeyError as exc:
        raise RecordImportError(str(exc)) from None
    fingerprint = key_fingerprint(key)
    src = cfg.input
    bad: list[tuple[int, str]] = []
    unmapped: dict[int, str] = {}  # line -> the priority value, shown later only if it is clean
    rows: list[_Row] = []
    unknown_priorities: set[str] = set()
    seen = 0
    t = time.monotonic()
    try:
        for line, raw in iter_records(src, cfg.column_map):
            seen += 1
            try:
                values, level = parse_row(raw, cfg.column_map, priorities)
                record = to_patient_record(values)
            except ValueError as exc:
                if str(exc) == UNMAPPED and isinstance(raw, Mapping):
                    unmapped[line] = _text(raw, cfg.column_map["triage_priority"], "triage_priority")
                    unknown_priorities.add(normalise_priority(unmapped[line]))
                bad.append((line, str(exc)))
                continue
            rows.append(_Row(line, values, level, record))
    except OSError as exc:
        raise RecordImportError(f"{src}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    timings["read"] = time.monotonic() - t
    if seen == 0:
        raise RecordImportError(f"{src}: no records in the file")

    t = time.monotonic()
    if scrubber is None:
        try:
            scrubber = make_scrubber()
        except DatasetError as exc:
            raise RecordImportError(str(exc)) from None
    timings["load"] = time.monotonic() - t
    for n, reason in bad:
        if echo:
            echo(f"skipped {src.name} line {n}: {reason}" + (_shown_priority(unmapped[n], scrubber) if n in unmapped else ""))
    if not rows:
        raise RecordImportError(f"{src}: no usable records ({len(bad)} skipped)")

    try:
        prepare_output(_OutputCfg(cfg.output, cfg.overwrite))
    except DatasetError as exc:
        raise RecordImportError(str(exc)) from None

    t = time.monotonic()
    from .dataset import MemoScrubber

    memo = MemoScrubber(scrubber)
    deid = Deidentifier(key, scrubber=memo)
    del key
    identifiers = _file_identifiers(rows)
    scanner = LeakScanner(identifiers)
    developer = prompts.developer_instructions()
    drops: Counter[str] = Counter()
    leak_types: Counter[str] = Counter()
    removed: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    seeds: dict[str, str] = {}
    per_patient: Counter[str] = Counter()
    free_texts = 0
    for r in rows:
        memo.reset()
        try:
            d = deid.record(r.record)
        except LeakDetected as exc:
            drops["leak_in_deidentification"] += 1
            leak_types.update(exc.types)
            continue
        free_texts += memo.texts
        memo.texts = 0
        if len(d.notes) != 1:
            drops["report_lost_in_scrubbing"] += 1
            continue
        if d.encounter is None or not d.encounter.reasons:
            drops["symptoms_lost_in_scrubbing"] += 1
            continue
        removed.update(d.removed)
        report = report_from_text(d.notes[0], r.acuity)
        if report is None:
            drops["report_without_impression"] += 1
            continue
        shown = dataclasses.replace(d, notes=())
        answer = json.dumps(report, ensure_ascii=False, separators=(",", ":"))
        try:
            row = prompts.chat_example(prompts.build_messages(shown), answer)
            seed_text = prompts.seed_example(prompts.seed_prompt(shown), answer) if "seed" in cfg.formats else None
        except Exception:  # noqa: BLE001 - never show the record; count and go on
            drops["prompt_failed"] += 1
            continue
        varying = [m for m in row["messages"] if not (m["role"] == "developer" and m["content"] == developer)]
        hits = scanner.find_parts(json_parts([varying, seed_text]))
        if hits:
            drops["leak_check"] += 1
            leak_types.update(hits)
            continue
        n = per_patient[d.pseudonym]
        per_patient[d.pseudonym] += 1
        example = {
            "id": f"{d.pseudonym}-r{n}",
            "patient": d.pseudonym,
            "acuity": r.acuity,
            "label_source": LABEL_SOURCE,
            "messages": row["messages"],
            "chat_template_kwargs": row.get("chat_template_kwargs"),
        }
        examples.append(example)
        if seed_text is not None:
            seeds[example["id"]] = seed_text
    timings["records"] = time.monotonic() - t
    if not examples:
        raise RecordImportError(f"{src}: no usable records ({len(bad)} skipped, {sum(drops.values())} dropped in de-identification)")

    t = time.monotonic()
    out = cfg.output
    splits = assign_splits(per_patient, cfg.seed, cfg.split)
    per_split: Counter[str] = Counter()
    by_split_patients: dict[str, set[str]] = {s: set() for s in SPLITS}
    labels: Counter[str] = Counter()
    by_split_labels: dict[str, Counter[str]] = {sp: Counter() for sp in SPLITS}
    from contextlib import ExitStack

    with ExitStack() as stack:
        chat = {s: stack.enter_context(atomic_open(out / f"{s}.jsonl")) for s in SPLITS}
        seed_fh = ({s: stack.enter_context(atomic_open(out / "seed" / f"{s}.jsonl")) for s in SPLITS}
                   if "seed" in cfg.formats else {})
        for ex in sorted(examples, key=lambda e: (e["patient"], int(e["id"].rsplit("-r", 1)[1]))):
            s = splits[ex["patient"]]
            chat[s].write(dumps_line(ex))
            if seed_fh:
                seed_fh[s].write(dumps_line({"id": ex["id"], "patient": ex["patient"], "text": seeds[ex["id"]]}))
            per_split[s] += 1
            by_split_patients[s].add(ex["patient"])
            labels[str(ex["acuity"])] += 1
            by_split_labels[s][str(ex["acuity"])] += 1
    if "parquet" in cfg.formats:
        for s in SPLITS:
            write_parquet(out / f"{s}.parquet", out / f"{s}.jsonl")

    reasons = Counter(reason for _, reason in bad)
    manifest: dict[str, Any] = {
        "tool": "triage dataset import",
        "tool_version": tool_version(),
        "inputs": [{"path": src.name, "bytes": src.stat().st_size, "sha256": sha256_file(src)}],
        "settings": {
            "seed": cfg.seed,
            "split": list(cfg.split),
            "formats": sorted(cfg.formats),
            "column_map": {k: v for k, v in sorted(cfg.column_map.items()) if k != v},
            "priority_map": str(cfg.priority_map) if cfg.priority_map else "model/priority_acuity.yaml (shipped default)",
            "priority_acuity": dict(sorted(priorities.items())),
            "class_acuity": {},
        },
        "deidentification": {
            "key_fingerprint": fingerprint,
            "scrubber": "deidentify.text.TextScrubber (Presidio + clinical recognizers + known identifiers)",
            "date_shift_days": "-365..-1 per patient",
            "age_cap": 90,
        },
        "counts": {
            "records": seen,
            "patients": len(per_patient),
            "patients_with_examples": len(per_patient),
            "patients_per_split": {s: len(by_split_patients[s]) for s in SPLITS},
            "encounters": len(rows),
            "encounters_over_cap": 0,
            "free_texts_scrubbed": free_texts,
            "examples": sum(per_split.values()),
            "examples_per_split": {s: per_split.get(s, 0) for s in SPLITS},
            "labels": {"by_acuity": dict(sorted(labels.items())), "unlabelled": 0,
                       "by_source": {LABEL_SOURCE: sum(labels.values())},
                       "by_split_and_source": {sp: {LABEL_SOURCE: dict(sorted(c.items()))} if c else {}
                                               for sp, c in by_split_labels.items()}},
            "dropped": dict(sorted(drops.items())),
            "bad_lines": len(bad),
            "bad_lines_by_reason": dict(sorted(reasons.items())),
            "unknown_priority_values": len(unknown_priorities),
        },
        "bad_lines": [{"file": src.name, "line": n, "reason": reason} for n, reason in bad],
        "leak_check": {
            "dropped_examples": drops.get("leak_check", 0) + drops.get("leak_in_deidentification", 0),
            "dropped_by_identifier_type": dict(sorted(leak_types.items())),
            "identifiers_searched": 0, "files_scanned": 0, "output_hits": 0, "passed": True,
        },
        "card_text": _card_text(src.name),
        "limits": [
            "Curated records carry no visit time or vital signs: prompts show no vitals, and the rules "
            "summary says it cannot assess. History is one free-text entry, symptoms the reason for the visit.",
            "The target's differential and actions are split from the curated report's sentences "
            "(impression vs. recommendations); hedges set the likelihood. Acuity is the curated priority, "
            "mapped by the priority map in the manifest.",
        ],
    }
    audit = {"key_fingerprint": fingerprint, "removed_by_resource_type": {"Curated record": dict(sorted(removed.items()))},
             "removed_total_by_type": dict(sorted(removed.items())), "leak_check_drops_by_type": dict(sorted(leak_types.items()))}
    files = _output_files(out, _OutputCfg(out, False, cfg.formats))
    write_json(out / AUDIT_NAME, audit)
    write_card(out / CARD_NAME, manifest, audit)
    hits = scan_outputs(files + [out / AUDIT_NAME, out / CARD_NAME], scanner)
    manifest["leak_check"].update(identifiers_searched=scanner.size, files_scanned=len(files) + 3,
                                  output_hits=sum(hits.values()), passed=not hits,
                                  output_hits_by_type=dict(sorted(hits.items())))
    write_card(out / CARD_NAME, manifest, audit)
    write_json(out / MANIFEST_NAME, manifest)
    hits.update(scan_outputs([out / MANIFEST_NAME, out / CARD_NAME], scanner))
    timings["write"] = time.monotonic() - t
    if hits:
        from .dataset import LeakFound

        raise LeakFound("leak check FAILED: identifiers found in output files ("
                        + ", ".join(f"{k}={v}" for k, v in sorted(hits.items())) + "); do not share this output")
    return ImportResult(out, manifest, time.monotonic() - t0, bad, timings)


@dataclass
class _OutputCfg:
    """What `prepare_output` and `_output_files` read of a build's config."""

    output: Path
    overwrite: bool
    formats: tuple[str, ...] = ("chat", "seed", "parquet")
    resume: bool = False


def _card_text(name: str) -> dict[str, str]:
    return {
        "intro": (
            f"De-identified examples imported from curated triage records (`{name}`) by `triage dataset import`.\n"
            "One example per record: the user turn is the record's history (one free-text entry), symptoms\n"
            "(the reason for the visit), age and sex where given, as the service describes a patient at\n"
            "inference; the assistant turn is a `TriageReport` drawn from the curated diagnosis report, with\n"
            "the acuity mapped from the record's triage priority."
        ),
        "labels": (
            "Acuity on the ESI-aligned scale of `model/acuity.py`, from each record's triage priority through\n"
            "the priority map named in `manifest.json` (settings.priority_map; the table is in\n"
            "settings.priority_acuity). A priority the map does not list is reported and its record\n"
            "skipped; no label is guessed. `label_source` is `imported` for every example."
        ),
        "totals": "Records read: {records}; patients: {patients}; examples written: {examples}.",
        "leak_scope": "every record of the file (its identity columns: id, name, MRN, birth date, phone,\ne-mail, address, city, ZIP)",
    }

