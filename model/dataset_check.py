"""`triage dataset check DIR`: is a dataset folder fit to train on? For a built, imported or
hand-made folder, in the chat format (`<split>.jsonl` with `messages`) and the seed format
(`seed/<split>.jsonl` or any `*.jsonl` whose rows hold `###Human: ... ###Assistant: {...}` text).

Hard failures (exit 1): a target not valid under the folder's target schema (the manifest's
`settings.target_schema`, else the serving `TriageReport`); a row's `acuity` that disagrees with its
target; a `label_source` outside record / rules / nurse feedback / imported; a patient in two
splits; an identifier in any row (the identifiers of `--identifiers-from EXPORT`, searched as the
build's leak check does, and direct identifiers by pattern: e-mail addresses, SSNs, phone numbers);
a manifest whose own leak check failed; an example longer than the maximum length in tokens of the
configured model's tokenizer; one patient holding more than `max_patient_share` of the examples.
Warnings: a split with fewer patients than the minimum, no tokenizer to measure lengths with.
`triage train` is meant to run `check_dataset` first and refuse a failing folder unless told otherwise.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dataset_targets import LABEL_SOURCES, SCHEMAS, chat_target, loads, split_seed, target_problem

SPLIT_NAMES = ("train", "validation", "test")
# Direct identifiers no de-identified row should hold, whatever the export (placeholders excepted).
_PATTERNS = {
    "EMAIL": re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"),
    "SSN": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "PHONE": re.compile(r"(?<![\w-])(?:\+?1[-. ]?)?\(?\d{3}\)?[-. ]\d{3}[-. ]\d{4}(?![\w-])"),
}


@dataclass
class Finding:
    check: str
    status: str  # "ok", "warn", "FAIL"
    detail: str


@dataclass
class CheckReport:
    folder: Path
    findings: list[Finding] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not any(f.status == "FAIL" for f in self.findings)

    def add(self, check: str, ok: bool, detail: str, *, warn_only: bool = False) -> None:
        self.findings.append(Finding(check, "ok" if ok else ("warn" if warn_only else "FAIL"), detail))

    def table(self) -> str:
        w = max(len(f.check) for f in self.findings)
        lines = [f"  {'check'.ljust(w)}  status  detail", f"  {'-' * w}  ------  ------"]
        lines += [f"  {f.check.ljust(w)}  {f.status.ljust(6)}  {f.detail}" for f in self.findings]
        return "\n".join(lines)


class CheckError(RuntimeError):
    """The folder cannot be checked at all (one line)."""


@dataclass
class _Example:
    file: str
    line: int
    split: str
    fmt: str  # "chat" or "seed"
    patient: str | None
    target: str | None
    acuity: Any
    label_source: Any
    messages: list[dict[str, Any]] | None
    text: str | None  # seed text
    template_kwargs: dict[str, Any] | None


def _split_of(path: Path) -> str:
    stem = path.name.split(".")[0]
    return stem if stem in SPLIT_NAMES else stem


def _files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.glob("*.jsonl")) + sorted(p for p in (folder / "seed").glob("*.jsonl"))
    return [p for p in files if not p.name.startswith(".")]


def iter_examples(folder: Path, bad: list[str]) -> Iterator[_Example]:
    for path in _files(folder):
        rel = str(path.relative_to(folder))
        with open(path, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                row = loads(line)
                if not isinstance(row, dict):
                    bad.append(f"{rel} line {n}: not a JSON object")
                    continue
                if isinstance(row.get("messages"), list):
                    yield _Example(rel, n, _split_of(path), "chat", row.get("patient"), chat_target(row), row.get("acuity"),
                                   row.get("label_source"), row["messages"], None, row.get("chat_template_kwargs"))
                elif isinstance(row.get("text"), str) and (parts := split_seed(row["text"])) is not None:
                    yield _Example(rel, n, _split_of(path), "seed", row.get("patient"), parts[1], row.get("acuity", "n/a"),
                                   row.get("label_source", "n/a"), None, row["text"], None)
                else:
                    bad.append(f"{rel} line {n}: neither a chat row (messages) nor a seed row (###Human: ... ###Assistant:)")


def _tokenizer(name: str | None) -> Any:
    if not name:
        return None
    from .text_import import TextImportError, load_tokenizer

    try:
        return load_tokenizer(name)
    except TextImportError as exc:
        raise CheckError(str(exc)) from None


def check_dataset(folder: Path, *, tokenizer: Any = None, tokenizer_name: str | None = None, max_tokens: int = 2048,
                  max_patient_share: float = 0.25, min_patients_per_split: int = 5,
                  identifiers: Any = None, target_schema: str | None = None) -> CheckReport:
    """Every check of the module docstring over `folder`; raises CheckError if it cannot be read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckError(f"{folder}: not a folder")
    if not _files(folder):
        raise CheckError(f"{folder}: no .jsonl files (nor seed/*.jsonl)")
    manifest: dict[str, Any] = {}
    if (folder / "manifest.json").is_file():
        manifest = loads((folder / "manifest.json").read_text(encoding="utf-8")) or {}
        if not isinstance(manifest, dict):
            raise CheckError(f"{folder / 'manifest.json'}: not a JSON object")
    schema = target_schema or (manifest.get("settings") or {}).get("target_schema") or "triage-report"
    if schema not in SCHEMAS:
        raise CheckError(f"{folder}: unknown target schema {schema!r}")
    if tokenizer is None and tokenizer_name:
        tokenizer = _tokenizer(tokenizer_name)

    report = CheckReport(folder)
    bad: list[str] = []
    scanner = None
    if identifiers is not None:
        from .dataset import LeakScanner

        scanner = LeakScanner(identifiers)
    invalid: Counter[str] = Counter()
    mismatched = unknown_source = 0
    leak_hits: Counter[str] = Counter()
    split_patients: dict[str, dict[str, set[str]]] = {}  # fmt -> patient -> splits
    per_patient: dict[str, Counter[str]] = {}  # fmt -> patient -> examples
    labels: dict[tuple[str, str], Counter[str]] = {}  # (fmt, split) -> acuity -> n
    sources: Counter[str] = Counter()
    lengths: dict[str, list[int]] = {}
    over: dict[str, list[str]] = {}
    n_examples: Counter[str] = Counter()
    first_invalid: list[str] = []
    no_patient = 0
    batch: list[tuple[_Example, str]] = []

    def measure() -> None:
        enc = tokenizer([t for _, t in batch], add_special_tokens=False)["input_ids"]
        for (ex, _), ids in zip(batch, enc):
            lengths.setdefault(ex.fmt, []).append(len(ids))
            if len(ids) > max_tokens:
                over.setdefault(ex.fmt, []).append(f"{ex.file} line {ex.line}")
        batch.clear()

    for ex in iter_examples(folder, bad):
        n_examples[ex.fmt] += 1
        where = f"{ex.file} line {ex.line}"
        problem = "no assistant turn" if ex.target is None else target_problem(ex.target, schema)
        if problem:
            invalid[problem.split(":")[0] if problem != "no assistant turn" else problem] += 1
            if len(first_invalid) < 3:
                first_invalid.append(f"{where}: {problem}")
            level = None
        else:
            level = (loads(ex.target) or {}).get("acuity")
        if ex.fmt == "chat":
            if schema == "triage-report" and not problem and ex.acuity != level:
                mismatched += 1
            if ex.label_source not in LABEL_SOURCES and not (schema == "diagnosis-only" and ex.label_source is None):
                unknown_source += 1
            sources[str(ex.label_source)] += 1
        if ex.patient is None:
            no_patient += 1
        else:
            split_patients.setdefault(ex.fmt, {}).setdefault(ex.patient, set()).add(ex.split)
            per_patient.setdefault(ex.fmt, Counter())[ex.patient] += 1
        shown = level if level is not None else (ex.acuity if isinstance(ex.acuity, int) else None)
        labels.setdefault((ex.fmt, ex.split), Counter())["none" if shown is None else str(shown)] += 1
        texts = [m.get("content") or "" for m in ex.messages or () if isinstance(m, dict)] + \
                [m.get("thinking") or "" for m in ex.messages or () if isinstance(m, dict)] if ex.messages else [ex.text or ""]
        joined = "\n".join(texts)
        for kind, pattern in _PATTERNS.items():
            found = len(pattern.findall(joined))
            if found:
                leak_hits[kind] += found
        if scanner is not None:
            leak_hits.update(scanner.find_parts(texts))
        if tokenizer is not None:
            if ex.messages:
                from .prompts import render_chat_prompt

                effort = (ex.template_kwargs or {}).get("reasoning_effort", "low")
                try:
                    rendered = render_chat_prompt(tokenizer, ex.messages, reasoning_effort=effort, add_generation_prompt=False)
                except Exception:  # noqa: BLE001 - a template that cannot render this row
                    rendered = "\n".join(texts)
            else:
                rendered = ex.text or ""
            batch.append((ex, rendered))
            if len(batch) >= 256:
                measure()
    if tokenizer is not None and batch:
        measure()

    total = sum(n_examples.values())
    report.figures = {"examples": dict(n_examples), "schema": schema}
    report.add("rows", not bad, f"{total} examples ({', '.join(f'{k} {v}' for k, v in sorted(n_examples.items()))})"
               + (f"; {len(bad)} unreadable rows, first: {bad[0]}" if bad else ""))
    n_invalid = sum(invalid.values())
    report.add(f"targets ({schema})", n_invalid == 0,
               f"{total - n_invalid} of {total} valid" + (f"; invalid: {dict(invalid)}; first: {first_invalid[0]}" if n_invalid else ""))
    report.figures["invalid_targets"] = n_invalid
    if n_examples.get("chat"):
        report.add("acuity agrees with target", mismatched == 0, f"{mismatched} rows disagree" if mismatched else "every row")
        report.add("label sources", unknown_source == 0,
                   ", ".join(f"{k}: {v}" for k, v in sorted(sources.items())) + (f"; {unknown_source} outside "
                                                                                  f"{'/'.join(LABEL_SOURCES)}" if unknown_source else ""))
    overlap = {fmt: sum(1 for s in pats.values() if len(s) > 1) for fmt, pats in split_patients.items()}
    report.add("splits disjoint by patient", not any(overlap.values()),
               "; ".join(f"{fmt}: {len(p)} patients, {overlap[fmt]} in more than one split" for fmt, p in sorted(split_patients.items()))
               + (f"; {no_patient} rows without patient" if no_patient else ""))
    for fmt, pats in sorted(split_patients.items()):
        counts = Counter(next(iter(s)) for s in pats.values() if len(s) == 1)
        small = [f"{s} {counts.get(s, 0)}" for s in SPLIT_NAMES if 0 < counts.get(s, 0) < min_patients_per_split
                 or (counts.get(s, 0) == 0 and any(k[1] == s for k in labels))]
        report.add(f"patients per split ({fmt})", not small,
                   ", ".join(f"{s} {counts.get(s, 0)}" for s in SPLIT_NAMES if s in counts or any(k[1] == s for k in labels))
                   + (f" (fewer than {min_patients_per_split}: too small to split reliably)" if small else ""), warn_only=True)
    for fmt, pats in sorted(per_patient.items()):
        top = max(pats.values())
        share = top / max(1, n_examples[fmt])
        report.figures[f"largest_patient_share_{fmt}"] = round(share, 4)
        report.add(f"largest patient share ({fmt})", share <= max_patient_share,
                   f"{top} of {n_examples[fmt]} examples ({share:.1%}; at most {max_patient_share:.0%})")
    for (fmt, split), c in sorted(labels.items()):
        report.add(f"labels {fmt}/{split}", True, ", ".join(f"{k}: {v}" for k, v in sorted(c.items())))
    report.figures["labels"] = {f"{f}/{s}": dict(c) for (f, s), c in labels.items()}
    leak = manifest.get("leak_check")
    if isinstance(leak, dict):
        report.add("manifest leak check", bool(leak.get("passed")),
                   f"{leak.get('output_hits', '?')} hits in {leak.get('files_scanned', '?')} files at build time")
    searched = (f"{scanner.size} identifiers of --identifiers-from and " if scanner is not None else "") + "e-mail/SSN/phone patterns"
    report.add("identifiers", not leak_hits, f"{searched}: " + (", ".join(f"{k} {v}" for k, v in sorted(leak_hits.items())) or "none found"))
    report.figures["identifier_hits"] = dict(leak_hits)
    if tokenizer is None:
        report.add("token lengths", False, "not measured: no tokenizer (pass --tokenizer or set TRIAGE_MODEL_PATH)", warn_only=True)
    else:
        for fmt, ls in sorted(lengths.items()):
            ls.sort()
            o = over.get(fmt, [])
            report.add(f"token lengths ({fmt})", not o,
                       f"median {ls[len(ls) // 2]}, max {ls[-1]} (limit {max_tokens}" + (f"; {len(o)} over, first: {o[0]})" if o else ")"))
        report.figures["max_tokens"] = {fmt: max(ls) for fmt, ls in lengths.items()}
        report.figures["over_max_tokens"] = sum(len(o) for o in over.values())
    return report
