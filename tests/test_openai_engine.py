"""`TRIAGE_ENGINE=openai`: the workers' batch code against a real OpenAI-compatible HTTP server (the
project's own engine behind `triage model serve-openai`, a separate process with the tiny model).

Greedy decoding on both sides and the same messages, rendered by the same chat template: the report
that comes back over HTTP is the one the in-process engine writes."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT

BUDGET = {"max_new_tokens_analysis": 0, "max_new_tokens_final": 160, "final_closing_reserve": 160}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path):
    port = _free_port()
    env = {**os.environ, "TRIAGE_MODEL_PATH": str(tiny_model_dir), "TRIAGE_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
           "TRIAGE_MAX_NEW_TOKENS_ANALYSIS": "0", "TRIAGE_MAX_NEW_TOKENS_FINAL": "160",
           "TRIAGE_FINAL_CLOSING_RESERVE": "160"}
    env.pop("TRIAGE_ENGINE", None)
    proc = subprocess.Popen([sys.executable, "-m", "cds_hooks.cli", "model", "serve-openai", "--port", str(port),
                             "--name", "gpt-oss-tiny", "--name", "triage-lora"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    while True:
        try:
            if requests.get(f"{base}/models", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"serve-openai did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.5)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def test_reports_over_http_match_the_local_engine(server: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    from model.engine import Engine, EngineConfig
    from model.openai_engine import OpenAIEngine
    from model.tasks import run_batch
    from tests.test_queue import payloads

    remote = Engine.load(EngineConfig(engine="openai", openai_base_url=server, openai_model="gpt-oss-tiny",
                                      openai_adapter="triage-lora", **BUDGET))
    assert isinstance(remote, OpenAIEngine)
    batch = payloads(tmp_path, 2)
    results = run_batch(batch, remote, None)
    assert [r["status"] for r in results] == ["ok", "ok"]
    assert {(r["model_version"], r["adapter_version"]) for r in results} == {("gpt-oss-tiny@openai", "triage-lora")}
    local = Engine.load(EngineConfig(model_path=str(tiny_model_dir), device="cpu", **BUDGET))
    expected = run_batch(batch, local, None)
    assert [r["report"] for r in results] == [r["report"] for r in expected]
    assert remote.counters["reports"] == 2

    from cds_hooks.ai_cards import ai_source

    assert "adapter triage-lora" in ai_source(results[0]["model_version"], results[0]["adapter_version"]).label


def test_api_versions_follow_the_backend() -> None:
    from model.reports import ReportService

    service = ReportService.from_settings({"TRIAGE_ENGINE": "openai", "TRIAGE_OPENAI_BASE_URL": "http://vllm:8000/v1",
                                           "TRIAGE_OPENAI_MODEL": "openai/gpt-oss-20b",
                                           "TRIAGE_OPENAI_ADAPTER": "sft-seed"})
    try:
        assert service.enabled and service.versions() == ("openai/gpt-oss-20b@openai", "sft-seed")
    finally:
        service.close()


def test_server_errors_and_bad_requests(server: str, tmp_path: Path) -> None:
    from model.engine import Engine, EngineConfig
    from model.tasks import run_batch
    from tests.test_queue import payloads

    bad = requests.post(f"{server}/chat/completions", json={"model": "gpt-oss-tiny", "messages": "hi"}, timeout=10)
    assert bad.status_code == 400 and "messages must be" in bad.json()["error"]["message"]
    other = requests.post(f"{server}/chat/completions", timeout=10, json={
        "model": "gpt-oss-tiny", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}})
    assert other.status_code == 400 and "only the TriageReport" in other.json()["error"]["message"]
    assert requests.post(f"{server}/chat/completions", json={"model": "nope", "messages": []}, timeout=10).status_code == 404

    down = Engine.load(EngineConfig(engine="openai", openai_base_url=f"http://127.0.0.1:{_free_port()}/v1",
                                    openai_model="gpt-oss-tiny", openai_timeout_s=5, **BUDGET))
    [result] = run_batch(payloads(tmp_path, 1), down, None)
    assert result["status"] == "error" and result["error"] == "inference failed"  # a failed batch, never cached
