"""Free-text scrubbing: Presidio analysis + clinical recognizers + the record's own identifiers.

    scrubber = TextScrubber()
    result = scrubber.scrub(note, known=KnownIdentifiers.from_identity(identity), date_shift_days=-41)
    result.text   # "[NAME] was seen on 2020-01-03 ..."
    result.spans  # [Span(start, end, entity_type, score)], offsets into the ORIGINAL text

`scrub_many` runs spaCy once over a batch with `nlp.pipe`. Lines written in ALL CAPITALS get a
second NER pass on a case-normalised copy (same length, so offsets map back one to one).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import regex
from presidio_analyzer import AnalyzerEngine, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

from deidentify.casing import is_caps_line, truecase
from deidentify.vocabulary import is_clinical, is_vetoed
from deidentify.known import KnownIdentifiers
from deidentify.operators import Surrogates, placeholder, shift_date_text

Mode = Literal["placeholder", "surrogate"]
DEFAULT_SCORE_THRESHOLD = 0.4
NER_LABELS = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}
CAPS_NER_SCORE = 0.75
CAPS_NER = "SpacyRecognizer (re-cased)"  # recognizer name of the second NER pass's results
NER_SCORE = 0.85  # Presidio's default for spaCy entities
_NER_CACHE_MAX = 200_000
_LINE = regex.compile(r"[^\n]+")
_HAS_UPPER = regex.compile(r"[A-Z]")


@dataclass(frozen=True)
class _Ent:
    """The three attributes Presidio's SpacyRecognizer reads from an entity."""

    start_char: int
    end_char: int
    label_: str

# Eponyms and named scores are not people: "Crohn's disease", "Wells score", "Glasgow scale".
_EPONYM_AFTER = regex.compile(
    r"(?:['’]s?)?(?:[ \t]+(?:risk|reflex|sign))?[ \t]+(?:disease|syndrome|sign|score|criteria|test|rule|rules|maneuver|manoeuvre|palsy"
    r"|phenomenon|law|triad|classification|scale|procedure|operation|repair|fracture|ulcer|lymphoma"
    r"|sarcoma|tumou?r|esophagus|reflex|node|trial|study|protocol|index|equation|formula|method"
    r"|technique|position|incision|dementia|chorea|ataxia|anomaly|block|cell|cells|regimen)\b",
    regex.IGNORECASE,
)
# Drug-name stems that spaCy's small model takes for people or places ("Lisinopril", "Losartan").
_DRUG = regex.compile(
    r"(?:pril|sartan|xaban|gatran|flozin|gliptin|glitazone|statin|olol|dipine|pine|azole|cillin|mycin|floxacin"
    r"|cycline|tide|parin|oxetine|azepam|zolam|done|vir|formin|mab|nib|lukast|tidine|prazole|semide|thiazide"
    r"|profen|oxacin|afil|triptan|setron|dronate|lamide|sone|olone|nide|zine|pam)$",
    regex.IGNORECASE,
)
# States and countries are not identifiers under Safe Harbor.
_STATES = frozenset(
    """alabama alaska arizona arkansas california colorado connecticut delaware florida georgia hawaii
    idaho illinois indiana iowa kansas kentucky louisiana maine maryland massachusetts michigan
    minnesota mississippi missouri montana nebraska nevada ohio oklahoma oregon pennsylvania tennessee
    texas utah vermont virginia washington wisconsin wyoming us usa u.s. u.s.a. america canada mexico""".split()
) | {"new hampshire", "new jersey", "new mexico", "new york state", "north carolina", "north dakota",
     "rhode island", "south carolina", "south dakota", "west virginia", "united states",
     "the united states", "united states of america"}
# Recognizers whose hits are weak evidence (a model's guess, a capitalised word in a place slot, a
# dictionary name): their spans go through the clinical-vocabulary veto.
_WEAK = frozenset({"VisitLocationRecognizer", "CityAbbreviationRecognizer",
                   "FirstNameRecognizer"})
_TRAILING_NUMBER = regex.compile(r"[ \t,]+[\d.,]+$")
_CAPS_RUN = regex.compile(r"\b[A-Z][A-Z'’-]+(?:[ \t,./]+[A-Z][A-Z'’-]+)+\b")
_CAPS_WORD = regex.compile(r"\b[A-Z][A-Z'’]+\b")


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    entity_type: str
    score: float

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "entity_type": self.entity_type, "score": round(self.score, 3)}


@dataclass(frozen=True)
class ScrubResult:
    text: str
    spans: list[Span]


