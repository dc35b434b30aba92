"""Locust users for bench/load_test.py: nurses opening charts (patient-view) and answering cards.

Each user opens a chart about once a second (constant throughput), and answers about half of the
cards it gets. Every response is written to `$LOAD_LOG_DIR/<pid>.jsonl` (route, status, ms), and
every feedback the service answered 200 (card, outcome, time), so the driver can compute exact
percentiles and check that no acknowledged feedback was lost.
"""
from __future__ import annotations

import json
import os
import random
import uuid
from datetime import UTC, datetime
from pathlib import Path

from locust import HttpUser, constant_throughput, events, task

BODIES = json.loads(Path(os.environ["LOAD_BODIES"]).read_text())
LOG = Path(os.environ["LOAD_LOG_DIR"]) / f"{os.getpid()}.jsonl"
_handle = LOG.open("a", buffering=1)


def record(**fields) -> None:
    _handle.write(json.dumps(fields) + "\n")


@events.request.add_listener
def _on_request(request_type, name, response_time, response_length, response=None, exception=None, **_kw):
    status = getattr(response, "status_code", 0) or 0
    record(kind="request", name=name, status=status, ms=response_time,
           error=type(exception).__name__ if exception is not None and not status else None)


class Nurse(HttpUser):
    wait_time = constant_throughput(float(os.environ.get("LOAD_RATE_PER_USER", "1")))

    @task
    def open_chart(self) -> None:
        body = dict(random.choice(BODIES))
        body["hookInstance"] = str(uuid.uuid4())
        with self.client.post("/cds-services/triage", json=body, name="patient-view", catch_response=True) as resp:
            if resp.status_code == 503:
                resp.success()  # documented: a dependency is restarting; the EHR shows no card
                return
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            resp.success()
            cards = resp.json().get("cards", [])
        for card in cards:
            if random.random() < 0.5:
                continue
            reasons = card.get("overrideReasons") or []
            entry = {"card": card["uuid"], "outcomeTimestamp": datetime.now(UTC).isoformat()}
            if reasons and random.random() < 0.4:
                entry.update(outcome="overridden", overrideReason={"reason": random.choice(reasons)})
            else:
                entry["outcome"] = "accepted"
            with self.client.post("/cds-services/triage/feedback", json={"feedback": [entry]}, name="feedback",
                                  catch_response=True) as resp:
                if resp.status_code == 200:
                    resp.success()
                    record(kind="feedback", card=entry["card"], outcome=entry["outcome"],
                           ts=entry["outcomeTimestamp"])
                elif resp.status_code == 503:
                    resp.success()  # documented: the database is restarting; the EHR retries
                else:
                    resp.failure(f"HTTP {resp.status_code}")
