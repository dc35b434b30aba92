"""Dataset build benchmark: the 13-patient Synthea export replicated to ~10, ~100, ~1,000 patients.

Per size, one child process (so each size starts cold and its memory is its own):

1. builds the export (`model.dataset.build`, one worker unless --workers) and records the wall time
   of each phase and the process's peak resident memory (`ru_maxrss`, read right after the build);
2. then, in the same process, times two bare de-identification baselines with one warm
   `TextScrubber` (same class and settings as the build's; its start-up is left out of both sides):
   - the goal's baseline, "de-identification on the same notes": what a steward would run instead,
     `triage deid scrub` (its one-worker path: JSONL in, batches of 64, JSONL out; no known
     identifiers, no date shift) over every DocumentReference text, whole, of the encounters that
     became examples;
   - the build's own free texts: exactly what the build sends to the scrubber, patient by patient,
     with the same known identifiers and date shift (`model.dataset.patient_free_texts`: the
     distinct note sections, encounter types and reasons, history texts). Ratio to this one is
     the pipeline's cost over its own scrubbing, the stricter figure.

ratio = build time / bare time (the scrubber's load, a fixed few seconds, reported apart);
overhead = ratio - 1. With --rounds N each size runs N times (a fresh child each time) and every
figure is the median of the rounds (ratios: the median of the rounds' ratios): these 2-core
machines are shared, and one round's build can take 50% longer than the next. Goals (issue 5): overhead <= 25% against the notes baseline, time linear in
patients, peak memory within 20% from 100 to 1,000 patients.

With --workers N > 1 the build runs N worker processes, and the notes baseline is `triage deid
scrub --workers N`'s path (`deidentify.text.scrub_jsonl`: a fork pool, `_worker_run` on batches of
64 through `imap`) over the same notes, its pool started and warmed before the clock starts, as the
build's start-up (until all its workers are up) is reported apart as "load". The build's own free
texts are still scrubbed bare in one process (that figure is the one-worker one).

    .venv/bin/python bench/dataset_bench.py                      # 10,100,1000, every encounter (~15 min)
    .venv/bin/python bench/dataset_bench.py --sizes 13 --rounds 5    # the 13-patient export, median of 5
    .venv/bin/python bench/dataset_bench.py --max-encounters 3       # capped builds (first 3 per patient)

Without a cap (the build's default) every encounter is an example. With --max-encounters the build
still reads every patient's whole history (which encounters come first, and the known identifiers,
need all of it) while the baseline shrinks to the kept encounters' notes: capped ratios are far
higher and say what a cap costs, not what the pipeline adds.
"""
from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

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


def child(export: Path, out: Path, key: Path, max_encounters: int | None, workers: int) -> None:
    """Build, then bare de-identification of the same texts; one JSON line on stdout."""
    import resource

    from model.dataset import BuildConfig, build, make_worker, patient_free_texts

    cfg = BuildConfig(input=export, output=out, key_file=key, max_encounters=max_encounters, workers=workers,
                      progress=False)
    result = build(cfg)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest worker

    from deidentify.leaks import IdentifierSet
    from deidentify.text import TextScrubber
    from fhir_adapter.bulk import iter_patients

    t = time.monotonic()
    bare = TextScrubber()
    bare.scrub_many(["warm-up: Jane Doe seen at 10 Main St on 3/4/2020."])
    bare_load = time.monotonic() - t
    # The build's own planning (untimed) names the texts; the scrubber in `state` is never called.
    state = make_worker(cfg, IdentifierSet(), scrubber=bare)
    bare_s = 0.0
    n_texts = n_chars = 0
    for p in iter_patients(export, types=()):
        texts, known, shift = patient_free_texts(p.raw, p.shared_raw, state)
        if not texts:
            continue
        n_texts += len(texts)
        n_chars += sum(map(len, texts))
        t = time.monotonic()
        bare.scrub_many(texts, known=known, date_shift_days=shift)
        bare_s += time.monotonic() - t
    notes_s, n_notes, notes_chars = _steward_scrub(export, out, state, bare, workers)
    if result.counts["examples"] and not n_notes:  # a baseline of nothing would flatter nothing
        raise SystemExit("bench: no notes matched the built examples' ids (pseudonym scheme changed?)")
    c = result.counts
    print(json.dumps({
        "patients": c["patients"], "examples": c["examples"], "encounters": c["encounters"] - c["encounters_over_cap"],
        "free_texts_build": c.get("free_texts_scrubbed"), "free_texts_bare": n_texts, "chars": n_chars,
        "elapsed_s": result.elapsed_s, "timings": result.timings, "bare_s": bare_s, "bare_load_s": bare_load,
        "notes_s": notes_s, "notes": n_notes, "notes_chars": notes_chars,
        "peak_rss_mb": peak_kb / 1024, "peak_worker_rss_mb": peak_children_kb / 1024,
    }))


