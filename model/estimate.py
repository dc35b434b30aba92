"""A running estimate of how long an AI report takes, and the hook's decision to wait for it.

The hook has a few hundred milliseconds; a report takes seconds (CPU: the tiny model ~2-8 s; GPU:
a full report with reasoning, seconds too). Waiting for a report that cannot be ready in time
buys nothing and costs the whole wait on every view. So the service keeps, per model and
adapter version, the recent durations of report batches (the worker's own `batch_s`) and the jobs
this process has in flight (and the broker backlog), and waits only when the report can plausibly
be ready within what is left of the deadline:

    eta(new job) = time left of the running batch + one batch per `batch_max` jobs ahead + one batch
    eta(job already in flight) = its expected end - now (a job past its expected end by less than
                                 one batch duration counts as about to finish)

With no finished batch seen yet (cold start), the oldest job in flight gives a lower bound (a job
running for 2 s has not taken less than 2 s); a job with others ahead of it is not waited for;
a lone job is (the first reports teach the estimate). Everything here is counts and seconds: no patient data.
"""
from __future__ import annotations

import math
import statistics
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

SAMPLES = 32  # recent batch durations kept per model and adapter


@dataclass
class _Job:
    submitted_at: float
    eta_at: float | None  # expected end (monotonic), None when it could not be estimated


@dataclass(frozen=True)
class Decision:
    """Whether the hook waits for a report, and why (counts and seconds only: loggable)."""

    wait: bool
    reason: str  # "cold" | "cold-busy" | "in-time" | "not-in-time" | "about-to-finish" | "overdue"
    eta_s: float | None  # expected seconds until the report is ready, None when unknown
    budget_s: float
    queue: int  # jobs ahead of this one (this process's in flight + broker backlog)

    def describe(self) -> str:
        eta = f"{self.eta_s:.3f}s" if self.eta_s is not None else "unknown"
        return (f"decision={'wait' if self.wait else 'no-wait'} reason={self.reason} eta={eta} "
                f"budget={self.budget_s:.3f}s queue={self.queue}")


