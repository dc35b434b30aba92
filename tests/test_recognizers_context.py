"""The context recognizers of clinical notes, one (text, expected spans) table per class, and the
clinical-vocabulary veto. Names here are made up; none is in the recognizers' word lists."""
from __future__ import annotations

import pytest

from deidentify.recognizers.clinician import ClinicianNameRecognizer
from deidentify.recognizers.date import ClinicalDateRecognizer
from deidentify.recognizers.id_number import IdNumberRecognizer
from deidentify.recognizers.pager import PagerRecognizer
from deidentify.recognizers.patient_name import PatientNameRecognizer
from deidentify.recognizers.phone import PhoneRecognizer
from deidentify.recognizers.relative import RelativeNameRecognizer
from deidentify.recognizers.ward import WardRecognizer


def _found(recognizer, text: str) -> set[str]:
    return {text[r.start:r.end] for r in recognizer.analyze(text, None)}


def _check(recognizer, text: str, expected: set[str]) -> None:
    found = _found(recognizer, text)
    for value in expected:  # every expected value lies inside a found span
        assert any(value in f for f in found), (value, found)
    if not expected:
        assert found == set(), found


@pytest.mark.parametrize(("text", "expected"), [
    ("daughter Ann at bedside", {"Ann"}),
    ("son tom will call in am", {"tom"}),
    ("proxy is niece: Rosa", {"Rosa"}),
    ("PROXY IS DAUGHTER: VELMIRA", {"VELMIRA"}),
    ("Rosa (niece) visited", {"Rosa"}),
    ("Orsolya, pt's sister, phoned", {"Orsolya"}),
    ("wife (Maria) here, husband jaromir okafor at bedside", {"Maria", "jaromir okafor"}),
    ("father Rik. wife Ann called", {"Rik", "Ann"}),
    ("daughter at bedside, son will call", set()),
    ("wife called x2, questions answered", set()),
    ("SOCIAL: lives with wife", set()),
])
def test_relative(text: str, expected: set[str]) -> None:
    _check(RelativeNameRecognizer(), text, expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("spoke with dr hale re: plan", {"hale"}),
    ("mrs quinn back from cath lab", {"quinn"}),
    ("per DR DRUBIN, good response", {"DRUBIN"}),
    ("cards fellow np persijn aware", {"persijn"}),
    ("renal c/s by majken segerszoen, np. uo 30", {"majken segerszoen"}),
    ("EGD w/ Lether MD on 9/4", {"Lether"}),
    ("dr aware of new weakness", set()),
    ("called md, no new orders", set()),
])
def test_clinician_any_case(text: str, expected: set[str]) -> None:
    _check(ClinicianNameRecognizer(), text, expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("Quinn, Rosa is a 74 y/o F POD #2", {"Quinn, Rosa"}),
    ("birgitt ladeck is a 65 y/o f", {"birgitt ladeck"}),
    ("pt joep agitated overnight", {"joep"}),
    ("pt is a 74 y/o F", set()),
    ("pt resting comfortably", set()),
])
def test_patient_name(text: str, expected: set[str]) -> None:
    _check(PatientNameRecognizer(), text, expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("Pager 4471 for questions", {"4471"}),
    ("PG 23456", {"23456"}),
    ("beeper #3321", {"3321"}),
    ("call x4-5521", {"4-5521"}),
    ("CABG x3, NS x 1000", set()),
])
def test_pager(text: str, expected: set[str]) -> None:
    _check(PagerRecognizer(), text, expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("call (301 273 4516)", {"301 273 4516"}),
    ("cell 201/324/1423", {"201/324/1423"}),
    ("can be reached at 458-4529.", {"458-4529"}),
    ("UO 800-1000 ml, times 0700-1900", set()),
])
def test_phone_separators(text: str, expected: set[str]) -> None:
    _check(PhoneRecognizer(), text, expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("CABG x3 '92, MI in '81", {"'92", "'81"}),
    ("back to OR on 7-8", {"7-8"}),
    ("last BM 1-10, colace given", {"1-10"}),
    ("seen on 10/4", {"10/4"}),
    ("f/u on the 11th", {"11th"}),
    ("HR 70-80, sats 98-100%, RR 18-22", set()),
    ("MAE 5/5, pain 6/10, 1/2 NS", set()),
    ("to the 5th floor, 4th ICS", set()),
])
def test_partial_dates(text: str, expected: set[str]) -> None:
    _check(ClinicalDateRecognizer(), text, expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("to Kessler 4 when bed available", {"Kessler 4"}),
    ("await bed on Lundh 7 North.", {"Lundh 7 North"}),
    ("seen at GH on 7/18", {"GH"}),
    ("tx'd from Riverside Adventist", {"Riverside Adventist"}),
    ("pt lives in haskerhorne with father", {"haskerhorne"}),
    ("pt transferred from haarlo regional medical center on 7/2", {"haarlo regional medical center"}),
    ("via st. dierk's.", {"st. dierk's"}),
    ("to OR at 0800, from ED, on 4L NC, at HS, to bed 4", set()),
])
def test_ward(text: str, expected: set[str]) -> None:
    _check(WardRecognizer(), text, expected)


