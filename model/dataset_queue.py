"""`triage dataset build --celery N`: one export's patients spread over Celery dataset workers.

Each task builds one shard (`--shard k/N` of `model.dataset.build`) on a machine that sees the
export, the output folder and the key file at the same paths (shared storage; the key from the
same secret mount as the GPU workers). A message carries only those paths and the build settings:
never a record, never the key. Tasks are acknowledged late and idempotent (a shard skips the
patients already written, and writing one twice gives the same bytes), so a lost worker's shard is
simply redone. The coordinator then merges where it runs, and builds itself any patient a failed
shard left out: nothing is lost, and the result is the same files as a one-machine build.

Dataset workers consume their own queue (`TRIAGE_DATASET_QUEUE`, default `datasets`) and never
load a model; start them with `triage dataset worker`.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from celery import Celery

from model.dataset import BuildConfig, BuildResult, DatasetError, build, prepare_output
from model.settings import inference_settings

SHARD_TASK = "model.dataset_queue.build_shard"
DEFAULT_QUEUE = "datasets"
DEFAULT_VISIBILITY_S = 6 * 3600  # a shard of a large export runs for hours; Redis redelivers after this


def make_dataset_celery(broker_url: str | None = None, environ: Mapping[str, str] | None = None) -> Celery:
    """The dataset app: the deployment's broker (TRIAGE_BROKER_URL), its own queue, JSON only."""
    env = os.environ if environ is None else environ
    settings = inference_settings(env)
    if broker_url:
        settings = dataclasses.replace(settings, broker_url=broker_url)
    queue = env.get("TRIAGE_DATASET_QUEUE") or DEFAULT_QUEUE
    visibility = int(env.get("TRIAGE_DATASET_VISIBILITY_TIMEOUT_S") or DEFAULT_VISIBILITY_S)
    app = Celery("triage-datasets", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker_url or "memory://",
        result_backend=settings.backend_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue=queue,
        task_routes={SHARD_TASK: {"queue": queue}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a shard is long: never hold one while another runs
        result_expires=7 * 24 * 3600,
        result_extended=False,
        broker_transport_options={"visibility_timeout": visibility},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.conf.triage_dataset_queue = queue
    app.task(name=SHARD_TASK, acks_late=True, reject_on_worker_lost=True)(build_shard)
    return app


def shard_spec(cfg: BuildConfig, k: int, n: int) -> dict[str, Any]:
    """A task's arguments: paths and settings only (JSON)."""
    return {
        "input": str(cfg.input), "output": str(cfg.output),
        "key_file": str(cfg.key_file) if cfg.key_file else None,
        "seed": cfg.seed, "split": list(cfg.split), "formats": list(cfg.formats), "workers": cfg.workers,
        "max_encounters": cfg.max_encounters, "class_acuity": dict(cfg.class_acuity), "shard": [k, n],
        # Not used by a shard's patients, but part of the settings a resumed build must match.
        "target_schema": cfg.target_schema, "rules_labels": cfg.rules_labels, "max_per_patient": cfg.max_per_patient,
        "collapse_near_duplicates": cfg.collapse_near_duplicates, "uninformative_keep": cfg.uninformative_keep,
        "min_patients_per_split": cfg.min_patients_per_split,
    }


def _config(spec: Mapping[str, Any]) -> BuildConfig:
    k, n = spec["shard"]
    return BuildConfig(
        input=Path(spec["input"]), output=Path(spec["output"]),
        key_file=Path(spec["key_file"]) if spec.get("key_file") else None,  # else the worker's own env
        seed=int(spec["seed"]), split=tuple(spec["split"]), formats=tuple(spec["formats"]),
        workers=int(spec["workers"]), max_encounters=spec.get("max_encounters"),
        class_acuity=dict(spec["class_acuity"]), shard=(int(k), int(n)), resume=True, progress=False,
        **{f: spec[f] for f in ("target_schema", "rules_labels", "max_per_patient", "collapse_near_duplicates",
                                "uninformative_keep", "min_patients_per_split") if f in spec},
    )


def build_shard(spec: dict[str, Any]) -> dict[str, Any]:
    """Celery task: build shard k/N into the shared output folder; counts only in the result."""
    try:
        result = build(_config(spec))
    except DatasetError:
        raise  # one line, paths only
    except Exception as exc:  # noqa: BLE001 - other messages may quote record content: type only
        raise RuntimeError(f"shard {spec['shard'][0]}/{spec['shard'][1]} failed ({type(exc).__name__})") from None
    counts = result.manifest["counts"]
    return {"shard": spec["shard"], "patients": counts["patients"], "built_now": counts["built_now"],
            "seconds": round(result.elapsed_s, 1), "host": os.uname().nodename}


def build_distributed(cfg: BuildConfig, shards: int, *, app: Celery | None = None,
                      echo: Callable[[str], None] | None = None, timeout_s: float | None = None) -> BuildResult:
    """Build `cfg` as `shards` Celery tasks, then merge here (building what a failed shard left)."""
    if shards < 1:
        raise DatasetError("--celery takes the number of shards (>= 1)")
    if cfg.shard is not None:
        raise DatasetError("choose one of --shard and --celery")
    if not cfg.input.exists():
        raise DatasetError(f"input {cfg.input} does not exist")
    app = app or make_dataset_celery()
    if str(app.conf.broker_url).startswith("memory://"):
        raise DatasetError("--celery needs a broker: set TRIAGE_BROKER_URL (e.g. redis://redis:6379/0)")
    queue = app.conf.triage_dataset_queue
    try:
        consumers = app.control.inspect(timeout=2.0).active_queues() or {}
    except Exception as exc:  # noqa: BLE001 - a broker that cannot be reached
        raise DatasetError(f"--celery: the broker cannot be reached ({type(exc).__name__})") from None
    if not any(q.get("name") == queue for queues in consumers.values() for q in queues):
        raise DatasetError(f"--celery: no `triage dataset worker` consumes queue {queue!r}")
    prepare_output(cfg)  # the same refusals as a local build (non-empty without --resume...)
    say = echo or (lambda _line: None)
    started = time.monotonic()
    sent = [app.send_task(SHARD_TASK, args=[shard_spec(cfg, k, shards)], queue=queue) for k in range(shards)]
    say(f"sent {shards} shard tasks to queue {queue} ({len(consumers)} worker(s) listening)")
    deadline = None if timeout_s is None else started + timeout_s
    pending = dict(enumerate(sent))
    while pending:
        for k, res in list(pending.items()):
            if not res.ready():
                continue
            del pending[k]
            if res.successful():
                r = res.result
                say(f"shard {k}/{shards}: {r['patients']} patients ({r['built_now']} built) on {r['host']} "
                    f"in {r['seconds']} s")
            else:  # its patients are built below, here
                say(f"shard {k}/{shards} failed on a worker ({res.result}); its patients are built here")
        if pending and deadline is not None and time.monotonic() > deadline:
            say(f"{len(pending)} shard(s) not back after {timeout_s:.0f} s; their patients are built here")
            break
        if pending:
            time.sleep(0.5)
    merged = build(dataclasses.replace(cfg, resume=True, overwrite=False, shard=None), echo=echo)
    merged.elapsed_s = time.monotonic() - started
    return merged


app = make_dataset_celery()  # for `celery -A model.dataset_queue:app ...` and `triage dataset worker`