@dataclass
class ReportEstimator:
    """Thread-safe: hook threads decide, a completion callback or tracker thread records."""

    batch_max: int = 8
    _samples: dict[tuple[str, str], deque[float]] = field(default_factory=dict)
    _jobs: dict[str, _Job] = field(default_factory=dict)
    _backlog: int = 0  # jobs waiting in the broker (all API processes), when known
    _decisions: Counter[str] = field(default_factory=Counter)
    _outcomes: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- what the report path tells it ------------------------------------------------------------

    def record(self, versions: tuple[str, str] | None, batch_s: float | None) -> None:
        """A batch finished after `batch_s` seconds on the workers (model, adapter)."""
        if versions is None or not batch_s or batch_s <= 0 or not all(versions):
            return
        with self._lock:
            self._samples.setdefault((str(versions[0]), str(versions[1])), deque(maxlen=SAMPLES)).append(
                float(batch_s))

    def started(self, job_id: str, versions: tuple[str, str] | None, *, now: float | None = None) -> float | None:
        """A job was submitted (or joined from another process): tracked until `finished`.
        Returns its estimated seconds to ready (None when unknown)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if job_id in self._jobs:
                return self._eta_join_locked(self._jobs[job_id], versions, now)
            eta = self._eta_new_locked(versions, now)
            self._jobs[job_id] = _Job(now, now + eta if eta is not None else None)
            return eta

    def finished(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def expire(self, max_age_s: float, *, now: float | None = None) -> None:
        """Forget jobs older than `max_age_s` (their result was lost or expired unseen)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for job_id in [j for j, job in self._jobs.items() if now - job.submitted_at > max_age_s]:
                del self._jobs[job_id]

    def set_backlog(self, jobs: int) -> None:
        with self._lock:
            self._backlog = max(int(jobs), 0)

    def outstanding(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    # -- the decision -----------------------------------------------------------------------------

    def decide(self, job_id: str, versions: tuple[str, str] | None, budget_s: float, *,
               now: float | None = None) -> Decision:
        """Wait for job `job_id` (already `started`) with `budget_s` seconds left?"""
        now = time.monotonic() if now is None else now
        with self._lock:
            job = self._jobs.get(job_id)
            queue = self._ahead_locked(exclude=job_id)
            duration = self._duration_locked(versions)
            if job is None:  # finished between submit and now: the result is there
                decision = Decision(True, "about-to-finish", 0.0, budget_s, queue)
            elif duration is None:
                bound = self._lower_bound_locked(now)
                if bound is not None and bound > budget_s:
                    decision = Decision(False, "not-in-time", bound, budget_s, queue)
                elif queue:  # no estimate yet and other jobs ahead: only the first one waits to learn
                    decision = Decision(False, "cold-busy", None, budget_s, queue)
                else:
                    decision = Decision(True, "cold", None, budget_s, queue)
            else:
                eta = (job.eta_at - now) if job.eta_at is not None else duration - (now - job.submitted_at)
                if eta < 0:  # past its expected end: about to finish, unless long overdue
                    if -eta <= duration:
                        decision = Decision(True, "about-to-finish", 0.0, budget_s, queue)
                    else:
                        decision = Decision(False, "overdue", max(eta, 0.0), budget_s, queue)
                else:
                    decision = Decision(eta <= budget_s, "in-time" if eta <= budget_s else "not-in-time",
                                        eta, budget_s, queue)
            self._decisions[f"{'wait' if decision.wait else 'no-wait'}:{decision.reason}"] += 1
        return decision

    def count(self, outcome: str) -> None:
        """What a hook call got: cache-hit, ready-after-wait, pending-after-wait, ..."""
        with self._lock:
            self._outcomes[outcome] += 1

    def snapshot(self, versions: tuple[str, str] | None = None) -> dict[str, Any]:
        """The estimate and the decision counters (for logs, tests and a later /metrics)."""
        now = time.monotonic()
        with self._lock:
            estimates = {
                f"{model}/{adapter}": {"batch_s_median": round(statistics.median(s), 4),
                                       "batch_s_last": round(s[-1], 4), "samples": len(s)}
                for (model, adapter), s in self._samples.items() if s
            }
            current = self._eta_new_locked(versions, now) if versions is not None else None
            return {
                "estimates": estimates,
                "in_flight": len(self._jobs),
                "backlog": self._backlog,
                "eta_new_s": round(current, 4) if current is not None else None,
                "decisions": dict(self._decisions),
                "outcomes": dict(self._outcomes),
            }

    # -- internals (lock held) -------------------------------------------------------------------

    def _duration_locked(self, versions: tuple[str, str] | None) -> float | None:
        samples = self._samples.get((str(versions[0]), str(versions[1]))) if versions else None
        return statistics.median(samples) if samples else None

    def _ahead_locked(self, exclude: str | None = None) -> int:
        mine = len(self._jobs) - (1 if exclude in self._jobs else 0)
        # Our own queued jobs are in the broker backlog too: the larger count, not the sum.
        return max(mine, self._backlog)

    def _lower_bound_locked(self, now: float) -> float | None:
        if not self._jobs:
            return None
        return now - min(job.submitted_at for job in self._jobs.values())

    def _eta_new_locked(self, versions: tuple[str, str] | None, now: float) -> float | None:
        duration = self._duration_locked(versions)
        if duration is None:
            return None
        ahead = self._ahead_locked()
        if ahead == 0:
            return duration
        oldest = min((job.submitted_at for job in self._jobs.values()), default=now)
        running_left = max(duration - (now - oldest), 0.0)
        batches_after_running = math.ceil(ahead / max(self.batch_max, 1)) - 1
        return running_left + batches_after_running * duration + duration

    def _eta_join_locked(self, job: _Job, versions: tuple[str, str] | None, now: float) -> float | None:
        if job.eta_at is not None:
            return job.eta_at - now
        duration = self._duration_locked(versions)
        return None if duration is None else duration - (now - job.submitted_at)
