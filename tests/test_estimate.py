"""The running estimate of report duration and the hook's decision to wait (model.estimate):
pure logic on a fake clock, no model."""
from __future__ import annotations

import pytest

from model.estimate import ReportEstimator

V1 = ("tiny-abc", "none")
V2 = ("tiny-abc", "adapter-xyz")


def test_cold_start_waits_for_a_lone_job_only():
    est = ReportEstimator(batch_max=8)
    est.started("a", V1, now=0.0)
    first = est.decide("a", V1, 0.4, now=0.0)
    assert first.wait and first.reason == "cold" and first.eta_s is None
    est.started("b", V1, now=0.01)
    second = est.decide("b", V1, 0.4, now=0.01)  # another job ahead, nothing learned yet
    assert not second.wait and second.reason == "cold-busy" and second.queue == 1


def test_cold_start_lower_bound_from_a_job_running_longer_than_the_budget():
    est = ReportEstimator()
    est.started("a", V1, now=0.0)
    est.started("b", V1, now=1.0)
    decision = est.decide("b", V1, 0.4, now=1.0)
    assert not decision.wait and decision.reason == "not-in-time" and decision.eta_s == pytest.approx(1.0)


def test_a_slow_model_is_never_waited_for_once_measured():
    est = ReportEstimator()
    est.record(V1, 8.0)
    est.started("a", V1, now=0.0)
    decision = est.decide("a", V1, 0.41, now=0.0)
    assert not decision.wait and decision.reason == "not-in-time" and decision.eta_s == pytest.approx(8.0)
    assert "no-wait" in decision.describe() and "eta=8.000s" in decision.describe()


def test_a_fast_model_is_waited_for_when_idle_not_behind_a_full_queue():
    est = ReportEstimator(batch_max=2)
    est.record(V1, 0.2)
    est.started("a", V1, now=0.0)
    assert est.decide("a", V1, 0.4, now=0.0).wait  # idle: ready in 0.2 s
    for n in range(4):  # four more jobs: with batches of 2, the last waits for three batches
        est.started(f"q{n}", V1, now=0.0)
    est.started("late", V1, now=0.0)
    decision = est.decide("late", V1, 0.4, now=0.0)
    assert not decision.wait and decision.queue == 5 and decision.eta_s > 0.4


def test_estimates_are_kept_per_model_and_adapter():
    est = ReportEstimator()
    est.record(V1, 0.1)
    est.record(V2, 5.0)
    est.started("a", V1, now=0.0)
    assert est.decide("a", V1, 0.4, now=0.0).wait
    est.finished("a")
    est.started("b", V2, now=1.0)
    assert not est.decide("b", V2, 0.4, now=1.0).wait
    snap = est.snapshot(V2)
    assert snap["estimates"]["tiny-abc/none"]["batch_s_median"] == pytest.approx(0.1)
    assert snap["estimates"]["tiny-abc/adapter-xyz"]["samples"] == 1
    assert snap["decisions"] == {"wait:in-time": 1, "no-wait:not-in-time": 1}


def test_a_job_about_to_finish_is_waited_for_a_long_overdue_one_is_not():
    est = ReportEstimator()
    est.record(V1, 2.0)
    est.started("a", V1, now=0.0)  # expected ready at 2.0
    assert not est.decide("a", V1, 0.4, now=0.5).wait  # 1.5 s to go
    about = est.decide("a", V1, 0.4, now=1.8)  # 0.2 s to go
    assert about.wait and about.reason == "in-time"
    assert est.decide("a", V1, 0.4, now=2.5).reason == "about-to-finish"  # a little late
    overdue = est.decide("a", V1, 0.4, now=9.0)  # stuck or lost
    assert not overdue.wait and overdue.reason == "overdue"


def test_joining_a_job_in_flight_keeps_its_expected_end():
    est = ReportEstimator()
    est.record(V1, 3.0)
    assert est.started("a", V1, now=0.0) == pytest.approx(3.0)
    assert est.started("a", V1, now=2.9) == pytest.approx(0.1)  # the second view of the same chart
    assert est.decide("a", V1, 0.4, now=2.9).wait


def test_broker_backlog_counts_as_queue_and_old_jobs_expire():
    est = ReportEstimator(batch_max=1)
    est.record(V1, 0.3)
    est.set_backlog(3)
    est.started("a", V1, now=0.0)
    decision = est.decide("a", V1, 0.4, now=0.0)
    assert decision.queue == 3 and not decision.wait
    est.expire(10.0, now=20.0)
    assert est.outstanding() == []


def test_bad_samples_are_ignored():
    est = ReportEstimator()
    for versions, seconds in ((None, 1.0), (V1, None), (V1, 0.0), (V1, -1.0), (("", "none"), 1.0)):
        est.record(versions, seconds)
    assert est.snapshot(V1)["estimates"] == {}
