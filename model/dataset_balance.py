"""Balance and informativeness of a patient's examples, applied when a build merges its shards.

- **Uninformative** examples: the user turn carries no complaint and no finding (no reason for the
  visit, a chief complaint that says only "No complaints", a history of present illness that only
  states age and sex or past history, no vital sign). A share of them is kept (`uninformative_keep`, chosen by a
  keyed hash of the example id, so the same build keeps the same ones): 0 drops them all, 1 keeps
  them all; in between they are down-weighted by sampling, which any trainer honours.
- **Near-duplicates** of one patient: examples whose user turn and target are equal once digits
  (ages, relative times, vital values) are ignored; the first (earliest encounter) is kept.
- **Per-patient cap**: at most `max_per_patient` examples, chosen evenly over the patient's
  timeline (first and last kept), so a long history does not dominate the set.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

_NO_COMPLAINT = re.compile(
    r"^(?:no|none|nil|denies|without)\b(?:\s+(?:current|new|acute|active|specific|other))*"
    r"(?:\s+(?:complaints?|concerns?|problems?|symptoms?|issues?))?\s*[.!]?$", re.I)
# History-of-present-illness sentences that state who the patient is or what they had before, not
# what brings them: "[NAME] is a 26 year-old ... female.", "Patient has a history of stress (finding)."
_NOT_A_COMPLAINT = re.compile(
    r"^.{0,40}?\bis an? \d+[ -](?:year|month|week|day)s?[ -]old\b[^.]*\.?$"
    r"|^(?:the\s+)?(?:patient|pt|\[NAME\](?:\s+\[NAME\])*)\s+(?:has|had)\s+(?:a\s+)?(?:past\s+)?(?:medical\s+)?history\s+of\b[^.]*\.?$",
    re.I)
_SECTION = re.compile(r"^(Chief complaint|History of present illness): ", re.M)
_DIGITS = re.compile(r"\d+(?:[.,]\d+)*")
_SPACE = re.compile(r"\s+")


def _sections(note: str) -> dict[str, str]:
    parts = _SECTION.split(note)
    return {parts[i].casefold(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def informative(record: Any) -> bool:
    """Does a de-identified record, as an example shows it, carry a complaint or a finding?"""
    if record.vitals:
        return True
    enc = record.encounter
    if enc is not None and any(r.strip() for r in enc.reasons):
        return True
    if any(getattr(c, "text", None) or getattr(c, "codings", None) for c in getattr(record, "complaints", ()) or ()):
        return True
    for note in record.notes:
        sections = _sections(note)
        if not sections and note.strip():
            return True  # a note of another shape: not judged, kept
        cc = " ".join(sections.get("chief complaint", "").split())
        if cc and not _NO_COMPLAINT.match(cc):
            return True
        hpi = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(sections.get("history of present illness", "").split())) if s]
        if any(not _NOT_A_COMPLAINT.match(s) for s in hpi):
            return True
    return False


def _keep_share(example_id: str, share: float) -> bool:
    if share >= 1:
        return True
    if share <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(example_id.encode()).digest()[:8], "big") / 2**64
    return h < share


def _dedup_key(example: dict[str, Any]) -> str:
    user = next((m["content"] for m in example["messages"] if m["role"] == "user"), "")
    target = example["messages"][-1]["content"]
    return _SPACE.sub(" ", _DIGITS.sub("#", f"{user}\x1f{target}\x1f{example.get('acuity')}")).casefold()


def spread(n: int, k: int) -> list[int]:
    """k indices out of range(n), evenly spaced, first and last included."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def balance_patient(examples: Sequence[dict[str, Any]], *, max_per_patient: int | None, collapse: bool,
                    uninformative_keep: float) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The examples of one patient (in encounter order) to write, and what was removed and why."""
    removed: Counter[str] = Counter()
    kept: list[dict[str, Any]] = []
    for ex in examples:
        if ex.get("_uninformative"):
            if not _keep_share(ex["id"], uninformative_keep):
                removed["uninformative"] += 1
                continue
        kept.append(ex)
    if collapse:
        seen: set[str] = set()
        unique = []
        for ex in kept:
            key = _dedup_key(ex)
            if key in seen:
                removed["near_duplicate"] += 1
                continue
            seen.add(key)
            unique.append(ex)
        kept = unique
    if max_per_patient is not None and len(kept) > max_per_patient:
        removed["over_patient_cap"] += len(kept) - max_per_patient
        kept = [kept[i] for i in spread(len(kept), max_per_patient)]
    return kept, removed


def split_warnings(patients_per_split: dict[str, int], ratios: Sequence[float], minimum: int) -> list[str]:
    """One line per split (with a non-zero ratio) holding fewer patients than `minimum`."""
    out = []
    for (name, n), ratio in zip(patients_per_split.items(), ratios):
        if ratio > 0 and n < minimum:
            out.append(f"split {name} has {n} patient{'s' if n != 1 else ''} (fewer than {minimum}): the export is too "
                       "small to split reliably; its figures describe single patients, not a population")
    return out
