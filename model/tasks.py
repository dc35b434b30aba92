"""Celery tasks of the AI report queue, and `run_batch`, the code every worker mode runs.

A task message carries one `DeidentifiedRecord.to_payload()` (never PHI, never an id that could
be looked up outside). Messages that arrive together are buffered by celery-batches and handed to
`generate_report` as one list: one `Engine.generate_reports` call per batch. Each request's
result is stored under its own task id (`backend.mark_as_done`) and in the report cache, so the
hook finds it even after it stopped waiting. The embedded mode (`model.reports.EmbeddedPool`)
calls the same `run_batch` from a thread.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from billiard.exceptions import WorkerLostError
from celery import signals
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from model.batching import BatchWindow
from model.cache import INVALID_TTL_S, ReportCache, cache_key, make_cache
from model.queue import REPORT_TASK, app, settings_of

if TYPE_CHECKING:
    from model.engine import Engine

log = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_INVALID = "invalid"  # the model's output failed validation: rejected, counted
STATUS_ERROR = "error"  # bad payload or engine failure: counted


def prompt_variant(engine: Engine) -> str:
    """What besides the input and versions shapes the prompt (part of the cache key)."""
    return f"harmony:{engine.config.reasoning_effort}"


def run_batch(payloads: Sequence[dict[str, Any]], engine: Engine, cache: ReportCache | None) -> list[dict[str, Any]]:
    """Reports for de-identified payloads: one result dict per payload, never an exception.

    Cached results are returned as they are (a redelivered task does no work twice); identical
    inputs in one batch are generated once.
    """
    from deidentify.record import DeidentifiedRecord
    from model.prompts import build_messages

    batch_started = time.perf_counter()
    try:
        engine.refresh_adapter()  # between batches: follow `triage model promote` / `rollback`
    except Exception as exc:  # noqa: BLE001 - a bad release never fails the batch; the old adapter stays
        log.error("adapter refresh failed: %s", type(exc).__name__)
    base = {"model_version": engine.model_version, "adapter_version": engine.adapter_version}
    variant = prompt_variant(engine)
    results: list[dict[str, Any] | None] = [None] * len(payloads)
    todo: dict[str, list[int]] = {}  # key -> indexes of payloads with that input
    prompts: dict[str, tuple[str, str]] = {}  # key -> (rendered prompt, logged messages JSON)
    for i, payload in enumerate(payloads):
        try:
            key = cache_key(payload, engine.model_version, engine.adapter_version, variant)
        except (TypeError, ValueError, AttributeError):
            results[i] = {**base, "status": STATUS_ERROR, "error": "payload is not a JSON object"}
            continue
        if key in todo:
            todo[key].append(i)
            continue
        cached = _safe_get(cache, key)
        if cached is not None:
            results[i] = cached
            continue
        try:
            record = DeidentifiedRecord.from_payload(payload)
            messages = build_messages(record)
            prompt = engine.render(messages)  # harmony text here; the messages for an OpenAI-compatible server
        except Exception as exc:  # noqa: BLE001 - a bad payload fails alone, never the batch
            results[i] = {**base, "key": key, "status": STATUS_ERROR, "error": f"bad payload ({type(exc).__name__})"}
            _safe_incr(cache, "bad_payload")
            continue
        todo[key] = [i]
        prompts[key] = (prompt, json.dumps(messages, ensure_ascii=False))

    keys = list(todo)
    if keys:
        started = time.perf_counter()
        try:
            generations = engine.generate_reports([prompts[k][0] for k in keys])
        except Exception as exc:  # noqa: BLE001 - includes SoftTimeLimitExceeded: the batch fails, cleanly
            log.error("inference batch of %d failed: %s", len(keys), type(exc).__name__)
            generations = None
            _safe_incr(cache, "engine_error", len(keys))
        engine_s = round(time.perf_counter() - started, 6)
        for n, key in enumerate(keys):
            # engine_s: the generate call of this batch (the queue's own overhead is the rest).
            result: dict[str, Any] = {**base, "key": key, "prompt": prompts[key][1], "engine_s": engine_s,
                                      "batch_size": len(keys)}
            if generations is None:
                result.update(status=STATUS_ERROR, error="inference failed")
            else:
                gen = generations[n]
                result["tokens"] = int(gen.tokens)
                if gen.report is not None:
                    result.update(status=STATUS_OK, report=json.loads(gen.report.model_dump_json()))
                    _safe_put(cache, key, result, None)
                else:
                    # Rejected: counted, cached briefly (no re-queue on every view), never shown.
                    result.update(status=STATUS_INVALID, error=(gen.error or "invalid report")[:300])
                    _safe_incr(cache, "rejected")
                    _safe_put(cache, key, result, INVALID_TTL_S)
            if cache is not None:
                _safe_release(cache, key)
            for i in todo[key]:
                results[i] = result
        batch_s = round(time.perf_counter() - batch_started, 6)
        for key in keys:  # the whole run_batch: prompts, generation, cache writes
            results[todo[key][0]]["batch_s"] = batch_s
    return [r if r is not None else {**base, "status": STATUS_ERROR, "error": "no result"} for r in results]


def _safe_get(cache: ReportCache | None, key: str) -> dict[str, Any] | None:
    if cache is None:
        return None
    try:
        return cache.get(key)
    except Exception as exc:  # noqa: BLE001 - a cache outage only costs a recomputation
        log.warning("report cache read failed: %s", type(exc).__name__)
        return None


def _safe_put(cache: ReportCache | None, key: str, value: dict[str, Any], ttl_s: int | None) -> None:
    if cache is None:
        return
    try:
        cache.put(key, value, ttl_s)
    except Exception as exc:  # noqa: BLE001 - the task result still carries the report
        log.warning("report cache write failed: %s", type(exc).__name__)


def _safe_release(cache: ReportCache, key: str) -> None:
    try:
        cache.release(key)
    except Exception:  # noqa: BLE001 - the in-flight marker expires by itself
        pass


def _safe_incr(cache: ReportCache | None, counter: str, amount: int = 1) -> None:
    if cache is None:
        return
    try:
        cache.incr(counter, amount)
    except Exception:  # noqa: BLE001 - counters are best effort
        pass


# --- The worker process's engine and cache --------------------------------------------------

_engine: Engine | None = None
_cache: ReportCache | None = None
_state_lock = threading.Lock()


def get_engine() -> Engine:
    """The process's engine, loaded on first use (in a worker: at `worker_process_init`)."""
    global _engine
    with _state_lock:
        if _engine is None:
            from model.engine import Engine, EngineConfig

            config = EngineConfig.from_env()
            _engine = Engine.load(config)
            log.info("engine loaded: model %s, adapter %s", _engine.model_version, _engine.adapter_version)
        return _engine