class TextScrubber:
    def __init__(
        self,
        analyzer: AnalyzerEngine | None = None,
        *,
        mode: Mode = "placeholder",
        entities: Sequence[str] | None = None,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        surrogate_key: bytes | str | None = None,
        caps_pass: bool = True,
        batch_size: int = 32,
    ) -> None:
        if mode not in ("placeholder", "surrogate"):
            raise ValueError(f"unknown mode {mode!r}: use 'placeholder' or 'surrogate'")
        if analyzer is None:
            from deidentify.engine import build_analyzer

            analyzer = build_analyzer()
        self.analyzer = analyzer
        self.mode = mode
        self.entities = list(entities) if entities else None
        self.score_threshold = score_threshold
        self.caps_pass = caps_pass
        self.batch_size = batch_size
        self.surrogates = Surrogates(surrogate_key) if mode == "surrogate" else None
        self._nlp_engine = analyzer.nlp_engine
        self._nlp = analyzer.nlp_engine.nlp["en"]
        self._ner_cache: dict[str, tuple[tuple[int, int, str], ...]] = {}

    # --- public API --------------------------------------------------------------------------

    def scrub(self, text: str, *, known: KnownIdentifiers | None = None, date_shift_days: int | None = None) -> ScrubResult:
        return self.scrub_many([text], known=known, date_shift_days=date_shift_days)[0]

    def scrub_many(
        self,
        texts: Iterable[str],
        *,
        known: KnownIdentifiers | None = None,
        date_shift_days: int | None = None,
        batch_size: int | None = None,
    ) -> list[ScrubResult]:
        texts = [t if isinstance(t, str) else "" for t in texts]
        spans = self.analyze_many(texts, known=known, batch_size=batch_size)
        return [ScrubResult(self.render(t, s, date_shift_days=date_shift_days), s) for t, s in zip(texts, spans)]

    def analyze_many(
        self, texts: Sequence[str], *, known: KnownIdentifiers | None = None, batch_size: int | None = None
    ) -> list[list[Span]]:
        """Spans per text. With `caps_pass`, lines written in capitals are analysed in a re-cased
        copy (same length): NER and the case-sensitive patterns then see them as mixed case."""
        bs = batch_size or self.batch_size
        ad_hoc = [known.recognizer()] if known else None
        out: list[list[Span]] = [[] for _ in texts]
        todo = [i for i, t in enumerate(texts) if t.strip()]
        views = [self.cased_view(texts[i]) for i in todo]
        ner = self._line_ner(views, bs)
        for i, view, (ents, extra) in zip(todo, views, ner):
            # Filter the model's entities before Presidio merges them with pattern hits of the same
            # span: clinical words are never PHI alone; a lone word of a re-cased line needs a list.
            ents = [e for e in ents if not is_vetoed(view[e.start_char:e.end_char]) and (
                view is texts[i] or not texts[i][e.start_char:e.end_char].isupper()
                or _caps_ner_ok(view[e.start_char:e.end_char]))]
            art = NlpArtifacts(entities=ents, tokens=[], tokens_indices=[], lemmas=[],
                               nlp_engine=self._nlp_engine, language="en", scores=[NER_SCORE] * len(ents))
            results = self.analyzer.analyze(
                view,
                language="en",
                entities=self.entities,
                nlp_artifacts=art,
                score_threshold=self.score_threshold,
                ad_hoc_recognizers=ad_hoc,
            )
            results.extend(extra)
            out[i] = join_places(view, resolve(_drop_eponyms(view, results)))
        return out

    def cased_view(self, text: str) -> str:
        """`text` with its ALL-CAPS lines re-cased (same length); `text` itself if there are none."""
        if not self.caps_pass or not _CAPS_WORD.search(text):
            return text
        parts = []
        pos = 0
        for m in _LINE.finditer(text):
            if is_caps_line(m.group()):
                parts.append(text[pos:m.start()])
                parts.append(truecase(m.group()))
                pos = m.end()
        if not parts:
            return text
        parts.append(text[pos:])
        return "".join(parts)

    def _line_ner(self, texts: Sequence[str], batch_size: int) -> list[tuple[list["_Ent"], list[RecognizerResult]]]:
        """spaCy NER line by line, over unique lines only (notes repeat lines a lot), and only
        on lines with a capital letter (entities without one are discarded anyway). Runs of
        capitals inside mixed-case lines also go through a re-cased pass. Cached per line."""
        cache = self._ner_cache
        wanted: dict[str, None] = {}
        plan: list[list[tuple[int, str, str | None, list[tuple[int, int]]]]] = []
        for text in texts:
            lines = []
            for m in _LINE.finditer(text):
                line = m.group()
                if not _HAS_UPPER.search(line):
                    continue
                runs = [(r.start(), r.end()) for r in _CAPS_RUN.finditer(line)] if self.caps_pass else []
                cased = truecase(line) if runs else None
                if cased == line:
                    cased, runs = None, []
                for key in (line, cased):
                    if key is not None and key not in cache:
                        wanted[key] = None
                lines.append((m.start(), line, cased, runs))
            plan.append(lines)
        if wanted:
            if len(cache) + len(wanted) > _NER_CACHE_MAX:
                cache.clear()
            for key, doc in zip(wanted, self._nlp.pipe(wanted, batch_size=batch_size)):
                cache[key] = tuple(
                    (e.start_char, e.end_char, NER_LABELS[e.label_]) for e in doc.ents if e.label_ in NER_LABELS
                )
        out = []
        for lines in plan:
            ents: list[_Ent] = []
            extra: list[RecognizerResult] = []
            for off, line, cased, runs in lines:
                ents.extend(_Ent(off + a, off + b, label) for a, b, label in cache.get(line, ()))
                if cased is not None:
                    for a, b, label in cache.get(cased, ()):
                        inside = any(x <= a and b <= y for x, y in runs)
                        if inside and (self.entities is None or label in self.entities) and _caps_ner_ok(cased[a:b]):
                            extra.append(RecognizerResult(label, off + a, off + b, CAPS_NER_SCORE,
                                                          recognition_metadata={"recognizer_name": CAPS_NER}))
            out.append((ents, extra))
        return out

    def render(self, text: str, spans: Sequence[Span], *, date_shift_days: int | None = None) -> str:
        parts: list[str] = []
        pos = 0
        for s in spans:
            parts.append(text[pos:s.start])
            parts.append(self._replacement(s.entity_type, text[s.start:s.end], date_shift_days))
            pos = s.end
        parts.append(text[pos:])
        return "".join(parts)

    # --- internals ---------------------------------------------------------------------------

    def _replacement(self, entity_type: str, value: str, date_shift_days: int | None) -> str:
        if entity_type == "DATE_TIME":
            if date_shift_days is not None:
                shifted = shift_date_text(value, date_shift_days)
                if shifted is not None:
                    return shifted
            return placeholder(entity_type)
        if self.surrogates is not None:
            return self.surrogates.replace(entity_type, value)
        return placeholder(entity_type)


