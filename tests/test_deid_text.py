"""TextScrubber: planted identifiers removed, clinical content kept, offsets, dates, surrogates."""
from __future__ import annotations

import socket
from datetime import date

import pytest

from deidentify.known import KnownIdentifiers
from deidentify.operators import shift_date_text
from deidentify.text import Span, TextScrubber, truecase
from fhir_adapter.record import Address, Identity

IDENTITY = Identity(
    resource_id="pt-7781",
    given_names=("Willena258",),
    family_names=("Kunze215",),
    identifiers=(("MRN", "00123456"),),
    phones=("(617) 555-0199",),
    addresses=(Address(("42 Kuhn Lodge Unit 5",), "Springfield", None, "MA", "01103", "US"),),
    birth_date=date(1931, 2, 3),
    other_names=("Dr. Liane379 Hartwell215", "NEWMAN REGIONAL HEALTH"),
)
NOTE = (
    "Willena Kunze (MRN 00123456) seen at Newman Regional Health by Dr. Liane Hartwell. "
    "Lives at 42 Kuhn Lodge, Springfield. Phone 617.555.0199. DOB 02/03/1931. "
    "Started metformin 500 mg; BP 120/80; treated for pneumonia."
)
PLANTED = ["Willena", "Kunze", "00123456", "Newman", "Liane", "Hartwell", "Kuhn Lodge", "Springfield",
           "617.555.0199", "02/03/1931"]
CLINICAL = ["metformin 500 mg", "BP 120/80", "pneumonia"]


@pytest.fixture(scope="session")
def scrubber() -> TextScrubber:
    return TextScrubber()


@pytest.fixture(scope="session")
def known() -> KnownIdentifiers:
    return KnownIdentifiers.from_identity(IDENTITY)


@pytest.mark.parametrize("upper", [False, True], ids=["mixed", "caps"])
def test_planted_identifiers_removed_clinical_kept(scrubber, known, upper):
    note = NOTE.upper() if upper else NOTE
    out = scrubber.scrub(note, known=known).text
    for value in PLANTED:
        assert value.lower() not in out.lower(), value
    for value in CLINICAL:
        assert (value.upper() if upper else value) in out


@pytest.mark.parametrize("upper", [False, True], ids=["mixed", "caps"])
def test_unknown_identifiers_removed_without_known_list(scrubber, upper):
    note = ("Pt Mary Johnson, 94 yo, seen by Dr. Emily Clark at St. Mary's Hospital on January 3, 2020. "
            "MRN: 99887766. Call 555-123-4567. SSN 123-45-6789. Lives at 12 Oak Street, Boston, MA 02118.")
    note = note.upper() if upper else note
    out = scrubber.scrub(note).text.lower()
    for value in ["mary", "johnson", "94", "emily", "clark", "st. mary", "january 3", "99887766",
                  "555-123-4567", "123-45-6789", "oak street", "02118"]:
        assert value not in out, value


def test_caps_names_need_the_normalised_pass(scrubber):
    text = "SPOKE WITH DAUGHTER LUCINDA HARGROVE ABOUT DISCHARGE PLANS."
    assert truecase(text) == "spoke with daughter Lucinda Hargrove about discharge plans."
    assert len(truecase(text)) == len(text)
    with_pass = scrubber.scrub(text).text
    no_pass = TextScrubber(scrubber.analyzer, caps_pass=False).scrub(text).text
    assert "HARGROVE" not in with_pass
    # the relation word now finds it in any case, even without the re-cased pass
    assert "HARGROVE" not in no_pass
    # with no context word, only the re-cased pass (NER on "Lucinda Hargrove") finds it
    bare = "LUCINDA HARGROVE CALLED ABOUT DISCHARGE PLANS."
    assert "HARGROVE" not in scrubber.scrub(bare).text


@pytest.mark.parametrize(
    "caps, cased",
    [
        # common and clinical words lower, acronyms kept, names and places Title
        ("PT SEEN BY DR. A. BARNES FOR COPD, ELEVATED CREATININE", "pt seen by Dr. A. Barnes for COPD, elevated creatinine"),
        # a common word is a surname beside a first name, a town's name beside a facility noun
        ("JANE DOE ADMITTED TO MERCY HOSPITAL ON MAY 5", "Jane Doe admitted to Mercy Hospital on May 5"),
        ("SEEN AT MASS GENERAL IN NEW YORK CITY, NY", "seen at Mass General in New York City, NY"),
        ("LIVES AT 789 ELM ST, BOSTON, MA", "lives at 789 Elm St, Boston, MA"),
        # generic facility mentions and specialties stay lower
        ("REFERRED TO THE HEMATOLOGY CLINIC. GENERAL ANESTHESIA. IN GENERAL", "referred to the hematology clinic. general anesthesia. in general"),
        ("MAY RETURN IF WORSE", "may return if worse"),
    ],
)
def test_truecase(caps, cased):
    assert truecase(caps) == cased


