"""Dataset build benchmark: the 10-patient Synthea export replicated to 10, 100, 1,000 patients.

For each size: the build runs as a subprocess (`triage dataset build`), its peak resident memory
(the process and its workers, sampled with psutil) and wall time are recorded; then, in this
process, bare de-identification (`TextScrubber.scrub_many`, warmed up) runs over the same note
sections the build scrubs, and the ratio gives the pipeline's overhead.

Goals (issue 5): linear time, flat memory (within 20% from 100 to 1,000 patients), pipeline
overhead <= 25% over de-identification.

    .venv/bin/python bench/dataset_bench.py --sizes 10,100,1000 --max-encounters 3
"""
from __future__ import annotations

import argparse
import json
import re
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EXPORT = ROOT.parent / "shared" / "data" / "fhir" / "bulk-export-synthea-10"
SHARED_FILES = ("Practitioner", "PractitionerRole", "Organization", "Location")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
NS = uuid.UUID("6f1c2a52-3f4e-4b8e-9d0a-5b7c1e2d3f40")


def replicate(src: Path, dst: Path, copies: int) -> int:
    """`copies` copies of every patient, each patient-scoped UUID re-keyed; shared resources once."""
    dst.mkdir(parents=True, exist_ok=True)
    keep: set[str] = set()
    for name in SHARED_FILES:
        for f in src.glob(f"{name}.*.ndjson"):
            text = f.read_text()
            keep |= set(_UUID.findall(text))
            (dst / f.name).write_text(text)
    patients = 0
    for f in sorted(src.glob("*.ndjson")):
        kind = f.name.split(".")[0]
        if kind in SHARED_FILES or kind == "log":
            continue
        lines = f.read_text().splitlines()
        with open(dst / f.name, "w") as out:
            for i in range(copies):
                def rekey(m: re.Match[str], i: int = i) -> str:
                    old = m.group(0)
                    return old if i == 0 or old in keep else str(uuid.uuid5(NS, f"{i}:{old}"))

                for line in lines:
                    out.write(_UUID.sub(rekey, line) + "\n")
                if kind == "Patient":
                    patients += len(lines)
    return patients


def scrub_texts(export: Path, max_encounters: int | None) -> list[list[str]]:
    """Per patient, the note sections the build scrubs (presenting complaint, assessment and plan)."""
    from fhir_adapter.bulk import iter_patients
    from model.dataset import _ref_id, decode_note, note_sections

    out: list[list[str]] = []
    for p in iter_patients(export, types=()):
        encs = sorted((r for r in p.raw if r.get("resourceType") == "Encounter"),
                      key=lambda r: ((r.get("period") or {}).get("start") or "", r["id"]))[:max_encounters]
        wanted = {e["id"] for e in encs}
        dx = {_ref_id(r.get("encounter"), "Encounter") for r in p.raw if r.get("resourceType") == "Condition"}
        wanted = {e["id"] for e in encs if e["id"] in dx or e.get("reasonCode")}
        texts: list[str] = []
        for r in p.raw:
            if r.get("resourceType") != "DocumentReference":
                continue
            eids = {_ref_id(x, "Encounter") for x in (r.get("context") or {}).get("encounter") or []}
            if eids & wanted:
                s = note_sections(decode_note(r) or "")
                texts += [t for t in (s.get("chief complaint", "") + "\n" + s.get("history of present illness", ""),
                                      s.get("assessment and plan", "")) if t.strip()]
        out.append(texts)
    return out


def run_build(export: Path, out: Path, key: Path, max_encounters: int | None, workers: int) -> dict:
    cmd = [sys.executable, "-c", "from cds_hooks.cli import main; main()", "dataset", "build", "--input", str(export),
           "--output", str(out), "--key-file", str(key), "--quiet", "--workers", str(workers)]
    if max_encounters:
        cmd += ["--max-encounters", str(max_encounters)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.monotonic() - t0
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}): {stderr.strip().splitlines()[-1:]}")
    m = re.search(r"time\s+([\d.]+) s", stdout)
    manifest = json.loads((out / "manifest.json").read_text())
    return {"wall_s": wall, "build_s": float(m.group(1)) if m else wall, "peak_rss_mb": peak / 2**20,
            "examples": manifest["counts"]["examples"], "patients": manifest["counts"]["patients"],
            "encounters_used": manifest["counts"]["encounters"] - manifest["counts"]["encounters_over_cap"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,1000", help="approximate patient counts (13-patient copies)")
    ap.add_argument("--max-encounters", type=int, default=3, help="per patient (0: all)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the replicated exports and outputs")
    args = ap.parse_args()
    cap = args.max_encounters or None
    from deidentify.text import TextScrubber

    base_patients = sum(1 for _ in (EXPORT / "Patient.000.ndjson").open())
    scrubber = TextScrubber()
    scrubber.scrub_many(["warm-up: Jane Doe seen at 10 Main St on 3/4/2020."])
    tmp = Path(tempfile.mkdtemp(prefix="dataset-bench-"))
    key = tmp / "key"
    key.write_text(secrets.token_hex(32))
    print(f"bench: sizes={args.sizes} max_encounters={cap} workers={args.workers} cpus={psutil.cpu_count()} "
          f"(export of {base_patients} patients replicated; first {cap or 'all'} encounters per patient)")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        copies = max(1, round(size / base_patients))
        export = tmp / f"export-{size}"
        patients = replicate(EXPORT, export, copies)
        b = run_build(export, tmp / f"out-{size}", key, cap, args.workers)
        texts = scrub_texts(export, cap)
        t0 = time.monotonic()
        for per_patient in texts:
            scrubber.scrub_many(per_patient)
        deid_s = time.monotonic() - t0
        n_texts = sum(len(t) for t in texts)
        row = {"patients": patients, **b, "deid_s": deid_s, "texts": n_texts}
        row["examples_per_s"] = b["examples"] / b["build_s"]
        row["overhead"] = b["build_s"] / deid_s - 1 if deid_s else float("nan")
        rows.append(row)
        print(f"{patients:>6} patients  {b['encounters_used']:>6} encounters  {b['examples']:>6} examples  "
              f"build {b['build_s']:7.1f} s (wall {b['wall_s']:6.1f})  {row['examples_per_s']:6.1f} ex/s  "
              f"peak RSS {b['peak_rss_mb']:7.1f} MB  bare deid {deid_s:6.1f} s over {n_texts} texts  "
              f"overhead {row['overhead']*100:+.0f}%", flush=True)
    if len(rows) >= 2:
        a, z = rows[-2], rows[-1]
        print(f"memory {a['patients']} -> {z['patients']} patients: {z['peak_rss_mb']/a['peak_rss_mb']*100-100:+.1f}% "
              f"(goal within 20%); time per example {a['build_s']/max(a['examples'],1)*1000:.0f} -> "
              f"{z['build_s']/max(z['examples'],1)*1000:.0f} ms (linear: equal)")
    print(json.dumps(rows, indent=1))
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
