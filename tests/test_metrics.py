"""`/metrics`: what the hook, the cards, de-identification and feedback count, in Prometheus text;
bounded labels, no patient data; summed across gunicorn workers (multiprocess mode)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT
from tests.support.cds_app import load, make_app, patient_view, post_hook, uscore_paths
from tests.test_app_serve import free_port


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(scrape: dict, name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


def total(scrape: dict, name: str, **labels: str) -> float:
    """Sum over the label values not named."""
    return sum(v for (n, lab), v in scrape.items() if n == name and all((k, w) in lab for k, w in labels.items()))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("metrics"))


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return samples(response.get_data(as_text=True))


def test_a_hook_call_counts_cards_latency_acuity_and_removed_identifiers(app):
    client = app.test_client()
    before = scrape(client)
    bundle = load(uscore_paths()[1])
    body = patient_view(bundle)
    response = post_hook(client, body)
    assert response.status_code == 200
    [card] = response.get_json()["cards"]  # rules-only app: the rules card alone
    after = scrape(client)
    assert value(after, "triage_cards_total", kind="rules", indicator=card["indicator"]) == \
        value(before, "triage_cards_total", kind="rules", indicator=card["indicator"]) + 1
    assert value(after, "triage_hook_duration_seconds_count", service="triage", status="200") == \
        value(before, "triage_hook_duration_seconds_count", service="triage", status="200") + 1
    assert value(after, "triage_ai_reports_total", status="disabled") == \
        value(before, "triage_ai_reports_total", status="disabled") + 1
    assert total(after, "triage_acuity_total", source="rules") == total(before, "triage_acuity_total", source="rules") + 1
    # The US Core patient has a name, identifiers, an address: removed and counted by type.
    assert total(after, "triage_deid_entities_removed_total") > total(before, "triage_deid_entities_removed_total")


def test_errors_count_by_status_and_unknown_services_share_one_label(app):
    client = app.test_client()
    before = scrape(client)
    client.post("/cds-services/triage", data=b"{", content_type="application/json")
    for name in ("x1", "x2", "x3"):
        client.post(f"/cds-services/{name}", json={})
    after = scrape(client)
    assert value(after, "triage_hook_duration_seconds_count", service="triage", status="400") == \
        value(before, "triage_hook_duration_seconds_count", service="triage", status="400") + 1
    assert value(after, "triage_hook_duration_seconds_count", service="(unknown)", status="404") == \
        value(before, "triage_hook_duration_seconds_count", service="(unknown)", status="404") + 3
    assert not any("x1" in str(labels) for _, labels in after)


def test_feedback_counts_by_outcome_and_our_override_reasons_only(app):
    client = app.test_client()
    before = scrape(client)
    now = datetime.now(UTC).isoformat()

    def entry(outcome, code=None):
        e = {"card": str(uuid.uuid4()), "outcome": outcome, "outcomeTimestamp": now}
        if code:
            e["overrideReason"] = {"reason": {"system": "http://example.org", "code": code}}
        return e

    feedback = [entry("accepted"), entry("overridden", "clinical-judgement"),
                entry("overridden", "Jane Doe 555-0101 MRN 4471923")]
    response = client.post("/cds-services/triage/feedback", json={"feedback": feedback})
    assert response.status_code == 200
    client.post("/cds-services/triage/feedback", json={"feedback": feedback})  # a resend: not counted again
    after = scrape(client)
    assert value(after, "triage_feedback_total", outcome="accepted", reason="none") == \
        value(before, "triage_feedback_total", outcome="accepted", reason="none") + 1
    assert value(after, "triage_feedback_total", outcome="overridden", reason="clinical-judgement") == \
        value(before, "triage_feedback_total", outcome="overridden", reason="clinical-judgement") + 1
    assert value(after, "triage_feedback_total", outcome="overridden", reason="other") == \
        value(before, "triage_feedback_total", outcome="overridden", reason="other") + 1
    text = client.get("/metrics").get_data(as_text=True)
    assert "Jane" not in text and "4471923" not in text


def test_no_patient_data_in_metrics(app):
    client = app.test_client()
    bundle = load(uscore_paths()[1])
    post_hook(client, patient_view(bundle))
    text = client.get("/metrics").get_data(as_text=True)
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    for name in patient.get("name", []):
        for part in [*name.get("given", []), name.get("family")]:
            if part:
                assert part not in text
    for ident in patient.get("identifier", []):
        assert ident["value"] not in text


def test_deidentification_failure_is_counted(app, monkeypatch):
    client = app.test_client()
    before = scrape(client)
    runtime = app.extensions["triage_runtime"]

    def refuse(*args, **kwargs):
        raise RuntimeError("leak")

    monkeypatch.setattr(runtime.deidentifier, "record", refuse)
    assert post_hook(client, patient_view(load(uscore_paths()[1]))).status_code == 200
    after = scrape(client)
    assert value(after, "triage_deid_failures_total") == value(before, "triage_deid_failures_total") + 1


@pytest.mark.slow
def test_gunicorn_workers_are_summed(tmp_path):
    port = free_port()
    env = dict(os.environ, TRIAGE_INSECURE_NO_AUTH="1", TRIAGE_INSTANCE_DIR=str(tmp_path),
               TRIAGE_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}", TRIAGE_SCRUB_FREE_TEXT="0")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "cds_hooks.cli", "serve", "--port", str(port), "--workers", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                requests.get(base + "/health", timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        body = patient_view(load(uscore_paths()[1]))
        for _ in range(20):
            body["hookInstance"] = str(uuid.uuid4())
            # A fresh connection each time, so both workers take requests.
            response = requests.post(base + "/cds-services/triage", json=body, timeout=10,
                                     headers={"Connection": "close"})
            assert response.status_code == 200
        for _ in range(6):
            text = requests.get(base + "/metrics", timeout=5, headers={"Connection": "close"}).text
            scrape_ = samples(text)
            # Every scrape, whichever worker answers it, sees all 20 calls.
            assert value(scrape_, "triage_hook_duration_seconds_count", service="triage", status="200") == 20
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert output.count("Booting worker") >= 2
