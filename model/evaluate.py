"""Triage evaluation: labelled cases in, agreement and safety figures out.

Cases are read from a CSV or JSONL of vignettes/visits (age, sex, complaint, vitals, AVPU, pain
and the reference ESI level) or from a folder of FHIR Bundles with a `labels.jsonl`. Each input
file is its own split: a held-back file is reported on its own line, never pooled away.

The figures are the ones triage research reports against an expert reference level:
exact and within-one agreement, quadratic weighted kappa, under-triage (a level less urgent
than the reference: the dangerous error), over-triage, sensitivity for reference levels 1-2,
the confusion matrix, and the same by sex and age band (a bias check). `gate` turns them into a
release verdict. Running cases through the service is the caller's job (`cds_hooks.evaluate`);
this module never imports the service.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LEVELS = (1, 2, 3, 4, 5)
AGE_BANDS = (("0-17", 0, 17), ("18-64", 18, 64), ("65+", 65, 200))
DEFAULT_MAX_UNDER_TRIAGE = 0.10  # the triage nurses' own rate on real ED visits (see docs/evaluation.md)
_AVPU = {"A", "C", "V", "P", "U"}
_FIELDS = ("age_years", "age_months", "sex", "complaint", "hr", "rr", "sbp", "dbp", "temp_c", "spo2",
           "avpu", "pain", "esi")


class CaseError(ValueError):
    """A case file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Case:
    id: str
    split: str  # the input file's stem: dev, heldout, a clinic's own...
    esi: int  # the reference level
    age_years: int | None = None
    age_months: int | None = None
    sex: str | None = None
    complaint: str | None = None
    hr: float | None = None
    rr: float | None = None
    sbp: float | None = None
    dbp: float | None = None
    temp_c: float | None = None
    spo2: float | None = None
    avpu: str | None = None
    pain: float | None = None
    rationale: str | None = None
    bundle: dict[str, Any] | None = None  # a FHIR Bundle case: sent as it is

    @property
    def age_band(self) -> str:
        age = self.age_years
        if age is None:
            return "unknown"
        return next(name for name, low, high in AGE_BANDS if low <= age <= high)


# --- reading cases ---------------------------------------------------------------------------

def _number(value: Any, where: str, name: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() in ("", "NA", "null", "None", "??")):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CaseError(f"{where}: {name} is not a number: {str(value)[:20]!r}") from None
    return number if math.isfinite(number) else None


def _case(row: Mapping[str, Any], *, split: str, where: str, index: int) -> Case:
    if not isinstance(row, Mapping):
        raise CaseError(f"{where}: a case must be an object")
    level = _number(row.get("esi", row.get("reference_level")), where, "esi")
    if level is None or int(level) != level or int(level) not in LEVELS:
        raise CaseError(f"{where}: esi must be a level 1-5")
    avpu = (str(row.get("avpu") or "").strip().upper()[:1]) or None
    if avpu is not None and avpu not in _AVPU:
        raise CaseError(f"{where}: avpu must be one of A, C, V, P, U")
    age = _number(row.get("age_years", row.get("age")), where, "age_years")
    months = _number(row.get("age_months"), where, "age_months")
    sex = (str(row.get("sex") or "").strip().lower() or None)
    sex = {"m": "male", "f": "female"}.get(sex, sex) if sex else None
    return Case(
        id=str(row.get("id") or f"{split}-{index}"), split=split, esi=int(level),
        age_years=int(age) if age is not None else None,
        age_months=int(months) if months is not None else None, sex=sex,
        complaint=(str(row["complaint"]).strip() or None) if row.get("complaint") is not None else None,
        hr=_number(row.get("hr"), where, "hr"), rr=_number(row.get("rr"), where, "rr"),
        sbp=_number(row.get("sbp"), where, "sbp"), dbp=_number(row.get("dbp"), where, "dbp"),
        temp_c=_number(row.get("temp_c"), where, "temp_c"), spo2=_number(row.get("spo2"), where, "spo2"),
        avpu=avpu, pain=_number(row.get("pain"), where, "pain"),
        rationale=row.get("rationale"),
    )


