"""The batch window: when an idle worker stops waiting for more requests (both worker modes)."""
from __future__ import annotations

import time
from concurrent.futures import Future

import pytest

from model.batching import BatchWindow
from model.reports import EmbeddedPool
from model.settings import inference_settings

WINDOW = BatchWindow(max_size=4, max_wait_s=0.100, quiet_s=0.010)


def test_a_lone_request_waits_only_the_quiet_period():
    assert WINDOW.wait_left(now=0.0, first_at=0.0, last_at=0.0, size=1) == pytest.approx(0.010)
    assert WINDOW.wait_left(now=0.010, first_at=0.0, last_at=0.0, size=1) == 0.0


def test_arrivals_keep_the_batch_open_up_to_the_max_wait():
    # A request 8 ms after the first restarts the quiet period...
    assert WINDOW.wait_left(now=0.009, first_at=0.0, last_at=0.008, size=2) == pytest.approx(0.009)
    # ...but never past max_wait from the first.
    assert WINDOW.wait_left(now=0.095, first_at=0.0, last_at=0.094, size=3) == pytest.approx(0.005)
    assert WINDOW.wait_left(now=0.100, first_at=0.0, last_at=0.099, size=3) == 0.0


def test_a_full_batch_leaves_at_once():
    assert WINDOW.wait_left(now=0.0, first_at=0.0, last_at=0.0, size=4) == 0.0


def test_settings_build_the_window_and_its_timer_tick():
    settings = inference_settings({"TRIAGE_BATCH_MAX_SIZE": "6", "TRIAGE_BATCH_MAX_WAIT_MS": "40",
                                   "TRIAGE_BATCH_QUIET_MS": "4"})
    assert settings.batch_window == BatchWindow(6, 0.040, 0.004)
    assert settings.batch_window.tick_s == pytest.approx(0.001)
    assert BatchWindow(8, 0.040, 0.008).tick_s == pytest.approx(0.002)
    assert BatchWindow(8, 0.0, 0.0).tick_s == 0.001  # never a busy loop
    with pytest.raises(ValueError, match="TRIAGE_BATCH_QUIET_MS"):
        inference_settings({"TRIAGE_BATCH_QUIET_MS": "-1"})


class _Recorder(EmbeddedPool):
    """The embedded pool's batching loop with `run_batch` replaced by a record of batch sizes."""

    def __init__(self, window: BatchWindow) -> None:
        super().__init__(None, None, window=window)  # type: ignore[arg-type]
        self.formed: list[tuple[int, float]] = []

    def _loop(self) -> None:
        for batch in self._batches():
            self.formed.append((len(batch), time.monotonic()))
            for payload, future in batch:
                future.set_result(payload)


def _send(pool: EmbeddedPool, gaps_s: list[float]) -> list[Future]:
    futures = [pool.submit({"n": 0})]
    for n, gap in enumerate(gaps_s, 1):
        time.sleep(gap)
        futures.append(pool.submit({"n": n}))
    return futures


def test_embedded_pool_keeps_a_burst_together_and_lets_a_lone_request_go_early():
    pool = _Recorder(BatchWindow(max_size=8, max_wait_s=1.0, quiet_s=0.15))
    try:
        # Five requests 20 ms apart: each gap is far inside the quiet period, so one batch.
        futures = _send(pool, [0.02] * 4)
        assert [f.result(timeout=5)["n"] for f in futures] == [0, 1, 2, 3, 4]
        assert [size for size, _ in pool.formed] == [5]
        # A lone request leaves after the quiet period, long before max_wait.
        started = time.monotonic()
        pool.submit({"n": 9}).result(timeout=5)
        assert 0.1 < pool.formed[-1][1] - started < 0.6
        # A gap longer than the quiet period splits the requests.
        futures = _send(pool, [0.4])
        [f.result(timeout=5) for f in futures]
        assert [size for size, _ in pool.formed[2:]] == [1, 1]
    finally:
        pool.close()


def test_embedded_pool_never_waits_past_max_wait_or_max_size():
    pool = _Recorder(BatchWindow(max_size=3, max_wait_s=0.2, quiet_s=0.5))
    try:
        futures = _send(pool, [0.0, 0.0, 0.0])  # a full batch of 3 leaves at once, the 4th alone
        [f.result(timeout=5) for f in futures]
        assert [size for size, _ in pool.formed] == [3, 1]
        started = time.monotonic()
        pool.submit({"n": 1}).result(timeout=5)  # quiet 0.5 s, but max_wait 0.2 s from the first
        assert pool.formed[-1][1] - started < 0.45
    finally:
        pool.close()
