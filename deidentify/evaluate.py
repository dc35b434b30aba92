"""Evaluation of free-text de-identification on ASQ-PHI and on Synthea clinical notes.

ASQ-PHI labels values, not offsets. A labelled value is located in its query (every
occurrence, case-insensitive, curly quotes folded) and counts as CAUGHT only if every
alphanumeric character of every occurrence lies inside a redaction span, so nothing of it
survives in any mode (placeholder or surrogate). Two exceptions, both generic: identifier
label words inside a value ("patient ID: 897-65-4321", "case #JH-998877") and a leading
"the" ("the Bronx") need not be covered. A value that cannot be located is reported apart.
A hard negative counts as ALTERED if any span was found in it.

Synthea: each note is scrubbed with the known identifiers of its patient, its author and its
custodian organization; then every name, address line, city, phone and identifier of every
Patient, Practitioner and Organization in the export is searched for (whole word,
case-insensitive) in every scrubbed note. The kept share is the fraction of word tokens of the
original notes that are not identifiers (not inside an export identifier or a date) and that
no span touched.
"""
from __future__ import annotations

import base64
import json
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Iterable, Iterator

from fhir_adapter.record import Address, Identity

from deidentify.known import KnownIdentifiers
from deidentify.text import Span, TextScrubber

ASQ_FILE = "synthetic_clinical_queries.txt"
# ASQ-PHI's one EMAIL_ADDRESS labelling error (the value is the word "email" itself): 30/31 is
# that type's ceiling, so its floor in the goal is 30/31 instead of 0.98.
TYPE_FLOORS = {"EMAIL_ADDRESS": 30 / 31}
_LABEL_WORDS = frozenset(
    "patient pt id identifier case site mrn ssn ss no number acct account ref reference the "
    "insurance plan member policy license medicare medicaid".split()
)


# --- ASQ-PHI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AsqQuery:
    text: str
    tags: tuple[tuple[str, str], ...]  # (identifier_type, value)


def load_asq(path: str | Path) -> list[AsqQuery]:
    """Parse ASQ-PHI's `===QUERY=== ... ===PHI_TAGS=== {json per line}` blocks."""
    p = Path(path)
    if p.is_dir():
        p = p / ASQ_FILE
    raw = p.read_text(encoding="utf-8")
    out = []
    for block in raw.split("===QUERY===")[1:]:
        query, _, tags = block.partition("===PHI_TAGS===")
        parsed = []
        for line in tags.strip().splitlines():
            if line.strip():
                d = json.loads(line)
                parsed.append((d["identifier_type"], d["value"]))
        out.append(AsqQuery(query.strip(), tuple(parsed)))
    return out


def _fold(s: str) -> str:
    return s.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')


def value_caught(text: str, value: str, spans: Iterable[Span]) -> bool | None:
    """True if no alphanumeric character of any occurrence of `value` survives; None if the
    value does not occur in `text`."""
    t, v = _fold(text).lower(), _fold(value).lower().strip()
    starts = [m.start() for m in re.finditer(re.escape(v), t)] if v else []
    if not starts:
        return None
    covered = bytearray(len(text))
    for s in spans:
        covered[s.start:s.end] = b"\x01" * (s.end - s.start)
    for st in starts:
        for m in re.finditer(r"[a-z0-9]+", v):
            if m.group() in _LABEL_WORDS and len(re.findall(r"[a-z0-9]+", v)) > 1:
                continue
            if not all(covered[st + i] for i in range(m.start(), m.end())):
                return False
    return True


@dataclass
class TypeRecall:
    n: int = 0
    caught: int = 0

    @property
    def recall(self) -> float:
        return self.caught / self.n if self.n else 1.0


