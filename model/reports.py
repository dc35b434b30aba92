"""`ReportService`: what the hook asks for an AI report, inside a deadline, never raising.

    service = ReportService.from_settings(app.config)
    outcome = service.request(deidentified, deadline_s=0.3)   # ready | pending | unavailable | disabled

1. cache hit -> "ready" at once;
2. else the job is submitted (Celery when `TRIAGE_BROKER_URL` is set, else the embedded pool, a
   local child process running the same `model.tasks.run_batch`) unless the same input is already in
   flight; the caller waits up to the deadline only when the running estimate (`model.estimate`)
   says the report can be ready in time: "ready", else "pending" at once (the job keeps running
   and fills the cache for the next view);
3. the broker is down or refuses -> "unavailable" within the deadline (a circuit breaker then
   skips the broker for `TRIAGE_BROKER_RETRY_S`);
4. no `TRIAGE_MODEL_PATH` -> "disabled" (rules-only service).

Only `DeidentifiedRecord` payloads leave this module.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import queue as queue_mod
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from model.batching import BatchWindow
from model.cache import INVALID_TTL_S, ReportCache, cache_key, make_cache
from model.estimate import Decision, ReportEstimator
from model.settings import InferenceSettings, inference_settings

if TYPE_CHECKING:
    from celery import Celery

    from deidentify.record import DeidentifiedRecord
    from model.engine import Engine, EngineConfig
    from model.report import TriageReport

log = logging.getLogger(__name__)

Status = Literal["ready", "pending", "unavailable", "disabled"]
EMBEDDED_NICE = 10  # niceness of the embedded worker process (lower CPU priority than the API)
_READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


@dataclass(frozen=True)
class ReportOutcome:
    status: Status
    report: TriageReport | None = None
    model_version: str | None = None
    adapter_version: str | None = None
    prompt: str | None = None  # the de-identified chat messages (JSON) the model answered
    reason: str | None = None  # why not ready (short, never patient data)
    key: str | None = None
    engine_s: float | None = None  # the worker's generate call for this report's batch
    batch_s: float | None = None  # the worker's whole run_batch (prompts + generate + cache)
    batch_size: int | None = None
    decision: str | None = None  # the wait decision and its estimate (counts and seconds: loggable)


class EmbeddedPool:
    """In-process worker: one thread, a batching loop over the same `run_batch` as Celery.

    Requests that arrive inside one batch window (`model.batching`) share one generate call. The engine loads in the thread on first use; a load failure is remembered and retried
    after `retry_s`.
    """

    def __init__(self, engine_config: EngineConfig, cache: ReportCache, *, window: BatchWindow,
                 retry_s: float = 30.0) -> None:
        self.engine_config = engine_config
        self.cache = cache
        self.window = window
        self.retry_s = retry_s
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self._load_failed_at = 0.0
        self._queue: queue_mod.Queue[tuple[dict[str, Any], Future[dict[str, Any]]] | None] = queue_mod.Queue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self.batches: list[int] = []  # sizes of the batches run (observability, tests)

    def _ensure_thread(self) -> None:
        with self._lock:
            # A fork (gunicorn) leaves the thread behind in the parent: start one per process.
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._queue = queue_mod.Queue()
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name="triage-embedded-worker", daemon=True)
                self._thread.start()

    def submit(self, payload: dict[str, Any]) -> Future[dict[str, Any]]:
        self._ensure_thread()
        future: Future[dict[str, Any]] = Future()
        self._queue.put((payload, future))
        return future

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _engine(self) -> Engine:
        if self.engine is None:
            if self.load_error and time.monotonic() - self._load_failed_at < self.retry_s:
                raise RuntimeError(self.load_error)
            from model.engine import Engine

            try:
                self.engine = Engine.load(self.engine_config)
            except Exception as exc:
                self.load_error = f"model failed to load ({type(exc).__name__})"
                self._load_failed_at = time.monotonic()
                log.error("embedded worker: %s: %s", self.load_error, exc)
                raise RuntimeError(self.load_error) from None
            self.load_error = None
        return self.engine

    def _batches(self) -> Iterator[list[Any]]:
        """Items from the queue grouped into batches by the batch window. Ends at a None item."""
        q = self._queue
        while True:
            item = q.get()
            if item is None:
                return
            batch = [item]
            first_at = last_at = time.monotonic()
            while True:
                remaining = self.window.wait_left(time.monotonic(), first_at, last_at, len(batch))
                try:
                    nxt = q.get(timeout=remaining) if remaining > 0 else q.get_nowait()
                except queue_mod.Empty:
                    if remaining > 0:
                        continue  # woke up early: the window decides again
                    break
                if nxt is None:
                    q.put(None)
                    break
                batch.append(nxt)
                last_at = time.monotonic()
                if len(batch) >= self.window.max_size:
                    break
            yield batch

    def _loop(self) -> None:
        from model.tasks import run_batch

        for batch in self._batches():
            try:
                engine = self._engine()
            except RuntimeError as exc:
                for _, future in batch:
                    future.set_exception(RuntimeError(str(exc)))
                continue
            self.batches.append(len(batch))
            results = run_batch([p for p, _ in batch], engine, self.cache)
            for (_, future), result in zip(batch, results):
                future.set_result(result)


class EmbeddedProcessPool:
    """The embedded worker in a child process: the same batching loop over `run_batch`.

    This is the default embedded mode. A thread in the API process would share its GIL with
    generation (and with `import torch`, which holds it for seconds): measured, hook calls then
    took 0.4-3.7 s instead of ~30 ms. The child owns torch; the API process never imports it.
    Results come back on a queue, resolve the caller's future and fill this process's cache.
    """

    def __init__(self, engine_config: EngineConfig, cache: ReportCache, *, window: BatchWindow,
                 torch_threads: int = 1) -> None:
        self.engine_config = engine_config
        self.cache = cache
        self.window = window
        self.torch_threads = torch_threads
        self._lock = threading.Lock()
        self._pid = 0
        self._process: Any = None
        self._requests: Any = None
        self._futures: dict[str, Future[dict[str, Any]]] = {}

    def _ensure_process(self) -> None:
        with self._lock:
            # Per API process (gunicorn forks after the app is built) and restarted if it died.
            if self._process is not None and self._pid == os.getpid() and self._process.is_alive():
                return
            self._fail_all("embedded worker process stopped")
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")  # never fork a process that holds threads
            self._requests, results = ctx.Queue(), ctx.Queue()
            self._process = ctx.Process(
                target=_embedded_child,
                args=(self.engine_config, self.window, self.torch_threads,
                      self._requests, results),
                name="triage-embedded-worker", daemon=True)
            self._process.start()
            self._pid = os.getpid()
            threading.Thread(target=self._read, args=(results,), name="triage-embedded-results",
                             daemon=True).start()

    def submit(self, payload: dict[str, Any]) -> Future[dict[str, Any]]:
        self._ensure_process()
        request_id = uuid.uuid4().hex
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            self._futures[request_id] = future
        self._requests.put((request_id, payload))
        return future

    def close(self) -> None:
        with self._lock:
            process, self._process = self._process, None
            self._fail_all("embedded worker closed")
        if process is not None and process.is_alive():
            self._requests.put(None)
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()

    def _fail_all(self, why: str) -> None:
        for future in self._futures.values():
            if not future.done():
                future.set_exception(RuntimeError(why))
        self._futures.clear()

    def _read(self, results: Any) -> None:
        from model.tasks import STATUS_INVALID, STATUS_OK

        while True:
            try:
                item = results.get()
            except (EOFError, OSError):
                return
            if item is None:
                return
            request_id, value = item
            with self._lock:
                future = self._futures.pop(request_id, None)
            if isinstance(value, str):  # the child could not load the model
                if future is not None and not future.done():
                    future.set_exception(RuntimeError(value))
                continue
            key = value.get("key")
            if key and value.get("status") in (STATUS_OK, STATUS_INVALID):
                try:
                    self.cache.put(key, value, INVALID_TTL_S if value["status"] == STATUS_INVALID else None)
                except Exception as exc:  # noqa: BLE001 - the caller still gets the report
                    log.warning("report cache write failed: %s", type(exc).__name__)
            if future is not None and not future.done():
                future.set_result(value)


def _embedded_child(engine_config: EngineConfig, window: BatchWindow, torch_threads: int,
                    requests: Any, results: Any) -> None:
    """Main of the embedded worker process: load the engine once, then batch and generate."""
    import torch

    from model.cache import MemoryReportCache

    torch.set_num_threads(max(1, torch_threads))  # leave the other cores to the API's hook threads
    try:
        # Reports are background work; hook calls have a deadline: on a shared CPU the kernel
        # serves the API first (measured in bench/hook_latency.py, docs/deployment.md).
        os.nice(EMBEDDED_NICE)
    except OSError:
        pass
    pool = EmbeddedPool(engine_config, MemoryReportCache(), window=window)
    load_error = None
    try:
        pool._engine()
    except RuntimeError as exc:
        load_error = str(exc)
    pool._queue = _ForwardingQueue(requests)
    for batch in pool._batches():
        if load_error is not None:
            for request_id, _ in batch:
                results.put((request_id, load_error))
            continue
        from model.tasks import run_batch

        for (request_id, _), value in zip(batch, run_batch([p for _, p in batch], pool.engine, pool.cache)):
            results.put((request_id, value))


class _ForwardingQueue:
    """A multiprocessing queue seen through the `queue.Queue` calls the batching loop makes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def get(self, timeout: float | None = None) -> Any:
        return self.inner.get(timeout=timeout)

    def get_nowait(self) -> Any:
        return self.inner.get_nowait()

    def put(self, item: Any) -> None:
        self.inner.put(item)


