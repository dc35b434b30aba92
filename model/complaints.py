"""Chief complaint -> ESI v4 decision points A (life-saving), B (high risk) and C (resources).

The clinical content is data: `esi_tables.yaml` beside this module, every entry citing the ESI v4
handbook chapter or CEDIS complaint it comes from. This module only reads complaint text the way
triage nurses write it:

- any letter case; shorthand expanded from the table (`CP`, `SOB`, `abd pain`, `s/p fall`);
- close misspellings corrected against the tables' own words (`abdominla` -> `abdominal`,
  `chestpain` -> `chest pain`); only words of five or more letters, so short abbreviations are
  never "corrected" into something else;
- negation in the NegEx style: a cue (`denies`, `no`, `without`, ...) negates the next words up
  to five, stopping at punctuation or a clause word (`but`, `c/o`, ...); a negated word never
  triggers an entry. Commas end a negation on purpose: "no fever, chest pain" keeps chest pain
  (a missed high-risk complaint is worse than an over-triage);
- SNOMED CT codes, when the EHR sends a coded complaint.

A hand-written matcher instead of a clinical NLP library (medspaCy, negspaCy): those need a
spaCy pipeline per call and their vocabularies are not ED shorthand; the rules run on every hook
inside the deadline, and this reads a 40-word complaint in well under a millisecond.
"""
from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from fhir_adapter.record import Coding

TABLES = "esi_tables.yaml"
_TOKEN = re.compile(r"\d+(?:\.\d+)?(?:/\d+)*|[a-z]+(?:/[a-z]+)*/?|[.,;:!?()+&]")
_PAIN_SCORE = re.compile(r"\b(10|[0-9])\s*/\s*10\b")
_MIN_FUZZY = 5  # letters: shorter words are abbreviations, never fuzzy-corrected
_FUZZY_CUTOFF = 0.84
_NEGATION_WINDOW = 5
RESOURCE_WEIGHT = {"complex_procedure": 2}  # ESI v4 Table 5-1; every other kind counts 1
# Numbers nurses write into a complaint that settle a finding: a temperature of 38 or more is a
# fever, a glucose under 70 mg/dL (3.9 mmol/L) is hypoglycaemia, weeks of pregnancy.
_TEMPERATURE = re.compile(r"\b(?:t|temp|tmax|fever|febrile)\s*(?:of|to|=|:)?\s*(\d{2,3}(?:\.\d)?)", re.I)
_GLUCOSE = re.compile(r"\b(?:bg|bs|cbg|fsbs|glucose|sugar|blood sugar)\s*(?:of|=|:|is|was)?\s*(\d{1,3}(?:\.\d)?)", re.I)
_VOLTS = re.compile(r"\b(\d{3,6})\s*(?:v|volts?)\b", re.I)
_WEEKS = re.compile(r"\b(\d{1,2})\s*(?:\+\d\s*)?(?:wks?|weeks?)\b", re.I)


@dataclass(frozen=True)
class Entry:
    """One row of a decision-point table."""

    id: str
    phrases: tuple[tuple[str, ...], ...]
    source: str
    with_any: tuple[tuple[str, ...], ...] = ()
    unless_any: tuple[tuple[str, ...], ...] = ()
    snomed: frozenset[str] = frozenset()
    min_age: int | None = None
    max_age: int | None = None
    max_age_days: int | None = None
    min_weeks: int | None = None  # of pregnancy
    max_weeks: int | None = None
    which: tuple[str, ...] = ()  # decision point C: the resources this category expects

    def applies_to_weeks(self, weeks: int | None) -> bool:
        if weeks is None:
            return True
        return (self.min_weeks is None or weeks >= self.min_weeks) and (self.max_weeks is None or weeks <= self.max_weeks)

    def applies_to_age(self, age_years: int | None, age_days: int | None) -> bool:
        if self.min_age is not None and (age_years is None or age_years < self.min_age):
            return False
        if self.max_age is not None and (age_years is None or age_years > self.max_age):
            return False
        if self.max_age_days is not None and (age_days is None or age_days > self.max_age_days):
            return False
        return True