@dataclass
class AsqReport:
    per_type: dict[str, TypeRecall]
    overall: TypeRecall
    negatives: int
    negatives_altered: int
    unlocated: int
    missed: list[tuple[str, str, str]] = field(default_factory=list)  # (type, value, query)
    altered: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def fp_rate(self) -> float:
        return self.negatives_altered / self.negatives if self.negatives else 0.0

    def meets_goal(self, recall: float = 0.98, fp: float = 0.10, floors: dict[str, float] | None = None) -> bool:
        floors = TYPE_FLOORS if floors is None else floors
        return self.overall.recall >= recall and self.fp_rate <= fp and all(
            r.recall >= floors.get(t, recall) for t, r in self.per_type.items()
        )


def asq_notes(path: str | Path, *, limit: int | None = None) -> list:
    """ASQ-PHI as labelled notes: every occurrence of every labelled value is a gold span (for
    span precision; recall stays `evaluate_asq`'s value measure)."""
    from deidentify.corpus import Note

    out = []
    for i, q in enumerate(subset(load_asq(path), limit)):
        t = _fold(q.text).lower()
        spans = []
        for typ, value in q.tags:
            v = _fold(value).lower().strip()
            if v:
                spans += [(m.start(), m.end(), typ) for m in re.finditer(re.escape(v), t)]
        out.append(Note(str(i), q.text, tuple(spans)))
    return out


def upper_cased(queries: list[AsqQuery]) -> list[AsqQuery]:
    """The same queries and labels written in capitals (as nursing notes often are)."""
    return [AsqQuery(q.text.upper(), tuple((t, v.upper()) for t, v in q.tags)) for q in queries]


def subset(queries: list[AsqQuery], limit: int | None) -> list[AsqQuery]:
    """A deterministic subset: every k-th query, so positives and negatives stay mixed."""
    if not limit or limit >= len(queries):
        return queries
    step = len(queries) / limit
    return [queries[int(i * step)] for i in range(limit)]


def evaluate_asq(scrubber: TextScrubber, path: str | Path, *, limit: int | None = None,
                 upper: bool = False) -> AsqReport:
    """`upper=True` evaluates the queries and labels upper-cased (ALL CAPS parity)."""
    queries = subset(load_asq(path), limit)
    if upper:
        queries = upper_cased(queries)
    t0 = time.perf_counter()
    spans = scrubber.analyze_many([q.text for q in queries])
    seconds = time.perf_counter() - t0
    per_type: dict[str, TypeRecall] = defaultdict(TypeRecall)
    overall = TypeRecall()
    negatives = altered = unlocated = 0
    missed, altered_q = [], []
    for q, sp in zip(queries, spans):
        if not q.tags:
            negatives += 1
            if sp:
                altered += 1
                altered_q.append(q.text)
            continue
        for typ, value in q.tags:
            ok = value_caught(q.text, value, sp)
            if ok is None:
                unlocated += 1
                continue
            per_type[typ].n += 1
            overall.n += 1
            if ok:
                per_type[typ].caught += 1
                overall.caught += 1
            else:
                missed.append((typ, value, q.text))
    return AsqReport(dict(sorted(per_type.items())), overall, negatives, altered, unlocated, missed,
                     altered_q, seconds)


# --- Synthea ---------------------------------------------------------------------------------


