"""Settings of the AI report path (queue, batching, cache), read from `TRIAGE_*` variables.

Kept free of heavy imports: the API, the worker and `cds_hooks.config` all read this table.
The engine's own settings (model path, adapter, quantization, token budgets) live on
`model.engine.EngineConfig`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from model.batching import BatchWindow


def _str(raw: str) -> str | None:
    return str(raw).strip() or None


def _positive_int(raw: str) -> int:
    value = int(str(raw).strip())
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(str(raw).strip())
    if value < 0:
        raise ValueError("must be an integer >= 0")
    return value


def _bool(raw: str) -> bool:
    value = str(raw).strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _positive_float(raw: str) -> float:
    value = float(str(raw).strip())
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(str(raw).strip())
    if not value >= 0:
        raise ValueError("must be a number >= 0")
    return value


# Shared with cds_hooks.config: every TRIAGE_* value is parsed by one of these.
parse_str, parse_bool = _str, _bool
parse_positive_int, parse_non_negative_int = _positive_int, _non_negative_int
parse_positive_float, parse_non_negative_float = _positive_float, _non_negative_float


@dataclass(frozen=True)
class InferenceSetting:
    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str


INFERENCE_SETTINGS: tuple[InferenceSetting, ...] = (
    InferenceSetting("TRIAGE_RESULT_BACKEND", None, _str,
                     "Celery result back end (Redis URL). Default: the broker URL when it is Redis."),
    InferenceSetting("TRIAGE_CACHE_URL", None, _str,
                     "Redis URL of the report cache. Default: the result back end / broker Redis; with "
                     "no Redis at all, an in-process TTL LRU. `memory` forces the in-process cache; "
                     "`none` turns caching off (benchmarks: every request is generated)."),
    InferenceSetting("TRIAGE_CACHE_TTL_S", 21600, _positive_int,
                     "Seconds a finished report stays cached (default 6 h: one visit)."),
    InferenceSetting("TRIAGE_CACHE_MAX_ITEMS", 2048, _positive_int,
                     "Entries kept by the in-process cache (least recently used evicted)."),
    InferenceSetting("TRIAGE_CACHE_PREFIX", "triage:report:", _str,
                     "Key prefix of the report cache in Redis."),
    InferenceSetting("TRIAGE_INFERENCE_QUEUE", "inference", _str,
                     "Name of the Celery queue the GPU workers consume."),
    InferenceSetting("TRIAGE_BATCH_MAX_SIZE", 8, _positive_int,
                     "Most report requests generated together in one batch (one generate call)."),
    InferenceSetting("TRIAGE_BATCH_MAX_WAIT_MS", 25, _non_negative_int,
                     "Longest the first request of a batch waits in an idle worker for others to batch "
                     "with (ms), while they keep arriving (see TRIAGE_BATCH_QUIET_MS). While the model "
                     "is busy, requests pile up into the next batch anyway."),
    InferenceSetting("TRIAGE_BATCH_QUIET_MS", 5, _non_negative_int,
                     "An idle worker runs the batch once no new request has arrived for this long (ms): "
                     "a lone request waits only this, a burst of concurrent requests stays together."),
    InferenceSetting("TRIAGE_TASK_SOFT_TIME_LIMIT_S", 120, _positive_int,
                     "Soft time limit of one batch (seconds): the batch is abandoned, its requests fail."),
    InferenceSetting("TRIAGE_TASK_TIME_LIMIT_S", 150, _positive_int,
                     "Hard time limit of one batch (seconds): the worker child is killed and replaced."),
    InferenceSetting("TRIAGE_RESULT_EXPIRES_S", 3600, _positive_int,
                     "Seconds Celery keeps a task result in the result back end."),
    InferenceSetting("TRIAGE_VISIBILITY_TIMEOUT_S", 600, _positive_int,
                     "Redis broker: seconds before an unacknowledged task (its worker died) is "
                     "redelivered. Must exceed the batch wait plus TRIAGE_TASK_TIME_LIMIT_S."),
    InferenceSetting("TRIAGE_BROKER_CONNECT_TIMEOUT_S", 0.25, _positive_float,
                     "Connect and socket timeout towards the broker from the API (seconds): a down "
                     "broker fails fast instead of eating the hook deadline."),
    InferenceSetting("TRIAGE_BROKER_RETRY_S", 5.0, _positive_float,
                     "After a failed publish the API skips the broker for this many seconds "
                     "(reports 'unavailable' at once instead of trying on every hook call)."),
    InferenceSetting("TRIAGE_EMBEDDED_PROCESS", True, _bool,
                     "Embedded mode (no broker): 1 runs the worker loop in a child process that owns "
                     "torch, so generation never holds the API's GIL; 0 runs it on a thread (tests)."),
    InferenceSetting("TRIAGE_HOOK_RESERVE_MS", 40, _non_negative_int,
                     "Part of TRIAGE_HOOK_DEADLINE_MS kept for building, logging and sending the "
                     "cards after the wait for the AI report."),
)

_BY_NAME = {s.name: s for s in INFERENCE_SETTINGS}


@dataclass(frozen=True)
class InferenceSettings:
    broker_url: str | None = None
    result_backend: str | None = None
    cache_url: str | None = None
    cache_ttl_s: int = 21600
    cache_max_items: int = 2048
    cache_prefix: str = "triage:report:"
    queue: str = "inference"
    batch_max_size: int = 8
    batch_max_wait_ms: int = 25
    batch_quiet_ms: int = 5
    soft_time_limit_s: int = 120
    time_limit_s: int = 150
    result_expires_s: int = 3600
    visibility_timeout_s: int = 600
    broker_connect_timeout_s: float = 0.25
    broker_retry_s: float = 5.0
    hook_reserve_ms: int = 40
    embedded_process: bool = True
    model_path: str | None = None
    adapter_path: str | None = None

    @property
    def batch_window(self) -> BatchWindow:
        return BatchWindow(self.batch_max_size, self.batch_max_wait_ms / 1000, self.batch_quiet_ms / 1000)

    @property
    def backend_url(self) -> str | None:
        """The result back end: explicit, else the broker when it is Redis."""
        if self.result_backend:
            return self.result_backend
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://", "unix://")):
            return self.broker_url
        return None

    @property
    def cache_redis_url(self) -> str | None:
        """Redis URL of the report cache, or None for the in-process cache."""
        if self.cache_url in ("memory", "none"):
            return None
        if self.cache_url:
            return self.cache_url
        backend = self.backend_url
        return backend if backend and backend.startswith(("redis://", "rediss://", "unix://")) else None


_FIELDS = {
    "TRIAGE_BROKER_URL": "broker_url",
    "TRIAGE_RESULT_BACKEND": "result_backend",
    "TRIAGE_CACHE_URL": "cache_url",
    "TRIAGE_CACHE_TTL_S": "cache_ttl_s",
    "TRIAGE_CACHE_MAX_ITEMS": "cache_max_items",
    "TRIAGE_CACHE_PREFIX": "cache_prefix",
    "TRIAGE_INFERENCE_QUEUE": "queue",
    "TRIAGE_BATCH_MAX_SIZE": "batch_max_size",
    "TRIAGE_BATCH_MAX_WAIT_MS": "batch_max_wait_ms",
    "TRIAGE_BATCH_QUIET_MS": "batch_quiet_ms",
    "TRIAGE_TASK_SOFT_TIME_LIMIT_S": "soft_time_limit_s",
    "TRIAGE_TASK_TIME_LIMIT_S": "time_limit_s",
    "TRIAGE_RESULT_EXPIRES_S": "result_expires_s",
    "TRIAGE_VISIBILITY_TIMEOUT_S": "visibility_timeout_s",
    "TRIAGE_BROKER_CONNECT_TIMEOUT_S": "broker_connect_timeout_s",
    "TRIAGE_BROKER_RETRY_S": "broker_retry_s",
    "TRIAGE_HOOK_RESERVE_MS": "hook_reserve_ms",
    "TRIAGE_EMBEDDED_PROCESS": "embedded_process",
    "TRIAGE_MODEL_PATH": "model_path",
    "TRIAGE_ADAPTER_PATH": "adapter_path",
}


def inference_settings(values: Mapping[str, Any] | None = None) -> InferenceSettings:
    """Settings from a mapping of `TRIAGE_*` names (os.environ or a Flask app.config).

    Strings are parsed (the environment); values already typed (app.config) are checked the same way.
    """
    values = os.environ if values is None else values
    kwargs: dict[str, Any] = {}
    for name, attr in _FIELDS.items():
        raw = values.get(name)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        setting = _BY_NAME.get(name)
        parse = setting.parse if setting else _str
        try:
            kwargs[attr] = parse(str(raw))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return InferenceSettings(**kwargs)
