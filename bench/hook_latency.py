"""Hook latency under gunicorn: concurrent patient-view calls with full prefetch for the Synthea patients.

    .venv/bin/python bench/hook_latency.py [--requests 400] [--threads 4] [--workers 2]

Starts `triage serve` as a real process on a loopback ephemeral port (TRIAGE_INSECURE_NO_AUTH=1, a
temporary SQLite database and pseudonym key), warms it up, then measures in the same run:
  * baseline: `GET /cds-services` (the framework + HTTP floor),
  * hook: `POST /cds-services/triage` for the 20 Synthea patients, round robin.
Prints p50/p95/p99 latency, throughput and the hook/baseline ratio; the goal is hook p95 <= 50 ms.
The clients run on the same machine as the server and share its cores: the figures include that.
It always stops the server and exits by itself (--max-seconds bounds the whole run).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("TRIAGE_SHARED_DIR", ROOT.parent / "shared")) / "data"
GOAL_P95_MS = 50.0

sys.path.insert(0, str(ROOT))
from fhir_adapter.prefetch import prefetch_from_resources  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def synthea_bodies() -> list[bytes]:
    bodies = []
    for path in sorted((DATA / "fhir" / "synthea-bundles").glob("*.json")):
        bundle = json.loads(path.read_text())
        patient = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        pid = patient["resource"].get("id") or patient["fullUrl"].removeprefix("urn:uuid:")
        context = {"userId": "Practitioner/bench", "patientId": pid}
        body = {"hook": "patient-view", "hookInstance": "", "context": context,
                "prefetch": prefetch_from_resources(bundle, context)}
        bodies.append(json.dumps(body).replace('"hookInstance": ""', '"hookInstance": "%s"').encode())
    if len(bodies) != 20:
        raise SystemExit(f"expected 20 Synthea bundles under {DATA}, found {len(bodies)}")
    return bodies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Server:
    def __init__(self, workers: int, tmp: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        key = tmp / "pseudonym.key"
        key.write_text(secrets.token_hex(32) + "\n")
        key.chmod(0o600)
        env = dict(
            os.environ,
            TRIAGE_INSECURE_NO_AUTH="1",
            TRIAGE_INSTANCE_DIR=str(tmp),
            TRIAGE_DATABASE_URL=f"sqlite:///{tmp / 'bench.sqlite'}",
            TRIAGE_PSEUDONYM_KEY_FILE=str(key),
            TRIAGE_LOG_LEVEL="WARNING",  # no per-request log lines in the measurement
        )
        self.log_path = tmp / "server.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cds_hooks.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(workers)],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("server exited:\n" + self.log_path.read_text()[-2000:])
            try:
                if requests.get(self.base + "/cds-services", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise SystemExit("server did not become ready in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()


def run_load(n: int, threads: int, call) -> tuple[list[float], float, int]:
    local = threading.local()
    errors = 0
    lock = threading.Lock()

    def one(i: int) -> float:
        nonlocal errors
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        start = time.perf_counter()
        ok = call(session, i)
        elapsed = (time.perf_counter() - start) * 1000
        if not ok:
            with lock:
                errors += 1
        return elapsed

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        latencies = list(pool.map(one, range(n)))
    wall = time.perf_counter() - started
    return latencies, wall, errors


def report(name: str, latencies: list[float], wall: float, errors: int) -> dict[str, float]:
    row = {
        "p50": percentile(latencies, 0.50), "p95": percentile(latencies, 0.95), "p99": percentile(latencies, 0.99),
        "mean": statistics.fmean(latencies), "max": max(latencies), "rps": len(latencies) / wall,
    }
    print(f"{name:<22} n={len(latencies):<5} p50={row['p50']:7.1f} ms  p95={row['p95']:7.1f} ms  "
          f"p99={row['p99']:7.1f} ms  max={row['max']:7.1f} ms  {row['rps']:6.1f} req/s  errors={errors}")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="measured hook requests (default 400)")
    parser.add_argument("--threads", type=int, default=4, help="concurrent client threads (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--warmup", type=int, default=60, help="warm-up requests, not measured (default 60)")
    parser.add_argument("--max-seconds", type=float, default=300, help="hard limit of the whole run")
    args = parser.parse_args()
    if min(args.requests, args.threads, args.workers) < 1 or args.warmup < 0:
        parser.error("--requests, --threads and --workers must be >= 1")

    # The run stops by itself even if something hangs.
    watchdog = threading.Timer(args.max_seconds, lambda: os.kill(os.getpid(), signal.SIGTERM))
    watchdog.daemon = True
    watchdog.start()

    bodies = synthea_bodies()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="triage-bench-") as tmp:
        server = Server(args.workers, Path(tmp))
        try:
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit("stopped: --max-seconds")))
            server.wait_ready()
            hook_url = server.base + "/cds-services/triage"
            discovery_url = server.base + "/cds-services"
            headers = {"Content-Type": "application/json"}

            def hook(session: requests.Session, i: int) -> bool:
                body = bodies[i % len(bodies)].replace(b"%s", os.urandom(8).hex().encode())
                response = session.post(hook_url, data=body, headers=headers, timeout=10)
                return response.status_code == 200 and bool(response.json().get("cards"))

            def discovery(session: requests.Session, i: int) -> bool:
                return session.get(discovery_url, timeout=10).status_code == 200

            run_load(args.warmup, args.threads, hook)
            run_load(args.warmup, args.threads, discovery)

            print(f"triage hook latency: {args.workers} gunicorn workers, {args.threads} client threads, "
                  f"{os.cpu_count()} CPUs, load average before {load_before[0]:.2f}")
            base = report("GET /cds-services", *run_load(args.requests, args.threads, discovery))
            lat, wall, hook_errors = run_load(args.requests, args.threads, hook)
            main_row = report("POST patient-view", lat, wall, hook_errors)
            print(f"{'ratio hook/baseline':<22} p50 x{main_row['p50'] / base['p50']:.1f}   "
                  f"p95 x{main_row['p95'] / base['p95']:.1f}")
            print(f"load average after: {os.getloadavg()[0]:.2f}")
            verdict = "MET" if main_row["p95"] <= GOAL_P95_MS else "NOT met"
            print(f"goal p95 <= {GOAL_P95_MS:.0f} ms: {verdict} (p95 {main_row['p95']:.1f} ms)")
            return 1 if hook_errors else 0
        finally:
            server.stop()
            watchdog.cancel()


if __name__ == "__main__":
    sys.exit(main())