class ReportService:
    """AI reports for the hook: cache, submit, wait with a deadline; one per app process.

    Every Redis or broker operation runs on a small thread pool and the caller waits for it at
    most until the deadline: a broker or cache that hangs (not just refuses) cannot hold the
    hook. A call that overruns trips a circuit breaker for `TRIAGE_BROKER_RETRY_S`.
    """

    GRACE_S = 0.015  # the worker thread returns "pending" at the deadline; this covers the hand-off
    MIN_WAIT_S = 0.01  # even with no budget left, a cache hit (~1 ms) is still worth looking up
    # Threads that look up, submit and wait for reports: at least the hook threads of one gunicorn
    # worker (`triage serve --threads`), so a burst never queues a cache lookup behind waits.
    EXECUTOR_THREADS = 32
    TRACK_INTERVAL_S = 0.2  # Celery mode: how often jobs in flight are checked for completion

    def __init__(
        self,
        settings: InferenceSettings,
        *,
        engine_config: EngineConfig | None = None,
        cache: ReportCache | None = None,
        celery: Celery | None = None,
    ) -> None:
        self.settings = settings
        self.engine_config = engine_config
        self.enabled = bool(settings.model_path) or (engine_config is not None and engine_config.engine == "openai")
        self.mode: Literal["celery", "embedded", "disabled"] = (
            "disabled" if not self.enabled else "celery" if settings.broker_url else "embedded"
        )
        self.cache: ReportCache | None = None
        self._celery = celery
        self._pool: EmbeddedPool | EmbeddedProcessPool | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._down_until = 0.0
        self._versions: tuple[str, str] | None = None
        self._watch: Any = None  # model.release.RegistryWatch with TRIAGE_ADAPTER_REGISTRY
        self._model_version: str | None = None
        self._versions_warned = False
        self._inflight: dict[str, Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._thread_state = threading.local()  # each request thread's result pub/sub connection
        self.estimator = ReportEstimator(batch_max=settings.batch_max_size)
        self._tracker: threading.Thread | None = None
        self._tracker_pid = 0
        self._tracker_wake = threading.Event()
        self._closed = False
        if not self.enabled:
            return
        if self.engine_config is None:
            from model.engine import EngineConfig

            self.engine_config = EngineConfig.from_env(model_path=settings.model_path,
                                                       adapter_path=settings.adapter_path)
        self.cache = cache if cache is not None else make_cache(settings)
        self._executor = ThreadPoolExecutor(max_workers=self.EXECUTOR_THREADS, thread_name_prefix="triage-reports")
        if self.mode == "celery":
            if self._celery is None:
                from model.queue import make_celery

                self._celery = make_celery(settings.broker_url, settings.backend_url,
                                           environ=_settings_environ(settings))
        else:
            pool_class = EmbeddedProcessPool if settings.embedded_process else EmbeddedPool
            self._pool = pool_class(self.engine_config, self.cache, window=settings.batch_window)

    @classmethod
    def from_settings(cls, values: Mapping[str, Any] | None = None) -> ReportService:
        """From `TRIAGE_*` values (a Flask app.config, or os.environ when None)."""
        settings = inference_settings(values)
        engine_config = None
        engine_kind = (values or {}).get("TRIAGE_ENGINE") or os.environ.get("TRIAGE_ENGINE")
        if settings.model_path or engine_kind == "openai":
            from model.engine import EngineConfig

            # The engine's own settings (quantization, reasoning effort...) shape the cache key:
            # read them as the workers do, from the environment, with explicit values on top.
            env = {k: v for k, v in os.environ.items() if k.startswith("TRIAGE_")}
            if values is not None:
                env.update({k: str(v) for k, v in values.items() if isinstance(k, str) and k.startswith("TRIAGE_")
                            and v is not None and not isinstance(v, (dict, list, tuple))})
            engine_config = EngineConfig.from_env(env)
        return cls(settings, engine_config=engine_config)

    # -- public API ------------------------------------------------------------------------------

    @property
    def description(self) -> str:
        """One line for discovery texts and card sources."""
        if self.mode == "disabled":
            return "rules-only (no AI model configured)"
        versions = self.versions()
        model = f"model {versions[0]}, adapter {versions[1]}" if versions else "the configured model"
        return f"{model}, {'Celery workers' if self.mode == 'celery' else 'in-process worker'}"

    def versions(self) -> tuple[str, str] | None:
        """(model_version, adapter_version) as the workers compute them, from the same paths.

        With a release registry the adapter is the registry's current one (re-read when it changes),
        so a promotion changes the cache key here as it does on the workers.
        """
        if self.enabled and self.engine_config.engine == "openai":
            from model.openai_engine import openai_versions

            return openai_versions(self.engine_config)
        if self.enabled and self.engine_config.adapter_registry:
            return self._registry_versions()
        if self._versions is None and self.enabled:
            from model.engine import adapter_version_of, model_version_of

            cfg = self.engine_config
            try:
                model = model_version_of(cfg.model_path, cfg.quantization)
                adapter = adapter_version_of(cfg.adapter_path) if cfg.adapter_path else "none"
                self._versions = (model, adapter)
            except OSError as exc:
                if not self._versions_warned:
                    log.warning("cannot read the model/adapter version here (%s): the cache is used "
                                "once a worker has answered", type(exc).__name__)
                    self._versions_warned = True
        return self._versions

    def _registry_versions(self) -> tuple[str, str] | None:
        from model.engine import model_version_of
        from model.release import RegistryWatch, ReleaseRefused

        cfg = self.engine_config
        try:
            if self._watch is None:
                self._watch = RegistryWatch(cfg.adapter_registry)
                self._model_version = model_version_of(cfg.model_path, cfg.quantization)
            release = self._watch.current()
        except (OSError, ReleaseRefused) as exc:
            if not self._versions_warned:
                log.warning("cannot read the model version or adapter registry here (%s)", type(exc).__name__)
                self._versions_warned = True
            return None
        return self._model_version, release["adapter_version"] if release else "none"

    def key_for(self, payload: Mapping[str, Any]) -> str | None:
        versions = self.versions()
        if versions is None:
            return None
        return cache_key(payload, versions[0], versions[1], f"harmony:{self.engine_config.reasoning_effort}")

    def request(self, record: DeidentifiedRecord, *, deadline_s: float) -> ReportOutcome:
        """The report if it can be had within `deadline_s`; never raises, never waits longer
        (plus `GRACE_S`; at least `MIN_WAIT_S` for a cache lookup)."""
        if not self.enabled:
            return ReportOutcome("disabled", reason="no model configured")
        started = time.monotonic()
        if started < self._down_until:
            return ReportOutcome("unavailable", reason="queue unavailable")
        deadline = started + max(deadline_s, self.MIN_WAIT_S)
        progress = _Progress()
        try:
            future = self._executor.submit(self._request, record.to_payload(), deadline, True, progress)
            return future.result(timeout=max(deadline - time.monotonic(), 0.0) + self.GRACE_S)
        except FutureTimeout:
            # Stuck on the network (a hung broker or cache), not merely a call that started with
            # almost no budget left on a busy CPU: that one goes on, and must not trip the breaker
            # (measured: at 16 concurrent calls on 2 busy cores it tripped and refused reports).
            if progress.in_io and progress.io_s() >= self.settings.broker_connect_timeout_s:
                self._trip("queue or cache did not answer in time")
                self.estimator.count("unavailable-io-timeout")
                return ReportOutcome("unavailable", reason="queue unavailable")
            self.estimator.count("pending-late")
            return ReportOutcome("pending", reason="deadline", decision="late")  # busy CPU: it goes on
        except Exception as exc:  # noqa: BLE001 - the hook must answer whatever happens here
            log.error("AI report request failed: %s", type(exc).__name__)
            return ReportOutcome("unavailable", reason="internal error")

    def precompute(self, record: DeidentifiedRecord) -> Status:
        """Submit without waiting (appointment-book): 'pending' once handed over."""
        if not self.enabled:
            return "disabled"
        if time.monotonic() < self._down_until:
            return "unavailable"
        try:
            payload = record.to_payload()
            self._executor.submit(self._request, payload, time.monotonic(), False)
        except Exception as exc:  # noqa: BLE001
            log.error("AI report precompute failed: %s", type(exc).__name__)
            return "unavailable"
        return "pending"

    def warm(self) -> None:
        """Start, in this process, what the first hook call would otherwise start inside its
        deadline: the model versions (cache keys) and the embedded worker process."""
        if not self.enabled:
            return
        self.versions()
        if isinstance(self._pool, EmbeddedProcessPool):
            self._pool._ensure_process()

    def close(self) -> None:
        self._closed = True
        self._tracker_wake.set()
        if self._pool is not None:
            self._pool.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- internals (run on the executor) ---------------------------------------------------------

    def _trip(self, why: str) -> None:
        self._down_until = time.monotonic() + self.settings.broker_retry_s
        log.warning("AI reports unavailable (%s); retrying in %.0f s", why, self.settings.broker_retry_s)

    def _request(self, payload: dict[str, Any], deadline: float, wait: bool,
                 progress: _Progress | None = None) -> ReportOutcome:
        progress = progress or _Progress()
        key = self.key_for(payload)
        if key is not None:
            try:
                with progress.io():
                    hit = self.cache.get(key)
            except Exception as exc:  # noqa: BLE001 - a cache outage is an outage of the AI path
                self._trip(f"cache: {type(exc).__name__}")
                return ReportOutcome("unavailable", key=key, reason="cache unavailable")
            if hit is not None:
                if wait:
                    self.estimator.count("cache-hit")
                return dataclasses.replace(self._outcome(hit, key), decision="cache-hit")
        if self.mode == "embedded":
            future, job_id = self._embedded_submit(payload, key)
            if not wait:
                return ReportOutcome("pending", key=key)
            decision = self._decide(job_id, deadline)
            if not decision.wait:
                return ReportOutcome("pending", key=key, reason="estimated not ready in time",
                                     decision=decision.describe())
            return self._counted(self._wait_future(future, deadline, key), decision)
        return self._request_celery(payload, key, deadline, wait=wait, progress=progress)

    def _decide(self, job_id: str, deadline: float) -> Decision:
        """Wait for this job? Counted in `stats()`; the hook logs it (`ReportOutcome.decision`)."""
        return self.estimator.decide(job_id, self._versions, max(deadline - time.monotonic(), 0.0))

    def _counted(self, outcome: ReportOutcome, decision: Decision) -> ReportOutcome:
        self.estimator.count("ready-after-wait" if outcome.status == "ready" else f"{outcome.status}-after-wait")
        return dataclasses.replace(outcome, decision=decision.describe())

    def stats(self) -> dict[str, Any]:
        """The running estimate and the hook's decisions in this process (for logs and /metrics)."""
        return {"mode": self.mode, **self.estimator.snapshot(self._versions)}

    def _embedded_submit(self, payload: dict[str, Any], key: str | None) -> tuple[Future[dict[str, Any]], str]:
        """Join the running job for the same input, else queue a new one (tracked by the estimator)."""
        with self._lock:
            future = self._inflight.get(key) if key is not None else None
            job_id = key or uuid.uuid4().hex
            if future is None or future.done():
                future = self._pool.submit(payload)
                self.estimator.started(job_id, self._versions)
                future.add_done_callback(lambda f, j=job_id: self._embedded_done(j, f))
                if key is not None:
                    self._inflight[key] = future
                    future.add_done_callback(lambda _f, k=key: self._inflight.pop(k, None))
            return future, job_id

    def _embedded_done(self, job_id: str, future: Future[dict[str, Any]]) -> None:
        self.estimator.finished(job_id)
        if future.cancelled() or future.exception() is not None:
            return
        value = future.result()
        self.estimator.record((value.get("model_version"), value.get("adapter_version")), value.get("batch_s"))

    def _request_celery(self, payload: dict[str, Any], key: str | None, deadline: float, *, wait: bool,
                        progress: _Progress) -> ReportOutcome:
        from model.queue import REPORT_TASK

        task_id = str(uuid.uuid4())
        running = None
        if key is not None:
            claim_ttl = self.settings.visibility_timeout_s + self.settings.time_limit_s
            try:
                with progress.io():
                    running = self.cache.claim(key, task_id, claim_ttl)
            except Exception as exc:  # noqa: BLE001
                self._trip(f"cache: {type(exc).__name__}")
                return ReportOutcome("unavailable", key=key, reason="cache unavailable")
        if running is None:
            try:
                with progress.io():
                    self._celery.send_task(REPORT_TASK, kwargs={"payload": payload}, task_id=task_id,
                                           queue=self.settings.queue, retry=False)
            except Exception as exc:  # noqa: BLE001 - a down broker is an expected outage
                self._release(key)
                self._trip(f"broker: {type(exc).__name__}")
                return ReportOutcome("unavailable", key=key, reason="queue unavailable")
        else:
            task_id = running  # the same input is being generated: wait for that job
        self.estimator.started(task_id, self._versions)
        self._ensure_tracker()
        if not wait:
            return ReportOutcome("pending", key=key)
        decision = self._decide(task_id, deadline)
        if not decision.wait:
            return ReportOutcome("pending", key=key, reason="estimated not ready in time",
                                 decision=decision.describe())
        return self._counted(self._wait_task(task_id, deadline, key), decision)

    # -- Celery mode: follow the jobs in flight to learn their durations ----------------------------

    def _ensure_tracker(self) -> None:
        with self._lock:
            if self._tracker is not None and self._tracker.is_alive() and self._tracker_pid == os.getpid():
                self._tracker_wake.set()
                return
            self._tracker_pid = os.getpid()
            self._tracker = threading.Thread(target=self._track, name="triage-report-tracker", daemon=True)
            self._tracker.start()

    def _track(self) -> None:
        """Every TRACK_INTERVAL_S while jobs are in flight: one MGET of their results (each finished
        batch's `batch_s` feeds the estimate) and one LLEN of the broker queue (the backlog)."""
        backend = self._celery.backend
        broker = _redis_client(self.settings.broker_url, self.settings.broker_connect_timeout_s)
        give_up_s = self.settings.visibility_timeout_s + self.settings.time_limit_s
        while not self._closed:
            jobs = self.estimator.outstanding()
            if not jobs:
                self._tracker_wake.wait(timeout=5.0)
                self._tracker_wake.clear()
                continue
            try:
                if broker is not None:
                    self.estimator.set_backlog(int(broker.llen(self.settings.queue)))
                metas = backend.mget([backend.get_key_for_task(job) for job in jobs]) if hasattr(
                    backend, "mget") else [None] * len(jobs)
                for job, raw in zip(jobs, metas):
                    if not raw:
                        continue
                    meta = backend.decode_result(raw)
                    if meta.get("status") not in _READY_STATES:
                        continue
                    self.estimator.finished(job)
                    value = meta.get("result")
                    if meta.get("status") == "SUCCESS" and isinstance(value, dict):
                        self.estimator.record((value.get("model_version"), value.get("adapter_version")),
                                              value.get("batch_s"))
            except Exception as exc:  # noqa: BLE001 - the estimate is best effort
                log.debug("report tracker: %s", type(exc).__name__)
            self.estimator.expire(give_up_s)
            time.sleep(self.TRACK_INTERVAL_S)

    def _wait_task(self, task_id: str, deadline: float, key: str | None) -> ReportOutcome:
        """Wait for the task's result until the deadline.

        On Redis: subscribe to the channel Celery publishes each stored result on, read the result
        once (it may be there already), and again on each message, so the answer is seen within
        a round trip. Other back ends: a GET every few ms. Not `AsyncResult.get(timeout=...)`:
        on Redis it drains pub/sub in 1 s slices and can overrun a sub-second timeout by a second.
        """
        backend = self._celery.backend
        pubsub = self._subscribe(backend, task_id)
        pause = 0.001
        try:
            while True:
                try:
                    meta = backend.get_task_meta(task_id, cache=False)
                except Exception as exc:  # noqa: BLE001 - the back end went away: the cache gets it later
                    log.warning("AI report result back end: %s", type(exc).__name__)
                    return ReportOutcome("pending", key=key, reason="result back end unavailable")
                if meta.get("status") in _READY_STATES:
                    value = meta.get("result")
                    if meta.get("status") != "SUCCESS" or not isinstance(value, dict):
                        return ReportOutcome("unavailable", key=key, reason="worker error")
                    return self._outcome(value, key)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return ReportOutcome("pending", key=key, reason="deadline")
                if pubsub is not None:
                    try:  # re-read at least every 100 ms, whatever the channel says
                        pubsub.get_message(timeout=min(remaining, 0.1))
                        continue
                    except Exception:  # noqa: BLE001 - fall back to polling
                        pubsub = self._drop_pubsub()
                time.sleep(min(pause, remaining))
                pause = min(pause * 1.5, 0.005)
        finally:
            if pubsub is not None:
                try:
                    pubsub.unsubscribe(backend.get_key_for_task(task_id))
                except Exception:  # noqa: BLE001
                    self._drop_pubsub()

    def _subscribe(self, backend: Any, task_id: str) -> Any:
        """This thread's pub/sub connection (Redis back end), subscribed to the task's result
        channel; None where there is none (polling then). One connection per request thread,
        kept between requests: a connection per wait made a burst of requests reach the broker
        spread out (a connect and handshake each, under the GIL). A message left over from an
        earlier task only causes one more read of this task's result."""
        client = getattr(backend, "client", None)
        if client is None or not hasattr(client, "pubsub") or not hasattr(backend, "get_key_for_task"):
            return None
        tls = self._thread_state
        if getattr(tls, "client", None) is not client:
            self._drop_pubsub()
            tls.pubsub, tls.client = client.pubsub(ignore_subscribe_messages=True), client
        try:
            # Read what earlier waits left (unsubscribe confirmations, late results) first.
            while tls.pubsub.get_message(ignore_subscribe_messages=False, timeout=0.0) is not None:
                pass
            tls.pubsub.subscribe(backend.get_key_for_task(task_id))
            return tls.pubsub
        except Exception:  # noqa: BLE001 - polling still works
            return self._drop_pubsub()

    def _drop_pubsub(self) -> None:
        tls = self._thread_state
        pubsub, tls.pubsub, tls.client = getattr(tls, "pubsub", None), None, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # noqa: BLE001
                pass

    def _wait_future(self, future: Future[dict[str, Any]], deadline: float, key: str | None) -> ReportOutcome:
        try:
            value = future.result(timeout=max(deadline - time.monotonic(), 0.0))
        except FutureTimeout:
            return ReportOutcome("pending", key=key, reason="deadline")
        except RuntimeError as exc:
            return ReportOutcome("unavailable", key=key, reason=str(exc))
        return self._outcome(value, key)

    def _outcome(self, value: dict[str, Any], key: str | None) -> ReportOutcome:
        from model.report import TriageReport

        versions = (value.get("model_version"), value.get("adapter_version"))
        if all(versions):
            if self._versions is None:
                self._versions = versions  # learned from a worker when the paths are not readable here
            elif versions != self._versions and not self._versions_warned:
                log.warning("workers answer with model %s / adapter %s, this service expects %s / %s: "
                            "their reports are not found in the cache", *versions, *self._versions)
                self._versions_warned = True
        if value.get("status") != "ok":
            return ReportOutcome("unavailable", model_version=versions[0], adapter_version=versions[1],
                                 key=value.get("key", key), reason=str(value.get("status") or "error"),
                                 engine_s=value.get("engine_s"), batch_s=value.get("batch_s"),
                                 batch_size=value.get("batch_size"))
        try:
            report = TriageReport.model_validate(value["report"])
        except Exception:  # noqa: BLE001 - revalidated here: a cache entry is never trusted blindly
            return ReportOutcome("unavailable", key=key, reason="invalid")
        return ReportOutcome("ready", report=report, model_version=versions[0], adapter_version=versions[1],
                             prompt=value.get("prompt"), key=value.get("key", key),
                             engine_s=value.get("engine_s"), batch_s=value.get("batch_s"),
                                 batch_size=value.get("batch_size"))

    def _release(self, key: str | None) -> None:
        if key is None:
            return
        try:
            self.cache.release(key)
        except Exception:  # noqa: BLE001
            pass


class _Progress:
    """Whether the request's worker thread is inside a network call (for the caller's timeout)."""

    def __init__(self) -> None:
        self.in_io = False
        self._since = 0.0

    def io_s(self) -> float:
        """Seconds the current network call has lasted (0 outside one)."""
        return time.monotonic() - self._since if self.in_io else 0.0

    @contextmanager
    def io(self) -> Iterator[None]:
        self._since = time.monotonic()
        self.in_io = True
        try:
            yield
        finally:
            self.in_io = False


def _redis_client(url: str | None, timeout_s: float) -> Any:
    """A Redis client of the broker (for its queue length), None when the broker is not Redis."""
    if not url or not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=max(timeout_s, 0.5))


def _settings_environ(settings: InferenceSettings) -> dict[str, str]:
    """The settings back as TRIAGE_* strings (to build a Celery app that matches them)."""
    from model.settings import _FIELDS

    out: dict[str, str] = {}
    for name, attr in _FIELDS.items():
        value = getattr(settings, attr)
        if value is not None:
            out[name] = str(value)
    return out
