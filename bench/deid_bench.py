"""Free-text de-identification benchmark, all figures from ONE run on the same texts.

    .venv/bin/python bench/deid_bench.py [--notes 300] [--workers 2]

1. Speed: vanilla Presidio (AnalyzerEngine with every predefined recognizer and the full
   spaCy pipeline of the same model, through BatchAnalyzerEngine) against our TextScrubber
   (`scrub_many`) and `triage deid scrub --workers N`, on the same Synthea notes + ASQ-PHI
   queries; printed as notes/s and as a ratio (machine load cancels out of the ratio).
2. ASQ-PHI recall per type and hard-negative FP rate; the same on the queries in ALL CAPS,
   with and without the case-normalised NER pass.
3. Synthea: survivors of export identifiers in the scrubbed notes and the kept share.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("TRIAGE_SHARED_DIR", ROOT.parent / "shared")) / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--notes", type=int, default=300, help="Synthea notes in the speed test")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--asq-dir", default=str(SHARED / "deid" / "asq-phi"))
    ap.add_argument("--speed-only", action="store_true", help="skip the recall evaluations")
    ap.add_argument("--synthea-dir", default=str(SHARED / "fhir" / "bulk-export-synthea-10"))
    args = ap.parse_args()

    from presidio_analyzer import BatchAnalyzerEngine

    from deidentify.engine import build_analyzer, vanilla_analyzer
    from deidentify.evaluate import evaluate_asq, evaluate_synthea, format_asq, format_synthea, load_asq, load_notes
    from deidentify.text import TextScrubber, scrub_jsonl

    asq = load_asq(args.asq_dir)
    notes = [n.text for n in load_notes(Path(args.synthea_dir))][: args.notes]
    texts = notes + [q.text for q in asq]
    chars = sum(map(len, texts))
    print(f"texts: {len(notes)} Synthea notes + {len(asq)} ASQ-PHI queries ({chars / 1e6:.2f} M chars)")

    vanilla = vanilla_analyzer()
    ours = TextScrubber(build_analyzer())
    # warm both (model caches, regex compilation)
    list(BatchAnalyzerEngine(vanilla).analyze_iterator(texts[:20], language="en"))
    ours.scrub_many(texts[:20])

    t0 = time.perf_counter()
    list(BatchAnalyzerEngine(vanilla).analyze_iterator(texts, language="en", batch_size=32))
    t_vanilla = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours.scrub_many(texts, batch_size=32)
    t_ours = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
        t0 = time.perf_counter()
        scrub_jsonl(str(src), str(dst), workers=args.workers, batch_size=64)
        t_workers = time.perf_counter() - t0

    n = len(texts)
    print("\n== speed (same texts, same run) ==")
    print(f"vanilla Presidio (BatchAnalyzerEngine, analyze only): {n / t_vanilla:8.1f} texts/s")
    print(f"ours, scrub_many (analyze + render):                 {n / t_ours:8.1f} texts/s   ratio {t_vanilla / t_ours:.2f}x")
    print(f"ours, deid scrub --workers {args.workers} (JSONL in/out):       {n / t_workers:8.1f} texts/s   ratio {t_vanilla / t_workers:.2f}x"
          f"   (cpu cores: {os.cpu_count()})")

    if args.speed_only:
        return
    print("\n== ASQ-PHI ==")
    rep = evaluate_asq(ours, args.asq_dir)
    print(format_asq(rep))
    print(f"goal (recall >= 0.98 overall and per type (EMAIL 30/31: a labelling error), FP <= 0.10): {'met' if rep.meets_goal() else 'NOT met'}")

    print("\n== ASQ-PHI in ALL CAPS: case-normalised NER pass on / off ==")
    for flag in (True, False):
        r = evaluate_asq(TextScrubber(ours.analyzer, caps_pass=flag), args.asq_dir, upper=True)
        print(f"caps_pass={flag!s:5}: " + ", ".join(f"{t} {v.recall:.3f}" for t, v in r.per_type.items()))
        print(f"    overall recall {r.overall.recall:.3f}, FP rate {r.fp_rate:.3f}; "
              f"goal {'met' if r.meets_goal() else 'NOT met'}")

    print("\n== Synthea notes (all, with each note's known identifiers) ==")
    print(format_synthea(evaluate_synthea(ours, args.synthea_dir)))


if __name__ == "__main__":
    main()
