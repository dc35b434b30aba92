"""Labelled free-text corpora (JSONL with character offsets) and their span-level evaluation.

One note per line:

    {"id": "n1", "text": "daughter Ann at bedside ...", "spans": [{"start": 9, "end": 12, "type": "RELATIVE"}]}

Offsets are Python string indices into `text` (Unicode code points), `end` exclusive; `type` is any
label (the nursing corpus uses PATIENT, CLINICIAN, RELATIVE, LOCATION, DATE, PHONE, ID, AGE). A
clinic drops in its own labelled notes in this form and gets the same table as the shipped corpora
(`triage deid evaluate --corpus FILE`).

Measures, per gold type and overall:

* recall: a gold span is CAUGHT when every letter and digit of it lies inside redaction spans
  (nothing of it survives, in any output mode); `overlap` counts the looser "any overlap";
* precision: of the redaction spans, the share that touch a gold span (per predicted type group).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from deidentify.text import Span, TextScrubber

# Predicted entity types grouped for per-type precision.
GROUPS = {
    "PERSON": "NAME", "LOCATION": "LOCATION", "HOSPITAL": "LOCATION", "ZIP_CODE": "LOCATION",
    "DATE_TIME": "DATE", "PHONE_NUMBER": "PHONE", "AGE": "AGE", "URL": "URL", "EMAIL_ADDRESS": "CONTACT",
    "IP_ADDRESS": "CONTACT",
}


@dataclass(frozen=True)
class Note:
    id: str
    text: str
    spans: tuple[tuple[int, int, str], ...]


class CorpusError(ValueError):
    """A corpus line that is not a labelled note (the message names the line)."""


def load_jsonl(path: str | Path) -> list[Note]:
    out = []
    with Path(path).open(encoding="utf-8") as fh:
        for no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                text = d["text"]
                spans = tuple((int(s["start"]), int(s["end"]), str(s["type"])) for s in d.get("spans", []))
                if not isinstance(text, str) or any(not (0 <= a < b <= len(text)) for a, b, _ in spans):
                    raise ValueError("offsets outside the text")
            except (ValueError, KeyError, TypeError) as exc:
                raise CorpusError(f"{path}:{no}: not a labelled note ({type(exc).__name__}: {exc})") from None
            out.append(Note(str(d.get("id", no)), text, spans))
    return out


def write_jsonl(notes: Iterable, path: str | Path) -> int:
    n = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for note in notes:
            fh.write(json.dumps(note.to_dict() if hasattr(note, "to_dict") else note, ensure_ascii=False) + "\n")
            n += 1
    return n


@dataclass
class Tally:
    n: int = 0
    caught: int = 0
    overlap: int = 0

    @property
    def recall(self) -> float:
        return self.caught / self.n if self.n else 1.0

    @property
    def recall_overlap(self) -> float:
        return self.overlap / self.n if self.n else 1.0


@dataclass
class Flags:
    n: int = 0
    true: int = 0

    @property
    def precision(self) -> float:
        return self.true / self.n if self.n else 1.0


@dataclass
class CorpusReport:
    name: str
    notes: int
    per_type: dict[str, Tally]
    overall: Tally
    flags: dict[str, Flags]
    flagged: Flags
    missed: list[tuple[str, str, str]] = field(default_factory=list)  # (type, value, context)
    false: Counter = field(default_factory=Counter)  # (group, text) of spans touching no PHI
    seconds: float = 0.0


def _alnum(text: str, a: int, b: int) -> list[int]:
    return [i for i in range(a, b) if text[i].isalnum()]


def score(name: str, notes: Sequence[Note], predicted: Sequence[Sequence[Span]], seconds: float = 0.0) -> CorpusReport:
    per_type: dict[str, Tally] = {}
    overall = Tally()
    flags: dict[str, Flags] = {}
    flagged = Flags()
    missed: list[tuple[str, str, str]] = []
    false: Counter = Counter()
    for note, spans in zip(notes, predicted):
        covered = bytearray(len(note.text))
        for s in spans:
            covered[s.start:s.end] = b"\x01" * (s.end - s.start)
        gold = bytearray(len(note.text))
        for a, b, _ in note.spans:
            gold[a:b] = b"\x01" * (b - a)
        for a, b, typ in note.spans:
            t = per_type.setdefault(typ, Tally())
            chars = _alnum(note.text, a, b)
            ok = all(covered[i] for i in chars)
            hit = any(covered[a:b])
            for x in (t, overall):
                x.n += 1
                x.caught += ok
                x.overlap += hit
            if not ok:
                missed.append((typ, note.text[a:b], note.text[max(0, a - 30):b + 30].replace("\n", " | ")))
        for s in spans:
            g = GROUPS.get(s.entity_type, "ID")
            f = flags.setdefault(g, Flags())
            true = any(gold[s.start:s.end])
            for x in (f, flagged):
                x.n += 1
                x.true += true
            if not true:
                false[(g, note.text[s.start:s.end])] += 1
    return CorpusReport(name, len(notes), dict(sorted(per_type.items())), overall, dict(sorted(flags.items())),
                        flagged, missed, false, seconds)


def evaluate_corpus(scrubber: TextScrubber, name: str, notes: Sequence[Note]) -> CorpusReport:
    t0 = time.perf_counter()
    predicted = scrubber.analyze_many([n.text for n in notes])
    return score(name, notes, predicted, time.perf_counter() - t0)


def format_report(r: CorpusReport, tuned: str) -> str:
    o, f = r.overall, r.flagged
    lines = [
        f"{r.name}: {r.notes} notes, rules tuned on it: {tuned}; recall {o.recall:.3f} "
        f"({o.caught}/{o.n} spans caught; any overlap {o.recall_overlap:.3f}), span precision "
        f"{f.precision:.3f} ({f.true}/{f.n} flagged spans touch PHI), {r.seconds:.1f} s",
        f"  {'gold type':12} {'n':>5} {'caught':>7} {'recall':>7} {'overlap':>8}",
    ]
    for typ, t in r.per_type.items():
        lines.append(f"  {typ:12} {t.n:>5} {t.caught:>7} {t.recall:>7.3f} {t.recall_overlap:>8.3f}")
    lines.append(f"  {'flagged as':12} {'n':>5} {'on PHI':>7} {'prec.':>7}")
    for g, x in r.flags.items():
        lines.append(f"  {g:12} {x.n:>5} {x.true:>7} {x.precision:>7.3f}")
    return "\n".join(lines)
