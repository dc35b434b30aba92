"""Load and faults: the whole service under Locust while Redis, PostgreSQL and the worker fail.

    .venv/bin/python bench/load_test.py [--duration 120] [--users 8] [--rate 1.0]
                                        [--redis-every 40] [--postgres-every 50] [--worker-every 30]

Starts, all on loopback and all private to this run (the shared servers are never touched): a
Redis (append-only file), a PostgreSQL cluster (initdb in a temporary folder, run as the
`postgres` user), `triage serve` (gunicorn, 2 workers, the real Redis broker, report cache and
PostgreSQL store), one `triage worker` with the tiny model, then Locust (headless) with
`--users` nurses at `--rate` chart openings per second each (the stated rate is users x rate),
for `--duration` seconds. Meanwhile, in a loop: Redis is restarted every `--redis-every`
seconds, PostgreSQL every `--postgres-every` (fast shutdown), and the worker is killed with
SIGKILL every `--worker-every` (and started again). It prints:

  requests, p50/p95/p99 of patient-view and feedback, 5xx (goal: none beyond the documented 503s),
  feedback lost (goal: none: every feedback answered 200 is in the database afterwards),
  API worker memory (RSS) before and after (goal: flat, within +25%),

writes the figures as JSON (--out), and exits 1 when a goal is missed. Bounded: every process it
starts is stopped, and the run ends by itself.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("TRIAGE_SHARED_DIR", ROOT.parent / "shared")) / "data"
sys.path.insert(0, str(ROOT))

MEMORY_GROWTH_GOAL = 0.25


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise SystemExit(f"error: {what} did not come up within {timeout_s:.0f} s")


class Stack:
    """The private servers of one run; `close()` stops every one of them."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis_port = free_port()
        self.pg_port = free_port()
        self.api_port = free_port()
        self.pgdata = work / "pgdata"
        self.pg_bin = self._pg_bin()
        self.logs = work / "logs"
        self.logs.mkdir()

    # -- Redis -------------------------------------------------------------------------------
    def start_redis(self) -> None:
        (self.work / "redis").mkdir(exist_ok=True)
        self.procs["redis"] = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--appendonly", "yes",
             "--dir", str(self.work / "redis"), "--save", ""],
            stdout=(self.logs / "redis.log").open("ab"), stderr=subprocess.STDOUT)
        import redis

        wait_for(lambda: redis.Redis(port=self.redis_port, socket_timeout=0.5).ping(), "redis", 20)

    def restart_redis(self) -> None:
        self._stop("redis", signal.SIGTERM)
        self.start_redis()

    # -- PostgreSQL --------------------------------------------------------------------------
    @staticmethod
    def _pg_bin() -> Path:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not found:
            raise SystemExit("error: PostgreSQL server binaries not found under /usr/lib/postgresql")
        return found[-1].parent

    def _as_postgres(self, *args: str) -> list[str]:
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def start_postgres(self, first: bool = False) -> None:
        if first:
            self.pgdata.mkdir()
            if os.geteuid() == 0:
                user = pwd.getpwnam("postgres")
                for path in (self.work, self.pgdata):
                    os.chown(path, user.pw_uid, user.pw_gid)
                os.chmod(self.work, 0o755)
            subprocess.run(self._as_postgres(str(self.pg_bin / "initdb"), "-D", str(self.pgdata), "-A", "trust",
                                             "-U", "postgres", "--no-sync"), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(self._as_postgres(
            str(self.pg_bin / "pg_ctl"), "-D", str(self.pgdata), "-w", "-l", str(self.pgdata / "server.log"),
            "-o", f"-p {self.pg_port} -k {self.pgdata} -c listen_addresses=127.0.0.1 -c fsync=off", "start"),
            check=True, stdout=subprocess.DEVNULL)
        if first:
            subprocess.run(self._as_postgres(str(self.pg_bin / "createdb"), "-h", "127.0.0.1", "-p",
                                             str(self.pg_port), "-U", "postgres", "triage"), check=True)

    def restart_postgres(self) -> None:
        subprocess.run(self._as_postgres(str(self.pg_bin / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w",
                                         "stop"), check=False, stdout=subprocess.DEVNULL)
        time.sleep(1.0)  # down for a moment, as in a real restart
        self.start_postgres()

    def ensure_postgres(self) -> None:
        """Start PostgreSQL if a restart left it down (the checks read the database)."""
        running = subprocess.run(self._as_postgres(str(self.pg_bin / "pg_ctl"), "-D", str(self.pgdata), "status"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        if not running:
            self.start_postgres()

    def stop_postgres(self) -> None:
        if self.pgdata.exists():
            subprocess.run(self._as_postgres(str(self.pg_bin / "pg_ctl"), "-D", str(self.pgdata), "-m",
                                             "immediate", "-w", "stop"), check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.pg_port}/triage"

    # -- API and worker ----------------------------------------------------------------------
    def env(self, model_dir: Path) -> dict[str, str]:
        redis = f"redis://127.0.0.1:{self.redis_port}"
        return {**os.environ, "TRIAGE_INSECURE_NO_AUTH": "1", "TRIAGE_INSTANCE_DIR": str(self.work / "instance"),
                "TRIAGE_DATABASE_URL": self.database_url, "TRIAGE_BROKER_URL": f"{redis}/0",
                "TRIAGE_RESULT_BACKEND": f"{redis}/0", "TRIAGE_CACHE_URL": f"{redis}/2",
                "TRIAGE_MODEL_PATH": str(model_dir), "TRIAGE_DEVICE": "cpu", "TRIAGE_LOG_LEVEL": "WARNING",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}

    def start_api(self, env: dict[str, str], workers: int) -> None:
        self.procs["api"] = subprocess.Popen(
            [sys.executable, "-m", "cds_hooks.cli", "serve", "--port", str(self.api_port), "--workers", str(workers)],
            cwd=ROOT, env=env, stdout=(self.logs / "api.log").open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_for(lambda: requests.get(self.url + "/health", timeout=2).ok, "triage serve", 120)

    def start_worker(self, env: dict[str, str]) -> None:
        self.procs["worker"] = subprocess.Popen(
            [sys.executable, "-m", "cds_hooks.cli", "worker", "--pool", "solo", "--loglevel", "WARNING"],
            cwd=ROOT, env=env, stdout=(self.logs / "worker.log").open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True)

    def kill_worker(self, env: dict[str, str]) -> None:
        proc = self.procs.get("worker")
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self.start_worker(env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def api_worker_pids(self) -> list[int]:
        import psutil

        master = self.procs["api"].pid
        return [c.pid for c in psutil.Process(master).children()]  # gunicorn's workers

    def api_memory_mb(self) -> float:
        import psutil

        total = 0
        for pid in self.api_worker_pids():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += psutil.Process(pid).memory_info().rss
        return total / 2**20

    def _stop(self, name: str, sig: int) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig) if name in ("api", "worker") else proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL) if name in ("api", "worker") else proc.kill()
            proc.wait(timeout=10)

    def close(self) -> None:
        for name in ("locust", "api", "worker", "redis"):
            self._stop(name, signal.SIGTERM)
        self.stop_postgres()


def hook_bodies(limit: int = 20) -> list[dict]:
    from fhir_adapter.prefetch import prefetch_from_resources

    bodies = []
    for path in sorted((DATA / "fhir" / "synthea-bundles").glob("*.json"))[:limit]:
        bundle = json.loads(path.read_text())
        patient = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        pid = patient["resource"].get("id") or patient["fullUrl"].removeprefix("urn:uuid:")
        context = {"userId": "Practitioner/load", "patientId": pid}
        bodies.append({"hook": "patient-view", "hookInstance": "x", "context": context,
                       "prefetch": prefetch_from_resources(bundle, context)})
    return bodies


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def chaos(stack: Stack, env: dict[str, str], args: argparse.Namespace, stop: threading.Event,
          events: list[tuple[float, str]]) -> None:
    started = time.monotonic()
    due = {"redis": args.redis_every, "postgres": args.postgres_every, "worker": args.worker_every}
    action = {"redis": stack.restart_redis, "postgres": stack.restart_postgres,
              "worker": lambda: stack.kill_worker(env)}
    while not stop.wait(0.5):
        now = time.monotonic() - started
        for name, every in due.items():
            if every > 0 and now >= every * (1 + sum(1 for _, n in events if n == name)):
                try:
                    action[name]()
                    events.append((round(now, 1), name))
                except Exception as exc:  # noqa: BLE001 - report and keep the run going
                    events.append((round(now, 1), f"{name} restart failed: {type(exc).__name__}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=120, help="seconds of load (default 120)")
    parser.add_argument("--users", type=int, default=8, help="Locust users (nurses)")
    parser.add_argument("--rate", type=float, default=1.0, help="chart openings per second per user")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--redis-every", type=float, default=40, help="restart Redis every N s (0: never)")
    parser.add_argument("--postgres-every", type=float, default=50, help="restart PostgreSQL every N s (0: never)")
    parser.add_argument("--worker-every", type=float, default=30, help="SIGKILL the worker every N s (0: never)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.users <= 0 or args.rate <= 0:
        parser.error("--duration, --users and --rate must be positive")
    for tool in ("redis-server", "runuser") if os.geteuid() == 0 else ("redis-server",):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")

    from model.tiny import cached_tiny_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = cached_tiny_model(ROOT / ".tiny-model")
    work = Path(tempfile.mkdtemp(prefix="triage-load-"))
    stack = Stack(work)
    stop = threading.Event()
    events: list[tuple[float, str]] = []
    try:
        stack.start_redis()
        stack.start_postgres(first=True)
        env = stack.env(model_dir)
        stack.start_worker(env)
        stack.start_api(env, args.workers)
        wait_for(lambda: requests.get(stack.url + "/ready", timeout=5).status_code == 200, "/ready (worker)", 120)
        bodies_file = work / "bodies.json"
        bodies = hook_bodies()
        bodies_file.write_text(json.dumps(bodies))
        for body in bodies * 2:  # warm-up: every patient twice, then the memory baseline
            requests.post(stack.url + "/cds-services/triage", json=body, timeout=30)
        memory_before = stack.api_memory_mb()
        log_dir = work / "load-log"
        log_dir.mkdir()
        locust_env = {**os.environ, "LOAD_BODIES": str(bodies_file), "LOAD_LOG_DIR": str(log_dir),
                      "LOAD_RATE_PER_USER": str(args.rate)}
        stack.procs["locust"] = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
             "-u", str(args.users), "-r", str(args.users), "--run-time", f"{args.duration}s", "--host", stack.url,
             "--stop-timeout", "10", "--only-summary", "--loglevel", "WARNING"],
            cwd=work, env=locust_env, stdout=(stack.logs / "locust.log").open("ab"), stderr=subprocess.STDOUT)
        chaos_thread = threading.Thread(target=chaos, args=(stack, env, args, stop, events), daemon=True)
        chaos_thread.start()
        stack.procs["locust"].wait(timeout=args.duration + 120)
        stop.set()
        chaos_thread.join(timeout=60)
        # Let every dependency come back before the checks.
        stack.ensure_postgres()
        wait_for(lambda: requests.get(stack.url + "/health", timeout=5).ok, "api after the run", 60)
        time.sleep(2)
        memory_after = stack.api_memory_mb()
        figures = summarize(log_dir, stack, args, events, memory_before, memory_after)
    finally:
        stop.set()
        stack.close()
    print_figures(figures)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if figures["goals_met"] else 1


def summarize(log_dir: Path, stack: Stack, args: argparse.Namespace, events: list, before: float,
              after: float) -> dict:
    import sqlalchemy as sa

    requests_log, acknowledged = [], []
    for path in log_dir.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            item = json.loads(line)
            (requests_log if item["kind"] == "request" else acknowledged).append(item)
    by_name: dict[str, dict] = {}
    for name in ("patient-view", "feedback"):
        items = [r for r in requests_log if r["name"] == name]
        ok = [r["ms"] for r in items if r["status"] == 200]
        by_name[name] = {
            "requests": len(items), "ok": len(ok),
            "p50_ms": round(percentile(ok, 50), 1), "p95_ms": round(percentile(ok, 95), 1),
            "p99_ms": round(percentile(ok, 99), 1),
            "status_503": sum(1 for r in items if r["status"] == 503),
            "status_5xx_other": sum(1 for r in items if r["status"] >= 500 and r["status"] != 503),
            "no_response": sum(1 for r in items if r["status"] == 0),
        }
    from cds_hooks.store import Store, feedback

    store = Store(stack.database_url)
    with store.engine.connect() as conn:
        stored = {(r.card_uuid, r.outcome) for r in conn.execute(sa.select(feedback.c.card_uuid, feedback.c.outcome))}
    store.dispose()
    lost = [a for a in acknowledged if (a["card"], a["outcome"]) not in stored]
    five_xx = sum(v["status_5xx_other"] for v in by_name.values())
    growth = (after - before) / before if before else 0.0
    figures = {
        "duration_s": args.duration, "users": args.users, "stated_rate_per_s": args.users * args.rate,
        "requests": sum(v["requests"] for v in by_name.values()), "by_route": by_name,
        "faults": events, "unexpected_5xx": five_xx, "feedback_acknowledged": len(acknowledged),
        "feedback_lost": len(lost), "api_rss_mb_before": round(before, 1), "api_rss_mb_after": round(after, 1),
        "api_rss_growth": round(growth, 3),
    }
    figures["goals_met"] = five_xx == 0 and not lost and growth <= MEMORY_GROWTH_GOAL
    return figures


def print_figures(f: dict) -> None:
    print(f"load: {f['users']} users, stated rate {f['stated_rate_per_s']:.1f} charts/s, {f['duration_s']} s; "
          f"faults: {', '.join(f'{n}@{t}s' for t, n in f['faults']) or 'none'}")
    for name, v in f["by_route"].items():
        print(f"  {name:13s} {v['requests']:6d} requests, {v['ok']} ok; p50 {v['p50_ms']} ms, p95 {v['p95_ms']} ms, "
              f"p99 {v['p99_ms']} ms; 503 {v['status_503']}, other 5xx {v['status_5xx_other']}, "
              f"no response {v['no_response']}")
    print(f"  5xx beyond documented 503s: {f['unexpected_5xx']} (goal 0)")
    print(f"  feedback lost: {f['feedback_lost']} of {f['feedback_acknowledged']} acknowledged (goal 0)")
    print(f"  API worker memory: {f['api_rss_mb_before']} MB before, {f['api_rss_mb_after']} MB after "
          f"({f['api_rss_growth'] * 100:+.1f}%; goal within +{MEMORY_GROWTH_GOAL * 100:.0f}%)")
    print("  goals met" if f["goals_met"] else "  GOALS MISSED")


if __name__ == "__main__":
    sys.exit(main())
