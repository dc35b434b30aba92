"""The folder of prometheus-client's multiprocess mode, set up by `triage serve` before gunicorn forks.

Kept apart from `cds_hooks.metrics` on purpose: prometheus-client picks its value storage when it
is first imported, so `PROMETHEUS_MULTIPROC_DIR` must be set before anything imports it.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess() -> str:
    """An empty multiprocess folder: the operator's `PROMETHEUS_MULTIPROC_DIR` (emptied of the
    previous run's files, which would be summed in), else a temporary one removed at exit."""
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return folder
    folder = tempfile.mkdtemp(prefix="triage-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    atexit.register(shutil.rmtree, folder, True)
    return folder
