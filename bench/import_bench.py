"""`triage dataset import` on a generated file of curated triage records (default 10,000).

Records follow the source design's template with identity columns, planted identifiers in every
free-text field (the record's own name, MRN, phone, e-mail, address, birth date, and a clinician's
name) and a share of bad rows (malformed JSON, a missing field, a priority no map lists).
Prints the import's counts and phase timings, checks that no planted identifier reached any output
file, and the ratio of the import's record phase to the bare workload measured in the same run:
the same free texts through `TextScrubber.scrub_many` alone.

    .venv/bin/python bench/import_bench.py [--records 10000] [--format jsonl|csv|json] [--keep DIR]
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIVEN = "Margaret Desmond Priya Tobias Ingrid Kwame Lucia Anders Farah Mateo Yuki Olamide Sven Rosalind Ewan".split()
FAMILY = ("Okonkwo Abernathy Raghunathan Lindqvist Castellanos Oyelaran Whitcombe Haverford Nakashima "
          "Brannigan Delacroix Ferreira Gallagher Ishikawa Kowalczyk").split()
CITIES = "Framingham Marlborough Brookline Worcester Lowell Quincy Newton Somerville Waltham Medford".split()
STREETS = "Larchmont Terrace|Quarry Hill Road|Beacon Street|Elm Court|Harbor View Lane|Prospect Avenue".split("|")
HISTORY = ["Hypertension and type 2 diabetes, no known allergies.", "Asthma since childhood, uses an albuterol inhaler.",
           "COPD on home oxygen. Penicillin allergy.", "No significant past medical history.",
           "Atrial fibrillation on apixaban; prior stroke in 2019.", "Chronic kidney disease stage 3, gout.",
           "Pregnant, 32 weeks, gestational diabetes.", "Depression on sertraline; lives alone."]
SYMPTOMS = ["Complains of chest pain and shortness of breath.", "Fever of 39.4 and productive cough for three days.",
            "Twisted ankle playing football, able to bear weight with pain.", "Sudden severe headache, worst of life.",
            "Vomiting and diarrhoea since yesterday, tolerating small sips.", "Sore throat and runny nose for two days.",
            "Left-sided weakness and slurred speech starting an hour ago.", "Rash on both arms after a new detergent."]
REPORTS = ["Possible angina. Recommend urgent cardiology consult and ECG.",
           "Likely community-acquired pneumonia. Obtain chest x-ray. Start antibiotics.",
           "Ankle sprain; unlikely fracture. Recommend rest, ice and elevation.",
           "Possible subarachnoid haemorrhage. Urgent CT head.",
           "Viral gastroenteritis. Encourage oral fluids. Return if unable to keep fluids down.",
           "Upper respiratory tract infection. Advise rest and fluids.",
           "Suspected acute stroke. Activate stroke team. CT head now.",
           "Contact dermatitis. Recommend antihistamine and avoid the detergent."]
PRIORITIES = ["High", "Medium", "Low", "urgent", "routine", "ESI 2", "ESI-3", "KTAS 4", "CTAS 1", "5"]


def person(rng: random.Random, i: int) -> dict[str, str]:
    g, f = rng.choice(GIVEN), rng.choice(FAMILY)
    return {
        "id": f"P{100000 + i}", "name": f"{g} {f}", "mrn": f"{rng.randrange(10**6, 10**7)}",
        "birth_date": f"{rng.randrange(1930, 2015)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
        "phone": f"({rng.randrange(201, 990)}) 555-{rng.randrange(100, 10000):04d}",
        "email": f"{g.lower()}.{f.lower()}{i}@example.org", "address": f"{rng.randrange(1, 999)} {rng.choice(STREETS)}",
        "city": rng.choice(CITIES), "zip": f"0{rng.randrange(1000, 2800)}",
    }


def generate(n: int, seed: int = 7) -> tuple[list[dict[str, str] | str], int]:
    """`n` rows (dicts, or a raw malformed line) over n/3 patients; returns rows and the bad count."""
    rng = random.Random(seed)
    people = [person(rng, i) for i in range(max(1, n // 3))]
    rows: list[dict[str, str] | str] = []
    bad = 0
    for i in range(n):
        p = rng.choice(people)
        k = rng.randrange(len(SYMPTOMS))
        rec = {
            **p,
            "history": f"{p['name']} (MRN {p['mrn']}, born {p['birth_date']}) of {p['address']}, {p['city']}. "
                       + rng.choice(HISTORY),
            "symptoms": f"{p['name'].split()[0]} says: {SYMPTOMS[k]} Call back on {p['phone']} or {p['email']}.",
            "diagnosis_report": REPORTS[k] + f" Discussed with Dr. {rng.choice(GIVEN)} {rng.choice(FAMILY)}.",
            "triage_priority": rng.choice(PRIORITIES),
        }
        roll = rng.random()
        if roll < 0.005:
            rows.append("{malformed")
            bad += 1
            continue
        if roll < 0.01:
            rec.pop("symptoms")
            bad += 1
        elif roll < 0.015:
            rec["triage_priority"] = "Hgh"
            bad += 1
        rows.append(rec)
    return rows, bad


def write(rows: list[dict[str, str] | str], path: Path, fmt: str) -> None:
    if fmt == "jsonl":
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps([r for r in rows if not isinstance(r, str)], indent=1))
    else:
        fields = ["id", "name", "mrn", "birth_date", "phone", "email", "address", "city", "zip",
                  "history", "symptoms", "diagnosis_report", "triage_priority"]
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            for r in rows:
                if not isinstance(r, str):
                    w.writerow({k: r.get(k, "") for k in fields})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--format", choices=("jsonl", "json", "csv"), default="jsonl")
    ap.add_argument("--keep", type=Path, default=None, help="write the input and dataset here (else a temporary folder)")
    args = ap.parse_args()

    from model.dataset import make_scrubber
    from model.dataset_import import ImportConfig, run_import

    work = args.keep or Path(tempfile.mkdtemp(prefix="import-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, bad = generate(args.records)
    src = work / f"records.{args.format}"
    write(rows, src, args.format)
    key = work / "bench.key"
    key.write_text("5e" * 32 + "\n")
    print(f"input: {src.name}, {args.records} rows ({bad} planted bad), {src.stat().st_size / 1e6:.1f} MB")

    t = time.monotonic()
    scrubber = make_scrubber()
    print(f"scrubber start-up: {time.monotonic() - t:.1f} s")

    # Baseline: the free texts alone through the scrubber, batches of 64 records' texts.
    texts = [r[f] for r in rows if not isinstance(r, str) for f in ("history", "symptoms", "diagnosis_report") if f in r]
    t = time.monotonic()
    for i in range(0, len(texts), 192):
        scrubber.scrub_many(texts[i:i + 192])
    bare = time.monotonic() - t
    print(f"baseline (scrub_many over the {len(texts)} free texts, no import): {bare:.1f} s")

    out = work / "dataset"
    result = run_import(ImportConfig(input=src, output=out, key_file=key, overwrite=True), scrubber=scrubber)
    c = result.counts
    print(f"import: {result.elapsed_s:.1f} s total; " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))
    print(f"  records read {c['records']}, skipped {c['bad_lines']} {c['bad_lines_by_reason']}, dropped {c['dropped']}")
    print(f"  examples {c['examples']} {c['examples_per_split']}, patients {c['patients']} {c['patients_per_split']}")
    print(f"  acuity {c['labels']['by_acuity']}; leak check {result.manifest['leak_check']['output_hits']} hits in "
          f"{result.manifest['leak_check']['files_scanned']} files, {result.manifest['leak_check']['identifiers_searched']} identifiers")
    print(f"  records per second (record phase): {c['encounters'] / result.timings['records']:.1f}")
    print(f"ratio record phase / baseline: {result.timings['records'] / bare:.2f}")

    # Independent check: no planted value in any output file (raw text and JSON decoded), one
    # Aho-Corasick pass per file (16,000 values x 20 MB by substring search would take hours).
    print(f"planted identifiers found in output files: {planted_hits(rows, out)}")


def planted_hits(rows: list[dict[str, str] | str], out: Path) -> int:
    import ahocorasick

    auto = ahocorasick.Automaton()
    for r in rows:
        if not isinstance(r, str):
            for k in ("name", "mrn", "phone", "email", "address"):
                auto.add_word(r[k].casefold(), r[k])
    auto.make_automaton()
    found: set[str] = set()
    for p in out.rglob("*"):
        if p.is_file() and p.suffix != ".parquet":
            text = p.read_text(encoding="utf-8").casefold()
            if p.suffix == ".jsonl":
                text += "\n".join(json.dumps(json.loads(x), ensure_ascii=False) for x in text.splitlines()).casefold()
            found.update(v for _, v in auto.iter(text))
    return len(found)