def test_caps_lines_analysed_in_cased_view(scrubber):
    text = "Mixed line about Lisinopril.\nPT JANE DOE SEEN AT MERCY HOSPITAL ON MAY 5 FOR COPD"
    view = scrubber.cased_view(text)
    assert len(view) == len(text) and view.startswith("Mixed line about Lisinopril.\n")
    out = scrubber.scrub(text).text
    for value in ("JANE", "DOE", "MERCY", "MAY 5"):
        assert value not in out, value
    assert "COPD" in out and "Lisinopril" in out


def test_offsets_point_into_original(scrubber, known):
    res = scrubber.scrub(NOTE, known=known)
    assert res.spans and all(isinstance(s, Span) for s in res.spans)
    assert all(a.end <= b.start for a, b in zip(res.spans, res.spans[1:]))  # disjoint, sorted
    covered = {NOTE[s.start:s.end] for s in res.spans}
    assert "00123456" in covered and "617.555.0199" in covered
    # rebuilding from spans gives the output text
    assert scrubber.render(NOTE, res.spans) == res.text


def test_date_shift_consistent(scrubber):
    text = "Admitted 07-22-1993, seen 7/22/93, follow-up January 3, 2020 and Jan 3rd; last July."
    out = scrubber.scrub(text, date_shift_days=10).text
    assert "1993-08-01" in out
    assert out.count("1993-08-01") == 2
    assert "2020-01-13" in out and "January 13" in out
    assert "[DATE]" in out  # "last July" cannot be shifted
    assert shift_date_text("February 29", 1) == "March 1"
    assert shift_date_text("March 2022", 31) == "April 2022"
    assert shift_date_text("not a date", 3) is None
    assert scrubber.scrub(text).text.count("[DATE]") == 5


def test_surrogates_consistent_per_key(scrubber, known):
    a = TextScrubber(scrubber.analyzer, mode="surrogate", surrogate_key="k1")
    b = TextScrubber(scrubber.analyzer, mode="surrogate", surrogate_key="k2")
    text = "Willena Kunze called. Later Willena Kunze came back. MRN 00123456."
    ra, ra2, rb = a.scrub(text, known=known), a.scrub(text, known=known), b.scrub(text, known=known)
    assert ra.text == ra2.text
    assert ra.text != rb.text
    assert "Willena" not in ra.text and "00123456" not in ra.text and "k1" not in ra.text
    parts = ra.text.split(" called. Later ")
    assert parts[0] == parts[1].split(" came back")[0]  # the same name -> the same surrogate


def test_scrub_many_matches_scrub(scrubber, known):
    texts = [NOTE, "", "Dr. Emily Clark saw her.", "metformin 500 mg"]
    many = scrubber.scrub_many(texts, known=known, batch_size=2)
    assert [r.text for r in many] == [scrubber.scrub(t, known=known).text for t in texts]
    assert many[1].text == "" and many[3].text == "metformin 500 mg"


def test_known_identifiers_forms():
    k = KnownIdentifiers.from_identity(IDENTITY)
    text = "WILLENA258 and willena; ph 617 555 0199; Feb 3, 1931; 1931-02-03; newman regional health"
    hits = {text[s:e].lower() for s, e, _ in k.find(text)}
    assert {"willena258", "willena", "617 555 0199", "feb 3, 1931", "1931-02-03", "newman regional health"} <= hits
    assert not k.find("regional health services and health care")  # org words alone are not names


def test_engine_starts_without_network(monkeypatch):
    from deidentify import engine

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    analyzer = engine._build(engine.resolve_model(None), True, True)
    res = analyzer.analyze("write to jane.roe@example.org or see https://example.org/x", language="en")
    assert {r.entity_type for r in res} >= {"EMAIL_ADDRESS", "URL"}


def test_bad_mode_rejected(scrubber):
    with pytest.raises(ValueError):
        TextScrubber(scrubber.analyzer, mode="mask")  # type: ignore[arg-type]