@pytest.mark.parametrize("text", ["95-98", "18-22", "0700-1900", "1200-1800", "70-80"])
def test_ranges_and_times_are_not_ids(text: str) -> None:
    assert _found(IdNumberRecognizer(), f"value {text} today") == set()


@pytest.mark.parametrize("text", ["12345-678", "789-123-456"])
def test_digit_group_ids_still_found(text: str) -> None:
    assert _found(IdNumberRecognizer(), f"ref {text} today") == {text}


def test_vocabulary_veto_sources() -> None:
    from deidentify.vocabulary import clinical_vocabulary, is_setting_abbreviation, is_vetoed

    vocab = clinical_vocabulary()
    for word in ("neuro", "lasix", "propofol", "ativan", "fentanyl", "abg", "sbp", "ccu"):
        assert word in vocab, word
    assert is_vetoed("NEURO") and is_vetoed("Lasix") and is_vetoed("GU- abd soft")
    assert not is_vetoed("Kessler") and not is_vetoed("Rosa Quinn")
    assert is_setting_abbreviation("OR") and is_setting_abbreviation("ED") and is_setting_abbreviation("HS")
    assert not is_setting_abbreviation("LKH")


@pytest.fixture(scope="module")
def scrubber():
    from deidentify.text import TextScrubber

    return TextScrubber()


@pytest.mark.parametrize("text", [
    "NEURO: A&Ox3, MAE. CV: HR 70-80 NSR. RESP: LS clear. GI/GU: FOLEY draining.",
    "PROPOFOL 30 mcg/kg/min, Lasix 40 iv, Ativan 1mg, Fentanyl gtt at 50 mcg/hr",
    "SBP 100-120s, ABG 7.38/42/88, sats 95-98%, MAE 5/5, 1/2 NS, CCU NPN 1900-0700",
])
def test_clinical_words_are_never_flagged_alone(scrubber, text: str) -> None:
    spans = scrubber.scrub(text).spans
    flagged = {text[s.start:s.end] for s in spans}
    assert not any(w in flagged for w in ("NEURO", "CV", "RESP", "PROPOFOL", "Lasix", "Ativan", "Fentanyl", "SBP", "ABG", "CCU")), flagged
    assert not any(s.entity_type == "ID" for s in spans), flagged
    assert not any(s.entity_type == "URL" for s in spans), flagged


def test_url_recognizer_hits_only_urls(scrubber) -> None:
    text = "pt.cont on abx, tol.po well, d/c'd foley.pt ambulating; see www.example.org or https://x.org/a"
    spans = [text[s.start:s.end] for s in scrubber.scrub(text).spans if s.entity_type == "URL"]
    assert spans == ["www.example.org", "https://x.org/a"]