def _read_jsonl(path: Path) -> list[Case]:
    cases = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CaseError(f"{path.name} line {n}: not JSON ({exc.msg})") from None
            cases.append(_case(row, split=path.stem, where=f"{path.name} line {n}", index=n))
    return cases


def _read_csv(path: Path) -> list[Case]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        header = {h.strip().lower() for h in reader.fieldnames or ()}
        if "esi" not in header and "reference_level" not in header:
            raise CaseError(f"{path.name} line 1: no esi column (columns: {', '.join(sorted(header))})")
        return [
            _case({k.strip().lower(): v for k, v in row.items() if k}, split=path.stem,
                  where=f"{path.name} line {n}", index=n)
            for n, row in enumerate(reader, 2)
        ]


def _read_bundles(folder: Path) -> list[Case]:
    labels_file = folder / "labels.jsonl"
    if not labels_file.is_file():
        raise CaseError(f"{folder}: a folder of Bundles needs labels.jsonl ({{\"file\": ..., \"esi\": ...}})")
    cases = []
    for n, line in enumerate(labels_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"labels.jsonl line {n}"
        try:
            label = json.loads(line)
            bundle = json.loads((folder / label["file"]).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, KeyError, TypeError, OSError) as exc:
            raise CaseError(f"{where}: {type(exc).__name__} reading the label or its Bundle") from None
        case = _case({**label, "id": label.get("id") or label["file"]}, split=folder.name, where=where, index=n)
        cases.append(Case(**{**asdict(case), "bundle": bundle}))
    return cases


def load_cases(path: str | os.PathLike[str]) -> list[Case]:
    """Cases from a file (.jsonl, .csv), a folder of such files (one split each), or a folder of
    FHIR Bundles with labels.jsonl."""
    root = Path(path)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        if (root / "labels.jsonl").is_file():
            return _read_bundles(root)
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".jsonl", ".csv"))
        if not files:
            raise CaseError(f"{root}: no .jsonl or .csv case files")
    else:
        raise CaseError(f"{root}: no such file or folder")
    cases: list[Case] = []
    for f in files:
        cases += _read_csv(f) if f.suffix.lower() == ".csv" else _read_jsonl(f)
    if not cases:
        raise CaseError(f"{root}: no cases")
    return cases


# --- metrics ---------------------------------------------------------------------------------

def quadratic_kappa(reference: Sequence[int], predicted: Sequence[int], levels: Sequence[int] = LEVELS) -> float:
    """Cohen's kappa with quadratic weights (the usual agreement figure for ordinal triage scales)."""
    k = len(levels)
    index = {lvl: i for i, lvl in enumerate(levels)}
    n = len(reference)
    if n == 0:
        return float("nan")
    observed = [[0.0] * k for _ in range(k)]
    for r, p in zip(reference, predicted):
        observed[index[r]][index[p]] += 1
    rows = [sum(row) for row in observed]
    cols = [sum(observed[i][j] for i in range(k)) for j in range(k)]
    num = den = 0.0
    for i in range(k):
        for j in range(k):
            w = (i - j) ** 2 / (k - 1) ** 2
            num += w * observed[i][j]
            den += w * rows[i] * cols[j] / n
    return 1.0 - num / den if den else 1.0


def confusion(reference: Sequence[int], predicted: Sequence[int]) -> list[list[int]]:
    """Rows: reference level 1-5; columns: predicted level 1-5."""
    matrix = [[0] * 5 for _ in LEVELS]
    for r, p in zip(reference, predicted):
        matrix[r - 1][p - 1] += 1
    return matrix