def _read_ndjson(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _names(res: dict) -> tuple[list[str], list[str]]:
    given, family = [], []
    for n in res.get("name", []) or []:
        if isinstance(n, dict):
            given += n.get("given", []) or []
            if n.get("family"):
                family.append(n["family"])
    return given, family


def _addresses(res: dict) -> tuple[Address, ...]:
    out = []
    for a in res.get("address", []) or []:
        out.append(Address(tuple(a.get("line", []) or []), a.get("city"), a.get("district"), a.get("state"),
                           a.get("postalCode"), a.get("country")))
    return tuple(out)


def _telecom(res: dict, system: str) -> tuple[str, ...]:
    return tuple(t["value"] for t in res.get("telecom", []) or [] if t.get("system") == system and t.get("value"))


def identity_of(res: dict) -> Identity:
    """An Identity from a raw Patient, Practitioner or Organization resource."""
    given, family = _names(res)
    others = []
    if res.get("resourceType") == "Organization" and res.get("name"):
        others.append(res["name"])
    for ext in res.get("extension", []) or []:
        if ext.get("url", "").endswith("patient-mothersMaidenName") and ext.get("valueString"):
            others.append(ext["valueString"])
    bd = res.get("birthDate")
    return Identity(
        resource_id=res.get("id"),
        given_names=tuple(given),
        family_names=tuple(family),
        identifiers=tuple((i.get("system"), i["value"]) for i in res.get("identifier", []) or [] if i.get("value")),
        phones=_telecom(res, "phone"),
        emails=_telecom(res, "email"),
        addresses=_addresses(res),
        birth_date=date.fromisoformat(bd[:10]) if bd else None,
        other_names=tuple(others),
    )


def search_terms(res: dict) -> list[tuple[str, str]]:
    """(kind, term) of every name, address line, city, phone and identifier of a resource."""
    terms: list[tuple[str, str]] = []
    given, family = _names(res)
    for n in given + family:
        terms.append(("name", n))
        bare = re.sub(r"\d+$", "", n)
        if bare != n and len(bare) >= 3:
            terms.append(("name", bare))
    if res.get("resourceType") == "Organization" and res.get("name"):
        terms.append(("name", res["name"]))
    for a in res.get("address", []) or []:
        terms += [("address", line) for line in a.get("line", []) or []]
        if a.get("city"):
            terms.append(("city", a["city"]))
    terms += [("phone", p) for p in _telecom(res, "phone")]
    terms += [("identifier", i["value"]) for i in res.get("identifier", []) or [] if i.get("value")]
    return terms


@dataclass
class SyntheaNote:
    patient: str | None
    author_npi: str | None
    custodian: str | None
    text: str


def load_notes(directory: Path) -> list[SyntheaNote]:
    out = []
    for doc in _read_ndjson(directory / "DocumentReference.000.ndjson"):
        ref = (doc.get("subject") or {}).get("reference", "")
        author = ((doc.get("author") or [{}])[0]).get("reference", "")
        cust = (doc.get("custodian") or {}).get("reference", "")
        for c in doc.get("content", []) or []:
            att = c.get("attachment") or {}
            if att.get("contentType", "").startswith("text/plain") and att.get("data"):
                out.append(SyntheaNote(
                    ref.split("/")[-1] or None,
                    author.rsplit("|", 1)[-1] if "|" in author else None,
                    cust.rsplit("|", 1)[-1] if "|" in cust else None,
                    base64.b64decode(att["data"]).decode("utf-8", "replace"),
                ))
    return out


@dataclass
class SyntheaReport:
    notes: int
    survivors: Counter  # kind -> count of (note, term) occurrences left in scrubbed text
    survivor_examples: list[tuple[str, str]]
    tokens_non_phi: int
    tokens_kept: int
    seconds: float

    @property
    def kept_share(self) -> float:
        return self.tokens_kept / self.tokens_non_phi if self.tokens_non_phi else 1.0

    @property
    def survivor_count(self) -> int:
        return sum(self.survivors.values())


_ISO_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")


def _term_regex(terms: Iterable[str]) -> re.Pattern:
    alts = sorted({re.escape(t.strip()) for t in terms if len(t.strip()) >= 2}, key=len, reverse=True)
    return re.compile(r"(?<![\w])(?:" + "|".join(alts) + r")(?![\w])", re.IGNORECASE)


def _digits_regex(phones: Iterable[str]) -> list[str]:
    return [re.sub(r"\D", "", p)[-10:] for p in phones if len(re.sub(r"\D", "", p)) >= 7]


def evaluate_synthea(scrubber: TextScrubber, directory: str | Path, *, limit: int | None = None,
                     date_shift_days: int | None = None) -> SyntheaReport:
    d = Path(directory)
    patients = {r["id"]: r for r in _read_ndjson(d / "Patient.000.ndjson")}
    practitioners = list(_read_ndjson(d / "Practitioner.000.ndjson"))
    organizations = list(_read_ndjson(d / "Organization.000.ndjson"))
    by_npi = {i["value"]: p for p in practitioners for i in p.get("identifier", []) or [] if i.get("value")}
    by_org = {o["id"]: o for o in organizations}
    for o in organizations:
        for i in o.get("identifier", []) or []:
            if i.get("value"):
                by_org[i["value"]] = o
    notes = load_notes(d)
    if limit:
        notes = notes[:limit]

    all_terms: list[tuple[str, str]] = []
    phones: list[str] = []
    for res in (*patients.values(), *practitioners, *organizations):
        for kind, term in search_terms(res):
            (phones if kind == "phone" else all_terms).append(term if kind == "phone" else (kind, term))
    kind_of = {t.lower(): k for k, t in all_terms}
    term_rx = _term_regex(t for _, t in all_terms)
    phone_digits = set(_digits_regex(phones))

    # Group notes by their known identifiers so scrub_many can batch them.
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, n in enumerate(notes):
        groups[(n.patient, n.author_npi, n.custodian)].append(i)
    results: list = [None] * len(notes)
    t0 = time.perf_counter()
    for (pid, npi, org), idx in groups.items():
        parts = [identity_of(r) for r in (patients.get(pid), by_npi.get(npi), by_org.get(org)) if r]
        known = KnownIdentifiers.merge(KnownIdentifiers.from_identity(p) for p in parts)
        out = scrubber.scrub_many([notes[i].text for i in idx], known=known, date_shift_days=date_shift_days)
        for i, r in zip(idx, out):
            results[i] = r
    seconds = time.perf_counter() - t0

    survivors: Counter = Counter()
    examples: list[tuple[str, str]] = []
    non_phi = kept = 0
    for note, res in zip(notes, results):
        for m in term_rx.finditer(res.text):
            kind = kind_of.get(m.group().lower(), "name")
            survivors[kind] += 1
            if len(examples) < 20:
                examples.append((kind, m.group()))
        for m in re.finditer(r"\(?\d[\d\s().-]{5,16}\d", res.text):
            if re.sub(r"\D", "", m.group())[-10:] in phone_digits:
                survivors["phone"] += 1
        # kept share over non-identifier tokens of the original
        phi = bytearray(len(note.text))
        for m in term_rx.finditer(note.text):
            phi[m.start():m.end()] = b"\x01" * (m.end() - m.start())
        for m in _ISO_DATE.finditer(note.text):
            phi[m.start():m.end()] = b"\x01" * (m.end() - m.start())
        touched = bytearray(len(note.text))
        for s in res.spans:
            touched[s.start:s.end] = b"\x01" * (s.end - s.start)
        for m in re.finditer(r"\w+", note.text):
            if any(phi[m.start():m.end()]):
                continue
            non_phi += 1
            if not any(touched[m.start():m.end()]):
                kept += 1
    return SyntheaReport(len(notes), survivors, examples, non_phi, kept, seconds)


# --- printing --------------------------------------------------------------------------------


def format_asq(report: AsqReport) -> str:
    lines = [f"{'type':34} {'n':>5} {'caught':>7} {'recall':>7}"]
    for typ, r in report.per_type.items():
        lines.append(f"{typ:34} {r.n:>5} {r.caught:>7} {r.recall:>7.3f}")
    o = report.overall
    lines.append(f"{'OVERALL':34} {o.n:>5} {o.caught:>7} {o.recall:>7.3f}")
    lines.append(
        f"hard negatives altered: {report.negatives_altered}/{report.negatives} "
        f"(FP rate {report.fp_rate:.3f}); values not located in their query: {report.unlocated}"
    )
    return "\n".join(lines)


def format_synthea(report: SyntheaReport) -> str:
    lines = [f"notes scrubbed: {report.notes} in {report.seconds:.1f} s",
             f"survivors (export identifiers found in scrubbed notes): {report.survivor_count}"]
    for kind, n in sorted(report.survivors.items()):
        lines.append(f"  {kind:12} {n}")
    lines.append(f"non-identifier tokens kept: {report.tokens_kept}/{report.tokens_non_phi} "
                 f"({report.kept_share:.3f})")
    return "\n".join(lines)
