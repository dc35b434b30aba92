"""`triage dataset build --celery N`: shards built by a real `triage dataset worker` process over
the real Redis, merged here into the same files as a one-machine build."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis
from conftest import DATA
from support.worker_process import worker

from model.dataset import BuildConfig, DatasetError, build
from model.dataset_queue import build_distributed, make_dataset_celery

pytestmark = [pytest.mark.slow, pytest.mark.redis]

EXPORT = DATA / "fhir" / "bulk-export-synthea-10"
BROKER = "redis://127.0.0.1:6379/9"  # this test's own DB
SPLIT = (0.5, 0.25, 0.25)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".work" not in p.parts}


def _config(out: Path, key: Path, **kw) -> BuildConfig:
    return BuildConfig(input=EXPORT, output=out, key_file=key, max_encounters=3, split=SPLIT, progress=False, **kw)


@pytest.fixture()
def broker_env(tmp_path: Path):
    env = {"TRIAGE_BROKER_URL": BROKER, "TRIAGE_DATASET_QUEUE": f"datasets-test-{uuid.uuid4().hex[:8]}"}
    client = redis.Redis.from_url(BROKER)
    client.flushdb()
    yield env
    client.flushdb()
    client.close()


def test_celery_build_equals_the_one_machine_build_and_its_messages_carry_no_phi(tmp_path: Path, broker_env) -> None:
    key = tmp_path / "steward.key"
    key.write_text("7c" * 32 + "\n")
    reference = build(_config(tmp_path / "local", key))
    app = make_dataset_celery(environ=broker_env)
    lines: list[str] = []
    with worker(broker_env, tmp_path / "worker.log", pool="", command=("dataset", "worker"), ready="ready.",
                timeout_s=60):
        sent: list = []
        inner = app.send_task
        app.send_task = lambda *a, **k: sent.append(k["args"]) or inner(*a, **k)
        result = build_distributed(_config(tmp_path / "celery", key), 3, app=app, echo=lines.append, timeout_s=300)
    log = (tmp_path / "worker.log").read_text()
    assert log.count("succeeded") == 3, log[-2000:]
    assert [line for line in lines if line.startswith("shard ")] and not any("failed" in line for line in lines)
    assert result.merged and result.manifest["counts"]["built_now"] == 0  # the workers built every patient
    assert _files(result.output) == _files(reference.output)
    # What crossed the broker: paths and settings, never a record or the key.
    messages = json.dumps(sent)
    assert len(sent) == 3
    assert "7c7c" not in messages and str(key) in messages
    for line in (EXPORT / "Patient.000.ndjson").read_text().splitlines()[:5]:
        patient = json.loads(line)
        assert patient["id"] not in messages and patient["name"][0]["family"] not in messages + log


def test_a_failed_shard_is_built_by_the_coordinator(tmp_path: Path, broker_env) -> None:
    key = tmp_path / "steward.key"
    key.write_text("7c" * 32 + "\n")
    app = make_dataset_celery(environ=broker_env)
    inner = app.send_task

    def one_bad(name, args, **kw):  # shard 1 names a key file the worker cannot read
        spec = dict(args[0])
        if spec["shard"][0] == 1:
            spec["key_file"] = str(tmp_path / "missing.key")
        return inner(name, args=[spec], **kw)

    app.send_task = one_bad
    lines: list[str] = []
    with worker(broker_env, tmp_path / "worker.log", pool="", command=("dataset", "worker"), ready="ready.",
                timeout_s=60):
        result = build_distributed(_config(tmp_path / "celery", key), 2, app=app, echo=lines.append, timeout_s=300)
    assert any(line.startswith("shard 1/2 failed") and "key" in line for line in lines), lines
    assert result.merged and result.manifest["counts"]["built_now"] > 0  # shard 1's patients, built here
    assert _files(result.output) == _files(build(_config(tmp_path / "local", key)).output)


def test_no_broker_or_no_worker_is_a_clear_error(tmp_path: Path, broker_env) -> None:
    key = tmp_path / "steward.key"
    key.write_text("7c" * 32 + "\n")
    with pytest.raises(DatasetError, match="TRIAGE_BROKER_URL"):
        build_distributed(_config(tmp_path / "a", key), 2, app=make_dataset_celery(environ={}))
    with pytest.raises(DatasetError, match="no `triage dataset worker`"):
        build_distributed(_config(tmp_path / "b", key), 2, app=make_dataset_celery(environ=broker_env))
    assert not (tmp_path / "b").exists()  # nothing started
