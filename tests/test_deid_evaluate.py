"""Evaluation goals: ASQ-PHI recall and hard-negative FP rate; Synthea survivors; the CLI."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from deidentify.evaluate import TYPE_FLOORS, evaluate_asq, evaluate_synthea, load_asq, value_caught
from deidentify.text import Span, TextScrubber

# EMAIL_ADDRESS holds one labelling error (the value is the word "email" itself), so its floor
# is 30/31; every other type must reach 0.98.
TYPE_FLOOR = TYPE_FLOORS


@pytest.fixture(scope="module")
def scrubber() -> TextScrubber:
    return TextScrubber()


def test_value_caught_is_strict():
    text = "Anna S. at Mercy Hospital"
    assert value_caught(text, "Anna S.", [Span(0, 7, "PERSON", 1)])
    assert not value_caught(text, "Anna S.", [Span(0, 4, "PERSON", 1)])  # the initial survives
    assert value_caught(text, "Jane", []) is None
    assert value_caught("patient ID: 897-65-4321", "patient ID: 897-65-4321", [Span(12, 23, "ID", 1)])


def test_asq_phi_goals_full_set(scrubber, shared_data):
    path = shared_data / "deid" / "asq-phi"
    assert len(load_asq(path)) == 1051
    report = evaluate_asq(scrubber, path)
    assert report.negatives == 219 and report.overall.n == 2973
    assert report.overall.recall >= 0.98
    for typ, r in report.per_type.items():
        assert r.recall >= TYPE_FLOOR.get(typ, 0.98), typ
    assert report.fp_rate <= 0.10


def test_asq_phi_goals_all_caps(scrubber, shared_data):
    """The same queries written in capitals meet the same goals (re-cased view of caps lines)."""
    report = evaluate_asq(scrubber, shared_data / "deid" / "asq-phi", upper=True)
    assert report.negatives == 219 and report.overall.n == 2973
    assert report.overall.recall >= 0.98
    for typ, r in report.per_type.items():
        assert r.recall >= TYPE_FLOOR.get(typ, 0.98), typ
    assert report.fp_rate <= 0.10
    assert report.meets_goal()


def test_synthea_notes_no_survivors(scrubber, shared_data):
    report = evaluate_synthea(scrubber, shared_data / "fhir" / "bulk-export-synthea-10", limit=150)
    assert report.notes == 150
    assert report.survivor_count == 0, report.survivors
    assert report.kept_share >= 0.95


def test_cli_scrub_streams_and_reports_bad_lines(tmp_path):
    from deidentify.cli import deid

    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"id": 1, "text": "Dr. Emily Clark saw Mary Johnson on 7/22/93."}) + "\n"
        + "{not json\n"
        + json.dumps({"id": 2, "text": "metformin 500 mg"}) + "\n"
        + json.dumps({"id": 3}) + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(deid, ["scrub", "--input", str(src), "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert f"{src}:2:" in res.stderr and f"{src}:4:" in res.stderr
    assert "skipped 2" in res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2]
    original = "Dr. Emily Clark saw Mary Johnson on 7/22/93."
    assert "Clark" not in rows[0]["text"] and "7/22/93" not in rows[0]["text"]
    assert {original[s["start"]:s["end"]] for s in rows[0]["spans"]} >= {"Dr. Emily Clark", "7/22/93"}
    assert rows[1]["text"] == "metformin 500 mg" and rows[1]["spans"] == []
    assert not list(tmp_path.glob(".scrub-*"))  # no temporary file left behind


def test_cli_scrub_unreadable_file(tmp_path):
    from deidentify.cli import deid

    missing = tmp_path / "nope.jsonl"
    res = CliRunner().invoke(deid, ["scrub", "--input", str(missing), "--output", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2
    assert str(missing) in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "o.jsonl").exists()
