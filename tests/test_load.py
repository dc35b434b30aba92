"""The short version of bench/load_test.py: real gunicorn, Redis, PostgreSQL and worker (all private
to the run), Locust for 20 s while each fault happens at least once; no 5xx beyond the documented
503s, no acknowledged feedback lost, API memory flat."""
from __future__ import annotations

import json
import shutil
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_short_load_with_faults(tmp_path):
    if shutil.which("redis-server") is None or not list((__import__("pathlib").Path("/usr/lib/postgresql")).glob("*/bin/pg_ctl")):
        pytest.fail("the load test needs redis-server and the PostgreSQL server binaries (the CI machine has both)")
    import load_test

    out = tmp_path / "figures.json"
    code = load_test.main(["--duration", "20", "--users", "3", "--redis-every", "6", "--postgres-every", "9",
                           "--worker-every", "5", "--out", str(out)])
    figures = json.loads(out.read_text())
    assert code == 0, figures
    faults = {name for _, name in figures["faults"]}
    assert {"redis", "postgres", "worker"} <= faults, figures["faults"]
    assert figures["by_route"]["patient-view"]["ok"] >= 20
    assert figures["unexpected_5xx"] == 0 and figures["feedback_lost"] == 0
    assert figures["feedback_acknowledged"] > 0
    assert figures["api_rss_growth"] <= 0.25
