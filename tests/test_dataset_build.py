"""`triage dataset build` on the 10-patient Synthea Bulk export (with clinical notes).

The session fixture builds the whole export once (about 15 s on this shared 2-core machine, 5 s of
it the scrubber's start-up) and every test reuses it.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import DATA, ROOT
from model import dataset as ds
from model.cli import dataset as dataset_group
from model.dataset import BuildConfig, LeakScanner, assign_splits, build, scan_outputs, split_quotas
from model.report import TriageReport

EXPORT = DATA / "fhir" / "bulk-export-synthea-10"
CAP: int | None = None  # every encounter of every patient
SPLIT = (0.5, 0.25, 0.25)


@pytest.fixture(scope="session")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "steward.key"
    path.write_text("9f" * 32 + "\n")
    return path


def _config(out: Path, key: Path, **kw) -> BuildConfig:
    return BuildConfig(input=EXPORT, output=out, key_file=key, max_encounters=CAP, split=SPLIT, progress=False, **kw)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, key_file: Path) -> ds.BuildResult:
    out = tmp_path_factory.mktemp("build") / "out"
    return build(_config(out, key_file))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _input_identifiers() -> set[str]:
    """Every identifier string of the input, gathered independently of `deidentify.leaks`."""
    out: set[str] = set()
    for name in ("Patient", "Practitioner", "Organization", "Location"):
        for line in (EXPORT / f"{name}.000.ndjson").read_text().splitlines():
            r = json.loads(line)
            if name == "Patient":
                out.add(r["id"])
                b = date.fromisoformat(r["birthDate"])
                out |= {r["birthDate"], f"{b.month}/{b.day}/{b.year}", f"{b.month:02d}/{b.day:02d}/{b.year}"}
            for n in r.get("name") or []:
                if isinstance(n, str):
                    out.add(n)
                    continue
                out |= set(n.get("given") or [])
                if n.get("family"):
                    out.add(n["family"])
                    out |= {f"{g} {n['family']}" for g in n.get("given") or []}
            addresses = r.get("address") or []
            for a in [addresses] if isinstance(addresses, dict) else addresses:
                out |= set(a.get("line") or [])
                if a.get("city"):
                    out.add(a["city"])
            for t in r.get("telecom") or []:
                out.add(t["value"])
                digits = re.sub(r"\D", "", t["value"])
                if len(digits) >= 7:
                    out.add(digits)
            out |= {i["value"] for i in r.get("identifier") or [] if i.get("value")}
    return {s for s in out if len(s) >= 4}


def _decoded_texts(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [json.dumps(pq.read_table(path).to_pylist(), ensure_ascii=False)]
    text = path.read_text(encoding="utf-8")
    texts = [text]
    if path.suffix == ".jsonl":
        texts += [json.dumps(json.loads(line), ensure_ascii=False) for line in text.splitlines()]
        texts += [str(json.loads(line)) for line in text.splitlines()]
    return texts


def test_build_succeeds_with_examples_and_card(built: ds.BuildResult) -> None:
    out = built.output
    c = built.counts
    assert c["patients"] == 13 and c["encounters"] == 1215
    assert c["encounters_over_cap"] == 1215 - sum(min(n, CAP or n) for n in _encounters_per_patient().values())
    assert c["examples"] > 100
    assert sum(c["examples_per_split"].values()) == c["examples"]
    assert all(n > 0 for n in c["examples_per_split"].values())
    # labels: the record's (Synthea: only the encounter class, EMER -> 2), else the ESI rules; every
    # target valid under the serving TriageReport (the default target schema)
    labels = c["labels"]
    assert labels["unlabelled"] == 0 and set(labels["by_source"]) <= {"record", "rules"}
    assert sum(labels["by_acuity"].values()) == c["examples"] == sum(labels["by_source"].values())
    rows = [json.loads(line) for s in ds.SPLITS for line in (out / f"{s}.jsonl").read_text().splitlines()]
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["developer", "user", "assistant"]
        report = TriageReport.model_validate_json(row["messages"][-1]["content"])
        assert report.acuity == row["acuity"]
        assert report.differential and report.red_flags == [] and report.questions_to_ask == []
    record = [r for r in rows if r["label_source"] == "record"]
    assert record and all(r["label_detail"] == "encounter.class" and r["acuity"] == 2 for r in record)
    ruled = [r for r in rows if r["label_source"] == "rules"]
    assert ruled and all(r["label_detail"] == "model.rules.score_record" for r in ruled)
    # balance: one patient no longer holds most of the set
    assert c["balance"]["largest_patient_examples"] <= ds.DEFAULT_MAX_PER_PATIENT
    assert max(Counter(r["patient"] for r in rows).values()) == c["balance"]["largest_patient_examples"]
    # the card: HF YAML header with configs, the key's fingerprint, never the key
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "configs:" in card and "config_name: default" in card
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["deidentification"]["key_fingerprint"] in card
    assert "9f9f9f9f" not in "".join(_files(out).keys()) + card + json.dumps(manifest)
    assert {f["path"] for f in manifest["inputs"]} >= {"Patient.000.ndjson", "DocumentReference.000.ndjson"}
    assert all(len(f["sha256"]) == 64 for f in manifest["inputs"])
    audit = json.loads((out / "audit.json").read_text())
    assert audit["removed_by_resource_type"]["Patient"]["NAME"] > 0
    assert audit["removed_by_resource_type"]["DocumentReference/Encounter text"]
    assert manifest["leak_check"]["passed"] and manifest["leak_check"]["output_hits"] == 0
    assert not (out / ".work").exists()


def _encounters_per_patient() -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in (EXPORT / "Encounter.000.ndjson").read_text().splitlines():
        ref = json.loads(line)["subject"]["reference"]
        counts[ref] = counts.get(ref, 0) + 1
    return counts


def test_no_input_identifier_in_any_output_file(built: ds.BuildResult) -> None:
    identifiers = _input_identifiers()
    assert len(identifiers) > 300  # names, addresses, cities, phones, ids, birth dates
    lowered = sorted({s.lower() for s in identifiers})
    files = [p for p in built.output.rglob("*") if p.is_file()]
    assert len(files) >= 12
    for path in files:
        for text in _decoded_texts(path):
            low = text.lower()
            for ident in (s for s in lowered if s in low):  # substring first, then alnum boundaries
                hit = re.search(rf"(?<![0-9a-z]){re.escape(ident)}(?![0-9a-z])", low)
                assert hit is None, f"{path.name}: an input identifier is present"


def test_splits_disjoint_by_patient_and_deterministic(built: ds.BuildResult) -> None:
    patients: dict[str, set[str]] = {}
    rows_by_split = {s: [json.loads(line) for line in (built.output / f"{s}.jsonl").read_text().splitlines()]
                     for s in ds.SPLITS}
    expected = assign_splits({r["patient"] for rows in rows_by_split.values() for r in rows}, 13, SPLIT)
    for s, rows in rows_by_split.items():
        patients[s] = {r["patient"] for r in rows}
        assert patients[s] and all(expected[p] == s for p in patients[s])
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids))
    assert not patients["train"] & patients["validation"]
    assert not patients["train"] & patients["test"]
    assert not patients["validation"] & patients["test"]


def test_outputs_load_with_datasets(built: ds.BuildResult, tmp_path: Path) -> None:
    from datasets import load_dataset

    out = built.output
    files = {s: str(out / f"{s}.jsonl") for s in ds.SPLITS}
    chat = load_dataset("json", data_files=files, cache_dir=str(tmp_path / "hf"))
    par = load_dataset("parquet", data_files={s: str(out / f"{s}.parquet") for s in ds.SPLITS}, cache_dir=str(tmp_path / "hf"))
    seed = load_dataset("json", data_files={s: str(out / "seed" / f"{s}.jsonl") for s in ds.SPLITS}, cache_dir=str(tmp_path / "hf"))
    for s, n in built.counts["examples_per_split"].items():
        assert chat[s].num_rows == n == par[s].num_rows == seed[s].num_rows
    assert chat["train"][0]["messages"][-1]["role"] == "assistant"
    assert par["train"][0]["messages"][1]["content"] == chat["train"][0]["messages"][1]["content"]
    text = seed["train"][0]["text"]
    assert text.startswith("###Human:") and "###Assistant:" in text


@pytest.mark.slow
def test_second_build_with_workers_is_byte_identical(built: ds.BuildResult, key_file: Path, tmp_path: Path) -> None:
    again = build(_config(tmp_path / "again", key_file, workers=2))
    assert _files(again.output) == _files(built.output)


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_files(built: ds.BuildResult, key_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-c", "from cds_hooks.cli import main; main()", "dataset", "build", "--input", str(EXPORT),
           "--output", str(out), "--key-file", str(key_file), "--split", ",".join(map(str, SPLIT)), "--quiet"]
    if CAP:
        cmd += ["--max-encounters", str(CAP)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = out / ".work" / "shards"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and len(list(shards.glob("*.json"))) < 2:
            time.sleep(0.05)
        done = len(list(shards.glob("*.json")))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert 2 <= done < 13, "the build was not interrupted half-way"
    assert not (out / "train.jsonl").exists()
    # without --resume the half-built folder is refused
    res = CliRunner().invoke(dataset_group, cmd[cmd.index("build"):])
    assert res.exit_code == 1 and "--resume" in res.output
    resumed = build(_config(out, key_file, resume=True))
    assert resumed.counts["built_now"] <= 13 - 2
    assert _files(out) == _files(built.output)


def test_corrupted_line_reported_and_skipped(tmp_path: Path, key_file: Path) -> None:
    src = tmp_path / "export"
    shutil.copytree(EXPORT, src)
    cond = src / "Condition.000.ndjson"
    lines = cond.read_text().splitlines()
    lines[2] = lines[2][:40]  # truncated JSON
    cond.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(dataset_group, ["build", "--input", str(src), "--output", str(out), "--key-file", str(key_file),
                                             "--max-encounters", "2", "--format", "chat", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "skipped Condition.000.ndjson line 3: invalid JSON" in res.output
    assert re.search(r"bad lines\s+1", res.output)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["bad_lines"] == [{"file": "Condition.000.ndjson", "line": 3, "reason": "invalid JSON"}]
    assert manifest["counts"]["examples"] > 0  # the rest of the build went on
    assert not (out / "train.parquet").exists() and not (out / "seed").exists()


def test_cli_errors_are_one_line(tmp_path: Path, key_file: Path) -> None:
    runner = CliRunner()
    base = ["build", "--input", str(EXPORT), "--output", str(tmp_path / "o")]
    res = runner.invoke(dataset_group, base + ["--key-file", str(tmp_path / "missing.key")])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "pseudonym key" in res.output
    short = tmp_path / "short.key"
    short.write_text("abc")
    res = runner.invoke(dataset_group, base + ["--key-file", str(short)])
    assert res.exit_code == 1 and "too short" in res.output and "abc" not in res.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    res = runner.invoke(dataset_group, ["build", "--input", str(EXPORT), "--output", str(tmp_path / "full"), "--key-file", str(key_file)])
    assert res.exit_code == 1 and "not empty" in res.output and "--overwrite" in res.output
    res = runner.invoke(dataset_group, ["build", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o2"), "--key-file", str(key_file)])
    assert res.exit_code == 1 and "does not exist" in res.output
    res = runner.invoke(dataset_group, base + ["--key-file", str(key_file), "--split", "0.5,0.5,0.5"])
    assert res.exit_code == 1 and "add up to 1" in res.output
    for r in (res,):
        assert "Traceback" not in r.output


class _LeakyScrubber:
    """A scrubber that fails the way scrubbers fail: it lets another patient's name through."""

    def __init__(self, inner, planted: str) -> None:
        self.inner, self.planted = inner, planted

    def scrub_many(self, texts, **kw):
        import dataclasses

        return [dataclasses.replace(r, text=f"{r.text} seen with {self.planted}")
                for r in self.inner.scrub_many(texts, **kw)]


