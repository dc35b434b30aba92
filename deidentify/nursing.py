"""A seeded generator of ICU and ED nursing progress notes, labelled by construction.

    notes = generate("dev", n=300, seed=7)      # list[LabelledNote]: text + (start, end, type) spans
    write_jsonl(notes, "nursing-dev.jsonl")    # the format of `deidentify.corpus`

Two parts that share nothing a scrubber could memorise:

* **dev**: the part the recognizers may be tuned on;
* **held-back**: its own sentence templates and its own name and place lists; the goals are
  judged on it, and its results are not looked at while tuning.

Names and places come from Faker locales that the recognizers never read (dev: German, Dutch,
Danish, Swedish; held-back: Italian, Slovak, Czech, Croatian, Finnish), folded to ASCII, and are
filtered so that no name or place word is in the recognizers' own lists (Faker en_US names, the
census name dictionary, GeoNames places), in the English or clinical vocabulary, or in the other
part. A name can therefore only be found from its context, never from a word list.

Notes are telegraphic: section headings (NEURO:, CV:, RESP:, GI/GU:, SKIN:, SOCIAL:, PLAN:),
abbreviations, vital ranges, scores, drug names, times; a fifth are written in lower case and a
fifth in capitals (case changes keep offsets). Types: PATIENT, CLINICIAN, RELATIVE, LOCATION,
DATE, PHONE, ID, AGE.
"""
from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

PARTS = ("dev", "held-back")
TYPES = ("PATIENT", "CLINICIAN", "RELATIVE", "LOCATION", "DATE", "PHONE", "ID", "AGE")
DEV_NAME_LOCALES = ("de_DE", "nl_NL", "da_DK", "sv_SE")
DEV_PLACE_LOCALES = ("de_DE", "nl_NL", "da_DK")
HELD_NAME_LOCALES = ("it_IT", "sk_SK", "cs_CZ", "hr_HR", "fi_FI")
HELD_PLACE_LOCALES = ("it_IT", "sk_SK", "fi_FI")


@dataclass
class LabelledNote:
    id: str
    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text,
                "spans": [{"start": a, "end": b, "type": t} for a, b, t in self.spans]}


# --- name and place lists ------------------------------------------------------------------------


def _ascii(s: str) -> str:
    return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode()


def _words(values) -> list[str]:
    out = []
    for v in values:
        v = _ascii(str(v)).strip()
        if re.fullmatch(r"[A-Z][a-z]{2,11}", v):
            out.append(v)
    return out


def _locale_lists(locales, attr_module: str, attrs: tuple[str, ...]) -> list[str]:
    import importlib

    out: list[str] = []
    for loc in locales:
        prov = importlib.import_module(f"faker.providers.{attr_module}.{loc}").Provider
        for a in attrs:
            vals = getattr(prov, a, None) or ()
            out += _words(vals.keys() if isinstance(vals, dict) else vals)
    return sorted(set(out))


@lru_cache(maxsize=1)
def excluded_words() -> frozenset[str]:
    """Every word the scrubber's own lists or vocabulary know (lower case): corpus names and places
    must not be among them."""
    from deidentify.casing import _places, word_classes
    from deidentify.recognizers.names import census_first_names, census_last_names
    from faker.providers.person.en_US import Provider

    common, proper, _ = word_classes()
    out = set(common) | set(proper) | _places(set())
    out |= {n.lower() for n in (*Provider.first_names_female, *Provider.first_names_male, *Provider.last_names)}
    out |= set(census_first_names()) | set(census_last_names())
    try:
        from deidentify.vocabulary import clinical_vocabulary

        out |= clinical_vocabulary()
    except ImportError:  # pragma: no cover
        pass
    return frozenset(out)


@dataclass(frozen=True)
class Lists:
    first: tuple[str, ...]
    last: tuple[str, ...]
    towns: tuple[str, ...]