def agreement(reference: Sequence[int], predicted: Sequence[int]) -> dict[str, Any]:
    n = len(reference)
    pairs = list(zip(reference, predicted))
    urgent = [(r, p) for r, p in pairs if r <= 2]
    return {
        "n": n,
        "exact": _rate(sum(r == p for r, p in pairs), n),
        "within_one": _rate(sum(abs(r - p) <= 1 for r, p in pairs), n),
        "kappa": round(quadratic_kappa(reference, predicted), 4) if n else None,
        "under_triage": _rate(sum(p > r for r, p in pairs), n),
        "over_triage": _rate(sum(p < r for r, p in pairs), n),
        "sensitivity_1_2": _rate(sum(p <= 2 for _, p in urgent), len(urgent)),
        "n_level_1_2": len(urgent),
        "confusion": confusion(reference, predicted),
    }


def _rate(count: int, n: int) -> float | None:
    return round(count / n, 4) if n else None


@dataclass
class TriagerResult:
    """One triager's levels for the cases it answered (None where it gave none)."""

    name: str
    levels: dict[str, int | None] = field(default_factory=dict)  # case id -> level
    schema_valid: int | None = None  # model only: reports valid under TriageReport
    answered: int | None = None  # model only: AI cards received (not pending)
    leaks: int | None = None  # identifier hits in the triager's output text
    seconds: float = 0.0


def metrics(cases: Sequence[Case], results: Iterable[TriagerResult]) -> dict[str, Any]:
    """Figures per triager: overall, per split, by sex and age band."""
    out: dict[str, Any] = {"cases": len(cases), "splits": sorted({c.split for c in cases}), "triagers": {}}
    for result in results:
        scored = [c for c in cases if result.levels.get(c.id) is not None]

        def block(subset: Sequence[Case]) -> dict[str, Any]:
            return agreement([c.esi for c in subset], [int(result.levels[c.id]) for c in subset])

        entry: dict[str, Any] = {
            "overall": block(scored),
            "no_level": len(cases) - len(scored),
            "by_split": {s: block([c for c in scored if c.split == s]) for s in out["splits"]},
            "by_sex": {s: block([c for c in scored if (c.sex or "unknown") == s])
                       for s in sorted({c.sex or "unknown" for c in scored})},
            "by_age_band": {b: block([c for c in scored if c.age_band == b])
                            for b in [name for name, _, _ in AGE_BANDS] + ["unknown"]
                            if any(c.age_band == b for c in scored)},
            "seconds": round(result.seconds, 2),
        }
        if result.schema_valid is not None:
            entry["schema_valid_rate"] = _rate(result.schema_valid, result.answered or 0)
            entry["answered"] = result.answered
        if result.leaks is not None:
            entry["identifier_leaks"] = result.leaks
        out["triagers"][result.name] = entry
    return out


def gate(report: dict[str, Any], *, max_under_triage: float = DEFAULT_MAX_UNDER_TRIAGE) -> dict[str, Any]:
    """Release verdict: every triager under-triages at most `max_under_triage`, and a model no more
    than the rules in the same run; a triager that answered nothing fails."""
    failures: list[str] = []
    triagers = report["triagers"]
    rules_rate = triagers.get("rules", {}).get("overall", {}).get("under_triage")
    for name, entry in triagers.items():
        rate = entry["overall"]["under_triage"]
        if rate is None:
            failures.append(f"{name}: no case answered")
            continue
        if rate > max_under_triage:
            failures.append(f"{name}: under-triage {rate:.3f} > {max_under_triage:.3f}")
        if name != "rules" and rules_rate is not None and rate > rules_rate:
            failures.append(f"{name}: under-triage {rate:.3f} > rules {rules_rate:.3f}")
        if entry.get("identifier_leaks"):
            failures.append(f"{name}: {entry['identifier_leaks']} identifier leaks in its outputs")
    return {"passed": not failures, "max_under_triage": max_under_triage, "failures": failures}


# --- report ----------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    return "—" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


_COLUMNS = ("n", "exact", "within_one", "kappa", "under_triage", "over_triage", "sensitivity_1_2")