def _other_patient_name() -> str:
    first = json.loads((EXPORT / "Patient.000.ndjson").read_text().splitlines()[-1])
    n = first["name"][0]
    return f"{n['given'][0]} {n['family']}"


def test_prewrite_leak_check_drops_and_counts(tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    planted = _other_patient_name()
    real = ds.make_scrubber
    monkeypatch.setattr(ds, "make_scrubber", lambda: _LeakyScrubber(real(), planted))
    result = build(BuildConfig(input=EXPORT, output=tmp_path / "o", key_file=key_file, max_encounters=3, progress=False,
                               formats=("chat",)))
    c = result.counts
    assert c["dropped"].get("leak_check", 0) > 0
    assert result.manifest["leak_check"]["dropped_by_identifier_type"].get("NAME", 0) > 0
    assert result.manifest["leak_check"]["passed"]
    # the planted patient's own examples are dropped inside deidentify (own identity), the rest here
    for p in (tmp_path / "o").rglob("*"):
        if p.is_file():
            assert planted.lower() not in p.read_text(errors="replace").lower()
    captured = capsys.readouterr()
    assert planted not in captured.out + captured.err


def test_leak_in_output_fails_the_build(tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planted = _other_patient_name()
    real_scrubber, real_init = ds.make_scrubber, ds._init_worker

    class _Blind:
        size = 0

        def find_parts(self, parts):
            from collections import Counter

            return Counter()

    def init(cfg, identifiers):  # pre-write check switched off: only the output scan is left
        real_init(cfg, identifiers)
        ds._STATE.scanner = _Blind()

    monkeypatch.setattr(ds, "make_scrubber", lambda: _LeakyScrubber(real_scrubber(), planted))
    monkeypatch.setattr(ds, "_init_worker", init)
    res = CliRunner().invoke(dataset_group, ["build", "--input", str(EXPORT), "--output", str(tmp_path / "o"),
                                             "--key-file", str(key_file), "--max-encounters", "2", "--format", "chat", "--quiet"])
    assert res.exit_code == 3
    assert "leak check FAILED" in res.output and "NAME=" in res.output
    assert planted not in res.output


def test_leak_scanner_matches_identifier_set_semantics() -> None:
    from deidentify.leaks import IdentifierSet

    ids = IdentifierSet()
    ids.add("NAME", "Willena258 Kuhn96")
    ids.add("NAME", "Willena258")
    ids.add("PHONE", "555-201-7788")
    ids.add("IDENTIFIER", "999-94-5397")
    ids.add("BIRTH_DATE", "1987-11-19")
    scanner = LeakScanner(ids)
    for text in ["seen by Willena today", "call (555) 201 7788", "SSN 999-94-5397.", "born November 19, 1987",
                 "willena  kuhn again", "WILLENA258"]:
        assert scanner.find(text) == ids.find(text) and scanner.find(text), text
    for text in ["started Willenaish", "5552017788123", "x999-94-5397", "ordinary note"]:
        assert scanner.find(text) == ids.find(text), text


def test_scan_outputs_reads_decoded_json(tmp_path: Path) -> None:
    from deidentify.leaks import IdentifierSet

    ids = IdentifierSet()
    ids.add("NAME", "Marine542")
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"t": "line one\nMarine542 said"}) + "\n")  # "\nMarine542" is "\\nMarine542" raw
    assert scan_outputs([p], LeakScanner(ids)) == {"NAME": 1}


