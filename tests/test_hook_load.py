"""Issue 16: with AI reports on, a burst of concurrent patient-view calls (more calls than gunicorn
workers and threads) against a report far slower than the deadline: every call is answered
inside its deadline plus a margin (no call waits for a report that cannot be ready in time, and
no wait holds the worker), the decision is in the log without PHI, and a later view shows the
report. A real `triage serve` process (gthread, 1 worker x 2 threads) with the tiny model in the
embedded worker process. Behavioural: the only timing asserted is deadline + margin."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from cds_hooks.ai_cards import PENDING_SUMMARY
from conftest import ROOT
from tests.support.cds_app import load, patient_view, synthea_paths

pytestmark = pytest.mark.slow

DEADLINE_MS = 450
MARGIN_MS = 250  # a shared 2-core machine: scheduling noise, never a report wait (those are 410 ms)
WORKERS, THREADS = 1, 2
BURST = 6  # 6 calls > 1 worker x 2 threads: queued calls would answer at ~3 x 410 ms if calls waited


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(tmp_path: Path, tiny_model_dir: Path):
    port = free_port()
    env = dict(
        os.environ, TRIAGE_INSECURE_NO_AUTH="1", TRIAGE_INSTANCE_DIR=str(tmp_path),
        TRIAGE_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}", TRIAGE_MODEL_PATH=str(tiny_model_dir),
        TRIAGE_HOOK_DEADLINE_MS=str(DEADLINE_MS), TRIAGE_LOG_LEVEL="INFO",
        # A report of a few seconds on CPU: far beyond the deadline, short enough for a test.
        TRIAGE_MAX_NEW_TOKENS_ANALYSIS="0", TRIAGE_MAX_NEW_TOKENS_FINAL="160", TRIAGE_FINAL_CLOSING_RESERVE="160",
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
    )
    env.pop("TRIAGE_BROKER_URL", None)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cds_hooks.cli", "serve", "--port", str(port), "--workers", str(WORKERS),
             "--threads", str(THREADS)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if requests.get(base + "/cds-services", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
            yield base, log_path
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def post(base: str, body: dict) -> tuple[int, list[dict], float]:
    started = time.perf_counter()
    response = requests.post(base + "/cds-services/triage", json=body, timeout=30)
    elapsed_ms = (time.perf_counter() - started) * 1000
    return response.status_code, response.json().get("cards", []), elapsed_ms


def test_burst_beyond_workers_answers_inside_the_deadline_and_a_later_view_shows_the_report(
        tmp_path, tiny_model_dir):
    bundles = [load(p) for p in synthea_paths()[: BURST + 1]]
    with serve(tmp_path, tiny_model_dir) as (base, log_path):
        # The chart opened first: no estimate yet, nothing in flight, so this call waits to learn.
        status, cards, elapsed_ms = post(base, patient_view(bundles[0]))
        assert status == 200 and elapsed_ms < DEADLINE_MS + MARGIN_MS
        assert cards[-1]["summary"] == PENDING_SUMMARY  # a report takes seconds here

        results: list[tuple[int, list[dict], float]] = [None] * BURST  # type: ignore[list-item]
        barrier = threading.Barrier(BURST)

        def call(n: int) -> None:
            body = patient_view(bundles[n + 1])
            barrier.wait()
            results[n] = post(base, body)

        threads = [threading.Thread(target=call, args=(n,)) for n in range(BURST)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for status, cards, elapsed_ms in results:
            assert status == 200
            assert elapsed_ms < DEADLINE_MS + MARGIN_MS, [round(r[2]) for r in results]
            assert cards[0]["source"]["label"].startswith("Triage CDS rules")
            assert cards[-1]["summary"] == PENDING_SUMMARY

        # A later view of the last chart of the burst shows its report (the job kept running).
        last = bundles[BURST]
        deadline = time.monotonic() + 300
        while True:
            status, cards, elapsed_ms = post(base, patient_view(last))
            assert status == 200 and elapsed_ms < DEADLINE_MS + MARGIN_MS
            if cards[-1]["summary"] != PENDING_SUMMARY:
                break
            assert time.monotonic() < deadline, "the report never showed on a later view"
            time.sleep(1.0)
        assert len(cards) == 2 and cards[1]["summary"].startswith("AI (preliminary): ")

    text = log_path.read_text(errors="replace")
    decisions = [line for line in text.splitlines() if ": AI report " in line]
    assert "decision=wait reason=cold" in decisions[0]  # the first view: nothing known, nothing ahead
    burst = decisions[1:1 + BURST]  # nothing ready in time: answered at once, estimate and queue logged
    assert all("pending (estimated not ready in time) decision=no-wait" in line for line in burst), burst
    assert all("budget=" in line and "queue=" in line and "model=" in line for line in burst)
    assert any("AI report ready (-) cache-hit" in line for line in decisions)
    for bundle in bundles:  # no patient name in the service log
        for entry in bundle["entry"]:
            if entry["resource"]["resourceType"] == "Patient":
                for name in entry["resource"].get("name", []):
                    assert name["family"] not in text