def _steward_scrub(export: Path, out: Path, state, scrubber, workers: int = 1) -> tuple[float, int, int]:
    """The steward's alternative: `triage deid scrub` (JSONL in, JSONL out, batches of 64, no known
    identifiers or date shift) over every DocumentReference text of the encounters that became
    examples, whole notes. Timed like the CLI's path for `workers`, without the scrubber's load."""
    from itertools import islice

    from deidentify.text import _scrub_lines
    from fhir_adapter.bulk import iter_patients
    from model.dataset import SPLITS, _ref_id, _sort_time, decode_note

    built: set[str] = set()
    for s in SPLITS:
        with open(out / f"{s}.jsonl", encoding="utf-8") as fh:
            built.update(json.loads(line)["id"] for line in fh)
    notes_in = out.parent / f"{out.name}-notes.jsonl"
    n = chars = 0
    with open(notes_in, "w", encoding="utf-8") as fh:
        for p in iter_patients(export, types=()):
            ps = state.deid.patient_pseudonym(p.patient_id)  # the build's example ids
            encs = sorted((r for r in p.raw if r.get("resourceType") == "Encounter" and isinstance(r.get("id"), str)),
                          key=lambda r: (_sort_time(r), r["id"]))
            wanted = {e["id"] for i, e in enumerate(encs) if f"{ps}-e{i}" in built}
            for r in p.raw:
                if r.get("resourceType") != "DocumentReference" or r.get("status") == "entered-in-error":
                    continue
                if any(_ref_id(ref, "Encounter") in wanted for ref in (r.get("context") or {}).get("encounter") or []):
                    text = decode_note(r)
                    if text:
                        fh.write(json.dumps({"id": n, "text": text}) + "\n")
                        n += 1
                        chars += len(text)
    if workers > 1:
        return _steward_scrub_pool(notes_in, out.parent / f"{out.name}-notes.out.jsonl", workers), n, chars
    t = time.monotonic()
    with open(notes_in, encoding="utf-8") as fh, open(out.parent / f"{out.name}-notes.out.jsonl", "w", encoding="utf-8") as dst:
        while batch := [(o["id"], o["text"]) for o in map(json.loads, islice(fh, 64))]:
            dst.write("\n".join(_scrub_lines(scrubber, batch)) + "\n")
    return time.monotonic() - t, n, chars


def _pid(_: int) -> int:
    import os

    time.sleep(0.05)
    return os.getpid()


def _steward_scrub_pool(notes_in: Path, notes_out: Path, workers: int) -> float:
    """`scrub_jsonl(..., workers=N)`'s pool path (fork, `_worker_init`, `imap(_worker_run, ...,
    chunksize=1)` over batches of 64), timed once every worker has its scrubber."""
    import multiprocessing as mp
    from itertools import islice

    from deidentify.text import _worker_init, _worker_run

    with mp.get_context("fork").Pool(workers, initializer=_worker_init, initargs=("placeholder",)) as pool:
        for _ in range(5):  # every worker started (the build's "load" is measured the same way)
            if len(set(pool.map(_pid, range(workers), chunksize=1))) == workers:
                break
        t = time.monotonic()
        with open(notes_in, encoding="utf-8") as fh, open(notes_out, "w", encoding="utf-8") as dst:
            def batches():
                while batch := [(o["id"], o["text"]) for o in map(json.loads, islice(fh, 64))]:
                    yield batch

            for lines in pool.imap(_worker_run, batches(), chunksize=1):
                dst.write("\n".join(lines) + "\n")
        return time.monotonic() - t