@pytest.fixture(scope="module")
def scrubber():
    return ds.make_scrubber()


def test_memo_and_history_slices_give_the_reference_examples(key_file: Path, scrubber, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path (texts scrubbed once per patient, history de-identified once and sliced) gives
    the same examples as de-identifying every example's whole record with the plain scrubber."""
    from deidentify.leaks import IdentifierSet
    from fhir_adapter.bulk import iter_patients

    cfg = BuildConfig(input=EXPORT, output=Path("unused"), key_file=key_file, max_encounters=30, progress=False)
    patients = list(iter_patients(EXPORT, types=()))[:5]
    fast_state = ds.make_worker(cfg, IdentifierSet(), scrubber=scrubber)
    fast = [ds.patient_shard(p.raw, p.shared_raw, fast_state) for p in patients]
    planned = [ds.patient_free_texts(p.raw, p.shared_raw, fast_state)[0] for p in patients]
    assert fast_state.memo.misses == 0  # everything scrubbed was planned: the bench's bare workload is exact
    assert fast_state.memo.texts == sum(map(len, planned)) == sum(s["stats"]["free_texts_scrubbed"] for s in fast)

    class Plain:  # no memo: every call scrubs every text it is given
        def __init__(self) -> None:
            self.texts = 0

        def scrub_many(self, texts, **kw):
            self.texts += len(texts)
            return scrubber.scrub_many(texts, **kw)

    plain = Plain()
    ref_state = ds.make_worker(cfg, IdentifierSet(), scrubber=plain)
    ref_state.deid.scrubber = plain
    ref_state.memo = _NoMemo(plain)  # type: ignore[assignment]
    monkeypatch.setattr(ds, "SLICE_HISTORY", False)
    reference = [ds.patient_shard(p.raw, p.shared_raw, ref_state) for p in patients]
    assert sum(len(s["examples"]) for s in fast) > 20
    for a, b in zip(fast, reference):
        assert a["examples"] == b["examples"]
        assert a["stats"]["dropped"] == b["stats"]["dropped"]
    assert plain.texts > fast_state.memo.texts  # the reference path re-scrubs the shared texts


class _NoMemo:
    """`MemoScrubber`'s planning interface over a plain scrubber (collect works, prime does nothing)."""

    def __init__(self, inner) -> None:
        self._m = ds.MemoScrubber(inner)

    def collect(self, deid, record):
        real, deid.scrubber = deid.scrubber, self._m
        try:
            return self._m.collect(deid, record)
        finally:
            deid.scrubber = real

    def prime(self, *a) -> None:
        pass

    def reset(self) -> None:
        pass


def test_split_quotas_give_every_nonzero_split_a_patient() -> None:
    for ratios in [(0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (0.9, 0.1, 0.0), (1.0, 0.0, 0.0), (0.34, 0.33, 0.33)]:
        wanted = [i for i, r in enumerate(ratios) if r > 0]
        for n in range(40):
            q = split_quotas(n, ratios)
            assert sum(q) == n and min(q) >= 0
            assert all(q[i] == 0 for i, r in enumerate(ratios) if r == 0)
            if n >= len(wanted):
                assert all(q[i] >= 1 for i in wanted), (n, ratios, q)
            if all(ratios[i] * n >= 1 for i in wanted):
                assert all(abs(q[i] - ratios[i] * n) < 1 for i in range(3)), (n, ratios, q)


def test_assign_splits_small_export_has_a_test_split() -> None:
    patients = [f"p{i:02d}" for i in range(13)]
    a = assign_splits(patients, 13, (0.8, 0.1, 0.1))
    assert a == assign_splits(list(reversed(patients)), 13, (0.8, 0.1, 0.1))  # order-free, deterministic
    assert sorted(a) == patients and set(a.values()) == set(ds.SPLITS)
    assert sum(v == "train" for v in a.values()) == 11
    others = [assign_splits(patients, seed, (0.8, 0.1, 0.1)) for seed in range(1, 6)]
    assert any(o != a for o in others)  # the seed decides who goes where


def _reference_condition_lines(record) -> list[str]:
    """model.prompts._conditions as it was before lines were formatted lazily (every row formatted,
    then the formatted rows sorted)."""
    from model import prompts as pr

    rows = []
    for c in record.conditions:
        if c.verification_status in pr._EXCLUDED_VERIFICATION:
            continue
        name = pr._concept(c.codings, c.text)
        status = c.clinical_status or "status unknown"
        onset = c.onset or c.recorded
        when = f"onset {pr.relative_time(onset, record.as_of)}" if onset else "onset unknown"
        inactive = status not in ("active", "recurrence", "relapse", "status unknown")
        key = (inactive, -pr._aware(onset).timestamp() if onset else float("inf"), name.lower(), status)
        rows.append((key, f"- {name} ({status}; {when})"))
    rows.sort()
    lines = [line for _, line in rows[: pr.MAX_CONDITIONS]]
    if len(rows) > pr.MAX_CONDITIONS:
        lines.append(f"- and {len(rows) - pr.MAX_CONDITIONS} more")
    return lines


def test_condition_lines_match_the_reference_order_and_cache_per_record() -> None:
    import dataclasses
    import random
    from datetime import datetime, timedelta, timezone

    from deidentify.record import _mint
    from fhir_adapter.record import Coding, ConditionEntry
    from model import prompts as pr

    as_of = datetime(2031, 6, 15, tzinfo=timezone.utc)
    rng = random.Random(5)
    names = ["Asthma", "asthma", "ASTHMA", "Otitis media", "Sinusitis", "Fracture of wrist", "Anemia"]
    conds = []
    for i in range(45):  # more than MAX_CONDITIONS, with ties in status, onset and case-folded name
        onset = None if i % 7 == 0 else as_of - timedelta(days=rng.choice([3, 40, 400, 4000]))
        conds.append(ConditionEntry((Coding("s", str(i), rng.choice(names)),), None,
                                    rng.choice(["active", "resolved", None]), "confirmed", onset, None))
    record = _mint(pseudonym="pt", age_years=40, age_days=None, sex="female", as_of=as_of, conditions=tuple(conds))
    expected = _reference_condition_lines(record)
    assert len(expected) == pr.MAX_CONDITIONS + 1
    assert pr._conditions(record) == expected
    assert pr._conditions(record) == expected  # from the one-record cache
    # Same conditions tuple, another as_of: the cache must not answer.
    later = dataclasses.replace(record, as_of=as_of + timedelta(days=800))
    assert pr._conditions(later) == _reference_condition_lines(later) != expected
    shuffled = dataclasses.replace(record, conditions=tuple(rng.sample(conds, len(conds))))
    assert pr._conditions(shuffled) == _reference_condition_lines(shuffled)
    assert pr.developer_instructions() is pr.developer_instructions()


def test_find_parts_is_find_on_the_joined_text_and_scan_reads_every_file(tmp_path: Path) -> None:
    from deidentify.leaks import IdentifierSet

    ids = IdentifierSet()
    ids.add("NAME", "Willena258 Kuhn96")
    ids.add("PHONE", "555-201-7788")
    scanner = LeakScanner(ids)
    long = "routine visit, nothing of note. " * 4  # long enough to be remembered
    cases = [
        [long, "seen by Willena258", "Kuhn96 again"],  # a name split across two parts (newline between)
        [long, "call 555", "201", "7788"],  # digits of a phone across parts
        ["7788 then", long, "555 201"],  # the same digits out of order: no phone
        [long, "", "nothing"],
    ]
    for parts in cases * 2:  # the second round answers from the memo
        joined = "\n".join(parts)
        assert scanner.find_parts(parts) == ids.find(joined) == scanner.find(joined), parts
    assert scanner.find_parts(cases[0]) and scanner.find_parts(cases[1]) and not scanner.find_parts(cases[2])
    # Chat JSONL, Parquet and seed copies of one split are read in step; a hit in any one counts.
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": long + ("Willena258 Kuhn96" if i == 7 else "")}]}
            for i in range(10)]
    (tmp_path / "seed").mkdir()
    chat, seed = tmp_path / "train.jsonl", tmp_path / "seed" / "train.jsonl"
    chat.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seed.write_text("".join(json.dumps({"id": r["id"], "text": "x"}) + "\n" for r in rows[:3]) + "call 555 201 7788\n")
    # A decoded line is searched once (its strings); a line that does not decode, raw.
    assert scan_outputs([chat, seed], LeakScanner(ids)) == {"NAME": 1, "PHONE": 1}
    other = tmp_path / "test.jsonl"
    other.write_text(json.dumps({"t": "Willena258\nKuhn96"}) + "\n")  # only the decoded text has the name
    assert scan_outputs([chat, other, seed], LeakScanner(ids)) == {"NAME": 2, "PHONE": 1}
    # Escapes do not hide a name from the search: a quote inside it, non-ASCII, a tab next to it.
    ids.add("NAME", 'Jo "Bo" Kuhn96')
    tricky = tmp_path / "validation.jsonl"
    tricky.write_text("".join(json.dumps(r, ensure_ascii=a) + "\n" for r, a in [
        ({"t": 'seen: Jo "Bo" Kuhn96.'}, False), ({"t": "Zoë\tWillena258 Kuhn96\x01"}, True)]))
    assert scan_outputs([tricky], LeakScanner(ids)) == {"NAME": 2}


def test_build_freezes_the_loaded_models_only_while_it_runs(tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    seen: list[int] = []
    real = ds.patient_shard

    def shard(raw, shared, state):
        seen.append(gc.get_freeze_count())
        return real(raw, shared, state)

    monkeypatch.setattr(ds, "patient_shard", shard)
    assert gc.get_freeze_count() == 0
    build(_config(tmp_path / "o", key_file))
    assert seen and min(seen) > 0  # the scrubber's objects are out of the collector's way per patient
    assert gc.get_freeze_count() == 0  # and handed back afterwards