def resolve(results: Iterable[RecognizerResult]) -> list[Span]:
    """Merge overlapping results into disjoint spans (union of their extents); the type is the
    highest-scoring result's (longer wins a tie)."""
    items = sorted(results, key=lambda r: (r.start, -r.end))
    spans: list[Span] = []
    cur: list[RecognizerResult] = []
    cur_end = -1
    for r in items:
        if r.end <= r.start:
            continue
        if cur and r.start < cur_end:
            cur.append(r)
            cur_end = max(cur_end, r.end)
            continue
        if cur:
            spans.append(_merge(cur, cur_end))
        cur, cur_end = [r], r.end
    if cur:
        spans.append(_merge(cur, cur_end))
    return spans


_PLACES = frozenset({"LOCATION", "HOSPITAL", "ZIP_CODE"})
_PLACE_GLUE = regex.compile(r"[ \t]*(?:,|in|at|of|-|–|/)?[ \t]*", regex.IGNORECASE)
_PLACE_TAIL = regex.compile(
    r"[ \t]+(?:[a-z]+[ \t]+)?(?:clinic|hospital|hosp\.?|facility|office|branch|center|centre|campus|ER|ED|ICU)\b"
    r"|,?[ \t]+(?:" + "|".join(sorted((regex.escape(x) for x in _STATES if " " not in x or x.startswith("new")), key=len, reverse=True)) + r")\b"
    r"|,[ \t]*(?-i:[A-Z]{2})\b",
    regex.IGNORECASE,
)


def join_places(text: str, spans: list[Span]) -> list[Span]:
    """Place spans absorb a trailing facility noun ("Dallas facility", "Cedars-Sinai ER") and
    merge with a neighbouring place joined by "in", "at", "," ("Mercy Hospital in Atlanta")."""
    out: list[Span] = []
    for s in spans:
        if s.entity_type in _PLACES:
            m = _PLACE_TAIL.match(text, s.end)
            if m and not (out and False):
                s = Span(s.start, m.end(), s.entity_type, s.score)
        if out and out[-1].entity_type in _PLACES and s.entity_type in _PLACES and s.start >= out[-1].end:
            g = _PLACE_GLUE.fullmatch(text, out[-1].end, s.start)
            if g:
                prev = out.pop()
                s = Span(prev.start, max(s.end, prev.end), prev.entity_type, max(prev.score, s.score))
        if out and s.start < out[-1].end:  # a tail grew into the next span
            prev = out.pop()
            s = Span(prev.start, max(prev.end, s.end), prev.entity_type, max(prev.score, s.score))
        out.append(s)
    return out