def _table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = ["| | " + " | ".join(_COLUMNS) + " |", "|---|" + "---|" * len(_COLUMNS)]
    lines += [f"| {name} | " + " | ".join(_fmt(b.get(c)) for c in _COLUMNS) + " |" for name, b in rows]
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Triage evaluation", "", f"{report['cases']} cases; splits: {', '.join(report['splits'])}.", ""]
    if "gate" in report:
        verdict = "PASSED" if report["gate"]["passed"] else "FAILED"
        lines += [f"**Safety gate: {verdict}** (under-triage at most {report['gate']['max_under_triage']:.2f}"
                  ", a model no worse than the rules)"]
        lines += [f"- {f}" for f in report["gate"]["failures"]] + [""]
    lines += ["## Side by side", ""]
    rows = []
    for name, entry in report["triagers"].items():
        rows.append((f"{name} (all)", entry["overall"]))
        rows += [(f"{name} ({split})", block) for split, block in entry["by_split"].items()]
    lines += _table(rows) + [""]
    for name, entry in report["triagers"].items():
        lines += [f"## {name}", ""]
        extra = {k: entry[k] for k in ("no_level", "schema_valid_rate", "answered", "identifier_leaks", "seconds")
                 if k in entry}
        lines += [", ".join(f"{k}: {_fmt(v)}" for k, v in extra.items()), ""]
        lines += ["Confusion matrix (rows: reference ESI, columns: this triager):", "",
                  "| ref \\ pred | 1 | 2 | 3 | 4 | 5 |", "|---|---|---|---|---|---|"]
        lines += [f"| {i + 1} | " + " | ".join(str(x) for x in row) + " |"
                  for i, row in enumerate(entry["overall"]["confusion"])]
        lines += ["", "By sex and age band (bias check):", ""]
        lines += _table([(f"sex {k}", v) for k, v in entry["by_sex"].items()]
                        + [(f"age {k}", v) for k, v in entry["by_age_band"].items()]) + [""]
    return "\n".join(lines)


def plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Confusion matrices and under-triage by group, as PNG (matplotlib, no display); none, with a
    warning, where matplotlib is not installed (the `monitor` extra)."""
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'triage-cds[monitor]'): no PNG plots")
        return []

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = list(report["triagers"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        matrix = report["triagers"][name]["overall"]["confusion"]
        ax.imshow(matrix, cmap="Blues")
        for i in range(5):
            for j in range(5):
                ax.text(j, i, str(matrix[i][j]), ha="center", va="center",
                        color="white" if matrix[i][j] > max(map(max, matrix)) / 2 else "black")
        ax.set_xticks(range(5), [str(x) for x in LEVELS])
        ax.set_yticks(range(5), [str(x) for x in LEVELS])
        ax.set_xlabel(f"{name} level")
        ax.set_ylabel("reference ESI")
        ax.set_title(name)
    fig.tight_layout()
    path = out_dir / "confusion.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(8, 4))
    groups = sorted({g for e in report["triagers"].values()
                     for g in [*(f"sex {k}" for k in e["by_sex"]), *(f"age {k}" for k in e["by_age_band"])]})
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        entry = report["triagers"][name]
        blocks = {**{f"sex {a}": b for a, b in entry["by_sex"].items()},
                  **{f"age {a}": b for a, b in entry["by_age_band"].items()}}
        values = [(blocks.get(g) or {}).get("under_triage") or 0.0 for g in groups]
        ax.bar([i + k * width for i in range(len(groups))], values, width, label=name)
    ax.axhline(report.get("gate", {}).get("max_under_triage", DEFAULT_MAX_UNDER_TRIAGE), color="red",
               linestyle="--", linewidth=1, label="gate")
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(groups))], groups, rotation=20)
    ax.set_ylabel("under-triage rate")
    ax.legend()
    fig.tight_layout()
    path = out_dir / "under_triage_by_group.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


def write_report(report: dict[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """report.md, metrics.json and the PNG plots, each written then renamed into place."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("metrics.json", json.dumps(report, indent=2, sort_keys=False)),
                       ("report.md", markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, out / name)
        written.append(out / name)
    return written + plots(report, out)
