"""`triage serve`: one-line errors for bad input, and a real gunicorn process answering discovery."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import requests
from click.testing import CliRunner

from cds_hooks.cli import cli
from conftest import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "args, env, text",
    [
        (["--port", "http"], {}, "--port"),
        (["--port", "70000"], {}, "--port"),
        (["--workers", "0"], {}, "--workers"),
        (["--colour"], {}, "--colour"),
        ([], {"TRIAGE_MAX_BODY_BYTES": "lots"}, "TRIAGE_MAX_BODY_BYTES"),
        ([], {"TRIAGE_CLIENTS_FILE": "/nonexistent/clients.yaml"}, "TRIAGE_CLIENTS_FILE"),
    ],
)
def test_bad_input_is_one_line(args, env, text, tmp_path):
    env = {"TRIAGE_INSTANCE_DIR": str(tmp_path), **env}
    result = CliRunner().invoke(cli, ["serve", "--port", str(free_port()), *args], env=env)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and text in lines[0]


def test_port_in_use_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--port", str(port)], env={"TRIAGE_INSTANCE_DIR": str(tmp_path)})
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: cannot listen on 127.0.0.1:{port}: address already in use"


def test_serve_runs_gunicorn(tmp_path):
    port = free_port()
    env = dict(os.environ, TRIAGE_INSECURE_NO_AUTH="1", TRIAGE_INSTANCE_DIR=str(tmp_path),
               TRIAGE_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}")
    proc = subprocess.Popen([sys.executable, "-m", "cds_hooks.cli", "serve", "--port", str(port), "--workers", "1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/cds-services", timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert response.status_code == 200
        assert response.json()["services"][0]["id"] == "triage"
    finally:
        proc.terminate()
        output = proc.communicate(timeout=20)[0]
    assert "Booting worker" in output  # gunicorn, not the Flask development server
    assert "Development Server" not in output