def _caps_ner_ok(value: str) -> bool:
    """Re-cased text has lost its capitals, so a lone word the model calls a name or a place in it
    is kept only when a name or place list knows it ("ZOSYN", "MEPILEX" are not)."""
    words = value.split()
    if len(words) > 1:
        return True
    from deidentify.casing import word_classes
    from deidentify.recognizers.names import census_first_names, census_last_names

    w = value.lower().strip(".,'’")
    return w in word_classes()[1] or w in census_first_names() or w in census_last_names()


def _merge(group: list[RecognizerResult], end: int) -> Span:
    best = max(group, key=lambda r: (r.score, r.end - r.start))
    return Span(group[0].start, end, best.entity_type, float(best.score))


def _drop_eponyms(text: str, results: list[RecognizerResult]) -> list[RecognizerResult]:
    """Drop eponyms; trim trailing number tokens off NER names ("Anna S. 94" -> "Anna S.")."""
    keep = []
    for r in results:
        name = (r.recognition_metadata or {}).get("recognizer_name", "")
        if name in ("SpacyRecognizer", CAPS_NER):
            value = text[r.start:r.end]
            if _DRUG.search(value) or value.lower() in _STATES or not any(c.isupper() for c in value):
                continue
        if name == "FacilityRecognizer" and is_clinical(text[r.start:r.end]):
            continue  # "CATH LAB", "ICU Clinic": every word clinical
        if name in _WEAK or name == CAPS_NER:
            # weak evidence only: clinical words and headings are never PHI on their own
            if is_vetoed(text[r.start:r.end]):
                continue
        if r.entity_type in ("PERSON", "LOCATION") and r.score < 1.0:
            if _EPONYM_AFTER.match(text, r.end):
                continue
            m = _TRAILING_NUMBER.search(text, r.start, r.end) if name != "WardRecognizer" else None
            if m and m.start() > r.start:
                r.end = m.start()
        keep.append(r)
    return keep


# --- bulk JSONL scrubbing (`triage deid scrub`) -------------------------------------------------


@dataclass
class ScrubStats:
    written: int = 0
    skipped: int = 0


_WORKER: TextScrubber | None = None


def _worker_init(mode: str) -> None:
    global _WORKER
    _WORKER = TextScrubber(mode=mode)  # type: ignore[arg-type]


def _worker_run(batch: list[tuple[object, str]]) -> list[str]:
    assert _WORKER is not None
    return _scrub_lines(_WORKER, batch)


def _scrub_lines(scrubber: TextScrubber, batch: list[tuple[object, str]]) -> list[str]:
    import json

    results = scrubber.scrub_many([t for _, t in batch])
    return [
        json.dumps({"id": i, "text": r.text, "spans": [s.to_dict() for s in r.spans]}, ensure_ascii=False)
        for (i, _), r in zip(batch, results)
    ]


def scrub_jsonl(
    input_path: str,
    output_path: str,
    *,
    mode: Mode = "placeholder",
    workers: int = 1,
    batch_size: int = 64,
    on_error=None,
) -> ScrubStats:
    """Stream `{"id", "text"}` lines to `{"id", "text", "spans"}` lines, batch by batch.

    Malformed lines are reported through `on_error(line_no, reason)` and skipped. The output is
    written to a temporary file beside `output_path` and renamed into place at the end.
    Raises OSError if the input cannot be read.
    """
    import json
    import os
    import tempfile
    from itertools import islice

    stats = ScrubStats()

    def batches(fh) -> Iterable[list[tuple[object, str]]]:
        numbered = enumerate(fh, 1)
        while True:
            chunk = list(islice(numbered, batch_size))
            if not chunk:
                return
            batch = []
            for no, line in chunk:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict) or "text" not in obj or not isinstance(obj["text"], str):
                        raise ValueError('expected an object with a string "text"')
                    batch.append((obj.get("id"), obj["text"]))
                except ValueError as exc:  # json.JSONDecodeError is a ValueError
                    stats.skipped += 1
                    if on_error:
                        on_error(no, type(exc).__name__ if isinstance(exc, json.JSONDecodeError) else str(exc))
            if batch:
                yield batch

    out_dir = os.path.dirname(os.path.abspath(output_path))
    with open(input_path, encoding="utf-8") as fh:
        fd, tmp = tempfile.mkstemp(prefix=".scrub-", suffix=".jsonl", dir=out_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                if workers > 1:
                    import multiprocessing as mp

                    ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
                    with ctx.Pool(workers, initializer=_worker_init, initargs=(mode,)) as pool:
                        # imap keeps order and pulls batches lazily (bounded memory)
                        for lines in pool.imap(_worker_run, batches(fh), chunksize=1):
                            out.write("\n".join(lines) + "\n")
                            stats.written += len(lines)
                else:
                    scrubber = TextScrubber(mode=mode)
                    for batch in batches(fh):
                        lines = _scrub_lines(scrubber, batch)
                        out.write("\n".join(lines) + "\n")
                        stats.written += len(lines)
            os.replace(tmp, output_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return stats
