"""The report cache: finished reports keyed by their de-identified input and the model that wrote them.

Key = sha256 of the canonical JSON of the de-identified payload (without the request time, which
changes on every view) + model version + adapter version + prompt variant. The same chart viewed
twice gives the same key, so a report finished after the hook stopped waiting is served on the
next view. Values are JSON objects (the task's result); nothing else is stored.

Redis when configured (shared by the API processes and the workers), else an in-process TTL LRU
(`cachetools.TTLCache`) for the embedded mode. Besides reports, the cache keeps short-lived
"in flight" markers (key -> task id) so a second view of a chart joins the running job instead of
queueing the same work again, and a few counters (rejected reports, ...).
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from cachetools import TTLCache

from model.settings import InferenceSettings

log = logging.getLogger(__name__)

# Parts of a DeidentifiedRecord payload that change between views of the same chart without
# changing its clinical content: the request time and parsing bookkeeping.
_VOLATILE = ("as_of", "stats", "removed")
INVALID_TTL_S = 300  # a rejected report is retried after this, not on every view


def canonical_input(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in _VOLATILE}


def cache_key(payload: Mapping[str, Any], model_version: str, adapter_version: str, variant: str = "") -> str:
    """sha256 hex of the canonical de-identified input and the versions that would answer it."""
    body = json.dumps(
        {"input": canonical_input(payload), "model": model_version, "adapter": adapter_version, "variant": variant},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


class ReportCache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...
    def put(self, key: str, value: Mapping[str, Any], ttl_s: int | None = None) -> None: ...
    def delete(self, key: str) -> None: ...
    def claim(self, key: str, task_id: str, ttl_s: int) -> str | None:
        """Mark `key` in flight with `task_id`; returns None if claimed, else the running task id."""
        ...
    def release(self, key: str) -> None: ...
    def incr(self, counter: str, amount: int = 1) -> None: ...
    def counters(self) -> dict[str, int]: ...


class MemoryReportCache:
    """In-process TTL LRU (embedded mode). Thread-safe."""

    def __init__(self, *, ttl_s: int = 21600, max_items: int = 2048) -> None:
        self.ttl_s = ttl_s
        self._reports: TTLCache[str, dict[str, Any]] = TTLCache(maxsize=max_items, ttl=ttl_s)
        self._short: TTLCache[str, dict[str, Any]] = TTLCache(maxsize=max_items, ttl=INVALID_TTL_S)
        self._inflight: TTLCache[str, str] = TTLCache(maxsize=max_items, ttl=ttl_s)
        self._counters: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            value = self._reports.get(key) or self._short.get(key)
            return json.loads(json.dumps(value)) if value is not None else None

    def put(self, key: str, value: Mapping[str, Any], ttl_s: int | None = None) -> None:
        data = json.loads(json.dumps(value))  # a JSON copy: same values as the Redis cache gives back
        with self._lock:
            if ttl_s is not None and ttl_s < self.ttl_s:
                self._short[key] = data
            else:
                self._reports[key] = data

    def delete(self, key: str) -> None:
        with self._lock:
            self._reports.pop(key, None)
            self._short.pop(key, None)

    def claim(self, key: str, task_id: str, ttl_s: int) -> str | None:
        with self._lock:
            running = self._inflight.get(key)
            if running is not None:
                return running
            self._inflight[key] = task_id
            return None

    def release(self, key: str) -> None:
        with self._lock:
            self._inflight.pop(key, None)

    def incr(self, counter: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[counter] = self._counters.get(counter, 0) + amount

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)


class RedisReportCache:
    """Reports in Redis as JSON strings with a TTL; shared by API processes and workers."""

    def __init__(self, url: str, *, ttl_s: int = 21600, prefix: str = "triage:report:",
                 socket_timeout_s: float = 0.25) -> None:
        import redis

        self.ttl_s = ttl_s
        self.prefix = prefix
        self._redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=socket_timeout_s,
            socket_timeout=max(socket_timeout_s, 0.5),
            retry_on_timeout=False,
            health_check_interval=30,
        )

    def _k(self, kind: str, key: str) -> str:
        return f"{self.prefix}{kind}:{key}"

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self._redis.get(self._k("r", key))
        return json.loads(raw) if raw else None

    def put(self, key: str, value: Mapping[str, Any], ttl_s: int | None = None) -> None:
        body = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        self._redis.set(self._k("r", key), body, ex=ttl_s or self.ttl_s)

    def delete(self, key: str) -> None:
        self._redis.delete(self._k("r", key))

    def claim(self, key: str, task_id: str, ttl_s: int) -> str | None:
        k = self._k("inflight", key)
        if self._redis.set(k, task_id, nx=True, ex=max(1, int(ttl_s))):
            return None
        running = self._redis.get(k)
        return running.decode() if running else None

    def release(self, key: str) -> None:
        self._redis.delete(self._k("inflight", key))

    def incr(self, counter: str, amount: int = 1) -> None:
        self._redis.hincrby(f"{self.prefix}counters", counter, amount)

    def counters(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self._redis.hgetall(f"{self.prefix}counters").items()}

    def close(self) -> None:
        self._redis.close()


class NullReportCache:
    """No cache at all (`TRIAGE_CACHE_URL=none`): every request is generated (benchmarks)."""

    def get(self, key: str) -> dict[str, Any] | None:
        return None

    def put(self, key: str, value: Mapping[str, Any], ttl_s: int | None = None) -> None:
        pass

    def delete(self, key: str) -> None:
        pass

    def claim(self, key: str, task_id: str, ttl_s: int) -> str | None:
        return None

    def release(self, key: str) -> None:
        pass

    def incr(self, counter: str, amount: int = 1) -> None:
        pass

    def counters(self) -> dict[str, int]:
        return {}


def make_cache(settings: InferenceSettings) -> ReportCache:
    """Redis when a Redis URL is configured (TRIAGE_CACHE_URL, else the result back end / broker)."""
    if settings.cache_url == "none":
        return NullReportCache()
    url = settings.cache_redis_url
    if url:
        return RedisReportCache(url, ttl_s=settings.cache_ttl_s, prefix=settings.cache_prefix,
                                socket_timeout_s=settings.broker_connect_timeout_s)
    return MemoryReportCache(ttl_s=settings.cache_ttl_s, max_items=settings.cache_max_items)
