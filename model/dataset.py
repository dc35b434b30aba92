"""`triage dataset build`: a FHIR Bulk export -> a de-identified, leak-checked, patient-split
fine-tuning set with a dataset card, a manifest and an audit report.

Pipeline (each step streams; memory is bounded by one patient per worker plus a small window):

1. A first pass over the identity-bearing resources (Patient, RelatedPerson, Practitioner,
   Organization, Location) builds the export's identifier set for the leak checks.
2. Patients stream from `fhir_adapter.bulk` (a compact index, then one patient's lines at a time).
   Each patient becomes a shard file `.work/shards/<pseudonym>.json` (atomic): one example per
   encounter with a diagnosis to learn from, built from a `DeidentifiedRecord` (via `model.prompts`)
   and the scrubbed note, then searched for every identifier of the export; a hit drops the example.
   Shards are idempotent, so an interrupted build resumes, and patients can be spread over machines
   (`--shard K/N`, docs/datasets.md).
3. A deterministic merge writes the splits (by keyed hash of the patient pseudonym and the seed),
   Parquet and seed-format copies, then every output file is scanned again; any hit fails the build.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import gc
import hashlib
import hmac
import itertools
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fhir_adapter.codes import RECORD_TYPES

from .acuity import Acuity
from .dataset_balance import balance_patient, informative, split_warnings
from .dataset_targets import TARGET_SCHEMAS, diagnosis_only, rules_labeller_accuracy
from .rules import score_record
from .dataset_card import (
    AUDIT_NAME,
    CARD_NAME,
    MANIFEST_NAME,
    atomic_open,
    dumps_line,
    sha256_file,
    write_card,
    write_json,
    write_parquet,
)

SPLITS = ("train", "validation", "test")
FORMATS = ("chat", "seed", "parquet")
WORK_DIR = ".work"
IDENTITY_TYPES = ("Patient", "RelatedPerson", "Practitioner", "Organization", "Location")
SHARD_VERSION = 2  # 2: labels by rules, label_detail, informativeness mark
# Examples show slices of the patient's history de-identified (and leak-checked) once. False: each
# example's whole record is de-identified and checked on its own (the reference path, for tests).
SLICE_HISTORY = True

# v3 ActPriority -> acuity. Only codes that state urgency; callback/timing codes carry none.
PRIORITY_ACUITY: dict[str, int] = {
    "S": Acuity.RESUSCITATION,  # stat
    "EM": Acuity.EMERGENT,  # emergency
    "A": Acuity.EMERGENT,  # ASAP
    "UR": Acuity.URGENT,  # urgent
    "R": Acuity.NON_URGENT,  # routine
    "EL": Acuity.NON_URGENT,  # elective
}
# v3 ActCode encounter class -> acuity. The class says where care happened, not how sick the
# patient was, so only the emergency class is mapped, to the conservative (over-triage) level 2:
# under-triage is the costly error. Every other class stays unlabelled. `--no-class-acuity` turns
# this off; each example records its `label_source`.
CLASS_ACUITY: dict[str, int] = {"EMER": Acuity.EMERGENT}
# Measured on the shared export and the 1,000-patient bench export (docs/datasets.md, "Balance").
DEFAULT_MAX_PER_PATIENT = 50
DEFAULT_MIN_PATIENTS_PER_SPLIT = 5


class DatasetError(RuntimeError):
    """A build cannot start or must stop; the message is one line and holds no PHI."""


class NoInputResources(DatasetError):
    """The input holds no FHIR resource: nothing to build (exit status 2, never a success)."""


class LeakFound(DatasetError):
    """An identifier reached an output file: the build fails (outputs are left for inspection)."""


# ---- settings and results ---------------------------------------------------------------------

@dataclass
class BuildConfig:
    input: Path
    output: Path
    key_file: Path | None
    seed: int = 13
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    formats: tuple[str, ...] = ("chat", "seed", "parquet")
    workers: int = 1
    resume: bool = False
    overwrite: bool = False
    max_encounters: int | None = None  # per patient, newest kept out: the first N by date
    class_acuity: dict[str, int] = field(default_factory=lambda: dict(CLASS_ACUITY))
    shard: tuple[int, int] | None = None  # (k, n): build only patients whose bucket mod n == k
    progress: bool = True
    window: int = 0  # patients in flight with workers (0: 2 x workers)
    # Targets and labels (docs/datasets.md, "Targets and labels"): the schema every target is valid
    # under, and whether the ESI rules label what the record leaves unlabelled.
    target_schema: str = "triage-report"
    rules_labels: bool = True
    # Balance (docs/datasets.md, "Balance"): examples per patient at most (None: no cap; the default
    # was chosen by measurement), near-duplicates of one patient collapsed, the share of examples
    # with no complaint and no finding kept (0: dropped, 1: all kept), patients per split wanted.
    max_per_patient: int | None = DEFAULT_MAX_PER_PATIENT
    collapse_near_duplicates: bool = True
    uninformative_keep: float = 0.0
    min_patients_per_split: int = DEFAULT_MIN_PATIENTS_PER_SPLIT
    rules_metrics: Path | None = None  # the rules' evaluation (metrics.json), cited in the card

    def settings(self) -> dict[str, Any]:
        """What the output depends on (recorded in the manifest; checked on --resume)."""
        return {
            "seed": self.seed,
            "split": list(self.split),
            "formats": sorted(self.formats),
            "max_encounters": self.max_encounters,
            "class_acuity": {k: int(v) for k, v in sorted(self.class_acuity.items())},
            "priority_acuity": {k: int(v) for k, v in sorted(PRIORITY_ACUITY.items())},
            "target_schema": self.target_schema,
            "rules_labels": self.rules_labels,
            "max_per_patient": self.max_per_patient,
            "collapse_near_duplicates": self.collapse_near_duplicates,
            "uninformative_keep": self.uninformative_keep,
            "min_patients_per_split": self.min_patients_per_split,
        }


@dataclass
class BuildResult:
    output: Path
    manifest: dict[str, Any]
    elapsed_s: float
    merged: bool
    # Wall seconds per phase (not in the manifest: outputs stay byte-identical): "index" (identifier
    # pass and patient index), "load" (scrubber start-up: the one worker's, or until every pool
    # worker has started), "patients", "merge".
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest.get("counts", {})


def check_settings(cfg: BuildConfig) -> None:
    if cfg.target_schema not in TARGET_SCHEMAS:
        raise DatasetError(f"--target-schema takes {' or '.join(TARGET_SCHEMAS)} (got {cfg.target_schema!r})")
    if not 0.0 <= cfg.uninformative_keep <= 1.0:
        raise DatasetError("--uninformative-keep must be a share between 0 and 1")
    if cfg.max_per_patient is not None and cfg.max_per_patient < 1:
        raise DatasetError("--max-per-patient must be at least 1 (or 0 for no cap)")


def parse_split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise DatasetError(f"--split must be three numbers like 0.8,0.1,0.1 (got {text!r})") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise DatasetError("--split must be three non-negative ratios that add up to 1")
    return parts  # type: ignore[return-value]


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise DatasetError("--shard must be K/N with 0 <= K < N, e.g. 0/4")
    return int(m.group(1)), int(m.group(2))


def tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("triage-cds")
    except Exception:  # noqa: BLE001 - not installed: the source tree's version
        return "0+unknown"


# ---- leak scanning at scale -------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W\d_]+|\d+")
_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")
_NON_DIGIT = re.compile(r"\D+")
# re.IGNORECASE matches "i" with "İ" (U+0130) and "ı" (U+0131), which casefold() keeps apart; these
# are the only such pairs in Unicode (checked against re's own case table), so they are folded first.
_I_FIX = {0x130: "i", 0x131: "i"}
_MIN_WORD = 4  # shorter term tokens (but a key) are not searched (they hit everywhere): assumed present
_LETTER_EDGE_KINDS = frozenset({"NAME", "CITY", "ADDRESS"})  # IdentifierSet: letter boundaries


def _fold(text: str) -> str:
    if "\u0130" in text or "\u0131" in text:
        text = text.translate(_I_FIX)
    return text.casefold()


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(_fold(text))


class LeakScanner:
    """`IdentifierSet.find` at the size of a whole export: the same answers, far less work.

    One regex alternation over tens of thousands of names is slow (it tries every branch at every
    position). A term can match only where its letter and digit runs ("tokens", of the casefolded
    text) occur, so one Aho-Corasick automaton of every term token (pyahocorasick) runs over each
    casefolded text; the terms whose tokens all occur are the candidates, and `IdentifierSet.find`
    (the definition) decides on the candidates alone.

    A token inside a term is delimited by the term's own characters, so it must occur as a whole
    token of the text (no letter, or for a digit run no digit, on either side). At a term's ends the
    text may go on where IdentifierSet's boundaries allow it: digits after "Kuhn96" ("Kuhn961" is a
    NAME hit: its boundaries are letters only), a non-ASCII letter or digit next to an IDENTIFIER
    (its boundaries are ASCII letters and digits), so those end tokens need only occur, touching
    anything on that side. Tokens shorter than 4 characters are not searched (assumed present),
    but for a term's longest; a term with no longer token is searched whole when it is one word
    (a UUID: "a139cfa5-0cb8-..."; its folded text must occur as is), by its three longest tokens
    otherwise (its key alone would make it a candidate in most texts). Phones: their last 7 digits in the text's digits, any separators.
    """

    def __init__(self, identifiers: Any) -> None:
        from deidentify.leaks import IdentifierSet

        try:
            import ahocorasick
        except ImportError as exc:  # fail closed: no scanner, no dataset
            raise DatasetError(f"the leak scanner is not available ({exc.name}: install pyahocorasick)") from None
        self._cls = IdentifierSet
        self.size = 0
        # (word, side) -> terms whose rarest-looking token that is; side: 0 whole token, 1 may touch
        # on the left, 2 on the right, 3 on both.
        self._by_token: dict[tuple[str, int], list[tuple[str, str, frozenset[tuple[str, int]]]]] = {}
        self._phones: dict[str, list[str]] = {}
        self._memo: dict[str, tuple[frozenset[tuple[str, int]], str]] = {}
        words = ahocorasick.Automaton()
        for kind, values in identifiers.terms.items():
            for value in values:
                self.size += 1
                if kind == "PHONE":
                    self._phones.setdefault(value[-7:], []).append(value)
                    continue
                toks = _tokens(value)
                if not toks:
                    continue
                need = {}
                for i, tok in enumerate(toks):
                    side = 0
                    if kind not in _LETTER_EDGE_KINDS or tok[0].isdecimal():
                        side |= (1 if i == 0 else 0) | (2 if i == len(toks) - 1 else 0)
                    need[(tok, side)] = None
                by_length = sorted(need, key=lambda t: -len(t[0]))  # stable: the first longest is the key
                key = by_length[0]
                searched = [t for t in by_length if len(t[0]) >= _MIN_WORD]
                if not searched and not any(c.isspace() for c in value):
                    # Short tokens only, one word (a UUID: "01ff6f95-9cc2-..."): the whole term,
                    # folded, must occur as is (touching anything on either side).
                    key = (_fold(value), 3)
                elif not searched:
                    searched = [t for t in by_length if len(t[0]) >= 3][:3]
                need_set = frozenset([key, *searched])
                for word, _ in need_set:
                    words.add_word(word, word)
                self._by_token.setdefault(key, []).append((kind, value, need_set))
        self._words_automaton = words if len(words) else None
        if self._words_automaton is not None:
            words.make_automaton()
        self._phone_automaton: Any = None
        if self._phones:  # each phone's last 7 digits, found in a text's digits
            self._phone_automaton = ahocorasick.Automaton()
            for last7 in self._phones:
                self._phone_automaton.add_word(last7, last7)
            self._phone_automaton.make_automaton()

    _MEMO_SIZE = 256  # texts; the output scan reads each split's chat and Parquet rows in step

    def _words(self, text: str) -> frozenset[tuple[str, int]]:
        """(word, side) for each term token found in `text`, with every side it satisfies."""
        if self._words_automaton is None:
            return frozenset()
        folded = _fold(text)
        found: set[tuple[str, int]] = set()
        whole: set[str] = set()
        letter, digit = _LETTER.match, _DIGIT.match
        for end, word in self._words_automaton.iter(folded):
            if word in whole:
                continue
            start = end - len(word) + 1
            edge = digit if word[0].isdecimal() else letter
            left = start == 0 or edge(folded, start - 1) is None
            right = edge(folded, end + 1) is None
            if left and right:
                whole.add(word)
                found.update(((word, 0), (word, 1), (word, 2), (word, 3)))
            else:
                found.add((word, 3))
                if right:
                    found.add((word, 1))
                elif left:
                    found.add((word, 2))
        return frozenset(found)

    def _info(self, part: str) -> tuple[frozenset[tuple[str, int]], str]:
        """A text's term tokens and its digits (`re.sub(r"\D", "", part)`), remembered for the
        few texts seen again soon (the developer message, a row's messages in JSONL then Parquet)."""
        info = self._memo.get(part)
        if info is None:
            info = (self._words(part), _NON_DIGIT.sub("", part) if self._phones else "")
            if len(part) >= 64:  # short texts are cheap to read again
                if len(self._memo) >= self._MEMO_SIZE:
                    self._memo.clear()  # bounded memory
                self._memo[part] = info
        return info

    def find(self, text: str) -> Counter[str]:
        return self.find_parts((text,))

    def find_parts(self, parts: Sequence[str]) -> Counter[str]:
        """`find("\n".join(parts))`: a newline separates tokens, so the joined text's tokens are
        the union of the parts' tokens and its digits the parts' digits in order."""
        toks: set[str] = set()
        digit_parts: list[str] = []
        for part in parts:
            if part:
                ptoks, pdigits = self._info(part)
                toks |= ptoks
                digit_parts.append(pdigits)
        if not toks and not any(digit_parts):
            return Counter()
        cand: dict[str, set[str]] = {}
        for tok in toks:
            for kind, value, need in self._by_token.get(tok, ()):
                if need <= toks:
                    cand.setdefault(kind, set()).add(value)
        if self._phone_automaton is not None:
            for _, last7 in self._phone_automaton.iter("".join(digit_parts)):
                cand.setdefault("PHONE", set()).update(self._phones[last7])
        if not cand:
            return Counter()
        return self._cls(terms=cand).find("\n".join(parts))


def json_strings(value: Any) -> str:
    from deidentify.leaks import payload_text

    return payload_text(value)


def json_parts(value: Any) -> list[str]:
    """The strings and numbers `json_strings` joins with newlines, in the same order."""
    parts: list[str] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, Mapping):
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, (list, tuple)):
            stack.extend(reversed(v))
        elif isinstance(v, str):
            parts.append(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(str(v))
    return parts


# ---- note parsing -----------------------------------------------------------------------------

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*$", re.M)
_UNSAFE = re.compile(r'[\x00-\x1f"\\]+')


def note_sections(text: str) -> dict[str, str]:
    """Level-1 Markdown sections of a note (Synthea's notes): lowercased heading -> body."""
    out: dict[str, str] = {}
    marks = [(m.start(), m.end(), len(m.group(1)), m.group(2).strip().casefold()) for m in _HEADING.finditer(text)]
    tops = [m for m in marks if m[2] == 1]
    for i, (_, end, _, name) in enumerate(tops):
        stop = tops[i + 1][0] if i + 1 < len(tops) else len(text)
        out[name] = text[end:stop].strip()
    return out


def decode_note(doc: Mapping[str, Any]) -> str | None:
    texts = []
    for content in doc.get("content") or []:
        att = content.get("attachment") if isinstance(content, Mapping) else None
        if not isinstance(att, Mapping) or not isinstance(att.get("data"), str):
            continue
        ctype = str(att.get("contentType") or "").split(";")[0].strip().casefold()
        if ctype not in ("text/plain", "text/markdown", ""):
            continue
        try:
            texts.append(base64.b64decode(att["data"], validate=False).decode("utf-8", errors="replace"))
        except (binascii.Error, ValueError):
            continue
    text = "\n\n".join(t for t in texts if t.strip())
    return text or None


def _one_line(text: str, limit: int) -> str:
    """A TriageReport-safe string: one line, no quotes/backslashes/control characters, bounded."""
    text = " ".join(_UNSAFE.sub(" ", text).split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:")
    return (cut or text[: limit - 1]) + "…"


def plan_actions(plan: str, limit: int = 6) -> list[str]:
    """Plan bullets as actions, labelled by the line that introduces them, duplicates removed."""
    label = ""
    out: list[str] = []
    for line in plan.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith(("- ", "* ")):
            item = s[2:].strip()
            if item:
                action = _one_line(f"{label}{item}", 160)
                if action not in out:
                    out.append(action)
        elif s.endswith(":"):
            low = s.casefold()
            label = (
                "Procedure: " if "procedure" in low else
                "Medication: " if "medication" in low else
                "Care plan: " if "careplan" in low or "care plan" in low else
                "Immunization: " if "immuniz" in low else ""
            )
    return out[:limit]


# ---- one patient ------------------------------------------------------------------------------

# The resource types a build decodes: those `record_from_resources` validates (fhir_adapter's
# RECORD_TYPES: Patient, Encounter, Condition, Observation, MedicationRequest, AllergyIntolerance,
# DocumentReference, RelatedPerson, ...). Lines of other types (Procedure, Immunization, Claim...)
# give only their references' displays (`_clinical_displays`, read from the bytes) and, in the
# reader, their references to shared Practitioners and Organizations.
BUILD_TYPES = RECORD_TYPES
_BY_ENCOUNTER = ("DocumentReference", "Observation")  # used only for the encounters kept


def _kept_encounters(encounters: Iterable[Mapping[str, Any]], cap: int | None) -> list[Any]:
    """The encounters a build makes examples of: by start time (then id), the first `cap`."""
    ordered = sorted((r for r in encounters if isinstance(r.get("id"), str)), key=lambda r: (_sort_time(r), r["id"]))
    return ordered if cap is None else ordered[:cap]


@dataclass
class _Decoded:
    raw: list[dict[str, Any]]  # the lines `_plan` reads, decoded, in line order
    displays: list[tuple[str, str]]  # (reference, display) of every Reference in the other lines


def decode_used(lines: Sequence[tuple[str, Any]], cap: int | None) -> _Decoded:
    """A patient's lines (`PatientLines.items`) as `_plan` needs them, decoding only what it uses.

    Lines of types outside BUILD_TYPES are not decoded: `_plan` reads only their reference
    displays. With a cap, a DocumentReference or Observation is used only if it names a kept
    encounter, so a line that does not contain a kept encounter's id is not decoded (an id is
    [A-Za-z0-9-.]{1,64}, so it appears as is in the line; a line with a \\u00XX escape is decoded);
    an Encounter not kept is read for its id and period only (what `_plan` counts and sorts), and
    a MedicationRequest authored after the last kept encounter (`_plan`'s horizon) is left out.
    The result is what `_plan` reads of `iter_patients`'s `raw`, and gives the same plan (tested).
    """
    from fhir_adapter.bulk import reference_pairs, decode_fields, decode_line, lines_reference_displays
    from fhir_adapter.extract import to_datetime

    def dec(value: Any) -> Any:
        return value if isinstance(value, dict) else decode_line(value)

    decoded: list[Any] = [None] * len(lines)
    displays: list[tuple[str, str]] = []
    other: list[bytes] = []
    for i, (rtype, value) in enumerate(lines):
        if rtype not in BUILD_TYPES:
            if isinstance(value, dict):
                reference_pairs(value, displays)
            else:
                other.append(value)
        elif cap is not None and rtype in _PARTIAL_FIELDS and not isinstance(value, dict):
            decoded[i] = _Partial(decode_fields(value, _PARTIAL_FIELDS[rtype]))  # decoded later if used
        elif rtype not in _BY_ENCOUNTER or cap is None:
            decoded[i] = dec(value)
    displays += lines_reference_displays(other)
    if cap is not None:
        kept_encounters = _kept_encounters((r for r in decoded if r is not None and r.get("resourceType") == "Encounter"), cap)
        kept = [e["id"].encode() for e in kept_encounters]
        for i, (rtype, value) in enumerate(lines):
            if rtype in _BY_ENCOUNTER and (isinstance(value, dict) or b"\\u00" in value or any(k in value for k in kept)):
                decoded[i] = dec(value)
            elif rtype == "Encounter" and isinstance(decoded[i], _Partial) and any(decoded[i] is e for e in kept_encounters):
                decoded[i] = dec(value)
        # With a cap, a MedicationRequest authored after the last kept encounter is never used.
        starts = [t for e in kept_encounters if (t := to_datetime((e.get("period") or {}).get("start")))]
        horizon = max(starts) if starts else None
        for i, (rtype, value) in enumerate(lines):
            if isinstance(decoded[i], _Partial):
                if rtype == "Encounter":
                    continue  # not kept: `_plan` reads only its id and period (to count and sort)
                when = to_datetime(decoded[i].get("authoredOn") or None)  # as `_plan`'s needed()
                decoded[i] = None if horizon is not None and when is not None and when > horizon else dec(value)
    return _Decoded([r for r in decoded if r is not None], displays)


class _Partial(dict):
    """Only some top-level members of a resource (`decode_fields`)."""


_PARTIAL_FIELDS = {"Encounter": ("resourceType", "id", "period"), "MedicationRequest": ("authoredOn",)}


def _ref_id(ref: Any, rtype: str) -> str | None:
    if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str):
        text = ref["reference"]
        if text.startswith("urn:uuid:"):
            return text[9:]
        parts = text.split("/")
        if len(parts) >= 2 and parts[-2] == rtype:
            return parts[-1]
    return None


_PERSON_REF_TYPES = {"Patient", "Practitioner", "PractitionerRole", "RelatedPerson"}


def _clinical_displays(node: Any, out: set[str], keep: set[str], pairs: Iterable[tuple[str, str]] = ()) -> None:
    """Split Reference displays into those naming a person (`keep`) and the others (`out`).

    `record_from_resources` treats every Reference.display as a possible name, and the record's
    own leak check splits each into words. A Condition display ("Essential hypertension
    (disorder)") or a facility name ("... URGENT CARE") then makes "care" or "hypertension" an
    identifier, and notes full of them fail. Facility names stay covered: the export-wide check
    searches every Organization and Location name whole. `pairs`: more (reference, display)s.
    """
    from fhir_adapter.bulk import reference_pairs

    found: list[tuple[str, str]] = list(pairs)
    reference_pairs(node, found)
    for ref, display in found:
        rtype = re.split(r"[/?]", ref.removeprefix("urn:uuid:"), maxsplit=1)[0]
        (keep if rtype in _PERSON_REF_TYPES or "/" not in ref and "?" not in ref else out).add(display)


_DATED = {
    "Condition": ("onsetDateTime", "recordedDate"),
    "MedicationRequest": ("authoredOn",),
    "AllergyIntolerance": ("recordedDate", "onsetDateTime"),
}


def _codes_key(concept: Any) -> tuple[tuple[str | None, str | None], ...]:
    if not isinstance(concept, Mapping):
        return ()
    return tuple((c.get("system"), c.get("code")) for c in concept.get("coding") or [] if isinstance(c, Mapping))


class _Collected(Exception):
    """Raised by `MemoScrubber` in collect mode, once a record's texts have been noted."""


_PROBE = "\x00"  # a note added in collect mode, so that every record calls the scrubber once


class MemoScrubber:
    """The TextScrubber behind a per-patient memo: each distinct free text is scrubbed once.

    A patient's examples share texts (history entries, encounter types and reasons). TextScrubber
    analyses each text on its own, so its result depends only on the text, the known identifiers and
    the date shift, which are the same for all of one patient's records: a remembered result is the
    result a second scrub would give. A change of known identifiers or shift empties the memo.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._memo: dict[str, Any] = {}
        self._known: Any = None
        self._shift: int | None = None
        self._collect: list[tuple[list[str], Any, int | None]] | None = None
        self.texts = 0  # texts sent to the inner scrubber
        self.misses = 0  # of those, texts not planned by `collect` + `prime` (0 in a build)

    def reset(self) -> None:
        self._memo.clear()
        self._known = self._shift = None

    def collect(self, deid: Any, record: Any) -> tuple[list[str], Any, int | None]:
        """The free texts `deid.record(record)` would scrub, with its known identifiers and date
        shift, asked of `deidentify` itself (nothing is scrubbed or checked)."""
        self._collect = []
        try:
            deid.record(dataclasses.replace(record, notes=(*record.notes, _PROBE)))
        except _Collected:
            pass
        finally:
            got, self._collect = self._collect, None
        if len(got) != 1 or not got[0][0] or got[0][0][-1] != _PROBE:
            raise RuntimeError("de-identification did not scrub its texts in one batch")
        texts, known, shift = got[0]
        return texts[:-1], known, shift

    def prime(self, texts: Sequence[str], known: Any, shift: int | None) -> None:
        self._switch(known, shift)
        self._fill([t for t in dict.fromkeys(texts) if t not in self._memo], known, shift)

    def scrub_many(self, texts: Iterable[str], *, known: Any = None, date_shift_days: int | None = None) -> list[Any]:
        texts = list(texts)
        if self._collect is not None:
            self._collect.append((texts, known, date_shift_days))
            raise _Collected
        self._switch(known, date_shift_days)
        todo = [t for t in dict.fromkeys(texts) if t not in self._memo]
        self.misses += len(todo)
        self._fill(todo, known, date_shift_days)
        return [self._memo[t] for t in texts]

    def _switch(self, known: Any, shift: int | None) -> None:
        if known != self._known or shift != self._shift:
            self.reset()
            self._known, self._shift = known, shift

    def _fill(self, todo: list[str], known: Any, shift: int | None) -> None:
        if not todo:
            return
        results = self.inner.scrub_many(todo, known=known, date_shift_days=shift)
        if len(results) != len(todo):
            raise RuntimeError("scrubber returned a different number of texts")
        self._memo.update(zip(todo, results))
        self.texts += len(todo)


@dataclass
class _Worker:
    """Per-process state: the key (read from the key file here, never sent), the scrubber, the
    export's identifier set."""

    deid: Any
    scanner: LeakScanner
    config: BuildConfig
    prompts: Any
    memo: MemoScrubber
    developer: str = ""
    # Shared resources (Practitioner, Organization...) validated once per process, not once per
    # patient that refers to them: (type, id) -> (the raw resource, its model).
    shared_models: dict[tuple[str, str], tuple[dict[str, Any], Any]] = field(default_factory=dict)

    _SHARED_CACHE = 4096

    def parse_shared(self, shared_raw: Sequence[dict[str, Any]], stats: Any) -> list[Any]:
        """`parse_many(shared_raw, stats=stats)`, a valid resource seen before (equal) not validated
        again. Its models are never changed (record building only reads them)."""
        from fhir_adapter.parse import parse_many

        out: list[Any] = []
        for raw in shared_raw:
            key = (raw.get("resourceType"), raw.get("id"))
            hit = self.shared_models.get(key) if isinstance(key[1], str) else None
            if hit is not None and hit[0] == raw:
                stats.parsed += 1  # what validating it again would count
                out.append(hit[1])
                continue
            models = parse_many([raw], stats=stats)
            out += models
            if models and isinstance(key[1], str):
                if len(self.shared_models) >= self._SHARED_CACHE:
                    self.shared_models.clear()  # bounded memory
                self.shared_models[key] = (raw, models[0])
        return out


_STATE: _Worker | None = None


def make_scrubber() -> Any:
    try:
        from deidentify.text import TextScrubber
    except ImportError as exc:  # fail closed: no scrubber, no free text, no dataset
        raise DatasetError(f"the free-text scrubber is not available ({exc.name})") from None
    return TextScrubber()


def _init_worker(config: BuildConfig, identifiers: Any) -> None:
    global _STATE
    _STATE = make_worker(config, identifiers)


def _freeze_loaded() -> None:
    """Keep the cyclic GC off the loaded models. spaCy, Presidio and the export's identifiers are
    millions of long-lived objects; every full collection (triggered by the dicts that JSON
    decoding and FHIR parsing allocate) would walk them all again (~25% of a capped build)."""
    gc.collect()
    gc.freeze()


def _init_pool_worker(config: BuildConfig, identifiers: Any) -> None:
    _init_worker(config, identifiers)
    _freeze_loaded()


def make_worker(config: BuildConfig, identifiers: Any, scrubber: Any = None) -> _Worker:
    from deidentify.deidentifier import Deidentifier as _D
    from deidentify.pseudonym import load_key

    from . import prompts

    memo = MemoScrubber(scrubber if scrubber is not None else make_scrubber())
    return _Worker(
        deid=_D(load_key(config.key_file), scrubber=memo),
        scanner=LeakScanner(identifiers),
        config=config,
        prompts=prompts,
        memo=memo,
        developer=prompts.developer_instructions(),
    )


def _label(enc: Mapping[str, Any], class_map: Mapping[str, int]) -> tuple[int | None, str | None]:
    for c in (enc.get("priority") or {}).get("coding") or []:
        level = PRIORITY_ACUITY.get(str(c.get("code")))
        if level is not None:
            return int(level), "encounter.priority"
    code = (enc.get("class") or {}).get("code")
    if code in class_map:
        return int(class_map[code]), "encounter.class"
    return None, None


def _sort_time(res: Mapping[str, Any]) -> str:
    period = res.get("period") or {}
    return str(period.get("start") or "")


@dataclass
class _Visit:
    """One encounter that may become an example, before de-identification."""

    ordinal: int
    record: Any  # the encounter's own PatientRecord: identity, age, vitals, encounter, note sections
    note_keys: tuple[str, ...]  # which sections record.notes holds ("presenting", "ap")
    diagnoses: list[str]
    history: list[tuple[int, str]]  # (index into base.conditions, clinical status at the visit)
    medications: list[int]  # indices into base.medications
    allergies: list[int]
    level: int | None
    source: str | None


@dataclass
class _Plan:
    pid: str
    pseudonym: str
    identity: Any
    history: Any  # PatientRecord: the identity and every history entry some visit shows, nothing else
    conditions: list[int]  # base indices kept in `history`, in order
    medications: list[int]
    allergies: list[int]
    visits: list[_Visit]
    counts: Counter[str]
    drops: Counter[str]
    stats: Any


def _plan(raw: list[dict[str, Any]], shared_raw: list[dict[str, Any]], state: _Worker,
          displays: Sequence[tuple[str, str]] = ()) -> _Plan | dict[str, Any]:
    """Everything one patient's examples need, not yet de-identified (a dict: the patient is dropped).
    `displays`: the reference displays of lines left out of `raw` (`decode_used`)."""
    from fhir_adapter.extract import RecordError, raw_reference_displays, record_from_resources, to_datetime
    from fhir_adapter.parse import StatsCounter, parse_many

    cfg = state.config
    counts: Counter[str] = Counter()
    drops: Counter[str] = Counter()
    stats = StatsCounter()
    patient_raw = next(r for r in raw if r.get("resourceType") == "Patient")
    pid = patient_raw["id"]
    all_encounters = [r for r in raw if r.get("resourceType") == "Encounter"]
    encounters = _kept_encounters(all_encounters, cfg.max_encounters)
    counts["encounters"] = sum(isinstance(r.get("id"), str) for r in all_encounters)
    if counts["encounters"] > len(encounters):
        counts["encounters_capped"] = counts["encounters"] - len(encounters)
    chosen = {e["id"] for e in encounters}
    # Validate only what is used: notes are read from the raw lines (their base64 bodies are the
    # bulk of an export), encounters and observations only for the encounters kept.
    # With --max-encounters, entries dated after the last kept encounter can never be history.
    starts = [t for e in encounters if (t := to_datetime((e.get("period") or {}).get("start")))]
    horizon = max(starts) if cfg.max_encounters is not None and starts else None

    def needed(r: dict[str, Any]) -> bool:
        rtype = r.get("resourceType")
        if rtype in ("DocumentReference", "Encounter", "Observation"):
            ref = r.get("id") if rtype == "Encounter" else _ref_id(r.get("encounter"), "Encounter")
            return rtype != "DocumentReference" and ref in chosen
        if rtype == "Condition" and _ref_id(r.get("encounter"), "Encounter") in chosen:
            return True
        if horizon is not None and rtype in _DATED:
            when = to_datetime(next((r.get(k) for k in _DATED[rtype] if r.get(k)), None))
            return when is None or when <= horizon
        return True

    wanted = [r for r in raw if needed(r)]
    # A record lists active medication requests only: the others (most of a long history) are never
    # shown, so not validated. The people their references name stay known identifiers.
    unshown = [r for r in wanted if r.get("resourceType") == "MedicationRequest" and r.get("status") != "active"]
    if unshown:
        wanted = [r for r in wanted if r.get("resourceType") != "MedicationRequest" or r.get("status") == "active"]
    party: list[str] = []
    raw_reference_displays(unshown, party)
    models = parse_many(wanted, stats=stats) + state.parse_shared(shared_raw, stats)
    by_type: dict[str, list[Any]] = {}
    for m in models:
        by_type.setdefault(m.get_resource_type(), []).append(m)
    pseudonym = state.deid.patient_pseudonym(pid)  # the same name the hook and deid fhir give
    try:
        # Full history, identity with every display.
        base = record_from_resources(models, pid, None, displays=party)
    except RecordError:
        return {"pseudonym": pseudonym, "examples": [], "stats": {"dropped": {"invalid_patient": 1}}}
    clinical: set[str] = set()
    people: set[str] = set()
    _clinical_displays([wanted, unshown], clinical, people, displays)
    identity = dataclasses.replace(
        base.identity, other_names=tuple(n for n in base.identity.other_names if n not in clinical - people)
    )
    base = dataclasses.replace(base, identity=identity)

    # Raw facts the entries do not carry: condition encounter and abatement, allergy dates.
    cond_info: dict[tuple[Any, ...], tuple[str | None, datetime | None]] = {}
    for r in raw:
        if r.get("resourceType") != "Condition":
            continue
        onset = to_datetime(r.get("onsetDateTime") or (r.get("onsetPeriod") or {}).get("start"))
        key = (_codes_key(r.get("code")), onset, to_datetime(r.get("recordedDate")))
        abated = to_datetime(r.get("abatementDateTime") or (r.get("abatementPeriod") or {}).get("end"))
        cond_info[key] = (_ref_id(r.get("encounter"), "Encounter"), abated)
    allergy_dates = {
        _codes_key(r.get("code")): to_datetime(r.get("recordedDate") or r.get("onsetDateTime"))
        for r in raw if r.get("resourceType") == "AllergyIntolerance"
    }
    notes_by_enc: dict[str, list[str]] = {}
    for r in raw:
        if r.get("resourceType") != "DocumentReference" or r.get("status") == "entered-in-error":
            continue
        for ref in (r.get("context") or {}).get("encounter") or []:
            eid = _ref_id(ref, "Encounter")
            text = decode_note(r) if eid in chosen else None
            if eid and text:
                notes_by_enc.setdefault(eid, []).append(text)
    obs_by_enc: dict[str, list[Any]] = {}
    for m in by_type.get("Observation", ()):
        eid = (m.encounter.reference or "").split("/")[-1] if m.encounter is not None else None
        if eid:
            obs_by_enc.setdefault(eid, []).append(m)
    patient_model = by_type["Patient"][0]
    # A visit's record takes its identity from `identity` (below): of the Patient it needs only the
    # birth date and sex, so it gets a Patient of those alone (not walked again for names per visit).
    visit_patient = type(patient_model).model_validate(
        {"resourceType": "Patient", "id": pid, "birthDate": patient_model.birthDate, "gender": patient_model.gender})
    enc_models = {m.id: m for m in by_type.get("Encounter", ())}
    cond_keys = [(tuple((x.system, x.code) for x in c.codings), c.onset, c.recorded) for c in base.conditions]
    # Per condition, once (not once per encounter): (its encounter, abatement, when, diagnosis name).
    cond_rows = [
        (*cond_info.get(key, (None, None)), c.onset or c.recorded,
         None if c.verification_status in ("refuted", "entered-in-error")
         else next((x.display for x in c.codings if x.display), None) or c.text)
        for key, c in zip(cond_keys, base.conditions)
    ]
    allergy_seen = [allergy_dates.get(tuple((x.system, x.code) for x in a.codings)) for a in base.allergies]

    visits: list[_Visit] = []
    for ordinal, enc in enumerate(encounters):
        eid = enc["id"]
        start = to_datetime((enc.get("period") or {}).get("start"))
        if eid not in enc_models:
            drops["invalid_encounter"] += 1
            continue
        if start is None:
            drops["encounter_without_start"] += 1
            continue
        # The encounter's diagnoses (target) and the history before it (input).
        diagnoses: list[str] = []
        history: list[tuple[int, str]] = []
        for i, (enc_ref, abated, when, name) in enumerate(cond_rows):
            if enc_ref == eid:
                if name and name not in diagnoses:
                    diagnoses.append(name)
                continue
            if when is None or when >= start:
                continue
            history.append((i, "resolved" if abated is not None and abated <= start else "active"))
        meds = [i for i, m in enumerate(base.medications) if m.authored is None or m.authored < start]
        allergies = [i for i, d in enumerate(allergy_seen) if d is None or d <= start]
        note = "\n\n".join(notes_by_enc.get(eid, []))
        sections = note_sections(note) if note else {}
        presenting = "\n\n".join(
            f"{title}: {sections[key]}" for key, title in
            (("chief complaint", "Chief complaint"), ("history of present illness", "History of present illness"))
            if sections.get(key)
        )
        ap = sections.get("assessment and plan", "")
        if not diagnoses and not enc.get("reasonCode"):
            drops["no_diagnosis"] += 1
            continue
        level, source = _label(enc, cfg.class_acuity)
        try:
            visit = record_from_resources([visit_patient, enc_models[eid], *obs_by_enc.get(eid, ())], pid, start,
                                          encounter_id=eid, history_only=True, identity=identity)
        except RecordError:
            drops["invalid_encounter"] += 1
            continue
        keys = tuple(k for k, t in (("presenting", presenting), ("ap", ap)) if t.strip())
        record = dataclasses.replace(
            visit, identity=identity, conditions=(), medications=(), allergies=(),
            notes=tuple(t for t in (presenting, ap) if t.strip()),
        )
        visits.append(_Visit(ordinal, record, keys, diagnoses, history, meds, allergies, level, source))

    used_c = sorted({i for v in visits for i, _ in v.history})
    used_m = sorted({i for v in visits for i in v.medications})
    used_a = sorted({i for v in visits for i in v.allergies})
    history_record = dataclasses.replace(
        base, conditions=tuple(base.conditions[i] for i in used_c), medications=tuple(base.medications[i] for i in used_m),
        allergies=tuple(base.allergies[i] for i in used_a), vitals={}, encounter=None, notes=(),
    )
    return _Plan(pid, pseudonym, identity, history_record, used_c, used_m, used_a, visits, counts, drops, stats)


def _plan_texts(plan: _Plan, state: _Worker) -> tuple[list[str], Any, int | None]:
    """The distinct free texts the patient's examples scrub, with the known identifiers and shift."""
    texts: list[str] = []
    known: Any = None
    shift: int | None = None
    for rec in ([plan.history, *(v.record for v in plan.visits)] if plan.visits else []):
        t, known, shift = state.memo.collect(state.deid, rec)
        texts += t
    return list(dict.fromkeys(texts)), known, shift


def patient_free_texts(raw: list[dict[str, Any]], shared_raw: list[dict[str, Any]],
                       state: _Worker) -> tuple[list[str], Any, int | None]:
    """What `patient_shard` sends to the scrubber for this patient (the bench's bare workload)."""
    plan = _plan(raw, shared_raw, state)
    return ([], None, None) if isinstance(plan, dict) else _plan_texts(plan, state)


def patient_shard(raw: list[dict[str, Any]] | _Decoded, shared_raw: list[dict[str, Any]], state: _Worker) -> dict[str, Any]:
    """All examples and counts of one patient (runs in a worker; returns de-identified data only).

    The patient's history entries are de-identified (and leak-checked) once, each encounter's own
    record (age, vitals, encounter, note sections) once, and every example shows slices of the two.
    """
    from deidentify.leaks import LeakDetected

    if isinstance(raw, _Decoded):
        plan = _plan(raw.raw, shared_raw, state, raw.displays)
    else:
        plan = _plan(raw, shared_raw, state)
    if isinstance(plan, dict):
        return plan
    cfg = state.config
    deid = state.deid
    drops = plan.drops
    leak_types: Counter[str] = Counter()
    removed: dict[str, Counter[str]] = {}
    examples: list[dict[str, Any]] = []
    pseudonym = plan.pseudonym

    # Structured identifiers removed once per patient (the identity alone).
    identity_only = deid.record(dataclasses.replace(plan.history, conditions=(), allergies=(), medications=()))
    base_removed = Counter(identity_only.removed)
    removed["Patient"] = Counter(base_removed)

    # Every free text of the patient's examples, scrubbed in one batch.
    state.memo.reset()
    texts, known, shift = _plan_texts(plan, state)
    state.memo.prime(texts, known, shift)

    history = None
    if plan.visits and SLICE_HISTORY:
        try:
            history = deid.record(plan.history)
        except LeakDetected:  # an entry leaks: each example's whole record is checked instead
            history = None
        else:
            hist_removed = Counter(history.removed)
            hist_removed.subtract(base_removed)
            if +hist_removed:
                removed["Condition/MedicationRequest/AllergyIntolerance text"] = +hist_removed
    cpos = {i: k for k, i in enumerate(plan.conditions)}
    # Each history condition as shown: once per clinical status, not once per example.
    shown_cond: dict[tuple[int, str], Any] = {}
    mpos = {i: k for k, i in enumerate(plan.medications)}
    apos = {i: k for k, i in enumerate(plan.allergies)}

    for v in plan.visits:
        if history is not None:
            record = v.record
        else:
            base = plan.history
            record = dataclasses.replace(
                v.record,
                conditions=tuple(dataclasses.replace(base.conditions[cpos[i]], clinical_status=st) for i, st in v.history),
                medications=tuple(base.medications[mpos[i]] for i in v.medications),
                allergies=tuple(base.allergies[apos[i]] for i in v.allergies),
            )
        try:
            d = deid.record(record)
        except LeakDetected as exc:
            drops["leak_in_deidentification"] += 1
            leak_types.update(exc.types)
            continue
        if len(d.notes) != len(record.notes):
            drops["note_lost_in_scrubbing"] += 1
            continue
        text_removed = Counter(d.removed)
        text_removed.subtract(base_removed)
        removed.setdefault("DocumentReference/Encounter text", Counter()).update(+text_removed)
        scrubbed = dict(zip(v.note_keys, d.notes))
        # A slice of de-identified records is still de-identified: the history entries come from
        # `history` (scrubbed, shifted, checked), the rest from this encounter's record.
        shown = dataclasses.replace(d, notes=(scrubbed["presenting"],) if "presenting" in scrubbed else ())
        if history is not None:
            shown = dataclasses.replace(
                shown,
                conditions=tuple(
                    shown_cond.get((i, st)) or shown_cond.setdefault(
                        (i, st), dataclasses.replace(history.conditions[cpos[i]], clinical_status=st))
                    for i, st in v.history
                ),
                medications=tuple(history.medications[mpos[i]] for i in v.medications),
                allergies=tuple(history.allergies[apos[i]] for i in v.allergies),
            )

        diagnoses = v.diagnoses
        if not diagnoses:
            diagnoses = list(shown.encounter.reasons if shown.encounter else ())
            rationale = "Documented reason for the encounter"
        else:
            rationale = "Recorded as a diagnosis of this encounter"
        if not diagnoses:
            drops["no_diagnosis"] += 1
            continue
        # Acuity: the record's own label, else the ESI rules on the de-identified record as shown
        # (the same call the service makes); the serving schema never gets a target without one.
        rules = score_record(shown)
        if v.level is not None:
            level, source, detail = v.level, "record", v.source
        elif cfg.rules_labels and rules.acuity is not None:
            level, source, detail = int(rules.acuity), "rules", "model.rules.score_record"
        else:
            level, source, detail = None, None, None
        if level is None and cfg.target_schema == "triage-report":
            drops["no_acuity"] += 1
            continue
        report = target_report(diagnoses, scrubbed.get("ap", ""), level, rationale)
        if report is None:
            drops["invalid_report"] += 1
            continue
        if cfg.target_schema == "diagnosis-only":
            report = diagnosis_only(report)
        answer = json.dumps(report, ensure_ascii=False, separators=(",", ":"))
        try:
            row = state.prompts.chat_example(state.prompts.build_messages(shown, rules=rules), answer)
            seed_text = state.prompts.seed_example(state.prompts.seed_prompt(shown), answer) if "seed" in cfg.formats else None
        except Exception:  # noqa: BLE001 - never show the record; count and go on
            drops["prompt_failed"] += 1
            continue
        example = {
            "id": f"{pseudonym}-e{v.ordinal}",
            "patient": pseudonym,
            "acuity": level,
            "label_source": source,
            "label_detail": detail,
            "messages": row["messages"],
            "chat_template_kwargs": row.get("chat_template_kwargs"),
        }
        if not informative(shown):
            example["_uninformative"] = True
        # The developer message is the same fixed instruction text in every example: skip it here
        # (the output scan still reads it) and search everything that came from the record.
        varying = [m for m in example["messages"] if not (m["role"] == "developer" and m["content"] == state.developer)]
        hits = state.scanner.find_parts(json_parts([varying, seed_text]))
        if hits:
            drops["leak_check"] += 1
            leak_types.update(hits)
            continue
        if seed_text is not None:
            example["_seed"] = seed_text
        examples.append(example)
    state.memo.reset()  # bounded memory: one patient's texts at a time

    return {
        "version": SHARD_VERSION,
        "pseudonym": pseudonym,
        "examples": examples,
        "stats": {
            "encounters": plan.counts["encounters"],
            "encounters_capped": plan.counts["encounters_capped"],
            "free_texts_scrubbed": len(texts),
            "dropped": dict(sorted(drops.items())),
            "leak_types": dict(sorted(leak_types.items())),
            "removed": {k: dict(sorted(v.items())) for k, v in sorted(removed.items())},
            "parse_skipped": dict(sorted(plan.stats.freeze().skipped_by_type.items())),
        },
    }


def target_report(diagnoses: Sequence[str], assessment_plan: str, acuity: int | None, rationale: str) -> dict[str, Any] | None:
    """The preliminary report drawn from the record, in TriageReport's shape; acuity only if given.

    Nothing is invented: no red flags or questions (the record holds none), diagnoses as recorded.
    """
    from pydantic import ValidationError

    from .report import TriageReport

    plan_at = assessment_plan.casefold().find("## plan")
    assessment = assessment_plan[:plan_at] if plan_at >= 0 else assessment_plan
    plan = assessment_plan[plan_at:] if plan_at >= 0 else ""
    names = [_one_line(d, 80) for d in diagnoses][:5]
    summary = _one_line("Preliminary: " + "; ".join(names), 139)
    reasoning = _one_line(assessment, 400) if assessment.strip() else _one_line("Documented: " + "; ".join(names), 400)
    report = {
        "acuity": acuity,
        "summary": summary,
        "differential": [{"condition": n, "likelihood": "high", "rationale": rationale} for n in names],
        "red_flags": [],
        "recommended_actions": plan_actions(plan),
        "questions_to_ask": [],
        "reasoning_summary": reasoning,
    }
    try:  # validate the shape; an unlabelled report is checked with a placeholder acuity
        checked = TriageReport.model_validate({**report, "acuity": acuity if acuity is not None else 3})
    except ValidationError:
        return None
    out = checked.model_dump(mode="json")
    out["acuity"] = acuity
    return out


# ---- the build --------------------------------------------------------------------------------

def _split_point(pseudonym: str, seed: int) -> float:
    digest = hmac.new(str(seed).encode(), pseudonym.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_quotas(n: int, ratios: Sequence[float]) -> list[int]:
    """Patients per split: largest remainder of ratio x n, then every split with a non-zero ratio
    gets at least one patient when there are enough (taken from the largest split)."""
    exact = [r * n for r in ratios]
    quotas = [int(x) for x in exact]
    by_remainder = sorted(range(len(SPLITS)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in by_remainder[: n - sum(quotas)]:
        quotas[i] += 1
    wanted = [i for i, r in enumerate(ratios) if r > 0]
    if n >= len(wanted):
        for i in wanted:
            if quotas[i] == 0:
                donor = max(range(len(SPLITS)), key=lambda j: (quotas[j], -j))
                quotas[donor] -= 1
                quotas[i] += 1
    return quotas


def assign_splits(pseudonyms: Iterable[str], seed: int, ratios: Sequence[float]) -> dict[str, str]:
    """Deterministic split by patient: patients ordered by a keyed hash of pseudonym and seed, the
    first `split_quotas` of them to train, the next to validation, the rest to test."""
    order = sorted(set(pseudonyms), key=lambda p: (_split_point(p, seed), p))
    out: dict[str, str] = {}
    start = 0
    for name, quota in zip(SPLITS, split_quotas(len(order), ratios)):
        out.update((p, name) for p in order[start : start + quota])
        start += quota
    return out


def _shard_bucket(pseudonym: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(pseudonym.encode()).digest()[:8], "big") % n


def _owned(output: Path) -> list[Path]:
    names = [f"{s}.{ext}" for s in SPLITS for ext in ("jsonl", "parquet")]
    names += [CARD_NAME, MANIFEST_NAME, AUDIT_NAME, "seed", WORK_DIR]
    return [output / n for n in names]


def prepare_output(cfg: BuildConfig) -> None:
    out = cfg.output
    if out.exists() and not out.is_dir():
        raise DatasetError(f"output {out} exists and is not a folder")
    if cfg.resume and cfg.overwrite:
        raise DatasetError("choose one of --resume and --overwrite")
    if out.is_dir() and any(out.iterdir()):
        if cfg.overwrite:
            for p in _owned(out):
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        elif not cfg.resume:
            raise DatasetError(f"output folder {out} is not empty: pass --resume to continue or --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # left by a killed build
        stale.unlink()
    for stale in (out / WORK_DIR / "shards").glob(".*.tmp"):
        stale.unlink()


def _input_files(path: Path) -> list[dict[str, Any]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [
        {"path": str(p.relative_to(path) if path.is_dir() else p.name), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in files
    ]


def _state_check(cfg: BuildConfig, inputs: list[dict[str, Any]], fingerprint: str) -> None:
    """A work folder belongs to one input, key and settings; resuming anything else is refused."""
    work = cfg.output / WORK_DIR
    state = {"inputs": inputs, "key_fingerprint": fingerprint, "settings": cfg.settings(), "shard_version": SHARD_VERSION}
    path = work / "state.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != json.loads(json.dumps(state)):
            raise DatasetError(
                f"{work} holds a build of other inputs, key or settings: use --overwrite to start again"
            )
        return
    write_json(path, state)


def _progress(total: int | None, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="patient", file=sys.stderr,
                disable=not enabled or not sys.stderr.isatty(), leave=False)


def export_identifiers(path: Path) -> Any:
    """Every identifier of every identity-bearing resource in the export (first pass)."""
    from deidentify.leaks import IdentifierSet
    from fhir_adapter.bulk import BulkReader

    ids = IdentifierSet()
    with BulkReader(path, types=()) as reader:
        for src in reader.sources():
            if src.kind == "ndjson" and src.rtype is not None and src.rtype not in IDENTITY_TYPES:
                continue
            with BulkReader(src.path, types=()) as one:
                batch = [r for r in one.iter_resources() if r.get("resourceType") in IDENTITY_TYPES]
                ids.update(IdentifierSet.from_resources(batch))
    return ids


def build(cfg: BuildConfig, *, echo: Callable[[str], None] | None = None) -> BuildResult:
    """Run (or resume) a build. Raises DatasetError with a one-line message on bad input."""
    t0 = time.monotonic()
    from deidentify.pseudonym import MissingKeyError, key_fingerprint, load_key
    from fhir_adapter.bulk import BadLine, BulkError, BulkReader, NoResourcesError

    if not cfg.input.exists():
        raise DatasetError(f"input {cfg.input} does not exist")
    if not os.access(cfg.input, os.R_OK):
        raise DatasetError(f"input {cfg.input} is not readable")
    unknown = set(cfg.formats) - set(FORMATS)
    if unknown or "chat" not in cfg.formats:
        raise DatasetError(f"--format takes chat (always), seed, parquet; got {','.join(sorted(cfg.formats))}")
    check_settings(cfg)
    try:
        key = load_key(cfg.key_file)
    except MissingKeyError as exc:
        raise DatasetError(str(exc)) from None
    fingerprint = key_fingerprint(key)
    pseudonymize = _pseudonym_fn(key)
    del key
    prepare_output(cfg)
    try:
        inputs = _input_files(cfg.input)
    except OSError as exc:
        raise DatasetError(f"input {cfg.input} cannot be read ({exc.strerror or type(exc).__name__})") from None
    _state_check(cfg, inputs, fingerprint)
    shards = cfg.output / WORK_DIR / "shards"
    shards.mkdir(parents=True, exist_ok=True)

    bad_lines: list[BadLine] = []
    seen_bad: set[tuple[str, int]] = set()

    def on_bad(b: BadLine) -> None:
        if (b.file, b.line_number) not in seen_bad:
            seen_bad.add((b.file, b.line_number))
            bad_lines.append(b)
            if echo:
                echo(f"skipped {b.file} line {b.line_number}: {b.reason}")

    timings: dict[str, float] = {}
    t_index = time.monotonic()
    try:
        identifiers = export_identifiers(cfg.input)
        reader = BulkReader(cfg.input, on_bad_line=on_bad, types=())
        patient_ids = reader.patient_ids()
    except NoResourcesError as exc:
        raise NoInputResources(str(exc)) from None
    except BulkError as exc:
        raise DatasetError(str(exc)) from None
    except OSError as exc:
        raise DatasetError(f"input {cfg.input} cannot be read ({exc.strerror or type(exc).__name__})") from None

    pseudonyms: list[str] = []
    todo_total = 0

    def todo() -> Iterator[tuple[str, list[tuple[str, Any]], list[dict[str, Any]]]]:
        nonlocal todo_total
        for p in reader.iter_patient_lines():
            ps = pseudonymize(p.patient_id)
            if cfg.shard is not None and _shard_bucket(ps, cfg.shard[1]) != cfg.shard[0]:
                continue
            pseudonyms.append(ps)
            if (shards / f"{ps}.json").is_file():
                continue  # done by an earlier (interrupted) run
            todo_total += 1
            yield ps, p.items, p.shared_raw

    timings["index"] = time.monotonic() - t_index
    bar = _progress(len(patient_ids), "patients", cfg.progress)
    t_patients = time.monotonic()
    try:
        with reader:
            for ps, shard in _run(todo(), cfg, identifiers, timings):
                with atomic_open(shards / f"{ps}.json") as fh:
                    fh.write(json.dumps(shard, sort_keys=True, ensure_ascii=False, separators=(",", ":")))
                bar.update(1)
    finally:
        bar.close()
    timings["patients"] = time.monotonic() - t_patients - timings.get("load", 0.0)

    if cfg.shard is not None:  # this machine's part only; a run without --shard merges
        manifest = {"counts": {"patients": len(pseudonyms), "built_now": todo_total}, "shard": list(cfg.shard)}
        return BuildResult(cfg.output, manifest, time.monotonic() - t0, merged=False, timings=timings)

    t_merge = time.monotonic()
    gc.freeze()  # the loaded models again out of the collector's way while the merge allocates
    try:
        manifest, audit = merge(cfg, sorted(set(pseudonyms)), inputs, fingerprint, bad_lines, identifiers,
                                encounters_total=None)
    finally:
        gc.unfreeze()
    manifest["counts"]["built_now"] = todo_total
    timings["merge"] = time.monotonic() - t_merge
    return BuildResult(cfg.output, manifest, time.monotonic() - t0, merged=True, timings=timings)


def _pseudonym_fn(key: bytes) -> Callable[[str], str]:
    from deidentify.pseudonym import Pseudonymizer

    p = Pseudonymizer(key)
    return p.patient


def _run(items: Iterator[tuple[str, list[tuple[str, Any]], list[dict[str, Any]]]], cfg: BuildConfig,
         identifiers: Any, timings: dict[str, float]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Shards in input order; with workers, a process pool fed through a bounded window."""
    if cfg.workers <= 1:
        t = time.monotonic()
        _init_worker(cfg, identifiers)
        _freeze_loaded()  # part of start-up, as in a pool worker's initializer
        timings["load"] = time.monotonic() - t
        assert _STATE is not None
        try:
            for ps, lines, shared in items:
                yield ps, _work(lines, shared)
        finally:
            gc.unfreeze()  # hand them back: the models are freed as usual when the build ends
        return
    import multiprocessing as mp
    from collections import deque

    window = cfg.window or 2 * cfg.workers
    ctx = mp.get_context("forkserver" if sys.platform != "win32" else "spawn")
    with ctx.Pool(cfg.workers, initializer=_init_pool_worker, initargs=(cfg, identifiers)) as pool:
        # Wait for every worker's start-up (imports, scrubber), reported apart as with one worker.
        t = time.monotonic()
        for _ in range(5):
            if len(set(pool.map(_started, range(cfg.workers), chunksize=1))) == cfg.workers:
                break
        timings["load"] = time.monotonic() - t
        pending: deque[tuple[str, Any]] = deque()
        for ps, lines, shared in items:  # undecoded lines: the workers decode what they use
            pending.append((ps, pool.apply_async(_work, (lines, shared))))
            if len(pending) >= window:
                done_ps, res = pending.popleft()
                yield done_ps, res.get()
        while pending:
            done_ps, res = pending.popleft()
            yield done_ps, res.get()


def _started(_: int) -> int:
    time.sleep(0.05)  # long enough for the other workers to take the other calls
    return os.getpid()


def _work(lines: list[tuple[str, Any]], shared: list[dict[str, Any]]) -> dict[str, Any]:
    assert _STATE is not None
    return patient_shard(decode_used(lines, _STATE.config.max_encounters), shared, _STATE)


# ---- merge, re-scan, card ---------------------------------------------------------------------

def _read_shard(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise DatasetError(f"work file {path.name} is damaged: run again with --overwrite") from None


def _shard_has_examples(path: Path) -> bool:
    """`_read_shard(path)["examples"]` is not empty, from the file's first bytes: shards are written
    with sorted keys and no spaces, so they start `{"examples":[` then `]` when empty (any other
    start: the whole file is read)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(15)
    except OSError:
        head = b""
    if head.startswith(b'{"examples":[') and len(head) == 15 and head[13:14] in (b"]", b"{"):
        return head[13:14] == b"{"
    return bool(_read_shard(path)["examples"])


def merge(cfg: BuildConfig, pseudonyms: list[str], inputs: list[dict[str, Any]], fingerprint: str,
          bad_lines: Sequence[Any], identifiers: Any, encounters_total: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    out = cfg.output
    shards = out / WORK_DIR / "shards"
    per_split: Counter[str] = Counter()
    patients_per_split: Counter[str] = Counter()
    drops: Counter[str] = Counter()
    leak_types: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    removed: dict[str, Counter[str]] = {}
    encounters = capped = with_examples = 0
    parse_skipped: Counter[str] = Counter()
    free_texts = 0
    balanced: Counter[str] = Counter()
    by_source_split: dict[str, dict[str, Counter[str]]] = {}
    uninformative_kept = largest = 0
    before_cap: list[int] = []  # per patient with examples: how many the cap saw
    seed = "seed" in cfg.formats
    # Only patients with examples take a place in a split (a split of example-less patients is empty).
    splits = assign_splits((ps for ps in pseudonyms if _shard_has_examples(shards / f"{ps}.json")), cfg.seed, cfg.split)
    with contextlib.ExitStack() as stack:
        chat = {s: stack.enter_context(atomic_open(out / f"{s}.jsonl")) for s in SPLITS}
        seeds = {s: stack.enter_context(atomic_open(out / "seed" / f"{s}.jsonl")) for s in SPLITS} if seed else {}
        for ps in pseudonyms:
            shard = _read_shard(shards / f"{ps}.json")
            st = shard["stats"]
            encounters += st.get("encounters", 0)
            capped += st.get("encounters_capped", 0)
            drops.update(st.get("dropped", {}))
            leak_types.update(st.get("leak_types", {}))
            parse_skipped.update(st.get("parse_skipped", {}))
            free_texts += st.get("free_texts_scrubbed", 0)
            for rtype, by_type in st.get("removed", {}).items():
                removed.setdefault(rtype, Counter()).update(by_type)
            split = splits.get(ps, "")
            examples, removed_here = balance_patient(
                shard["examples"], max_per_patient=cfg.max_per_patient, collapse=cfg.collapse_near_duplicates,
                uninformative_keep=cfg.uninformative_keep)
            balanced.update(removed_here)
            if examples or removed_here.get("over_patient_cap"):
                before_cap.append(len(examples) + removed_here.get("over_patient_cap", 0))
            uninformative_kept += sum(1 for ex in examples if ex.get("_uninformative"))
            if examples:
                with_examples += 1
                patients_per_split[split] += 1
                largest = max(largest, len(examples))
            for ex in examples:
                ex.pop("_uninformative", None)
                seed_text = ex.pop("_seed", None)
                chat[split].write(dumps_line(ex))
                if seed and seed_text is not None:
                    seeds[split].write(dumps_line({"id": ex["id"], "patient": ex["patient"], "text": seed_text}))
                per_split[split] += 1
                level = ex.get("acuity")
                labels["unlabelled" if level is None else str(level)] += 1
                if level is not None:
                    sources[ex.get("label_source") or ""] += 1
                by_source_split.setdefault(split, {}).setdefault(ex.get("label_source") or "none", Counter())[
                    "unlabelled" if level is None else str(level)] += 1
    if "parquet" in cfg.formats:
        for s in SPLITS:
            write_parquet(out / f"{s}.parquet", out / f"{s}.jsonl")

    leak_dropped = drops.get("leak_check", 0) + drops.get("leak_in_deidentification", 0)
    manifest: dict[str, Any] = {
        "tool": "triage dataset build",
        "tool_version": tool_version(),
        "inputs": inputs,
        "settings": cfg.settings(),
        "deidentification": {
            "key_fingerprint": fingerprint,
            "scrubber": "deidentify.text.TextScrubber (Presidio + clinical recognizers + known identifiers)",
            "date_shift_days": "-365..-1 per patient",
            "age_cap": 90,
        },
        "counts": {
            "patients": len(pseudonyms),
            "patients_with_examples": with_examples,
            "patients_per_split": {s: patients_per_split.get(s, 0) for s in SPLITS},
            "encounters": encounters,
            "encounters_over_cap": capped,
            "free_texts_scrubbed": free_texts,
            "examples": sum(per_split.values()),
            "examples_per_split": {s: per_split.get(s, 0) for s in SPLITS},
            "labels": {
                "by_acuity": {k: v for k, v in sorted(labels.items()) if k != "unlabelled"},
                "unlabelled": labels.get("unlabelled", 0),
                "by_source": dict(sorted(sources.items())),
                "by_split_and_source": {
                    sp: {src: dict(sorted(c.items())) for src, c in sorted(by_source_split.get(sp, {}).items())}
                    for sp in SPLITS
                },
            },
            "balance": {
                "removed": dict(sorted(balanced.items())),
                "uninformative_kept": uninformative_kept,
                "largest_patient_examples": largest,
                "largest_patient_share": round(largest / max(1, sum(per_split.values())), 4),
                "per_patient_before_cap": _quantiles(before_cap),
            },
            "dropped": dict(sorted(drops.items())),
            "bad_lines": len(bad_lines),
            "invalid_resources_skipped": dict(sorted(parse_skipped.items())),
        },
        "warnings": split_warnings({sp: patients_per_split.get(sp, 0) for sp in SPLITS}, cfg.split,
                                   cfg.min_patients_per_split),
        "rules_labeller": rules_labeller_accuracy(cfg.rules_metrics),
        "bad_lines": [{"file": b.file, "line": b.line_number, "reason": b.reason} for b in bad_lines],
        "leak_check": {
            "dropped_examples": leak_dropped,
            "dropped_by_identifier_type": dict(sorted(leak_types.items())),
            "identifiers_searched": 0,
            "files_scanned": 0,
            "output_hits": 0,
            "passed": True,
        },
    }
    audit = {
        "key_fingerprint": fingerprint,
        "removed_by_resource_type": {k: dict(sorted(v.items())) for k, v in sorted(removed.items())},
        "removed_total_by_type": dict(sorted(sum(removed.values(), Counter()).items())),
        "leak_check_drops_by_type": dict(sorted(leak_types.items())),
    }
    # Card, manifest and audit are scanned too; write them with the check's figures filled in.
    scanner = LeakScanner(identifiers)
    files = _output_files(out, cfg)
    write_json(out / AUDIT_NAME, audit)
    write_card(out / CARD_NAME, manifest, audit)
    hits = scan_outputs(files + [out / AUDIT_NAME, out / CARD_NAME], scanner)
    manifest["leak_check"].update(
        identifiers_searched=scanner.size, files_scanned=len(files) + 3, output_hits=sum(hits.values()),
        passed=not hits, output_hits_by_type=dict(sorted(hits.items())),
    )
    write_card(out / CARD_NAME, manifest, audit)
    write_json(out / MANIFEST_NAME, manifest)
    hits.update(scan_outputs([out / MANIFEST_NAME, out / CARD_NAME], scanner))
    if hits:
        raise LeakFound(
            "leak check FAILED: identifiers found in output files ("
            + ", ".join(f"{k}={v}" for k, v in sorted(hits.items())) + "); do not share this output"
        )
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)
    return manifest, audit


def _quantiles(values: list[int]) -> dict[str, int]:
    """Median, 90th percentile and maximum (nearest rank) of per-patient example counts."""
    if not values:
        return {"median": 0, "p90": 0, "max": 0}
    v = sorted(values)
    return {"median": v[(len(v) - 1) // 2], "p90": v[min(len(v) - 1, -(-9 * len(v) // 10) - 1)], "max": v[-1]}


def _output_files(out: Path, cfg: BuildConfig) -> list[Path]:
    files = [out / f"{s}.jsonl" for s in SPLITS]
    if "seed" in cfg.formats:
        files += [out / "seed" / f"{s}.jsonl" for s in SPLITS]
    if "parquet" in cfg.formats:
        files += [out / f"{s}.parquet" for s in SPLITS]
    return files


def iter_file_texts(path: Path) -> Iterator[str]:
    """The text a reader of `path` would see: decoded JSON strings, Parquet cells, or raw text."""
    for parts in iter_file_parts(path):
        yield "\n".join(parts)


def iter_file_parts(path: Path) -> Iterator[list[str]]:
    """`iter_file_texts` before joining: each text as the strings joined by newlines."""
    for texts in _iter_file_rows(path):
        yield from texts


def _iter_file_rows(path: Path) -> Iterator[list[list[str]]]:
    """Per row (JSONL line, Parquet row; a whole file otherwise) the texts a reader would see.

    A JSONL line that decodes is searched as its decoded strings only. Written with
    ensure_ascii=False, the raw line is those strings with `"`, `\\` and control characters escaped,
    between our fixed keys: every identifier in it is in the decoded strings too, and the only
    extra matches the raw line gave were made of escape letters ("\\nancy"). Searching both
    doubled the work. A line that does not decode is searched raw."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                yield [json_parts(row)]
        return
    with open(path, encoding="utf-8", errors="replace") as fh:
        if path.suffix == ".jsonl":
            for line in fh:
                try:
                    parts = json_parts(json.loads(line))
                except ValueError:
                    parts = [line]
                yield [parts]
        else:
            text = fh.read()
            texts = [[text]]
            if path.suffix == ".json":
                with contextlib.suppress(ValueError):
                    texts.append(json_parts(json.loads(text)))
            yield texts


def scan_outputs(paths: Iterable[Path], scanner: LeakScanner) -> Counter[str]:
    """Every text of every file, searched. Files of one split (its JSONL, Parquet and seed copies)
    are read in step, so a message met again in the Parquet copy is tokenized once."""
    hits: Counter[str] = Counter()
    groups: dict[str, list[Path]] = {}
    for p in paths:
        groups.setdefault(p.name.split(".")[0], []).append(p)
    for group in groups.values():
        for row in itertools.zip_longest(*(_iter_file_rows(p) for p in group)):
            for texts in row:
                for parts in texts or ():
                    hits.update(scanner.find_parts(parts))
    return hits