@lru_cache(maxsize=2)
def lists(part: str) -> Lists:
    """The part's names and towns: disjoint from the scrubber's lists and from the other part."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}: use one of {PARTS}")
    bad = excluded_words()

    def build(name_locs, place_locs):
        first = [w for w in _locale_lists(name_locs, "person", ("first_names", "first_names_male", "first_names_female")) if w.lower() not in bad]
        last = [w for w in _locale_lists(name_locs, "person", ("last_names",)) if w.lower() not in bad]
        towns = [w for w in _locale_lists(place_locs, "address", ("cities", "city_names")) if w.lower() not in bad]
        return set(first), set(last), set(towns)

    dev = build(DEV_NAME_LOCALES, DEV_PLACE_LOCALES)
    held = build(HELD_NAME_LOCALES, HELD_PLACE_LOCALES)
    taken_dev = set().union(*dev)
    mine, other = (dev, held) if part == "dev" else (held, dev)
    others = set().union(*other)
    if part == "dev":  # held-back wins every clash, so held-back stays whole
        mine = tuple(s - others for s in mine)
    else:
        mine = tuple(s - (taken_dev - set().union(*held)) for s in mine)
    first, last, towns = mine
    # a word is a first name, a surname or a town in one part, never two
    last -= first
    towns -= first | last
    return Lists(tuple(sorted(first)), tuple(sorted(last)), tuple(sorted(towns)))


# --- slot generators ---------------------------------------------------------------------------

Piece = tuple[str, str | None]  # (text, type or None)


class Slots:
    """PHI and filler makers for one part; every maker returns pieces with types."""

    def __init__(self, rng: random.Random, lists_: Lists) -> None:
        self.r = rng
        self.L = lists_

    def pick(self, seq):
        return self.r.choice(seq)

    # people
    def _first(self) -> str:
        return self.pick(self.L.first)

    def _last(self) -> str:
        return self.pick(self.L.last)

    def clinician(self) -> list[Piece]:
        f, l = self._first(), self._last()
        form = self.r.randrange(9)
        if form == 0:
            return [("Dr. ", None), (l, "CLINICIAN")]
        if form == 1:
            return [("dr ", None), (l, "CLINICIAN")]
        if form == 2:
            return [("Dr ", None), (f"{f} {l}", "CLINICIAN")]
        if form == 3:
            return [(l, "CLINICIAN"), (" MD", None)]
        if form == 4:
            return [(f"{f} {l}", "CLINICIAN"), (", NP", None)]
        if form == 5:
            return [("NP ", None), (l, "CLINICIAN")]
        if form == 6:
            return [("DR ", None), (l.upper(), "CLINICIAN")]
        if form == 7:
            return [("RN ", None), (f, "CLINICIAN")]
        return [("PA ", None), (f"{f[0]}. {l}", "CLINICIAN")]

    def patient(self) -> list[Piece]:
        f, l = self._first(), self._last()
        form = self.r.randrange(5)
        if form == 0:
            return [(self.pick(("Mr. ", "Mrs. ", "Ms ", "mr ", "mrs ")), None), (l, "PATIENT")]
        if form == 1:
            return [(f"{f} {l}", "PATIENT")]
        if form == 2:
            return [("pt ", None), (f, "PATIENT")]
        if form == 3:
            return [(self.pick(("Mr ", "Mrs ")), None), (f"{f} {l}", "PATIENT")]
        return [(f"{l}, {f}", "PATIENT")]

    def relative_name(self) -> list[Piece]:
        f = self._first()
        if self.r.random() < 0.3:
            return [(f"{f} {self._last()}", "RELATIVE")]
        return [(f, "RELATIVE")]

    def relation(self) -> str:
        return self.pick(("daughter", "son", "wife", "husband", "sister", "brother", "niece", "nephew",
                          "friend", "neighbor", "mother", "father", "granddaughter", "grandson",
                          "significant other", "partner", "cousin", "aunt", "uncle", "HCP", "proxy"))

    # places
    def town(self) -> list[Piece]:
        return [(self.pick(self.L.towns), "LOCATION")]

    def hospital(self) -> list[Piece]:
        t, l, f = self.pick(self.L.towns), self._last(), self._first()
        form = self.r.randrange(7)
        name = [f"{l} Memorial", f"St. {f}'s", f"{t} General", f"{t} Regional Medical Center", f"{l} Medical Center",
                f"{t} Adventist", f"{t} Community Hospital"][form]
        return [(name, "LOCATION")]

    def hospital_abbr(self) -> list[Piece]:
        n = self.r.choice((2, 3, 3, 4))
        letters = "".join(self.r.choice("ABCDEFGHJKLMNPRSTVW") for _ in range(n - 1))
        return [(letters + self.r.choice("HCM"), "LOCATION")]

    def unit(self) -> list[Piece]:
        l = self._last()
        form = self.r.randrange(3)
        if form == 0:
            return [(f"{l} {self.r.randint(2, 12)}", "LOCATION")]
        if form == 1:
            return [(f"{l} {self.r.randint(2, 9)} {self.pick(('North', 'South', 'East', 'West'))}", "LOCATION")]
        return [(f"{l}", "LOCATION"), (f" {self.r.randint(2, 9)}th floor", None)]

    # dates
    def date(self) -> list[Piece]:
        m, d, y = self.r.randint(1, 12), self.r.randint(1, 28), self.r.randint(2008, 2024)
        months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        form = self.r.randrange(6)
        s = [f"{m}/{d}/{y}", f"{m:02d}-{d:02d}-{y % 100:02d}", f"{months[m - 1]} {d}", f"{d} {months[m - 1]}",
             f"{m}/{d}/{y % 100:02d}", f"{months[m - 1]} {d}, {y}"][form]
        return [(s, "DATE")]

    def partial_date(self) -> list[Piece]:
        m, d = self.r.randint(1, 12), self.r.randint(1, 28)
        form = self.r.randrange(3)
        return [([f"{m}/{d}", f"{m}-{d}", f"{m}/{d}"][form], "DATE")]

    def ordinal(self) -> list[Piece]:
        d = self.r.randint(1, 31)
        suf = "th" if 11 <= d <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
        return [("the ", None), (f"{d}{suf}", "DATE")]

    def apos_year(self) -> list[Piece]:
        return [(f"'{self.r.randint(0, 99):02d}", "DATE")]

    # numbers
    def phone(self) -> list[Piece]:
        a, b, c = self.r.randint(201, 989), self.r.randint(200, 999), self.r.randint(1000, 9999)
        form = self.r.randrange(7)
        s = [f"({a} {b} {c})", f"{a}/{b}/{c}", f"{a}.{b}.{c}", f"{a}-{b}-{c}", f"({a}){b}-{c}", f"{a} {b} {c}",
             f"{b}-{c}"][form]
        if s.startswith("(") and s.endswith(")") and form == 0:
            return [("(", None), (s[1:-1], "PHONE"), (")", None)]
        return [(s, "PHONE")]

    def pager(self) -> list[Piece]:
        label = self.pick(("Pager ", "pager #", "PG ", "pgr ", "beeper ", "p# ", "Pager: "))
        num = str(self.r.randint(1000, 99999))
        return [(label, None), (num, "PHONE")]

    def mrn(self) -> list[Piece]:
        label = self.pick(("MRN ", "MR# ", "unit no. ", "MRN: ", "med rec # "))
        return [(label, None), (str(self.r.randint(1000000, 99999999)), "ID")]

    def age(self) -> list[Piece]:
        return [(f"{self.r.randint(90, 104)}", "AGE"), (self.pick((" yo", " y/o", "yo", " year old")), None)]


# --- templates ---------------------------------------------------------------------------------
# A template is text with {slot} fields; {n:a-b} is a random integer in [a, b] (a vital or a dose).

SECTIONS = ("NEURO", "CV", "RESP", "GI/GU", "SKIN", "SOCIAL", "PLAN")

DEV_TEMPLATES: dict[str, list[str]] = {
    "HEAD": [
        "NPN 7a-7p", "Nursing Progress Note {date} 0700-1900", "{age} M admitted from ED via {hosp}.",
        "CCU NPN 1900-0700", "{pt} is a {n:40-88} y/o F POD #{n:1-5} s/p AVR.", "MICU nursing note, {date}",
    ],
    "NEURO": [
        "A&Ox3, MAE, PERRL 3mm brisk. RASS 0. CIWA {n:2-9}.",
        "sedated on PROPOFOL {n:10-50} mcg/kg/min, off at 0600 for SAT, opens eyes to voice.",
        "neuro checks q2h, GCS {n:9-14}-15. {md} aware of new L sided weakness at 0300.",
        "c/o HA {n:4-8}/10, given Tylenol 650 po w/ relief to 2/10.",
        "Ativan 1mg iv x1 for agitation with good effect. Strength 5/5 BUE, 4/5 BLE.",
        "cont on Fentanyl gtt at {n:25-150} mcg/hr. CAM ICU neg.",
    ],
    "CV": [
        "HR {n:60-80}-{n:85-100} NSR, no ectopy. SBP 100-120s. MAP >65.",
        "Lasix {n:20-80} iv given at 1400 per {md}, good response.",
        "Swan removed, CVP 8-10. K 3.6 repleted with 40 meq KCL.",
        "pt had CABG x3 {apos}, MI in {apos}.",
        "Neo weaned off at 1100, SBP 98-110. 1+ pedal pulses bilat.",
        "echo done {pdate}, EF 35-40%. cards fellow {md} aware.",
    ],
    "RESP": [
        "LS coarse bilat, sx for mod thick tan secretions. ABG 7.38/42/88.",
        "on {n:2-6}L NC sats 95-98%, weaned to 2L. RR 18-22.",
        "vent AC 500 x 14, PEEP 5, FiO2 40%. plan to extubate in am per RT.",
        "CXR {pdate} with RLL infiltrate, started on Zosyn. I/S 750cc.",
    ],
    "GI/GU": [
        "abd soft, +BS, tol TF at goal {n:40-70}cc/hr. FOLEY draining clear yellow urine 40-60cc/hr.",
        "NPO after MN for EGD w/ {md} on {pdate}.",
        "last BM {pdate}, colace/senna given. I/O 1200/800.",
        "Cr 1.4 up from 1.1, renal c/s by {md}. UO 30-50cc/hr.",
    ],
    "SKIN": [
        "coccyx stage 2, duoderm intact. Braden {n:10-18}.",
        "R groin site c/d/i, no hematoma. dsg changed {pdate}.",
        "skin warm/dry, mepilex to sacrum. Abd incision w/ staples, OTA.",
    ],
    "SOCIAL": [
        "{rel} {relname} at bedside, updated by {md}. can be reached at {phone}.",
        "wife {relname} called x2 ({phone}), questions answered.",
        "proxy is {rel}: {relname}.",
        "pt lives in {town} with {rel} {relname}.",
        "{relname} ({rel}) visited this evening, plans to stay at hotel in {town}.",
        "son {relname} will call in am, cell {phone}.",
        "Full code. {rel} {relname} is HCP.",
    ],
    "PLAN": [
        "transfer to {unit} when bed available.",
        "pt transferred from {hosp} on {date}, {mrn}.",
        "seen at {habbr} on {pdate} for same.",
        "f/u with {md} at {hosp} clinic on {ord}.",
        "{pager} for questions re: heparin gtt, PTT 60-80.",
        "cont to monitor, call HO with SBP <90 or HR >120.",
        "tx'd from {hosp} {date}, records requested.",
        "back to OR on {pdate}, consent signed by {rel}.",
    ],
}

HELD_TEMPLATES: dict[str, list[str]] = {
    "HEAD": [
        "Nursing progress note, MICU, {date}", "SICU NPN 0700-1900 {date}", "{age} F, DNR/DNI, from {town}.",
        "Pt {pt}, admitted {date} from {hosp}.", "ED RN note 2300",
    ],
    "NEURO": [
        "pt alert, follows commands, moves all ext equally. no sz activity. fentanyl gtt @ {n:25-100}mcg.",
        "Precedex {n:2-7}/10 mcg/kg/hr, RASS -1 to 0, pupils 3-4mm equal.",
        "CIWA {n:4-15}, valium 10mg po given x2. oriented to self only.",
        "dilantin level {pdate} was 12.4, per neuro {md} cont same dose.",
    ],
    "CV": [
        "ST 100-110s, lopressor 5mg iv x2 w/ HR to 80s. BP 130-150/70-80.",
        "Hx: DM2, HTN, AAA repair {apos}, CVA in {apos}.",
        "Pt returned from CATH LAB at 1530, R radial TR band 12cc. seen by {md}.",
        "amio gtt at 0.5mg/min, K 4.2, Mg 2.0. a-line dampened, re-zeroed.",
        "d/w {md} re: insulin gtt, titrating per protocol, BS 140-180.",
    ],
    "RESP": [
        "trach to TC 40%, sats 94-97%, thick white secretions via inline sx.",
        "BIPAP 12/5 overnight, off at 0700 to 4L NC. RR 20s.",
        "CTX {n:1-3} pending from {pdate}; cont vanc/cefepime.",
    ],
    "GI/GU": [
        "OGT to LIS w/ 200cc bilious output. NPO. LFTs trending down.",
        "voiding qs via condom cath. Cr 0.9. lactulose 30ml tid.",
        "GI ({md}) plans scope on {ord}.",
    ],
    "SKIN": [
        "sacral DTI unchanged, q2h turns, air mattress. Braden 12.",
        "L AC PIV infiltrated, removed; warm packs. new 20g R FA.",
    ],
    "SOCIAL": [
        "Family mtg held w/ {rel} ({relname}) and {md}; code status DNR/DNI.",
        "{relname}, pt's {rel}, phoned at 2130, number on file {phone}.",
        "lives alone in {town}, {rel} {relname} checks in daily.",
        "{rel} {relname} here from {town}, very anxious, chaplain paged.",
        "HCP: {relname} ({rel}) {phone}.",
    ],
    "PLAN": [
        "Came over from {hosp} ED ({habbr}) {date}.",
        "back to OR on {pdate} w/ {md}.",
        "await bed on {unit}.",
        "call {md} {pager} if SBP <90.",
        "d/c planning: return to {hosp} rehab when stable, {mrn}.",
        "previously at {habbr} {apos} for CHF.",
    ],
}


def _expand(template: str, s: Slots) -> list[Piece]:
    makers: dict[str, Callable[[], list[Piece]]] = {
        "md": s.clinician, "pt": s.patient, "relname": s.relative_name, "town": s.town, "hosp": s.hospital,
        "habbr": s.hospital_abbr, "unit": s.unit, "date": s.date, "pdate": s.partial_date, "ord": s.ordinal,
        "apos": s.apos_year, "phone": s.phone, "pager": s.pager, "mrn": s.mrn, "age": s.age,
    }
    out: list[Piece] = []
    pos = 0
    for m in re.finditer(r"\{([a-z]+)(?::(\d+)-(\d+))?\}", template):
        out.append((template[pos:m.start()], None))
        key = m.group(1)
        if key == "n":
            out.append((str(s.r.randint(int(m.group(2)), int(m.group(3)))), None))
        elif key == "rel":
            out.append((s.relation(), None))
        else:
            out += makers[key]()
        pos = m.end()
    out.append((template[pos:], None))
    return out


def _note(idx: int, part: str, rng: random.Random, templates: dict[str, list[str]], slots: Slots) -> LabelledNote:
    pieces: list[Piece] = []
    pieces += _expand(rng.choice(templates["HEAD"]), slots) + [("\n", None)]
    for sec in SECTIONS:
        if rng.random() < 0.15:
            continue
        heading = rng.choice((f"{sec}: ", f"{sec.title() if sec != 'GI/GU' else 'GI/GU'}: ", f"{sec}- "))
        pieces.append((heading, None))
        for k, t in enumerate(rng.sample(templates[sec], k=min(len(templates[sec]), rng.randint(1, 3)))):
            pieces += ([(" ", None)] if k else []) + _expand(t, slots)
        pieces.append(("\n", None))
    case = rng.random()
    text, spans, pos = [], [], 0
    for t, typ in pieces:
        if typ is not None:
            spans.append((pos, pos + len(t), typ))
        text.append(t)
        pos += len(t)
    body = "".join(text)
    if case < 0.2:
        body = body.lower()
    elif case < 0.4:
        body = body.upper()
    assert len(body) == pos
    return LabelledNote(f"{part}-{idx:04d}", body, spans)


def generate(part: str, n: int = 300, seed: int = 7) -> list[LabelledNote]:
    """`n` labelled notes of `part` ("dev" or "held-back"); the same seed gives the same notes."""
    rng = random.Random(f"{part}:{seed}")
    slots = Slots(rng, lists(part))
    templates = DEV_TEMPLATES if part == "dev" else HELD_TEMPLATES
    return [_note(i, part, rng, templates, slots) for i in range(n)]
