"""Which gunicorn worker setup for `triage serve`: sync vs gthread (with and without keep-alive),
rules-only, measured side by side.

    .venv/bin/python bench/worker_class_bench.py [--rounds 4] [--requests 100] [--concurrency 4,16]

Starts one `triage serve` per setup at once (loopback, rules-only, idle while not measured) and
alternates short rounds between them, so that every setup sees the same background load of the
machine; prints per setup and concurrency the pooled p50/p95/p99/max and throughput. Bounded
(--max-seconds), always stops its servers.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hook_latency import (  # noqa: E402
    DEFAULT_DEADLINE_MS,
    Server,
    bodies_for,
    hook_call,
    row,
    run_load,
    synthea_bundles,
)

SETUPS = {  # name -> (worker class, threads, keep-alive seconds)
    "sync": ("sync", 1, 2),
    "gthread16-keepalive0": ("gthread", 16, 0),
    "gthread16-keepalive2": ("gthread", 16, 2),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=100, help="requests per round")
    parser.add_argument("--concurrency", default="4,16")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]
    watchdog = threading.Timer(args.max_seconds, lambda: os.kill(os.getpid(), signal.SIGTERM))
    watchdog.daemon = True
    watchdog.start()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit("stopped: --max-seconds")))
    bodies = bodies_for(synthea_bundles(), 0)
    print(f"worker setups, rules-only, {args.workers} workers, {args.rounds} alternating rounds of "
          f"{args.requests}, {os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}", flush=True)
    servers: dict[str, Server] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="triage-wc-") as tmp:
            for name, (klass, threads, keepalive) in SETUPS.items():
                setup = argparse.Namespace(workers=args.workers, threads=threads, worker_class=klass,
                                           keepalive=keepalive, deadline_ms=None, redis_url="")
                folder = Path(tmp) / name
                folder.mkdir()
                servers[name] = Server(folder, setup, "rules", None, "")
            for server in servers.values():
                server.wait_ready()
                run_load(40, 4, hook_call(server.base + "/cds-services/triage", bodies))
            pooled: dict[tuple[str, int], tuple[list[float], float, int, int]] = {}
            for _ in range(args.rounds):
                for c in concurrency:
                    for name, server in servers.items():
                        lat, wall, errors, ai = run_load(args.requests, c,
                                                         hook_call(server.base + "/cds-services/triage", bodies))
                        old = pooled.get((name, c), ([], 0.0, 0, 0))
                        pooled[(name, c)] = (old[0] + lat, old[1] + wall, old[2] + errors, old[3] + ai)
            for (name, c), (lat, wall, errors, ai) in sorted(pooled.items(), key=lambda kv: (kv[0][1], kv[0][0])):
                row(f"{name} c={c}", lat, wall, errors, ai, DEFAULT_DEADLINE_MS)
    finally:
        for server in servers.values():
            server.stop()
        watchdog.cancel()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
