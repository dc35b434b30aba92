"""Training sets a model can learn the product from: every target valid under its schema, labels
with provenance, balance, and `triage dataset check` (chat and seed formats)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from conftest import DATA
from model import dataset as ds
from model.cli import dataset as dataset_group
from model.dataset_balance import balance_patient, informative, split_warnings, spread
from model.dataset_check import check_dataset
from model.dataset_targets import DiagnosisReport, rules_labeller_accuracy, split_seed, target_problem
from model.report import TriageReport

EXPORT = DATA / "fhir" / "bulk-export-synthea-10"


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "steward.key"
    path.write_text("4b" * 32 + "\n")
    return path


def _build(out: Path, key: Path, **kw) -> ds.BuildResult:
    return ds.build(ds.BuildConfig(input=EXPORT, output=out, key_file=key, max_encounters=8, progress=False,
                                   split=(0.5, 0.25, 0.25), **kw))


@pytest.fixture(scope="module")
def built(tmp_path_factory, key_file) -> ds.BuildResult:
    return _build(tmp_path_factory.mktemp("b") / "out", key_file)


def _rows(out: Path, sub: str = "") -> list[dict]:
    return [json.loads(x) for s in ds.SPLITS for x in (out / sub / f"{s}.jsonl").read_text().splitlines()]


def test_every_target_of_a_build_is_a_valid_triage_report_with_provenance(built) -> None:
    rows = _rows(built.output)
    assert rows
    for r in rows:
        report = TriageReport.model_validate_json(r["messages"][-1]["content"])  # the serving schema
        assert report.acuity == r["acuity"] and r["label_source"] in ("record", "rules")
    for s in _rows(built.output, "seed"):
        prompt, answer = split_seed(s["text"])
        assert prompt.startswith("###Human:") and TriageReport.model_validate_json(answer)
    c = built.counts
    by = c["labels"]["by_split_and_source"]
    assert sum(n for sp in by.values() for src in sp.values() for n in src.values()) == c["examples"]
    assert c["labels"]["by_source"].get("rules", 0) > 0 and built.manifest["settings"]["target_schema"] == "triage-report"
    assert "rules_labeller" in built.manifest
    card = (built.output / "README.md").read_text()
    assert "| split | label source | 1 | 2 | 3 | 4 | 5 | unlabelled |" in card and "Rules labeller" in card
    assert "## Balance" in card


def test_the_check_passes_a_build_in_both_formats(built, tiny_model_dir) -> None:
    report = check_dataset(built.output, tokenizer_name=str(tiny_model_dir), max_tokens=8192, min_patients_per_split=1)
    assert report.passed, report.table()
    names = {f.check for f in report.findings}
    assert {"targets (triage-report)", "token lengths (chat)", "token lengths (seed)", "splits disjoint by patient"} <= names
    assert report.figures["invalid_targets"] == 0 and report.figures["examples"]["seed"] == report.figures["examples"]["chat"]


def test_diagnosis_only_targets_carry_no_acuity(tmp_path, key_file) -> None:
    result = _build(tmp_path / "o", key_file, target_schema="diagnosis-only", formats=("chat", "seed"))
    rows = _rows(tmp_path / "o")
    assert rows and result.manifest["settings"]["target_schema"] == "diagnosis-only"
    for r in rows:
        target = json.loads(r["messages"][-1]["content"])
        assert "acuity" not in target and DiagnosisReport.model_validate(target)
        assert target_problem(r["messages"][-1]["content"], "triage-report")  # the serving schema would refuse it
    # unlabelled rows are kept here (the rules still label what they can)
    assert check_dataset(tmp_path / "o", min_patients_per_split=1).passed


def test_without_rules_labels_unlabelled_examples_are_not_written(tmp_path, key_file, built) -> None:
    result = _build(tmp_path / "o", key_file, rules_labels=False, formats=("chat",))
    assert result.counts["dropped"]["no_acuity"] > 0
    assert {r["label_source"] for r in _rows(tmp_path / "o")} == {"record"}


def test_balance_cap_near_duplicates_and_uninformative() -> None:
    def ex(i: int, user: str, target: str = '{"x":1}', uninformative: bool = False) -> dict:
        e = {"id": f"p-e{i}", "acuity": 3, "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": target}]}
        if uninformative:
            e["_uninformative"] = True
        return e

    exs = [ex(0, "age 30, cough"), ex(1, "age 31, cough"), ex(2, "age 32, fever"), ex(3, "nothing", uninformative=True)]
    kept, removed = balance_patient(exs, max_per_patient=None, collapse=True, uninformative_keep=0.0)
    assert [e["id"] for e in kept] == ["p-e0", "p-e2"] and removed == {"near_duplicate": 1, "uninformative": 1}
    kept, removed = balance_patient(exs, max_per_patient=None, collapse=False, uninformative_keep=1.0)
    assert len(kept) == 4 and not removed
    many = [ex(i, f"visit {i}") for i in range(60)]  # near-duplicates of each other, kept here
    kept, removed = balance_patient(many, max_per_patient=10, collapse=False, uninformative_keep=0.0)
    assert len(kept) == 10 and kept[0]["id"] == "p-e0" and kept[-1]["id"] == "p-e59" and removed["over_patient_cap"] == 50
    assert spread(5, 3) == [0, 2, 4] and spread(3, 5) == [0, 1, 2]
    share = sum(balance_patient([ex(i, f"u{chr(97 + i % 26)}{i // 26}", uninformative=True) for i in range(400)],
                                max_per_patient=None, collapse=False, uninformative_keep=0.25)[0].__len__() for _ in [0])
    assert 60 < share < 140  # about a quarter kept, by a keyed hash of the id


def test_informative_means_a_complaint_or_a_finding() -> None:
    enc = SimpleNamespace(reasons=())
    plain = "Chief complaint: No complaints.\n\nHistory of present illness: [NAME] is a 18 year-old nonhispanic white female."
    hist = plain + " Patient has a history of stress (finding)."
    assert not informative(SimpleNamespace(vitals={}, encounter=enc, notes=(plain,)))
    assert not informative(SimpleNamespace(vitals={}, encounter=enc, notes=(hist,)))
    assert not informative(SimpleNamespace(vitals={}, encounter=None, notes=()))
    assert informative(SimpleNamespace(vitals={}, encounter=SimpleNamespace(reasons=("Acute bronchitis",)), notes=(plain,)))
    assert informative(SimpleNamespace(vitals={"8867-4": object()}, encounter=enc, notes=()))
    assert informative(SimpleNamespace(vitals={}, encounter=enc, notes=("Chief complaint: Cough for three days.",)))
    assert informative(SimpleNamespace(vitals={}, encounter=enc, notes=(plain + " She reports wheezing at night.",)))


def test_small_splits_warn() -> None:
    w = split_warnings({"train": 11, "validation": 1, "test": 0}, (0.8, 0.1, 0.1), 5)
    assert len(w) == 2 and w[0].startswith("split validation has 1 patient (fewer than 5)")
    assert split_warnings({"train": 9, "validation": 0, "test": 0}, (1.0, 0.0, 0.0), 5) == []


def test_rules_labeller_accuracy_is_read_from_the_evaluation(tmp_path) -> None:
    metrics = tmp_path / "metrics.json"
    block = {"n": 130, "exact": 0.71, "within_one": 0.95, "kappa": 0.8, "under_triage": 0.06, "over_triage": 0.23}
    metrics.write_text(json.dumps({"triagers": {"rules": {"overall": block, "by_split": {"heldout": block, "dev": block}}}}))
    got = rules_labeller_accuracy(metrics)
    assert got["source"] == str(metrics) and got["overall"]["exact"] == 0.71 and got["by_split"]["heldout"]["n"] == 130
    assert "triage evaluate" in rules_labeller_accuracy(tmp_path / "missing.json")["note"]


# ---- `triage dataset check` on hand-made folders ------------------------------------------------

GOOD = {"acuity": 3, "summary": "Preliminary: cough", "differential": [{"condition": "Bronchitis", "likelihood": "high",
        "rationale": "r"}], "red_flags": [], "recommended_actions": [], "questions_to_ask": [], "reasoning_summary": "s"}


def _row(i: int, patient: str, target: dict | None = None, user: str = "Cough for two days.", **kw) -> dict:
    target = GOOD if target is None else target
    return {"id": f"{patient}-e{i}", "patient": patient, "acuity": target.get("acuity"), "label_source": "record",
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": json.dumps(target)}], **kw}


def _folder(root: Path, rows_by_split: dict[str, list[dict]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s, rows in rows_by_split.items():
        (root / f"{s}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _spread_rows(n_patients: int = 12) -> dict[str, list[dict]]:
    splits = {"train": [], "validation": [], "test": []}
    for p in range(n_patients):
        s = "train" if p < n_patients - 4 else ("validation" if p < n_patients - 2 else "test")
        splits[s] += [_row(i, f"p{p}") for i in range(2)]
    return splits


def _status(output: str, check: str) -> str | None:
    m = re.search(rf"^  {re.escape(check)} +(ok|warn|FAIL) ", output, re.M)
    return m.group(1) if m else None


def _check(folder: Path, *args: str):
    res = CliRunner().invoke(dataset_group, ["check", str(folder), *args])
    assert "Traceback" not in res.output
    return res


def test_check_hand_made_folder_passes_and_each_hard_failure_exits_1(tmp_path) -> None:
    res = _check(_folder(tmp_path / "good", _spread_rows()), "--min-patients-per-split", "1")
    assert res.exit_code == 0 and _status(res.output, "targets (triage-report)") == "ok"

    rows = _spread_rows()
    rows["train"][0] = _row(0, "p0", {**GOOD, "acuity": None})  # the 994 of the issue: acuity null
    res = _check(_folder(tmp_path / "null", rows))
    assert res.exit_code == 1 and _status(res.output, "targets (triage-report)") == "FAIL" and "acuity: int_type" in res.output

    rows = _spread_rows()
    rows["test"].append(_row(9, "p0"))  # p0 is in train too
    res = _check(_folder(tmp_path / "overlap", rows))
    assert res.exit_code == 1 and _status(res.output, "splits disjoint by patient") == "FAIL"

    rows = _spread_rows()
    rows["train"][1] = _row(1, "p0", user="Call her at (617) 555-0143 or jane.doe@example.org")
    res = _check(_folder(tmp_path / "phi", rows))
    assert res.exit_code == 1 and "EMAIL 1" in res.output and "PHONE 1" in res.output and "555-0143" not in res.output

    rows = _spread_rows()
    rows["train"][1] = {**_row(1, "p0"), "label_source": "guess"}
    assert "label sources" in _check(_folder(tmp_path / "src", rows)).output
    assert _check(tmp_path / "src").exit_code == 1

    rows = _spread_rows()
    rows["train"][1] = {**_row(1, "p0"), "acuity": 5}
    res = _check(_folder(tmp_path / "mismatch", rows))
    assert res.exit_code == 1 and _status(res.output, "acuity agrees with target") == "FAIL"

    rows = {"train": [_row(i, "big") for i in range(30)] + [_row(0, f"q{i}") for i in range(5)]}
    res = _check(_folder(tmp_path / "share", rows))
    assert res.exit_code == 1 and _status(res.output, "largest patient share (chat)") == "FAIL"


def test_check_finds_export_identifiers_and_measures_tokens(tmp_path, tiny_model_dir) -> None:
    first = json.loads((EXPORT / "Patient.000.ndjson").read_text().splitlines()[0])
    name = f"{first['name'][0]['given'][0]} {first['name'][0]['family']}"
    rows = _spread_rows()
    rows["train"][0] = _row(0, "p0", user=f"Seen with {name}.")
    folder = _folder(tmp_path / "leak", rows)
    res = _check(folder, "--identifiers-from", str(EXPORT), "--min-patients-per-split", "1")
    assert res.exit_code == 1 and "identifiers" in res.output and "NAME" in res.output and name not in res.output
    res = _check(_folder(tmp_path / "long", _spread_rows()), "--tokenizer", str(tiny_model_dir), "--max-tokens", "20")
    assert res.exit_code == 1 and _status(res.output, "token lengths (chat)") == "FAIL"
    res = _check(tmp_path / "long", "--tokenizer", str(tiny_model_dir), "--max-tokens", "4096")
    assert res.exit_code == 0 and _status(res.output, "token lengths (chat)") == "ok"


def test_check_seed_format_folder(tmp_path, tiny_model_dir) -> None:
    def seed(i: int, patient: str, target: dict = GOOD) -> dict:
        return {"id": f"{patient}-e{i}", "patient": patient,
                "text": f"###Human: Patient Medical History: 40 years old. Symptoms: cough. What is the preliminary diagnosis?"
                        f"\n###Assistant: {json.dumps(target)}"}

    root = tmp_path / "seedonly"
    (root / "seed").mkdir(parents=True)
    (root / "seed" / "train.jsonl").write_text("".join(json.dumps(seed(i, f"p{i}")) + "\n" for i in range(8)))
    (root / "seed" / "test.jsonl").write_text("".join(json.dumps(seed(0, f"t{i}")) + "\n" for i in range(5)))
    res = _check(root, "--tokenizer", str(tiny_model_dir))
    assert res.exit_code == 0 and _status(res.output, "token lengths (seed)") == "ok" and "seed/train" in res.output
    with open(root / "seed" / "test.jsonl", "a") as fh:
        fh.write(json.dumps(seed(9, "t9", {**GOOD, "differential": []})) + "\n")
        fh.write(json.dumps({"text": "no seed markers here"}) + "\n")
    res = _check(root)
    assert res.exit_code == 1 and "differential: too_short" in res.output and _status(res.output, "rows") == "FAIL"


def test_check_cli_errors_are_one_line(tmp_path) -> None:
    res = _check(tmp_path / "nope")
    assert res.exit_code != 0 and "Traceback" not in res.output
    (tmp_path / "empty").mkdir()
    res = _check(tmp_path / "empty")
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "no .jsonl files" in res.output
