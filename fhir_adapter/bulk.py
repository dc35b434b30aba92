"""Read a FHIR Bulk Data export (NDJSON) or a folder of Bundles, patient by patient.

Input: a folder of `<Type>[.<n>].ndjson[.gz]` files (a Bulk Data IG `manifest.json` names them when
present), one such file, or a folder (or file) of Bundles. `iter_patients` never holds the export in
memory: a first pass indexes every line by patient (8 bytes per line: file number and byte offset),
then each patient's lines are read back by seeking. Shared resources (Practitioner, Organization,
Location, ...) are indexed by id and identifier and loaded when a patient's resources refer to them.
A malformed line is reported as `BadLine(file, line_number, reason)` (1-based) and skipped; lines are
never logged by content.
"""
from __future__ import annotations

import gzip
import json
import logging
import re
import shutil
import tempfile
from array import array
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from .codes import RECORD_TYPES, SHARED_TYPES
from .extract import record_from_resources
from .parse import Resource, StatsCounter, parse_many
from .prefetch import resolve_bundle_references
from .record import ParseStats, PatientRecord

log = logging.getLogger(__name__)

__all__ = ["BadLine", "BulkError", "BulkReader", "PatientResources", "iter_patients", "iter_resources"]

_OFFSET_BITS = 40  # files up to 1 TiB; up to 2**23 files
_NDJSON = re.compile(r"^([A-Z][A-Za-z]+)(?:[._-].*)?\.ndjson(?:\.gz)?$")
_PATIENT_FIELDS = ("subject", "patient", "beneficiary")


class BulkError(Exception):
    """The export cannot be read at all (missing folder, manifest naming absent files)."""


@dataclass(frozen=True)
class BadLine:
    file: str
    line_number: int  # 1-based; for a Bundle file, the JSON error's line
    reason: str


@dataclass
class PatientResources:
    patient_id: str
    resources: list[Resource]  # validated models of the patient's own resources (types read)
    shared: list[Resource]  # referenced Practitioner / Organization / Location / ... models
    raw: list[dict[str, Any]]  # every resource of the patient as read, valid or not, all types
    shared_raw: list[dict[str, Any]]
    stats: ParseStats

    def record(self, as_of: datetime | None = None, **kwargs: Any) -> PatientRecord:
        """The PatientRecord at `as_of` (default now); kwargs go to `record_from_resources`."""
        return record_from_resources([*self.resources, *self.shared], self.patient_id, as_of,
                                     stats=self.stats, **kwargs)


@dataclass
class _Source:
    name: str  # as reported: the file name the steward sees
    path: Path  # what we read (a decompressed copy for .gz)
    kind: str  # "ndjson" or "bundle"


def _patient_of(res: dict[str, Any]) -> str | None:
    if res.get("resourceType") == "Patient":
        rid = res.get("id")
        return rid if isinstance(rid, str) and rid else None
    for name in _PATIENT_FIELDS:
        ref = res.get(name)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            text = ref["reference"]
            if text.startswith("urn:uuid:"):
                return text[len("urn:uuid:"):]
            parts = text.rstrip("/").split("/")
            if len(parts) >= 2 and parts[-2] == "Patient":
                return parts[-1]
    return None


def _shared_keys(res: dict[str, Any]) -> list[str]:
    rtype, rid = res.get("resourceType"), res.get("id")
    keys = [f"{rtype}/{rid}"] if rid else []
    for ident in res.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("value"):
            keys.append(f"{rtype}?identifier={ident.get('system', '')}|{ident['value']}")
    return keys


def _references(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            out.add(ref.split("/_history/")[0])
        for value in node.values():
            if isinstance(value, (dict, list)):
                _references(value, out)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, (dict, list)):
                _references(item, out)


def _is_type(name: str) -> bool:
    try:
        get_fhir_model_class(name)
    except ValueError:
        return False
    return True