def get_cache() -> ReportCache:
    global _cache
    with _state_lock:
        if _cache is None:
            _cache = make_cache(settings_of(app))
        return _cache


@signals.worker_process_init.connect
def _load_engine_after_fork(**_: Any) -> None:
    """Load the model in each pool process after the fork: CUDA must never be initialised in
    the parent (a forked CUDA context is unusable), and the parent stays small."""
    get_engine()
    get_cache()


# --- The batch task --------------------------------------------------------------------------


class InferenceBatches(Batches):
    """celery-batches with what its `flush` leaves out: the task's time limits, and a worker
    child lost mid-batch (OOM, SIGKILL) rejects its messages for redelivery instead of leaving
    them reserved (with acks_late a reserved message also holds one prefetch slot)."""

    acks_late = True
    reject_on_worker_lost = True
    window: BatchWindow  # set by the task decorator; `flush_interval` is its tick
    _busy = 0  # batches handed to the pool and not finished (read and written in the event loop)
    _first_at = _last_at = 0.0  # arrival of the buffer's first and latest request

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:  # noqa: N802 - celery's name
        handler = super().Strategy(task, app, consumer)

        def on_message(*args: Any, **kwargs: Any) -> None:
            now = time.monotonic()
            if self._buffer.qsize() == 0:
                self._first_at = now
            self._last_at = now
            handler(*args, **kwargs)

        return on_message

    def _do_flush(self) -> None:
        # Dynamic batching: while the model is busy, the timer does not flush; requests pile up
        # and leave together when it is free (or when a full batch has arrived). When idle, the
        # batch leaves once the window closes (model.batching).
        size = self._buffer.qsize()
        if size < self.flush_every:
            if self._busy:
                return
            if size and self.window.wait_left(time.monotonic(), self._first_at, self._last_at, size) > 0:
                return
        super()._do_flush()

    def flush(self, requests: Sequence[Any]) -> Any:
        requests = list(requests)
        self._busy += 1
        acks_early = [r for r in requests if not r.task.acks_late]
        acks_late = [r for r in requests if r.task.acks_late]
        serializable = ([SimpleRequest.from_request(r) for r in requests],)
        conf = self.app.conf

        def on_accepted(pid: int, time_accepted: float) -> None:
            for req in acks_early:
                req.acknowledge()

        def on_return(result: Any) -> None:
            self._busy = max(self._busy - 1, 0)
            for req in acks_late:
                req.acknowledge()

        def on_error(exc_info: Any) -> None:
            self._busy = max(self._busy - 1, 0)
            exc = getattr(exc_info, "exception", exc_info)
            lost = isinstance(exc, WorkerLostError)
            log.error("inference batch of %d ended with %s", len(requests), type(exc).__name__)
            for req in acks_late:
                if lost and self.reject_on_worker_lost:
                    req.reject(requeue=True)
                else:
                    try:
                        self.backend.mark_as_done(
                            req.id, {"status": STATUS_ERROR, "error": type(exc).__name__}, request=req
                        )
                    finally:
                        req.acknowledge()

        return self._pool.apply_async(
            apply_batches_task,
            (self, serializable, 0, None),
            accept_callback=on_accepted,
            callback=on_return,
            error_callback=on_error,
            soft_timeout=self.soft_time_limit or conf.task_soft_time_limit,
            timeout=self.time_limit or conf.task_time_limit,
        )


_settings = settings_of(app)


@app.task(
    base=InferenceBatches,
    name=REPORT_TASK,
    window=_settings.batch_window,
    flush_every=_settings.batch_max_size,
    flush_interval=_settings.batch_window.tick_s,
)
def generate_report(requests: Sequence[SimpleRequest]) -> int:
    """One batch of report requests (kwargs: `payload`, a de-identified record payload)."""
    payloads = [r.kwargs.get("payload") if isinstance(r.kwargs, dict) else None for r in requests]
    log.info("inference batch of %d", len(payloads))  # counts only: no payload in logs
    results = run_batch([p if isinstance(p, dict) else {} for p in payloads], get_engine(), get_cache())
    for request, result in zip(requests, results):
        app.backend.mark_as_done(request.id, result, request=request)
    return len(results)
