"""Adapters as releases: which adapter the workers serve, changed without restarting anything.

A registry is a folder (`TRIAGE_ADAPTER_REGISTRY`) holding `served.json`: the current release and
the ones before it. `triage model promote DIR` checks the adapter (its card's safety gate passed,
made for the served base model, weights unchanged since the card) and makes it current;
`triage model rollback` returns to the previous release. Workers look at the file between
batches (`Engine.refresh_adapter`, a stat when nothing changed) and load the new adapter onto the
base model they already hold; they re-check the same conditions and keep the adapter they have if
a release fails them. Writes are atomic (temporary file, rename) under a file lock.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from model.training.card import CardError, base_version, gate_passed, read_card

STATE_FILE = "served.json"


class ReleaseRefused(RuntimeError):
    """This adapter must not be served (one-line reason)."""


def check_adapter(adapter_dir: str | os.PathLike[str], base_model_version: str | None) -> dict[str, Any]:
    """The adapter's card if it may be served on `base_model_version`; else ReleaseRefused."""
    from model.engine import adapter_version_of

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise ReleaseRefused(f"{path}: no PEFT adapter here")
    try:
        card = read_card(path)
    except CardError as exc:
        raise ReleaseRefused(str(exc)) from None
    if not gate_passed(card):
        verdict = "failed" if card.get("evaluation") else "has no"
        raise ReleaseRefused(f"{card['adapter_version']} {verdict} safety gate: not served")
    if adapter_version_of(path) != card["adapter_version"]:
        raise ReleaseRefused(f"{path}: the adapter weights changed after its card was written")
    if base_model_version is not None and base_version(base_model_version) != card["base_model"]["version"]:
        raise ReleaseRefused(f"{card['adapter_version']} was made for base model {card['base_model']['version']}, "
                             f"not {base_version(base_model_version)}")
    return card


class Registry:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {"releases": []}
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ReleaseRefused(f"{self.state_path}: not valid JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("releases"), list):
            raise ReleaseRefused(f"{self.state_path}: not a release registry")
        return data

    def current(self) -> dict[str, Any] | None:
        releases = self.state()["releases"]
        return releases[-1] if releases else None

    @contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, state: dict[str, Any]) -> None:
        tmp = self.root / f".{STATE_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.state_path)

    def promote(self, adapter_dir: str | os.PathLike[str], *, base_model_version: str | None) -> dict[str, Any]:
        path = Path(adapter_dir).resolve()
        card = check_adapter(path, base_model_version)
        with self._locked():
            state = self.state()
            current = state["releases"][-1] if state["releases"] else None
            if current and current["adapter_version"] == card["adapter_version"]:
                raise ReleaseRefused(f"{card['adapter_version']} is already served")
            entry = {
                "adapter_path": str(path),
                "adapter_version": card["adapter_version"],
                "base_model_version": card["base_model"]["version"],
                "stage": card["stage"],
                "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            state["releases"].append(entry)
            self._write(state)
        return entry

    def rollback(self) -> dict[str, Any]:
        """Back to the previous release (returned); refused when there is none."""
        with self._locked():
            state = self.state()
            if len(state["releases"]) < 2:
                raise ReleaseRefused("no earlier release to roll back to")
            state["releases"].pop()
            self._write(state)
            return state["releases"][-1]


class RegistryWatch:
    """Cheap change detection for the workers and the API: re-read `served.json` only when its
    (mtime, size, inode) changes."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.registry = Registry(root)
        self._stamp: tuple[int, int, int] | None = None
        self._current: dict[str, Any] | None = None

    def current(self) -> dict[str, Any] | None:
        try:
            st = self.registry.state_path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._current = self.registry.current() if stamp is not None else None
            self._stamp = stamp
        return self._current
