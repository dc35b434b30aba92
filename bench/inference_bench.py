"""AI report path on CPU with the tiny model, each figure a ratio measured in this one run.

    .venv/bin/python bench/inference_bench.py [--requests 8] [--direct 3] [--engine-rounds 3] [--queue-rounds 3]
        [--final-tokens 160] [--json OUT]

1. Queue overhead: `ReportService.request` through Celery and the real Redis (a `triage worker`
   process started here, prefork, concurrency 1) against a direct `Engine.generate_reports` call on
   the same input. The cache is off (TRIAGE_CACHE_URL=none), so every request is generated. The
   overhead of each queued request is its latency minus the worker's own generate time for it
   (both in the same request; generation time varies by seconds on a shared CPU). Goal: p50 < 15 ms.
2. Batching gain: N requests sent at once (the worker batches them into one generate call)
   against the same N one at a time, both through the queue, after one warm-up burst (a running
   API's request threads and their broker connections exist already); median of --queue-rounds
   rounds in alternating order. Goal: >= 3x throughput. Also the
   engine alone (N prompts in one `generate_reports` against N calls of one), several rounds in
   alternating order; same engine, threads, token budgets and greedy decoding on both sides.
3. Memory: nf4 (attention and experts) against bf16 parameter bytes of the tiny model.
4. The weight memory of gpt-oss-20b under bf16, nf4 attention-only, nf4 with experts and mxfp4,
   from its real parameter counts.

Redis DB 6 is the bench's own (flushed at start and end). The worker is always stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from support.worker_process import worker  # noqa: E402  (the e2e tests start workers the same way)

GOAL_OVERHEAD_MS = 15.0
GOAL_BATCH_GAIN = 3.0


def p50(values: list[float]) -> float:
    return statistics.median(values)


def records(count: int) -> list:
    from deidentify import Deidentifier
    from deidentify.pseudonym import demo_key
    from fhir_adapter.extract import build_record
    from support.cds_app import load, patient_view, synthea_paths

    deid = Deidentifier(demo_key(tempfile.mkdtemp(prefix="triage-bench-key-")))
    now = datetime.now(timezone.utc)
    return [deid.record(build_record(patient_view(load(p))["prefetch"], as_of=now)) for p in synthea_paths()[:count]]


def measure_direct(model_dir: Path, budget: dict[str, int], recs: list, repeats: int,
                   engine_rounds: int) -> dict[str, object]:
    """In-process: run_batch (prompt + generate, no cache) on recs[0]; and the engine's own
    batching gain (one generate of all prompts against one prompt at a time), `engine_rounds` times."""
    from model.engine import Engine, EngineConfig
    from model.prompts import build_messages, render_chat_prompt
    from model.tasks import run_batch

    engine = Engine.load(EngineConfig(model_path=str(model_dir), **budget))
    payload = recs[0].to_payload()
    run_batch([payload], engine, None)  # warm-up (kernels, grammar compilation)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run_batch([payload], engine, None)
        times.append(time.perf_counter() - started)
    prompts = [render_chat_prompt(engine.tokenizer, build_messages(r), reasoning_effort=engine.config.reasoning_effort)
               for r in recs]
    # Prompt prefill is per row (each patient's own summary) and cannot be shared by batching;
    # time it apart so the gain can be read as prefill + decode.
    prefill_s = [0.0]
    inner_prefill = engine._prefill

    def timed_prefill(*a, **k):
        t = time.perf_counter()
        try:
            return inner_prefill(*a, **k)
        finally:
            prefill_s[0] += time.perf_counter() - t

    engine._prefill = timed_prefill
    rounds = []  # alternating which goes first, so drifting load on a shared CPU hits both alike
    for k in range(engine_rounds):
        timing: dict[str, float] = {}
        tokens: dict[str, int] = {}
        prefill: dict[str, float] = {}
        for mode in (("single", "batched") if k % 2 == 0 else ("batched", "single")):
            prefill_s[0] = 0.0
            started = time.perf_counter()
            if mode == "single":
                tokens[mode] = sum(engine.generate_reports([p])[0].tokens for p in prompts)
            else:
                tokens[mode] = sum(r.tokens for r in engine.generate_reports(prompts))
            timing[mode] = time.perf_counter() - started
            prefill[mode] = prefill_s[0]
        decode = {m: timing[m] - prefill[m] for m in timing}
        rounds.append({"one_by_one_s": timing["single"], "batched_s": timing["batched"],
                       "gain": timing["single"] / timing["batched"],
                       "prefill_single_s": prefill["single"], "prefill_batched_s": prefill["batched"],
                       "decode_gain": decode["single"] / decode["batched"],
                       "single_tokens_per_s": tokens["single"] / timing["single"],
                       "batched_tokens_per_s": tokens["batched"] / timing["batched"]})
    return {"times": times, "rounds": rounds, "prompt_tokens": engine.last_stats["prompt_tokens"]}


def burst(service, recs: list) -> list:
    """Every record requested at once, one thread each: [(latency_s, outcome)] in order."""
    results: list = [None] * len(recs)
    barrier = threading.Barrier(len(recs))

    def fire(i: int) -> None:
        barrier.wait()
        started = time.perf_counter()
        outcome = service.request(recs[i], deadline_s=600)
        results[i] = (time.perf_counter() - started, outcome)

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(len(recs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def measure_memory(model_dir: Path) -> dict[str, int]:
    import torch
    from transformers import AutoModelForCausalLM

    from model.quantize import load_nf4, parameter_bytes

    bf16 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, local_files_only=True)
    nf4 = load_nf4(model_dir, device="cpu", local_files_only=True)
    return {"bf16": parameter_bytes(bf16)["total"], "nf4": parameter_bytes(nf4)["total"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=8, help="requests per phase (also the batch size)")
    parser.add_argument("--direct", type=int, default=3, help="direct engine calls")
    parser.add_argument("--queue-rounds", type=int, default=3, help="through-the-queue single vs burst rounds")
    parser.add_argument("--engine-rounds", type=int, default=3, help="engine-only single vs batched rounds")
    parser.add_argument("--final-tokens", type=int, default=160, help="final-channel token budget")
    parser.add_argument("--analysis-tokens", type=int, default=0, help="analysis-channel token budget")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/6", help="the bench's own Redis DB")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the worker")
    parser.add_argument("--batch-wait-ms", type=int, default=None,
                        help="the worker's TRIAGE_BATCH_MAX_WAIT_MS (default: the deployment default)")
    parser.add_argument("--batch-quiet-ms", type=int, default=None,
                        help="the worker's TRIAGE_BATCH_QUIET_MS (default: the deployment default)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    import redis
    import torch

    torch.set_num_threads(args.threads)
    from model.cache import NullReportCache
    from model.engine import EngineConfig
    from model.quantize import format_memory_table, gpt_oss_20b_memory_table
    from model.reports import ReportService
    from model.settings import inference_settings
    from model.tiny import cached_tiny_model

    model_dir = cached_tiny_model(ROOT / ".tiny-model")
    budget = {"max_new_tokens_analysis": args.analysis_tokens, "max_new_tokens_final": args.final_tokens,
              "final_closing_reserve": args.final_tokens}
    run = uuid.uuid4().hex[:8]
    env = {
        "TRIAGE_BROKER_URL": args.redis,
        "TRIAGE_MODEL_PATH": str(model_dir),
        "TRIAGE_INFERENCE_QUEUE": f"inference-bench-{run}",
        "TRIAGE_CACHE_URL": "none",  # every request is generated
        "TRIAGE_BATCH_MAX_SIZE": str(args.requests),
        "TRIAGE_MAX_NEW_TOKENS_ANALYSIS": str(args.analysis_tokens),
        "TRIAGE_MAX_NEW_TOKENS_FINAL": str(args.final_tokens),
        "TRIAGE_FINAL_CLOSING_RESERVE": str(args.final_tokens),
        # One torch thread here and in the worker: on a small shared machine two OpenMP threads
        # thrash whenever another process holds a core (5-10x slower), which would swamp the ratios.
        "OMP_NUM_THREADS": str(args.threads),
    }
    if args.batch_wait_ms is not None:
        env["TRIAGE_BATCH_MAX_WAIT_MS"] = str(args.batch_wait_ms)
    if args.batch_quiet_ms is not None:
        env["TRIAGE_BATCH_QUIET_MS"] = str(args.batch_quiet_ms)
    client = redis.Redis.from_url(args.redis)
    client.flushdb()
    recs = records(args.requests)
    figures: dict[str, object] = {}
    t0 = time.perf_counter()
    try:
        print(f"tiny model {model_dir.name}; budget analysis={args.analysis_tokens} final={args.final_tokens} tokens; "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)
        measured = measure_direct(model_dir, budget, recs, args.direct, args.engine_rounds)
        direct = measured["times"]
        rounds = measured["rounds"]
        gains = [r["gain"] for r in rounds]
        engine_gain = p50(gains)
        figures.update(
            engine_one_by_one_s=round(p50([r["one_by_one_s"] for r in rounds]), 2),
            engine_batched_s=round(p50([r["batched_s"] for r in rounds]), 2),
            engine_batching_gain=round(engine_gain, 2),
            engine_batching_gains=[round(g, 2) for g in gains],
            engine_single_tokens_per_s=round(p50([r["single_tokens_per_s"] for r in rounds]), 1),
            engine_batched_tokens_per_s=round(p50([r["batched_tokens_per_s"] for r in rounds]), 1),
            prompt_tokens_batch=measured["prompt_tokens"],
            engine_prefill_single_s=round(p50([r["prefill_single_s"] for r in rounds]), 2),
            engine_prefill_batched_s=round(p50([r["prefill_batched_s"] for r in rounds]), 2),
            engine_decode_gain=round(p50([r["decode_gain"] for r in rounds]), 2),
        )
        print(f"direct call (run_batch in-process: prompt + generate), p50 {p50(direct) * 1000:.0f} ms over "
              f"{len(direct)}", flush=True)
        print(f"engine alone: {len(recs)} prompts ({measured['prompt_tokens']} prompt tokens) one at a time "
              f"{figures['engine_one_by_one_s']} s ({figures['engine_single_tokens_per_s']} tokens/s), in one generate "
              f"{figures['engine_batched_s']} s ({figures['engine_batched_tokens_per_s']} tokens/s) -> "
              f"{engine_gain:.2f}x (median of {', '.join(f'{g:.2f}' for g in gains)})  [goal >= {GOAL_BATCH_GAIN}x: "
              f"{'met' if engine_gain >= GOAL_BATCH_GAIN else 'MISSED'}]", flush=True)
        print(f"  of which prompt prefill (row by row, not shareable): {figures['engine_prefill_single_s']} s one at a "
              f"time vs {figures['engine_prefill_batched_s']} s batched; the rest (decoding) gains "
              f"{figures['engine_decode_gain']}x", flush=True)

        settings = inference_settings(env)
        service = ReportService(settings, engine_config=EngineConfig(model_path=str(model_dir), **budget),
                                cache=NullReportCache())
        with worker(env, Path(tempfile.mkdtemp(prefix="triage-bench-")) / "worker.log", concurrency=1, timeout_s=180):
            service.request(recs[0], deadline_s=600)  # warm-up: the worker's first batch
            # Warm-up of the concurrent path too: a running API has its request threads, their
            # Celery producers and result back-end connections already made (cold, the first
            # burst spends ~150 ms making them and reaches the worker spread out).
            burst(service, recs)
            # One at a time (also the queue-overhead samples) against all at once (batched by the
            # worker), `queue_rounds` times in alternating order, like the engine rounds.
            sequential, results, queue_rounds = [], [], []
            for k in range(args.queue_rounds):
                timing = {}
                for mode in (("single", "burst") if k % 2 == 0 else ("burst", "single")):
                    started = time.perf_counter()
                    if mode == "single":
                        for rec in recs:
                            t = time.perf_counter()
                            outcome = service.request(rec, deadline_s=600)
                            sequential.append((time.perf_counter() - t, outcome))
                    else:
                        results += burst(service, recs)
                    timing[mode] = time.perf_counter() - started
                queue_rounds.append(timing)
        service.close()

        bad = [o.status for _, o in sequential + results if o.batch_s is None]
        if bad:
            raise SystemExit(f"some requests did not come back from the worker: {bad}")
        overheads = [(lat - o.batch_s) * 1000 for lat, o in sequential]
        queued_same = sequential[0][0]
        batch_sizes = sorted({o.batch_size for _, o in results})
        gains_q = [r["single"] / r["burst"] for r in queue_rounds]
        gain = p50(gains_q)
        seq_total = p50([r["single"] for r in queue_rounds])
        conc_total = p50([r["burst"] for r in queue_rounds])
        figures.update(
            direct_p50_ms=round(p50(direct) * 1000, 1),
            queued_same_input_ms=round(queued_same * 1000, 1),
            queue_overhead_p50_ms=round(p50(overheads), 2),
            queue_overhead_max_ms=round(max(overheads), 2),
            queue_overhead_ratio_p50=round(p50(overheads) / (p50(direct) * 1000), 5),
            sequential_s=round(seq_total, 2),
            concurrent_s=round(conc_total, 2),
            batch_sizes=batch_sizes,
            batching_gain=round(gain, 2),
            batching_gains=[round(g, 2) for g in gains_q],
            valid_reports=sum(o.status == "ready" for _, o in sequential + results),
            requests=len(sequential) + len(results),
        )
        print(f"queue overhead (latency - the worker's run_batch time): p50 {figures['queue_overhead_p50_ms']} ms, "
              f"max {figures['queue_overhead_max_ms']} ms  [goal < {GOAL_OVERHEAD_MS} ms: "
              f"{'met' if p50(overheads) < GOAL_OVERHEAD_MS else 'MISSED'}]")
        print(f"  same input: queued {figures['queued_same_input_ms']} ms vs direct p50 {figures['direct_p50_ms']} ms "
              "(generation time itself varies on a shared CPU; the per-request overhead above does not)")
        print(f"batching: {len(recs)} one at a time {seq_total:.1f} s, at once {conc_total:.1f} s "
              f"(batch sizes {batch_sizes}) -> {gain:.2f}x throughput (median of "
              f"{', '.join(f'{g:.2f}' for g in gains_q)})  [goal >= {GOAL_BATCH_GAIN}x: "
              f"{'met' if gain >= GOAL_BATCH_GAIN else 'MISSED'}]")
        print(f"valid reports: {figures['valid_reports']}/{figures['requests']} (invalid ones are rejected and counted)")

        memory = measure_memory(model_dir)
        ratio = memory["bf16"] / memory["nf4"]
        figures.update(bf16_bytes=memory["bf16"], nf4_bytes=memory["nf4"], nf4_reduction=round(ratio, 2))
        print(f"memory (tiny model parameters): bf16 {memory['bf16']:,} B, nf4 {memory['nf4']:,} B -> "
              f"{ratio:.2f}x smaller")
        table = gpt_oss_20b_memory_table()
        figures["gpt_oss_20b"] = [row.as_dict() for row in table]
        print("\ngpt-oss-20b weight memory (from its real parameter counts):")
        print(format_memory_table(table))
        figures["wall_s"] = round(time.perf_counter() - t0, 1)
    finally:
        client.flushdb()
        client.close()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
