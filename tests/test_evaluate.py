"""`triage evaluate`: cases in, figures out, through the real hook path; the safety gate."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cds_hooks.evaluate import evaluate
from conftest import ROOT
from model.evaluate import CaseError, agreement, gate, load_cases, quadratic_kappa

CASES = [
    {"id": "a", "age_years": 58, "sex": "male", "complaint": "CP radiating to L arm", "hr": 92, "rr": 18,
     "sbp": 150, "dbp": 90, "temp_c": 36.8, "spo2": 97, "avpu": "A", "pain": 6, "esi": 2},
    {"id": "b", "age_years": 24, "sex": "female", "complaint": "ankle sprain", "hr": 80, "rr": 16,
     "sbp": 118, "dbp": 70, "temp_c": 36.7, "spo2": 99, "avpu": "A", "pain": 4, "esi": 4},
    {"id": "c", "age_years": 0, "age_months": 0, "sex": "male", "complaint": "12 day old, fever",
     "hr": 160, "rr": 44, "sbp": None, "dbp": None, "temp_c": 38.4, "spo2": 98, "avpu": "A", "pain": None, "esi": 2},
    {"id": "d", "age_years": 70, "sex": "female", "complaint": "med refill", "hr": 76, "rr": 14, "sbp": 128,
     "dbp": 80, "temp_c": 36.6, "spo2": None, "avpu": "A", "pain": 0, "esi": 5},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_quadratic_kappa_by_hand_and_its_bounds():
    # ref [1,2] vs pred [1,3]: observed weighted disagreement 1/16, expected 3/16 -> 1 - 1/3
    assert quadratic_kappa([1, 2], [1, 3]) == pytest.approx(2 / 3)
    assert quadratic_kappa([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) == 1.0
    assert quadratic_kappa([1, 2, 4, 5], [5, 4, 2, 1]) < 0


def test_agreement_rates():
    a = agreement([1, 2, 3, 4, 5], [2, 2, 4, 4, 3])
    assert (a["exact"], a["within_one"], a["under_triage"], a["over_triage"]) == (0.4, 0.8, 0.4, 0.2)
    assert a["sensitivity_1_2"] == 1.0 and a["n_level_1_2"] == 2
    assert a["confusion"][0][1] == 1 and a["confusion"][4][2] == 1


def test_gate_fails_on_under_triage_and_on_a_model_worse_than_the_rules():
    report = {"triagers": {"rules": {"overall": {"under_triage": 0.05}},
                           "model": {"overall": {"under_triage": 0.08}}}}
    verdict = gate(report, max_under_triage=0.10)
    assert not verdict["passed"] and "model: under-triage 0.080 > rules 0.050" in verdict["failures"]
    report["triagers"]["model"]["overall"]["under_triage"] = 0.04
    assert gate(report)["passed"]
    assert not gate(report, max_under_triage=0.045)["passed"]


def test_cases_from_csv_with_other_column_case_and_blank_values(tmp_path):
    path = tmp_path / "clinic.csv"
    path.write_text("ID,Age_Years,Sex,Complaint,HR,RR,SBP,DBP,Temp_C,SpO2,AVPU,Pain,ESI\n"
                    "v1,44,F,abd pain,88,16,120,80,36.9,,alert,5,3\n")
    [case] = load_cases(path)
    assert (case.id, case.sex, case.spo2, case.avpu, case.esi, case.split) == ("v1", "female", None, "A", 3, "clinic")


@pytest.mark.parametrize("line,message", [
    ('{"esi": 7}', "line 1: esi must be a level 1-5"),
    ('{"esi": 3, "hr": "fast"}', "line 1: hr is not a number"),
    ("{not json", "line 1: not JSON"),
    ('{"esi": 3, "avpu": "Q"}', "line 1: avpu must be one of"),
])
def test_bad_case_files_name_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(CaseError, match=message):
        load_cases(path)
    result = CliRunner().invoke(evaluate, [str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "bad.jsonl line 1" in result.output
    assert "Traceback" not in result.output


def test_evaluate_runs_cases_through_the_hook_and_writes_the_report(tmp_path, monkeypatch):
    folder = tmp_path / "cases"
    folder.mkdir()
    write_jsonl(folder / "dev.jsonl", CASES[:2])
    write_jsonl(folder / "heldout.jsonl", CASES[2:])
    out = tmp_path / "report"
    result = CliRunner().invoke(evaluate, [str(folder), "--out", str(out), "--gate"])
    assert result.exit_code == 0, result.output
    assert "rules  heldout" in result.output and "rules  dev" in result.output
    report = json.loads((out / "metrics.json").read_text())
    rules = report["triagers"]["rules"]
    assert rules["overall"]["n"] == 4 and rules["overall"]["exact"] == 1.0
    assert set(rules["by_split"]) == {"dev", "heldout"}
    assert set(rules["by_sex"]) == {"female", "male"} and "65+" in rules["by_age_band"]
    assert report["gate"]["passed"] is True
    md = (out / "report.md").read_text()
    assert "Safety gate: PASSED" in md and "Confusion matrix" in md
    for png in ("confusion.png", "under_triage_by_group.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gate_exits_1_when_the_rules_under_triage(tmp_path):
    # A reference that says 1 for a sprained ankle: the rules (4) under-triage it.
    path = write_jsonl(tmp_path / "strict.jsonl", [{**CASES[1], "esi": 1}])
    result = CliRunner().invoke(evaluate, [str(path), "--out", str(tmp_path / "out"), "--gate"])
    assert result.exit_code == 1 and "gate FAILED" in result.output


def test_shipped_vignettes_load_with_a_held_back_split():
    cases = load_cases(ROOT / "eval" / "vignettes")
    splits = {c.split for c in cases}
    assert {"dev", "heldout"} <= splits
    assert sum(c.split == "heldout" for c in cases) >= 100 and len(cases) >= 300
    assert len({c.id for c in cases}) == len(cases)
    assert any((c.age_years or 0) < 18 for c in cases) and {c.esi for c in cases} == {1, 2, 3, 4, 5}


@pytest.mark.slow
def test_the_ai_card_goes_through_the_same_harness(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "two.jsonl", CASES[:2])
    out = tmp_path / "out"
    result = CliRunner().invoke(evaluate, [str(path), "--out", str(out), "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    model = report["triagers"]["model"]
    assert model["answered"] == 2 and model["schema_valid_rate"] == 1.0  # the tiny model is random, its cards valid
    assert model["identifier_leaks"] == 0
    assert "model  all" in result.output


def test_bundle_cases_with_labels_and_planted_identifiers_never_leak_into_cards(tmp_path):
    from cds_hooks.evaluate import _identifiers, case_bundle
    from deidentify.leaks import find_leaks
    from model.evaluate import Case

    folder = tmp_path / "bundles"
    folder.mkdir()
    bundle = case_bundle(Case(id="planted", split="x", esi=2, age_years=61, sex="male", complaint="x", hr=90))
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["name"] = [{"family": "Quagmire", "given": ["Horatio"]}]
    encounter = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter")
    encounter["reasonCode"] = [{"text": "chest pain, brought in by Horatio Quagmire's wife"}]
    (folder / "case1.json").write_text(json.dumps(bundle))
    (folder / "labels.jsonl").write_text(json.dumps({"file": "case1.json", "esi": 2, "age_years": 61, "sex": "male"}) + "\n")
    assert sum(find_leaks("seen: Horatio Quagmire", _identifiers(bundle)).values()) >= 1  # the check can fire
    out = tmp_path / "out"
    result = CliRunner().invoke(evaluate, [str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rules = json.loads((out / "metrics.json").read_text())["triagers"]["rules"]
    assert rules["overall"]["exact"] == 1.0 and rules["identifier_leaks"] == 0
