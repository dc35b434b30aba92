"""A real `triage worker` process for tests and benchmarks: started in its own process group,
ready once its engine is loaded, always stopped (pool children included)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


@contextlib.contextmanager
def worker(env: dict[str, str], log_path: Path, *, pool: str = "prefork", concurrency: int | None = None,
           timeout_s: float = 90, command: tuple[str, ...] = ("worker",),
           ready: str = "engine loaded") -> Iterator[subprocess.Popen]:
    """`triage worker` (or another worker `command`), yielded once its log shows `ready`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **env}
    cmd = [sys.executable, "-m", "cds_hooks.cli", *command, "--loglevel", "INFO"]
    if pool:
        cmd += ["--pool", pool]
    if concurrency is not None:
        cmd += ["--concurrency", str(concurrency)]
    log = log_path.open("ab")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_log(log_path, ready, proc, timeout_s=timeout_s)
        yield proc
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # pool children left behind by a SIGKILL
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for_log(path: Path, text: str, proc: subprocess.Popen, *, timeout_s: float, count: int = 1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if content.count(text) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}):\n{content[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"worker log never showed {text!r}:\n{path.read_text(errors='replace')[-3000:]}")
