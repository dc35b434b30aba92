"""`triage dataset import`: curated triage records (the source design's template) -> the build's
dataset layout, de-identified and leak-checked, with planted identifiers in every free-text field."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from model.cli import dataset as dataset_group
from model.dataset_import import (
    ImportConfig,
    RecordImportError,
    load_priority_map,
    normalise_priority,
    parse_column_map,
    report_from_text,
    run_import,
)
from model.report import TriageReport

# Planted identifiers: each record's identity columns, repeated in its free text.
PEOPLE = [
    {"id": "MRN-448812", "name": "Margaret Okonkwo", "mrn": "448812", "birth_date": "1961-03-14",
     "phone": "617-555-0143", "email": "m.okonkwo@example.org", "address": "41 Larchmont Terrace",
     "city": "Framingham", "zip": "01701"},
    {"id": "MRN-903115", "name": "Desmond Abernathy", "mrn": "903115", "birth_date": "1948-11-02",
     "phone": "(508) 555-0199", "email": "dabernathy@example.com", "address": "7 Quarry Hill Road",
     "city": "Marlborough", "zip": "01752"},
    {"id": "MRN-220471", "name": "Priya Raghunathan", "mrn": "220471", "birth_date": "1990-07-30",
     "phone": "781.555.0112", "email": "priya.r@example.net", "address": "1200 Beacon Street",
     "city": "Brookline", "zip": "02446"},
]
PRIORITIES = ["High", "Medium", "Low"]


def _planted(p: dict[str, str]) -> list[str]:
    first, last = p["name"].split()
    return [p["name"], first, last, p["mrn"], p["phone"], p["email"], p["address"], p["city"], p["zip"],
            "03/14/1961" if p["birth_date"] == "1961-03-14" else p["birth_date"]]


def _records(with_identity: bool = True) -> list[dict[str, str]]:
    out = []
    for i, p in enumerate(PEOPLE):
        who = f"{p['name']} (MRN {p['mrn']}, DOB {p['birth_date']}, phone {p['phone']})"
        rec = {
            "history": f"{who} lives at {p['address']}, {p['city']} {p['zip']}. Hypertension and type 2 diabetes, "
                       "no known allergies.",
            "symptoms": f"{p['name'].split()[0]} complains of chest pain and shortness of breath since this morning; "
                        f"wife called from {p['phone']}, e-mail {p['email']}.",
            "diagnosis_report": "Possible angina. Recommend urgent cardiology consult and ECG. "
                                f"Discussed with Dr. Harold Finkelstein at {p['city']} General Hospital.",
            "triage_priority": PRIORITIES[i],
        }
        if with_identity:
            rec.update(p)
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def scrubber():
    from model.dataset import make_scrubber

    return make_scrubber()


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "steward.key"
    path.write_text("7c" * 32 + "\n")
    return path


def _all_output_text(root: Path) -> str:
    """Every output file as a reader sees it: raw bytes, decoded JSON strings, Parquet cells."""
    import pyarrow.parquet as pq

    parts = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        if p.suffix == ".parquet":
            parts.append(json.dumps(pq.read_table(p).to_pylist(), ensure_ascii=False))
        else:
            raw = p.read_text(encoding="utf-8")
            parts.append(raw)
            if p.suffix == ".jsonl":
                parts += [json.dumps(json.loads(line), ensure_ascii=False) for line in raw.splitlines()]
    return "\n".join(parts).casefold()


def _rows(root: Path) -> list[dict]:
    return [json.loads(line) for s in ("train", "validation", "test") for line in (root / f"{s}.jsonl").read_text().splitlines()]


def _run(tmp_path: Path, key_file: Path, scrubber, name: str, content: str, **kw):
    src = tmp_path / name
    src.write_text(content, encoding="utf-8")
    return run_import(ImportConfig(input=src, output=tmp_path / "out", key_file=key_file, **kw), scrubber=scrubber)


def test_json_array_import_writes_the_build_layout_with_valid_imported_targets(tmp_path, key_file, scrubber) -> None:
    result = _run(tmp_path, key_file, scrubber, "records.json", json.dumps(_records(), indent=2))
    out = tmp_path / "out"
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "train.parquet", "seed/train.jsonl",
                 "README.md", "manifest.json", "audit.json"):
        assert (out / name).is_file(), name
    rows = _rows(out)
    assert len(rows) == 3 and result.counts["examples"] == 3
    assert {r["acuity"] for r in rows} == {2, 3, 4}  # High, Medium, Low through the shipped map
    for r in rows:
        assert r["label_source"] == "imported"
        report = TriageReport.model_validate_json(r["messages"][-1]["content"])
        assert report.acuity == r["acuity"]
        assert [(d.condition, d.likelihood) for d in report.differential] == [("Angina", "moderate")]
        assert any("cardiology consult" in a for a in report.recommended_actions)
        user = r["messages"][1]["content"]
        assert "chest pain" in user and "Hypertension" in user
    seeds = [json.loads(x) for s in ("train", "validation", "test") for x in (out / "seed" / f"{s}.jsonl").read_text().splitlines()]
    assert len(seeds) == 3 and all(s["text"].startswith("###Human: Patient Medical History:") for s in seeds)
    assert all("Symptoms:" in s["text"] and "###Assistant: {" in s["text"] for s in seeds)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tool"] == "triage dataset import" and manifest["leak_check"]["passed"]
    assert manifest["counts"]["labels"]["by_source"] == {"imported": 3}
    card = (out / "README.md").read_text()
    assert "curated triage records" in card and "priority map" in card


def test_planted_identifiers_in_every_free_text_field_reach_no_output(tmp_path, key_file, scrubber) -> None:
    _run(tmp_path, key_file, scrubber, "records.json", json.dumps(_records()))
    text = _all_output_text(tmp_path / "out")
    for p in PEOPLE:
        for planted in _planted(p) + [p["id"]]:
            assert planted.casefold() not in text, planted
    assert "finkelstein" not in text  # a clinician named only in the report: the scrubber's job


def test_planted_identifiers_without_identity_columns_are_scrubbed(tmp_path, key_file, scrubber) -> None:
    result = _run(tmp_path, key_file, scrubber, "records.jsonl",
                  "\n".join(json.dumps(r) for r in _records(with_identity=False)) + "\n")
    text = _all_output_text(tmp_path / "out")
    for p in PEOPLE:
        for planted in (p["name"], p["phone"], p["email"], p["mrn"], p["address"], p["birth_date"]):
            assert planted.casefold() not in text, planted
    # no identifier column: a stable pseudonymous id from the content, the same on a second run
    ids = sorted(r["id"] for r in _rows(tmp_path / "out"))
    assert len({r["patient"] for r in _rows(tmp_path / "out")}) == 3
    again = run_import(ImportConfig(input=tmp_path / "records.jsonl", output=tmp_path / "again", key_file=key_file),
                       scrubber=scrubber)
    assert sorted(r["id"] for r in _rows(tmp_path / "again")) == ids
    assert result.counts["examples"] == again.counts["examples"] == 3


def test_csv_with_column_map_and_priority_scales(tmp_path, key_file, scrubber) -> None:
    recs = _records()
    scales = ["ESI-2", "ktas 1", "CTAS 5"]
    path = tmp_path / "sheet.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["PMH", "CC", "Report", "Priority", "Patient Name", "MRN"])
        for r, prio in zip(recs, scales):
            w.writerow([r["history"], r["symptoms"], r["diagnosis_report"], prio, r["name"], r["mrn"]])
    cfg = ImportConfig(input=path, output=tmp_path / "out", key_file=key_file,
                       column_map=parse_column_map("history=PMH,symptoms=CC,diagnosis_report=Report,"
                                                   "triage_priority=Priority,name=Patient Name,mrn=MRN"))
    result = run_import(cfg, scrubber=scrubber)
    assert sorted(r["acuity"] for r in _rows(tmp_path / "out")) == [1, 2, 5]
    assert result.manifest["settings"]["column_map"]["history"] == "PMH"
    text = _all_output_text(tmp_path / "out")
    for p in PEOPLE:
        assert p["name"].casefold() not in text and p["mrn"] not in text


def test_priority_map_default_and_custom(tmp_path) -> None:
    table = load_priority_map()
    for value, level in [("High", 2), ("medium", 3), ("LOW", 4), ("Urgent", 3), ("routine", 5), ("ESI-1", 1),
                         ("KTAS 3", 3), ("ctas:4", 4), ("5", 5), ("Non-Urgent", 5), ("Resuscitation", 1)]:
        assert table[normalise_priority(value)] == level, value
    assert normalise_priority(2) == "2" and normalise_priority(True) == ""
    for unknown in ("Hgh", "ESI 6", "red", "", "0"):
        assert normalise_priority(unknown) not in table
    custom = tmp_path / "map.yaml"
    custom.write_text("acuity:\n  Red: 1\n  Orange: 2\n")
    assert load_priority_map(custom) == {"red": 1, "orange": 2}
    custom.write_text("acuity:\n  Red: 7\n")
    with pytest.raises(RecordImportError, match="level 1-5"):
        load_priority_map(custom)


def test_report_from_text_splits_impression_and_actions() -> None:
    r = report_from_text("Impression: likely viral gastroenteritis; unlikely appendicitis. Recommend oral fluids. "
                         "Follow up in 48 hours.", 4)
    assert r is not None and r["acuity"] == 4
    assert [(d["condition"], d["likelihood"]) for d in r["differential"]] == [
        ("Viral gastroenteritis", "high"), ("Appendicitis", "low")]
    assert r["recommended_actions"] == ["Oral fluids", "Follow up in 48 hours"]
    TriageReport.model_validate(r)
    assert report_from_text("Recommend ECG.", 2) is None  # no impression: nothing to learn


def test_bad_rows_are_reported_by_file_and_line_and_skipped(tmp_path, key_file, scrubber) -> None:
    good = _records(with_identity=False)
    lines = [json.dumps(good[0]), "{not json", json.dumps({**good[1], "triage_priority": "Hgh"}),
             json.dumps({k: v for k, v in good[2].items() if k != "symptoms"}), json.dumps({**good[2], "symptoms": "  "}),
             json.dumps({**good[2], "triage_priority": "Margaret Okonkwo"}), json.dumps(good[2])]
    messages: list[str] = []
    src = tmp_path / "mixed.jsonl"
    src.write_text("\n".join(lines) + "\n")
    result = run_import(ImportConfig(input=src, output=tmp_path / "out", key_file=key_file), scrubber=scrubber,
                        echo=messages.append)
    assert result.counts["examples"] == 2 and result.counts["bad_lines"] == 5
    assert messages == [
        "skipped mixed.jsonl line 2: malformed JSON",
        "skipped mixed.jsonl line 3: priority not in the mapping ('Hgh')",
        "skipped mixed.jsonl line 4: missing field symptoms",
        "skipped mixed.jsonl line 5: empty field symptoms",
        "skipped mixed.jsonl line 6: priority not in the mapping (value withheld)",  # a name is never echoed
    ]
    assert "okonkwo" not in _all_output_text(tmp_path / "out")


def test_cli_bad_input_one_line_errors_and_exit_codes(tmp_path, key_file) -> None:
    runner = CliRunner()

    def run(name: str, content: str, *extra: str):
        src = tmp_path / name
        src.write_text(content)
        res = runner.invoke(dataset_group, ["import", "--input", str(src), "--output", str(tmp_path / f"o-{name}"),
                                            "--key-file", str(key_file), *extra])
        assert "Traceback" not in res.output
        return res

    res = run("empty.jsonl", "")
    assert res.exit_code == 1 and res.output == f"error: {tmp_path / 'empty.jsonl'}: the file is empty\n"
    res = run("nocol.csv", "history,symptoms,triage_priority\na,b,High\n")
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert "nocol.csv line 1: missing column: diagnosis_report" in res.output
    res = run("mapped.csv", "PMH,CC,Report\na,b,c\n", "--map", "history=PMH,symptoms=CC,diagnosis_report=Report")
    assert res.exit_code == 1 and "missing column: triage_priority" in res.output
    res = run("broken.json", '[{"history": "a",\n "symptoms": }]')
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "broken.json line 2: malformed JSON" in res.output
    res = run("nothing.jsonl", json.dumps({"history": "John Smith", "symptoms": "x", "diagnosis_report": "y",
                                           "triage_priority": "Hgh"}) + "\n{bad\n")
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        "skipped nothing.jsonl line 1: priority not in the mapping ('Hgh')",
        "skipped nothing.jsonl line 2: malformed JSON",
        f"error: {tmp_path / 'nothing.jsonl'}: no usable records (2 skipped)",
    ]
    assert "john" not in res.output.casefold()
    res = run("bad.txt", "x")
    assert res.exit_code == 1 and "expected .json" in res.output
    res = run("ok.jsonl", "{}", "--map", "history")
    assert res.exit_code == 1 and "--map takes field=column" in res.output


class _LeakyScrubber:
    """Lets a planted name through, as scrubbers fail: into texts that contain `where`."""

    def __init__(self, inner, planted: str, where: tuple[str, ...]) -> None:
        self.inner, self.planted, self.where = inner, planted, where

    def scrub_many(self, texts, **kw):
        import dataclasses

        texts = list(texts)
        return [dataclasses.replace(r, text=f"{r.text} with {self.planted}") if any(w in t for w in self.where) else r
                for t, r in zip(texts, self.inner.scrub_many(texts, **kw))]


def test_record_failing_deidentification_is_dropped_and_counted(tmp_path, key_file, scrubber) -> None:
    planted = PEOPLE[0]["name"]
    src = tmp_path / "r.json"
    src.write_text(json.dumps(_records()))
    # Person 0's own name left in person 0's record: its own check; in person 1's: the file-wide check.
    leaky = _LeakyScrubber(scrubber, planted, (PEOPLE[0]["city"], PEOPLE[1]["city"]))
    result = run_import(ImportConfig(input=src, output=tmp_path / "out", key_file=key_file), scrubber=leaky)
    assert result.counts["dropped"] == {"leak_check": 1, "leak_in_deidentification": 1}
    assert result.counts["examples"] == 1 and result.manifest["leak_check"]["dropped_by_identifier_type"]["NAME"] >= 2
    assert planted.casefold() not in _all_output_text(tmp_path / "out")


def test_when_every_record_fails_deidentification_nothing_is_written(tmp_path, key_file, scrubber) -> None:
    src = tmp_path / "r.json"
    src.write_text(json.dumps(_records()))
    leaky = _LeakyScrubber(scrubber, PEOPLE[0]["name"], ("",))
    with pytest.raises(RecordImportError, match="no usable records"):
        run_import(ImportConfig(input=src, output=tmp_path / "out", key_file=key_file), scrubber=leaky)
    assert not (tmp_path / "out" / "train.jsonl").exists()