@dataclass(frozen=True)
class Match:
    """An entry that fired, with the words (or code) that fired it."""

    id: str
    matched: str
    source: str
    which: tuple[str, ...] = ()


@dataclass(frozen=True)
class ComplaintFindings:
    present: bool  # any complaint text or code at all
    life_saving: tuple[Match, ...] = ()  # decision point A
    high_risk: tuple[Match, ...] = ()  # decision point B
    resource_matches: tuple[Match, ...] = ()  # decision point C
    pain: float | None = None  # "8/10" written in the complaint
    negated: tuple[str, ...] = ()  # words read as negated (shown on the card)
    immunized: bool = False  # "shots UTD": the paediatric fever rule's exception

    @property
    def resource_kinds(self) -> tuple[str, ...]:
        """The distinct resources every matching category expects, in table order."""
        return tuple(dict.fromkeys(k for m in self.resource_matches for k in m.which))

    @property
    def resources(self) -> int | None:
        """Expected resources (ESI counts kinds, a complex procedure as two); None when no
        category matched, which the rules take as unknown."""
        if not self.resource_matches:
            return None
        return sum(RESOURCE_WEIGHT.get(k, 1) for k in self.resource_kinds)

    def has(self, entry_id: str) -> bool:
        return any(m.id == entry_id for m in (*self.life_saving, *self.high_risk, *self.resource_matches))


@dataclass(frozen=True)
class _Tables:
    abbreviations: dict[str, tuple[str, ...]]
    negation_cues: frozenset[str]
    negation_stops: frozenset[str]
    life_saving: tuple[Entry, ...]
    high_risk: tuple[Entry, ...]
    resources: tuple[Entry, ...]
    vocabulary: frozenset[str] = field(default_factory=frozenset)


def _raw_tokens(text: str) -> list[str]:
    text = text.lower().replace("’", "'").replace("'", "")
    text = re.sub(r"\bw/(?=[a-z\s]|$)(?!o\b)", " with ", text)  # "w/ fever"; "w/o" stays
    text = re.sub(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])", " ", text)  # "x2d" -> "x 2 d"
    return _TOKEN.findall(text)


def _expand(tokens: Iterable[str], abbreviations: dict[str, tuple[str, ...]]) -> list[str]:
    out: list[str] = []
    for tok in tokens:
        key = tok.rstrip("/") if tok.endswith("/") and len(tok) > 1 else tok
        if key in abbreviations:
            out.extend(abbreviations[key])
        elif "/" in key and key[0].isalpha():  # "lip/tongue", "CP/SOB": each word on its own
            out.extend(w for part in key.split("/") for w in abbreviations.get(part, (part,)))
        else:
            out.append(key)
    return out