def run_size(export: Path, out: Path, key: Path, cap: int | None, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(export), str(out), str(key), str(cap or 0), str(workers)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["process_wall_s"] = time.monotonic() - t0
    return row


def _median_row(runs: list[dict]) -> dict:
    """Each number the median of the rounds' (timings too); the rest from the first round."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = statistics.median(r[k] for r in runs)
    out["timings"] = {k: statistics.median(r["timings"].get(k, 0.0) for r in runs) for k in runs[0]["timings"]}
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        export, out, key, cap, workers = sys.argv[2:7]
        child(Path(export), Path(out), Path(key), int(cap) or None, int(workers))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,1000", help="approximate patient counts (copies of 13 patients)")
    ap.add_argument("--max-encounters", type=int, default=0, help="first N encounters per patient (0: all, the default)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1, help="runs per size; figures are medians of the rounds")
    ap.add_argument("--keep", action="store_true", help="keep the replicated exports and outputs")
    args = ap.parse_args()
    cap = args.max_encounters or None
    base_patients = sum(1 for _ in (EXPORT / "Patient.000.ndjson").open())
    tmp = Path(tempfile.mkdtemp(prefix="dataset-bench-"))
    key = tmp / "key"
    key.write_text(secrets.token_hex(32))
    import os

    print(f"bench: sizes={args.sizes} max_encounters={cap or 'all'} workers={args.workers} cpus={os.cpu_count()} "
          f"(the {base_patients}-patient export replicated, ids re-keyed)")
    print("ratio = build s / bare de-identification s, both without the scrubber's load; the goal (<= 1.25) is judged "
          "on `triage deid scrub` of the same notes")
    rows = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            copies = max(1, round(size / base_patients))
            export = tmp / f"export-{size}"
            replicate(EXPORT, export, copies)
            runs = []
            for i in range(max(1, args.rounds)):
                out = tmp / f"out-{size}-{i}"
                r = run_size(export, out, key, cap, args.workers)
                if not args.keep:
                    shutil.rmtree(out, ignore_errors=True)
                r["build_s"] = r["elapsed_s"] - r["timings"].get("load", 0.0)
                r["ratio"] = r["build_s"] / r["bare_s"] if r["bare_s"] else float("nan")
                r["ratio_notes"] = r["build_s"] / r["notes_s"] if r["notes_s"] else float("nan")
                runs.append(r)
            r = _median_row(runs)
            tm = r["timings"]
            build_s = r["build_s"]
            r["examples_per_s"] = r["examples"] / build_s
            r["overhead_pct"] = (r["ratio"] - 1) * 100
            r["overhead_notes_pct"] = (r["ratio_notes"] - 1) * 100
            if len(runs) > 1:
                r["rounds_ratio_notes"] = [round(x["ratio_notes"], 3) for x in runs]
                print(f"      {len(runs)} rounds, ratio to the notes baseline each: "
                      + ", ".join(f"{x:.2f}" for x in r["rounds_ratio_notes"]) + " (median below)")
            rows.append(r)
            print(f"{r['patients']:>5} patients {r['encounters']:>6} enc {r['examples']:>6} examples | "
                  f"build {build_s:6.1f} s (index {tm.get('index', 0):.1f}, patients {tm.get('patients', 0):.1f}, "
                  f"merge {tm.get('merge', 0):.1f}; load {tm.get('load', 0):.1f}) {r['examples_per_s']:6.1f} ex/s | "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
            print(f"      goal baseline, deid scrub of the notes: {r['notes_s']:6.1f} s over {r['notes']} notes "
                  f"({r['notes_chars'] / 1e6:.1f} M chars): ratio {r['ratio_notes']:.2f}, overhead {r['overhead_notes_pct']:+.0f}%")
            print(f"      the build's own free texts, scrubbed bare: {r['bare_s']:6.1f} s over {r['free_texts_bare']} texts "
                  f"({r['chars'] / 1e6:.1f} M chars): ratio {r['ratio']:.2f}, overhead {r['overhead_pct']:+.0f}%", flush=True)
            if r["free_texts_build"] != r["free_texts_bare"]:
                print(f"  warning: the build scrubbed {r['free_texts_build']} texts, the bare run {r['free_texts_bare']}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if len(rows) >= 2:
        a, z = rows[-2], rows[-1]
        print(f"memory {a['patients']} -> {z['patients']} patients: {z['peak_rss_mb'] / a['peak_rss_mb'] * 100 - 100:+.1f}% "
              f"(goal within 20%); build ms per patient {a['build_s'] / a['patients'] * 1000:.0f} -> "
              f"{z['build_s'] / z['patients'] * 1000:.0f} (linear: equal)")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
