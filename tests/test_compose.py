"""docker-compose.yml: our services run real `triage` commands with options that parse, the worker
reserves a GPU, model and adapter are read-only volumes, and every setting is known and documented."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from cds_hooks.cli import cli
from cds_hooks.config import SETTINGS
from model.engine import EngineConfig
from model.settings import INFERENCE_SETTINGS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DEPLOYMENT_DOC = (ROOT / "docs" / "deployment.md").read_text()
OURS = ("api", "worker", "flower", "dataset-worker")
KNOWN = {s.name for s in SETTINGS} | {f.metadata["env"] for f in fields(EngineConfig)}


def test_the_stack_has_every_service():
    assert set(COMPOSE["services"]) == {"api", "worker", "flower", "dataset-worker", "redis", "postgres", "vllm",
                                        "prometheus", "grafana"}
    # vLLM starts only with its profile, on one GPU, serving the adapter under TRIAGE_OPENAI_ADAPTER's name.
    vllm = COMPOSE["services"]["vllm"]
    env = COMPOSE["services"]["worker"]["environment"]
    assert vllm["profiles"] == ["vllm"] and "--enable-lora" in vllm["command"]
    assert f"{env['TRIAGE_OPENAI_ADAPTER']}=/models/adapter" in vllm["command"]
    assert vllm["command"][vllm["command"].index("--served-model-name") + 1] == env["TRIAGE_OPENAI_MODEL"]
    assert env["TRIAGE_OPENAI_BASE_URL"] == "http://vllm:8000/v1"
    # The data stewards' shard worker starts only on request, and never reserves a GPU.
    assert COMPOSE["services"]["dataset-worker"]["profiles"] == ["datasets"]
    assert "deploy" not in COMPOSE["services"]["dataset-worker"]


@pytest.mark.parametrize("name", OURS)
def test_each_of_our_services_runs_a_real_triage_command(name):
    command = COMPOSE["services"][name]["command"]
    assert command[0] == "triage"
    result = CliRunner().invoke(cli, [*command[1:], "--help"], prog_name="triage")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: triage {command[1]}")
    # The options themselves parse (types, choices, ranges), without running the command.
    ctx = click.Context(cli)
    sub = cli.get_command(ctx, command[1])
    assert sub is not None
    sub.make_context(command[1], list(command[2:]), parent=ctx)


def test_bad_options_would_be_caught():
    ctx = click.Context(cli)
    with pytest.raises(click.UsageError):
        cli.get_command(ctx, "worker").make_context("worker", ["--pool", "gevent"], parent=ctx)


def test_api_runs_under_gunicorn_and_the_worker_reserves_one_gpu():
    api = COMPOSE["services"]["api"]["command"]
    assert api[1] == "serve" and "--debug" not in api  # `triage serve` without --debug is gunicorn
    worker = COMPOSE["services"]["worker"]
    assert worker["command"][1] == "worker" and worker["command"][worker["command"].index("--concurrency") + 1] == "1"
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]


def test_model_and_adapter_are_read_only_volumes_of_api_and_worker():
    env = COMPOSE["services"]["worker"]["environment"]
    for name in ("api", "worker"):
        volumes = COMPOSE["services"][name]["volumes"]
        # "${MODEL_DIR:-./models/base}:/models/base:ro": the host side may hold colons itself
        targets = {v.rsplit(":", 2)[1]: v.rsplit(":", 2)[2] for v in volumes}
        assert targets[env["TRIAGE_MODEL_PATH"]] == "ro"
        assert targets[env["TRIAGE_ADAPTER_PATH"]] == "ro"
    # API and worker share one settings block: the same cache keys on both sides.
    assert COMPOSE["services"]["api"]["environment"] == env


def test_every_setting_is_set_known_and_documented():
    env = COMPOSE["services"]["api"]["environment"]
    triage_vars = {k for k in env if k.startswith("TRIAGE_")}
    assert triage_vars <= KNOWN, triage_vars - KNOWN
    ours = {s.name for s in INFERENCE_SETTINGS} | {f.metadata["env"] for f in fields(EngineConfig)} | {
        "TRIAGE_BROKER_URL", "TRIAGE_HOOK_DEADLINE_MS"}
    assert ours <= triage_vars
    missing_in_doc = sorted(name for name in triage_vars | ours if f"`{name}`" not in DEPLOYMENT_DOC)
    assert not missing_in_doc
    for setting in INFERENCE_SETTINGS:  # compose shows the defaults (URLs are the deployment's own)
        if setting.default is not None:
            assert setting.parse(str(env[setting.name])) == setting.default, setting.name


def test_health_checks_use_the_service_endpoints():
    from cds_hooks.app import create_app  # noqa: F401 (the routes the checks name exist: tests/test_health.py)

    api = " ".join(COMPOSE["services"]["api"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8080/ready" in api
    worker = " ".join(COMPOSE["services"]["worker"]["healthcheck"]["test"])
    # The node name `triage worker` gives itself by default (celery's %h is the container's hostname).
    assert "inspect ping -d triage-inference@$$HOSTNAME" in worker
    assert "/healthcheck" in " ".join(COMPOSE["services"]["flower"]["healthcheck"]["test"])
    ctx = click.Context(cli)
    worker_cmd = cli.get_command(ctx, "worker")
    assert any(o.name == "hostname" and "triage-inference@" in (o.help or "") for o in worker_cmd.params)


def test_prometheus_scrapes_the_api_and_flower_and_grafana_has_the_dashboard():
    import json

    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"api:8080", "flower:5555"}
    mounts = " ".join(COMPOSE["services"]["grafana"]["volumes"])
    assert "./deploy/grafana/provisioning:" in mounts and "./deploy/grafana/dashboards:" in mounts
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/triage.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/triage.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    # Every metric the service exports has a panel, and every triage_ metric a panel names exists.
    from cds_hooks import metrics

    exported = {"triage_hook_duration_seconds", "triage_cards_total", "triage_acuity_total",
                "triage_ai_reports_total", "triage_deid_failures_total", "triage_deid_entities_removed_total",
                "triage_feedback_total", "triage_queue_depth"}
    for name in exported:
        assert name in exprs, name
    import re

    from prometheus_client import REGISTRY

    registered = {m.name for m in REGISTRY.collect() if m.name.startswith("triage_")} | {"triage_queue_depth"}
    named = {re.sub(r"_(bucket|count|sum)$", "", n) for n in re.findall(r"triage_[a-z_]+", exprs)}
    assert {n.removesuffix("_total") for n in named} <= {n.removesuffix("_total") for n in registered}, named
    assert metrics.HOOK_LATENCY is not None
    assert "flower_" in exprs  # worker metrics from Flower
