"""TriageReport schema, its committed JSON Schema export, and parse_report."""
from __future__ import annotations

import json

import pytest

from model.acuity import Acuity
from model.report import (
    SCHEMA_PATH,
    InvalidReport,
    TriageReport,
    parse_report,
    report_json_schema,
)

SECRET = "Jonathan Q Smithers MRN 8675309"


def good(**over) -> dict:
    data = {
        "acuity": 3,
        "summary": "Febrile with productive cough; NEWS2 5, needs urgent review",
        "differential": [
            {"condition": "Community-acquired pneumonia", "likelihood": "high",
             "rationale": "Fever, cough and raised respiratory rate"},
            {"condition": "Acute bronchitis", "likelihood": "moderate", "rationale": "Cough"},
        ],
        "red_flags": ["SpO2 94 % on air"],
        "recommended_actions": ["Chest X-ray", "Sepsis screen"],
        "questions_to_ask": ["When did the cough start?"],
        "reasoning_summary": "Respiratory infection likely; vitals show a medium NEWS2.",
    }
    data.update(over)
    return data


def test_valid_report_parses():
    report = parse_report(json.dumps(good()))
    assert isinstance(report, TriageReport)
    assert report.acuity == 3 and report.acuity_level is Acuity.URGENT
    assert report.differential[0].likelihood == "high"


def test_fenced_json_and_whitespace_are_tolerated():
    assert parse_report("\n```json\n" + json.dumps(good()) + "\n```\n").acuity == 3


@pytest.mark.parametrize("level", [1, 5])
def test_acuity_scale_ends_accepted(level):
    assert parse_report(json.dumps(good(acuity=level))).acuity == level


BAD = [
    ("acuity 0", good(acuity=0), "acuity"),
    ("acuity 6", good(acuity=6), "acuity"),
    ("acuity as text", good(acuity="3"), "acuity"),
    ("acuity fractional", good(acuity=2.5), "acuity"),
    ("summary 140 chars", good(summary="x" * 140), "summary"),
    ("summary blank", good(summary="   "), "summary"),
    ("summary with newline", good(summary="line one\nline two"), "summary"),
    ("no differential", good(differential=[]), "differential"),
    ("six differentials", good(differential=[good()["differential"][1]] * 6), "differential"),
    ("bad likelihood", good(differential=[{"condition": "X", "likelihood": "certain", "rationale": "r"}]),
     "differential.0.likelihood"),
    ("too many red flags", good(red_flags=["a"] * 7), "red_flags"),
    ("overlong action", good(recommended_actions=["y" * 161]), "recommended_actions.0"),
    ("missing field", {k: v for k, v in good().items() if k != "questions_to_ask"}, "questions_to_ask"),
    ("extra field", good(patient_name=SECRET), "patient_name"),
]


@pytest.mark.parametrize("label,data,field", BAD, ids=[b[0] for b in BAD])
def test_invalid_reports_rejected_naming_the_field(label, data, field):
    with pytest.raises(InvalidReport) as info:
        parse_report(json.dumps(data))
    assert field in str(info.value)


def test_summary_of_139_characters_fits():
    assert len(parse_report(json.dumps(good(summary="s" * 139))).summary) == 139


@pytest.mark.parametrize("text", [
    "", "   ", "not json at all " + SECRET, '{"acuity": 3, "summary": "' + SECRET,
    json.dumps(good(summary=SECRET * 10)), json.dumps(good(extra=SECRET)),
    '{"summary": "' + SECRET + '\x01"}',
])
def test_error_message_never_echoes_the_text(text):
    with pytest.raises(InvalidReport) as info:
        parse_report(text)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert SECRET not in message and "Smithers" not in message and "8675309" not in message


def test_non_text_input_is_a_clear_error():
    with pytest.raises(InvalidReport, match="must be text"):
        parse_report(None)  # type: ignore[arg-type]


def test_committed_schema_matches_live_schema():
    assert json.loads(SCHEMA_PATH.read_text(encoding="utf-8")) == report_json_schema()


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_every_string_and_list_in_the_schema_is_bounded():
    schema = report_json_schema()
    nodes = list(_walk(schema))
    strings = [n for n in nodes if n.get("type") == "string"]
    arrays = [n for n in nodes if n.get("type") == "array"]
    assert strings and arrays
    assert all("enum" in n or ("maxLength" in n and "pattern" in n) for n in strings)
    assert all("maxItems" in n for n in arrays)
    assert schema["properties"]["summary"]["maxLength"] < 140
    assert schema["properties"]["acuity"] == {**schema["properties"]["acuity"], "minimum": 1, "maximum": 5}


def test_xgrammar_grammar_from_schema_enforces_bounds_and_no_control_characters():
    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string as accepts

    grammar = xgr.Grammar.from_json_schema(json.dumps(report_json_schema()))
    assert accepts(grammar, json.dumps(good()))
    assert accepts(grammar, json.dumps(good(summary="s" * 139)))
    assert not accepts(grammar, json.dumps(good(summary="s" * 140)))
    assert not accepts(grammar, json.dumps(good()).replace("Febrile", "Feb\x01rile"))
    assert not accepts(grammar, json.dumps(good(acuity=6)))