def _phrase(text: str, abbreviations: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(_expand(_raw_tokens(str(text)), abbreviations))


@functools.lru_cache(maxsize=1)
def load_tables() -> _Tables:
    raw = yaml.safe_load(resources.files("model").joinpath(TABLES).read_text(encoding="utf-8"))
    abbreviations = {str(k).lower(): tuple(str(v).lower().split()) for k, v in raw["abbreviations"].items()}

    def entries(section: str) -> tuple[Entry, ...]:
        out = []
        for row in raw[section]:
            phrase = functools.partial(_phrase, abbreviations=abbreviations)
            out.append(Entry(
                id=row["id"], source=row["source"],
                phrases=tuple(phrase(p) for p in row["phrases"]),
                with_any=tuple(phrase(p) for p in row.get("with_any", ())),
                unless_any=tuple(phrase(p) for p in row.get("unless_any", ())),
                snomed=frozenset(str(c) for c in row.get("snomed", ())),
                min_age=row.get("min_age"), max_age=row.get("max_age"),
                max_age_days=row.get("max_age_days"), min_weeks=row.get("min_weeks"),
                max_weeks=row.get("max_weeks"), which=tuple(row.get("which", ())),
            ))
        return tuple(out)

    life, high, res = entries("life_saving"), entries("high_risk"), entries("resources")
    vocabulary = {
        word
        for entry in (*life, *high, *res)
        for group in (entry.phrases, entry.with_any, entry.unless_any)
        for phrase in group
        for word in phrase
        if word.isalpha() and len(word) >= 3
    }
    vocabulary.update(w for words in abbreviations.values() for w in words if w.isalpha())
    return _Tables(
        abbreviations=abbreviations,
        negation_cues=frozenset(raw["negation_cues"]),
        negation_stops=frozenset(raw["negation_stops"]),
        life_saving=life, high_risk=high, resources=res,
        vocabulary=frozenset(vocabulary),
    )


@functools.lru_cache(maxsize=1)
def _english() -> Any:
    """pyspellchecker's English word list (MIT): a real word is never "corrected" into another
    ("gaping" is not "gasping", "restrained" is not "unrestrained")."""
    from spellchecker import SpellChecker

    return SpellChecker(language="en", distance=1)


@functools.lru_cache(maxsize=4096)
def _correct(word: str, vocabulary: frozenset[str]) -> tuple[str, ...]:
    """A close misspelling of a table word, or two table words written together."""
    if word in vocabulary or len(word) < _MIN_FUZZY or not word.isalpha() or word in _english():
        return (word,)
    for cut in range(3, len(word) - 2):  # "chestpain", "abdpain"
        left, right = word[:cut], word[cut:]
        if left in vocabulary and right in vocabulary:
            return (left, right)
    close = difflib.get_close_matches(word, vocabulary, n=1, cutoff=_FUZZY_CUTOFF)
    if not close or _flips_meaning(word, close[0]):
        return (word,)
    return (close[0],)


def _flips_meaning(word: str, candidate: str) -> bool:
    """"arousable" must not become "unarousable": no correction adds or drops a negating prefix."""
    for prefix in ("un", "non", "in", "dis", "ir", "im"):
        if candidate.startswith(prefix) != word.startswith(prefix):
            return True
    return False


def _numbers(text: str) -> str:
    """Words for the numbers that settle a finding, added at the end as their own clause."""
    words = []
    for found in _TEMPERATURE.finditer(text):
        value = float(found.group(1))
        if 38.0 <= value <= 43.0 or 100.4 <= value <= 110.0:
            words.append("fever")
    for found in _GLUCOSE.finditer(text):
        value = float(found.group(1))
        if value < 70 and not (value < 4 and "." not in found.group(1)):
            words.append("hypoglycemia")
    if any(int(found.group(1)) >= 400 for found in _VOLTS.finditer(text)):
        words.append("high voltage")  # ESI v4 ch. 4 lists high-voltage injury as high risk
    return " . " + " ".join(words) if words else ""


def pregnancy_weeks(text: str) -> int | None:
    found = _WEEKS.search(text)
    return int(found.group(1)) if found and re.search(r"preg|gestation|iup|g\d", text, re.I) else None


def normalise(text: str) -> tuple[list[str], list[bool]]:
    """Tokens of a complaint (expanded, corrected) and, for each, whether it is negated."""
    tables = load_tables()
    text = text + _numbers(text)
    tokens: list[str] = []
    for tok in _expand(_raw_tokens(text), tables.abbreviations):
        tokens.extend(_correct(tok, tables.vocabulary))
        if tokens[-1] != tok and tokens[-1] in tables.abbreviations:
            tokens[-1:] = list(tables.abbreviations[tokens[-1]])
    negated = [False] * len(tokens)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in tables.negation_cues:
            # Post-posed cue ("LOC denied", "fever: none") negates the words just before it.
            if tok in ("denied", "none", "negative", "neg", "absent", "nil") and i > 0 and (
                    i + 1 == len(tokens) or not tokens[i + 1].isalpha()):
                j = i - 1
                while j >= 0 and tokens[j].isalpha() and i - j <= 3:
                    negated[j] = True
                    j -= 1
            else:
                for j in range(i + 1, min(len(tokens), i + 1 + _NEGATION_WINDOW)):
                    if not tokens[j][0].isalnum() or tokens[j] in tables.negation_stops:
                        break
                    negated[j] = True
        i += 1
    return tokens, negated


def _find(phrase: tuple[str, ...], tokens: Sequence[str], negated: Sequence[bool]) -> bool:
    """`phrase` in order, at most one other word between two of its words, none negated (unless
    the phrase is itself a negation: "no bowel movement"), never across punctuation."""
    if phrase[0] in load_tables().negation_cues:
        negated = [False] * len(tokens)
    n = len(tokens)
    for start in range(n):
        if tokens[start] != phrase[0] or negated[start]:
            continue
        pos = start
        for word in phrase[1:]:
            found = None
            for k in (pos + 1, pos + 2):
                if k >= n or not tokens[k][0].isalnum():
                    break
                if tokens[k] == word:
                    found = k
                    break
            if found is None or negated[found]:
                break
            pos = found
        else:
            return True
    return False


def _first(phrases: Iterable[tuple[str, ...]], tokens: Sequence[str], negated: Sequence[bool]) -> str | None:
    for phrase in phrases:
        if phrase and _find(phrase, tokens, negated):
            return " ".join(phrase)
    return None


def _match(entries: Iterable[Entry], tokens: Sequence[str], negated: Sequence[bool],
           codes: frozenset[str], age_years: int | None, age_days: int | None,
           weeks: int | None) -> tuple[Match, ...]:
    out = []
    for entry in entries:
        if not entry.applies_to_age(age_years, age_days) or not entry.applies_to_weeks(weeks):
            continue
        code = next(iter(sorted(entry.snomed & codes)), None)
        hit = f"SNOMED {code}" if code else _first(entry.phrases, tokens, negated)
        if hit is None:
            continue
        if entry.with_any and _first(entry.with_any, tokens, negated) is None:
            continue
        if entry.unless_any and _first(entry.unless_any, tokens, negated) is not None:
            continue
        out.append(Match(id=entry.id, matched=hit, source=entry.source, which=entry.which))
    return tuple(out)


def assess_complaint(
    texts: Iterable[str | None],
    codings: Iterable[Coding] = (),
    *,
    age_years: int | None = None,
    age_days: int | None = None,
) -> ComplaintFindings:
    """Read the complaint (texts and codes from every place the EHR put it) against the tables."""
    codings = tuple(codings)
    parts = [t.strip() for t in texts if t and t.strip()]
    parts += [c.display for c in codings if c.display]  # a coded complaint's display is text too
    codes = frozenset(c.code for c in codings if c.code)
    if not parts and not codes:
        return ComplaintFindings(present=False)
    tables = load_tables()
    # Each place is its own clause: a negation never runs from one into the next.
    tokens, negated = normalise(" . ".join(parts))
    weeks = next((w for w in map(pregnancy_weeks, parts) if w is not None), None)
    pain = None
    for text in parts:
        found = _PAIN_SCORE.search(text)
        if found:
            pain = max(pain or 0.0, float(found.group(1)))
    return ComplaintFindings(
        present=True,
        life_saving=_match(tables.life_saving, tokens, negated, codes, age_years, age_days, weeks),
        high_risk=_match(tables.high_risk, tokens, negated, codes, age_years, age_days, weeks),
        resource_matches=_match(tables.resources, tokens, negated, codes, age_years, age_days, weeks),
        pain=pain,
        immunized=any(t == "immunized" and not n for t, n in zip(tokens, negated)),
        # Only the tables' own words: a negated word is never free text that could be PHI.
        negated=tuple(dict.fromkeys(t for t, n in zip(tokens, negated) if n and t in tables.vocabulary)),
    )


def table_rows() -> list[dict[str, Any]]:
    """Every table entry, for docs and the card's citations."""
    tables = load_tables()
    rows = []
    for point, entries in (("A", tables.life_saving), ("B", tables.high_risk), ("C", tables.resources)):
        for e in entries:
            rows.append({"decision_point": point, "id": e.id, "source": e.source, "which": list(e.which),
                         "phrases": [" ".join(p) for p in e.phrases]})
    return rows