class BulkReader:
    """One export. Use as a context manager (it may decompress `.gz` files to a temporary folder)."""

    def __init__(
        self,
        path: str | Path,
        *,
        on_bad_line: Callable[[BadLine], None] | None = None,
        types: Collection[str] | None = RECORD_TYPES,
        shared_cache: int = 512,
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BulkError(f"{self.path}: no such file or folder")
        self.on_bad_line = on_bad_line
        self.types = types
        self.bad_lines: list[BadLine] = []
        self.unassigned = 0  # resources with no patient that are not shared types
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._sources: list[_Source] | None = None
        self._index: dict[str, array] | None = None
        self._shared: dict[str, int] = {}
        self._cache: OrderedDict[int, tuple[dict[str, Any] | None, Resource | None]] = OrderedDict()
        self._cache_size = shared_cache
        self._bundle_cache: tuple[int, list[dict[str, Any]]] | None = None
        self._handles: dict[int, Any] = {}
        self._stats = StatsCounter()

    # ---- lifecycle ----
    def __enter__(self) -> BulkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ---- discovery ----
    def _bad(self, file: str, line: int, reason: str) -> None:
        bad = BadLine(file, line, reason)
        self.bad_lines.append(bad)
        log.warning("skipped %s line %d: %s", file, line, reason)
        if self.on_bad_line is not None:
            self.on_bad_line(bad)

    def _local(self, path: Path) -> _Source:
        name = path.name
        if name.endswith(".gz"):
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="triage-bulk-")
            target = Path(self._tmp.name) / f"{len(list(Path(self._tmp.name).iterdir()))}-{name[:-3]}"
            try:
                with gzip.open(path, "rb") as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (OSError, EOFError) as exc:
                raise BulkError(f"{name}: not a readable gzip file ({type(exc).__name__})") from None
            return _Source(name, target, "ndjson" if ".ndjson" in name else "bundle")
        return _Source(name, path, "ndjson" if name.endswith(".ndjson") else "bundle")

    def sources(self) -> list[_Source]:
        if self._sources is not None:
            return self._sources
        p = self.path
        files: list[Path] = []
        if p.is_file():
            if p.name == "manifest.json" or self._is_manifest(p):
                files = self._from_manifest(p)
            else:
                files = [p]
        else:
            manifest = p / "manifest.json"
            if manifest.is_file():
                files = self._from_manifest(manifest)
            else:
                for f in sorted(p.iterdir()):
                    if not f.is_file():
                        continue
                    m = _NDJSON.match(f.name)
                    if m and _is_type(m.group(1)):
                        files.append(f)
                    elif f.name.endswith((".json", ".json.gz")) and not f.name.startswith("."):
                        files.append(f)
                    elif f.name.endswith((".ndjson", ".ndjson.gz")):
                        log.info("ignored %s: not named after a FHIR resource type", f.name)
            if not files:
                raise BulkError(f"{p}: no NDJSON or Bundle files found")
        self._sources = [self._local(f) for f in files]
        return self._sources

    @staticmethod
    def _is_manifest(path: Path) -> bool:
        if path.suffix != ".json":
            return False
        try:
            with path.open("rb") as fh:
                head = fh.read(4096)
        except OSError:
            return False
        return b'"output"' in head and b'"transactionTime"' in head

    def _from_manifest(self, manifest: Path) -> list[Path]:
        try:
            data = json.loads(manifest.read_text())
            outputs = data["output"]
            assert isinstance(outputs, list)
        except (OSError, ValueError, KeyError, AssertionError, TypeError):
            raise BulkError(f"{manifest.name}: not a Bulk Data manifest (needs an `output` list)") from None
        files = []
        for item in outputs:
            url = item.get("url") if isinstance(item, dict) else None
            if not isinstance(url, str):
                raise BulkError(f"{manifest.name}: an output entry has no url")
            name = url.split("?")[0].rstrip("/").split("/")[-1]
            local = manifest.parent / name
            if not local.is_file():
                raise BulkError(f"{manifest.name}: names {name}, which is not in {manifest.parent}")
            files.append(local)
        return files

    # ---- raw reading ----
    def _lines(self, src: _Source) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """(line_number, byte offset, resource) of each good line; bad ones are reported."""
        offset = 0
        with src.path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                start = offset
                offset += len(line)
                if not line.strip():
                    continue
                try:
                    res = json.loads(line)
                except (ValueError, UnicodeDecodeError):
                    self._bad(src.name, number, "invalid JSON")
                    continue
                if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
                    self._bad(src.name, number, "not a FHIR resource (no resourceType)")
                    continue
                yield number, start, res

    def _bundle(self, file_idx: int) -> list[dict[str, Any]]:
        if self._bundle_cache is not None and self._bundle_cache[0] == file_idx:
            return self._bundle_cache[1]
        src = self.sources()[file_idx]
        try:
            data = json.loads(src.path.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            self._bad(src.name, getattr(exc, "lineno", 1), "invalid JSON")
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            if data is not None:
                self._bad(src.name, 1, "not a FHIR resource (no resourceType)")
            entries: list[dict[str, Any]] = []
        elif data["resourceType"] == "Bundle":
            entries = [r for r in resolve_bundle_references(data) if isinstance(r.get("resourceType"), str)]
        else:
            entries = [data]
        self._bundle_cache = (file_idx, entries)
        return entries

    def iter_resources(self) -> Iterator[dict[str, Any]]:
        """Every resource of the export, file by file, as plain dicts (nothing is validated)."""
        for idx, src in enumerate(self.sources()):
            if src.kind == "ndjson":
                for _, _, res in self._lines(src):
                    yield res
            else:
                yield from self._bundle(idx)
                self._bundle_cache = None

    # ---- index ----
    def _build_index(self) -> dict[str, array]:
        if self._index is not None:
            return self._index
        index: dict[str, array] = {}
        for idx, src in enumerate(self.sources()):
            if src.kind == "ndjson":
                items = ((offset, res) for _, offset, res in self._lines(src))
            else:
                items = enumerate(self._bundle(idx))
            for position, res in items:
                packed = (idx << _OFFSET_BITS) | position
                pid = _patient_of(res)
                if pid is not None:
                    index.setdefault(pid, array("Q")).append(packed)
                elif res["resourceType"] in SHARED_TYPES:
                    for key in _shared_keys(res):
                        self._shared.setdefault(key, packed)
                else:
                    self.unassigned += 1
            self._bundle_cache = None
        self._index = index
        return index

    def patient_ids(self) -> list[str]:
        return list(self._build_index())

    def _read(self, packed: int) -> dict[str, Any] | None:
        idx, position = packed >> _OFFSET_BITS, packed & ((1 << _OFFSET_BITS) - 1)
        src = self.sources()[idx]
        if src.kind == "bundle":
            entries = self._bundle(idx)
            return entries[position] if position < len(entries) else None
        handle = self._handles.get(idx)
        if handle is None:
            handle = self._handles[idx] = src.path.open("rb")
        handle.seek(position)
        return json.loads(handle.readline())  # validated as JSON during indexing

    def _shared_resource(self, packed: int) -> tuple[dict[str, Any] | None, Resource | None]:
        hit = self._cache.get(packed)
        if hit is not None:
            self._cache.move_to_end(packed)
            return hit
        raw = self._read(packed)
        models = parse_many([raw], types=self.types, stats=self._stats) if raw is not None else []
        value = (raw, models[0] if models else None)
        self._cache[packed] = value
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return value

    def iter_patients(self) -> Iterator[PatientResources]:
        """One patient at a time, in index order; patients without a Patient resource are skipped."""
        index = self._build_index()
        for pid, positions in index.items():
            stats = StatsCounter()
            raw = [r for r in (self._read(p) for p in sorted(positions)) if r is not None]
            if not any(r.get("resourceType") == "Patient" and r.get("id") == pid for r in raw):
                log.warning("%d resources refer to a patient that is not in the export", len(raw))
                continue
            raw.sort(key=lambda r: r.get("resourceType") != "Patient")  # the Patient first
            models = parse_many(raw, types=self.types, stats=stats)
            refs: set[str] = set()
            _references(raw, refs)
            shared_raw: list[dict[str, Any]] = []
            shared: list[Resource] = []
            seen: set[int] = set()
            for ref in sorted(refs):
                packed = self._shared.get(ref)
                if packed is None:
                    parts = ref.split("/")
                    packed = self._shared.get("/".join(parts[-2:])) if len(parts) >= 2 else None
                if packed is None or packed in seen:
                    continue
                seen.add(packed)
                sraw, smodel = self._shared_resource(packed)
                if sraw is not None:
                    shared_raw.append(sraw)
                if smodel is not None:
                    shared.append(smodel)
            self._bundle_cache = None
            yield PatientResources(pid, models, shared, raw, shared_raw, stats.freeze())


def iter_patients(
    path: str | Path,
    *,
    on_bad_line: Callable[[BadLine], None] | None = None,
    types: Collection[str] | None = RECORD_TYPES,
) -> Iterator[PatientResources]:
    """Stream an export patient by patient (see BulkReader for details)."""
    with BulkReader(path, on_bad_line=on_bad_line, types=types) as reader:
        yield from reader.iter_patients()


def iter_resources(
    path: str | Path, *, on_bad_line: Callable[[BadLine], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Stream every resource of an export or Bundle folder as plain dicts."""
    with BulkReader(path, on_bad_line=on_bad_line) as reader:
        yield from reader.iter_resources()
