"""Read a FHIR Bulk Data export (NDJSON) or a folder of Bundles, patient by patient.

Input: a folder of `<Type>[.<n>].ndjson[.gz]` files (a Bulk Data IG `manifest.json` names them when
present), one such file, or a folder (or file) of Bundles. `iter_patients` never holds the export in
memory: a first pass indexes every line by patient (8 bytes per line: file number and byte offset),
then each patient's lines are read back by seeking. Shared resources (Practitioner, Organization,
Location, ...) are indexed by id and identifier and loaded when a patient's resources refer to them.
A malformed line is reported as `BadLine(file, line_number, reason)` (1-based) and skipped; lines are
never logged by content.

Decoding is the reader's main cost, so the index pass decodes only the top-level fields it needs
(with msgspec when installed: the whole line is still checked as JSON; anything msgspec refuses
gets `json.loads`'s verdict, so the bad lines reported are the same), and `iter_patient_lines` hands
out a patient's lines undecoded, each with its resource type, for the caller to decode only what it
uses (possibly in another process). The references to shared resources are still taken from every
line of the patient, by a byte-level scan that finds exactly the string `reference` members.
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
from .prefetch import reference_objects, resolve_bundle_references
from .record import ParseStats, PatientRecord

log = logging.getLogger(__name__)

__all__ = ["BadLine", "BulkError", "BulkReader", "NoResourcesError", "ndjson_type", "type_from_name", "PatientLines", "PatientResources", "decode_fields", "decode_line",
           "iter_patients", "iter_resources", "line_reference_displays", "line_references",
           "lines_reference_displays"]

_OFFSET_BITS = 40  # files up to 1 TiB; up to 2**23 files
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1
_NDJSON = re.compile(r"^([A-Z][A-Za-z]+)(?:[._-].*)?\.ndjson(?:\.gz)?$")
_NDJSON_SUFFIX = re.compile(r"\.ndjson(?:\.gz)?$")
_NAME_PART = re.compile(r"[A-Z][A-Za-z]+")
_PATIENT_FIELDS = ("subject", "patient", "beneficiary")


class BulkError(Exception):
    """The export cannot be read at all (missing folder, manifest naming absent files)."""


class NoResourcesError(BulkError):
    """The input holds no FHIR resource at all (callers exit with status 2)."""


def type_from_name(name: str) -> str | None:
    """The resource type an NDJSON file name spells, as servers and clients name them:
    `Patient.ndjson`, `Patient.000.ndjson`, `Patient_1.ndjson`, `Patient-2.ndjson.gz`, and the SMART
    bulk-data client's `1.Patient.ndjson`. None when no part of the name (split on `.`, `_`, `-`) is
    a FHIR type, or two different ones are."""
    stem = _NDJSON_SUFFIX.sub("", name)
    types = {part for part in re.split(r"[._-]", stem) if _NAME_PART.fullmatch(part) and _is_type(part)}
    return types.pop() if len(types) == 1 else None


def first_line_type(path: Path) -> str | None:
    """The `resourceType` of the first non-blank line of an NDJSON file (`.gz` read through), or
    None when that line is not a FHIR resource (a server's log.ndjson) or cannot be read."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    head = decode_fields(line, ("resourceType",))
                    rtype = head.get("resourceType")
                    return rtype if isinstance(rtype, str) and _is_type(rtype) else None
    except (OSError, EOFError, ValueError, UnicodeDecodeError):
        return None
    return None


def manifest_types(folder: Path) -> dict[str, str]:
    """File name -> `output[].type` of the folder's Bulk Data `manifest.json` (empty without one)."""
    manifest = folder / "manifest.json"
    try:
        outputs = json.loads(manifest.read_text(encoding="utf-8")).get("output")
    except (OSError, ValueError, AttributeError):
        return {}
    out: dict[str, str] = {}
    for item in outputs if isinstance(outputs, list) else []:
        if isinstance(item, dict) and isinstance(item.get("url"), str) and isinstance(item.get("type"), str):
            out[item["url"].split("?")[0].rstrip("/").split("/")[-1]] = item["type"]
    return out


def ndjson_type(path: Path, manifest: dict[str, str] | None = None) -> str | None:
    """An NDJSON file's resource type: the manifest's `output[].type`, else the file name's type,
    else its first line's `resourceType`; None for NDJSON that is not FHIR."""
    if manifest and path.name in manifest:
        return manifest[path.name]
    return type_from_name(path.name) or first_line_type(path)


def mixed_types_error(name: str, types: Collection[str]) -> BulkError:
    return BulkError(f"{name}: mixes resource types ({', '.join(sorted(types))}): "
                     "an export file holds one type")


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
class PatientLines:
    """One patient's lines as read, not decoded: `(resource type, line bytes)`, or a dict for a
    resource that had to be decoded to know its type (a Bundle entry, a line of a mixed file). Only
    the types asked for are here; `shared_raw` was resolved from the references of every line."""

    patient_id: str
    items: list[tuple[str, bytes | dict[str, Any]]]  # the Patient first, then file order
    shared_raw: list[dict[str, Any]]

    def decoded(self) -> list[dict[str, Any]]:
        return [v if isinstance(v, dict) else decode_line(v) for _, v in self.items]


@dataclass
class _Source:
    name: str  # as reported: the file name the steward sees
    path: Path  # what we read (a decompressed copy for .gz)
    kind: str  # "ndjson" or "bundle"
    rtype: str | None = None  # an export NDJSON file's one resource type (None: a Bundle or lone file)


try:  # optional: the same answers, several times faster
    import msgspec as _msgspec
except ImportError:  # pragma: no cover - json alone
    _msgspec = None


if _msgspec is not None:
    class _Head(_msgspec.Struct):
        """The top-level members the index reads; everything else is skipped (but still parsed)."""

        resourceType: Any = None
        id: Any = None
        subject: Any = None
        patient: Any = None
        beneficiary: Any = None
        identifier: Any = None

    _HEAD = _msgspec.json.Decoder(_Head)
    _ANY = _msgspec.json.Decoder()


def decode_line(line: bytes) -> Any:
    """`json.loads(line)`, faster when msgspec is installed (json decides whatever msgspec refuses:
    NaN, lone surrogates, huge numbers...). Raises ValueError/UnicodeDecodeError like json."""
    if _msgspec is not None:
        try:
            return _ANY.decode(line)
        except (_msgspec.DecodeError, _msgspec.ValidationError):
            pass
    return json.loads(line)


_FIELD_DECODERS: dict[tuple[str, ...], Any] = {}


def decode_fields(line: bytes, fields: tuple[str, ...]) -> dict[str, Any]:
    """Only the top-level members `fields` of a line holding a JSON object (those present, as
    `json.loads` would give them); with msgspec the rest is skipped without being built."""
    if _msgspec is not None:
        dec = _FIELD_DECODERS.get(fields)
        if dec is None:
            struct = _msgspec.defstruct("Fields", [(f, Any, None) for f in fields])
            dec = _FIELD_DECODERS[fields] = (_msgspec.json.Decoder(struct), fields)
        try:
            obj = dec[0].decode(line)
        except (_msgspec.DecodeError, _msgspec.ValidationError):
            pass
        else:
            return {f: v for f in fields if (v := getattr(obj, f)) is not None}
    full = decode_line(line)
    return {f: full[f] for f in fields if full.get(f) is not None}


def _head(line: bytes) -> dict[str, Any] | Any:
    """The line's top-level members that `_patient_of` and `_shared_keys` read (a dict), or what
    `json.loads` gives when that is not an object; raises like `json.loads` on invalid JSON."""
    if _msgspec is not None:
        try:
            h = _HEAD.decode(line)
        except (_msgspec.DecodeError, _msgspec.ValidationError):
            pass
        else:  # absent and null members read the same (`.get` gives None)
            return {"resourceType": h.resourceType, "id": h.id, "subject": h.subject, "patient": h.patient,
                    "beneficiary": h.beneficiary, "identifier": h.identifier}
    return json.loads(line)


# A `"reference": "<string>"` member. In valid JSON the key can only be a member name when the
# quote before it follows `{` or `,` (and JSON whitespace): inside a string that quote would be
# escaped, and a string cannot be followed by `reference"`. So the matches are exactly the string
# `reference` members of every object of the line, which is what `_references` collects (a line
# with a \u00XX escape, an ASCII character written escaped that could spell the key, is decoded
# and walked instead).
_REF = re.compile(rb'"reference"\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"')
_MEMBER_REF = re.compile(rb'[{,]\s*"reference"\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"')
_WS = frozenset(b" \t\r\n")


def line_references(line: bytes, out: set[str]) -> None:
    """`_references(json.loads(line), out)` without decoding the line (it must be valid JSON)."""
    lines_references([line], out)


def lines_references(lines: list[bytes], out: set[str]) -> None:
    """`line_references` of each line (valid JSON, each one object), in one pass."""
    blob = b"\n".join(lines)  # a line starts with `{`: no match reaches into the one before
    if b"\\u00" in blob:
        for line in lines:
            if b"\\u00" in line:
                _references(decode_line(line), out)
            else:
                lines_references([line], out)
        return
    # `"reference"` then `:` and a string can only be a member outside strings unless its first
    # quote is escaped (a key like `a\"reference`): without that, the literal search is exact.
    pattern = _MEMBER_REF if b'\\"reference"' in blob else _REF
    for raw in set(pattern.findall(blob)):
        out.add(_unescape(raw).split("/_history/")[0])


_PAIR_TAIL = re.compile(rb'\s*(?:\}|,\s*"display"\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"\s*\})')


def _unescape(raw: bytes) -> str:
    return raw.decode("utf-8") if b"\\" not in raw else json.loads(b'"' + raw + b'"')


def line_reference_displays(line: bytes) -> list[tuple[str, str]] | None:
    """(reference, display) of every object of the line with a string `reference` and a string
    `display`, without decoding, when the line's references are all written `{"reference": R}` or
    `{"reference": R, "display": D}` (as Synthea and most servers write them); None otherwise (the
    caller decodes the line). The line must be valid JSON."""
    if b"\\u00" in line:
        return None
    pairs: list[tuple[str, str]] = []
    for m in _REF.finditer(line):
        i = m.start() - 1
        while i >= 0 and line[i] in _WS:
            i -= 1
        if i < 0 or line[i] not in b"{,":
            continue  # inside a string
        tail = _PAIR_TAIL.match(line, m.end())
        if line[i] != ord("{") or tail is None:
            return None  # other members around the reference: decode to be sure
        if tail.group(1) is not None:
            pairs.append((_unescape(m.group(1)), _unescape(tail.group(1))))
    return pairs


_SIMPLE_REF = re.compile(rb'\{\s*"reference"\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"\s*'
                         rb'(,\s*"display"\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"\s*)?\}')


def lines_reference_displays(lines: list[bytes]) -> list[tuple[str, str]]:
    """`line_reference_displays` of every line, in one pass when every reference of every line is
    plainly written (each `_SIMPLE_REF` match holds one reference member, so equal counts mean
    all of them are), line by line otherwise; a line it cannot read is decoded."""
    blob = b"\n".join(lines)
    if b"\\u00" not in blob and b'\\"reference"' not in blob:
        simple = _SIMPLE_REF.findall(blob)
        if len(simple) == len(_REF.findall(blob)):
            return [(_unescape(r), _unescape(d)) for r, has, d in simple if has]
    pairs: list[tuple[str, str]] = []
    for line in lines:
        got = line_reference_displays(line)
        if got is None:
            got = []
            reference_pairs(decode_line(line), got)
        pairs += got
    return pairs


def reference_pairs(node: Any, out: list[tuple[str, str]]) -> None:
    """(reference, display) of every object under `node` with both as strings."""
    out += [(r["reference"], r["display"]) for r in reference_objects(node, []) if isinstance(r.get("display"), str)]


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
    out.update(r["reference"].split("/_history/")[0] for r in reference_objects(node, []))


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
        self.resource_count = 0  # resources indexed (after `patient_ids()`)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._sources: list[_Source] | None = None
        self._index: dict[str, array] | None = None
        self._shared: dict[str, int] = {}
        self._cache: OrderedDict[int, tuple[dict[str, Any] | None, Resource | None]] = OrderedDict()
        self._cache_size = shared_cache
        self._bundle_cache: tuple[int, list[dict[str, Any]]] | None = None
        self._handles: dict[int, Any] = {}
        self._stats = StatsCounter()
        self._file_types: dict[int, str | None] = {}  # an NDJSON file's one resourceType (None: mixed)

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
                    if not f.is_file() or f.name.startswith("."):
                        continue
                    if _NDJSON_SUFFIX.search(f.name):
                        if ndjson_type(f) is not None:
                            files.append(f)
                        else:
                            log.info("ignored %s: not FHIR NDJSON", f.name)
                    elif f.name.endswith((".json", ".json.gz")):
                        files.append(f)
            if not files:
                raise NoResourcesError(f"{p}: no FHIR NDJSON or Bundle files found")
        folder = p if p.is_dir() else p.parent if files != [p] else None  # an export, not a lone file
        types = manifest_types(folder) if folder is not None else {}
        sources = []
        for f in files:
            src = self._local(f)
            if src.kind == "ndjson" and folder is not None:
                src.rtype = ndjson_type(f, types)
            sources.append(src)
        self._sources = sources
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
    def _lines(self, src: _Source, decode: Callable[[bytes], Any] = json.loads) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """(line_number, byte offset, resource) of each good line; bad ones are reported. `decode`
        may return only some top-level members (`_head`) but must accept and refuse like json."""
        offset = 0
        with src.path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                start = offset
                offset += len(line)
                if not line.strip():
                    continue
                try:
                    res = decode(line)
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
                items = ((offset, res) for _, offset, res in self._lines(src, _head))
            else:
                items = enumerate(self._bundle(idx))
            types: set[str] = set()
            for position, res in items:
                types.add(res["resourceType"])
                self.resource_count += 1
                packed = (idx << _OFFSET_BITS) | position
                pid = _patient_of(res)
                if pid is not None:
                    positions = index.get(pid)
                    if positions is None:
                        positions = index[pid] = array("Q")
                    positions.append(packed)
                elif res["resourceType"] in SHARED_TYPES:
                    for key in _shared_keys(res):
                        self._shared.setdefault(key, packed)
                else:
                    self.unassigned += 1
            if src.kind == "ndjson":
                if src.rtype is not None and types - {src.rtype}:
                    raise mixed_types_error(src.name, types | {src.rtype})
                self._file_types[idx] = types.pop() if len(types) == 1 else None
            self._bundle_cache = None
        if not self.resource_count:
            raise NoResourcesError(f"{self.path}: no FHIR resources found")
        self._index = index
        return index

    def patient_ids(self) -> list[str]:
        return list(self._build_index())

    def _read(self, packed: int) -> dict[str, Any] | None:
        idx, position = packed >> _OFFSET_BITS, packed & _OFFSET_MASK
        src = self.sources()[idx]
        if src.kind == "bundle":
            entries = self._bundle(idx)
            return entries[position] if position < len(entries) else None
        return decode_line(self._line(idx, position))  # validated as JSON during indexing

    def _line(self, idx: int, position: int) -> bytes:
        handle = self._handles.get(idx)
        if handle is None:
            handle = self._handles[idx] = self.sources()[idx].path.open("rb")
        handle.seek(position)
        return handle.readline()

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
            shared_raw, shared = self._resolve(refs)
            self._bundle_cache = None
            yield PatientResources(pid, models, shared, raw, shared_raw, stats.freeze())

    def _resolve(self, refs: set[str]) -> tuple[list[dict[str, Any]], list[Resource]]:
        """The shared resources `refs` name (raw, and validated for the types read), in ref order."""
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
        return shared_raw, shared

    def iter_patient_lines(self, load: Collection[str] | None = None) -> Iterator[PatientLines]:
        """`iter_patients` without decoding: each patient's lines of the types in `load` (None: all)
        as bytes, and the shared resources every one of the patient's lines refers to (as
        `iter_patients` gives them in `shared_raw`). Same patients, same order; `items` in the
        order of `iter_patients`'s `raw`, less the types not loaded."""
        index = self._build_index()
        for pid, positions in index.items():
            items: list[tuple[str, bytes | dict[str, Any]]] = []
            refs: set[str] = set()
            lines: list[bytes] = []
            has_patient = False
            for packed in sorted(positions):
                idx, position = packed >> _OFFSET_BITS, packed & _OFFSET_MASK
                rtype = self._file_types.get(idx)
                if rtype is not None:
                    line = self._line(idx, position)
                    lines.append(line)
                    value: bytes | dict[str, Any] = line
                else:  # a Bundle entry or a line of a file of several types
                    res = self._read(packed)
                    if res is None:
                        continue
                    _references(res, refs)
                    rtype, value = res["resourceType"], res
                if rtype == "Patient":
                    has_patient = True  # indexed under its own id, so it is this patient
                if load is None or rtype in load:
                    items.append((rtype, value))
            if not has_patient:
                log.warning("%d resources refer to a patient that is not in the export", len(positions))
                continue
            lines_references(lines, refs)
            items.sort(key=lambda item: item[0] != "Patient")  # the Patient first
            shared_raw = self._resolve(refs)[0]
            self._bundle_cache = None
            yield PatientLines(pid, items, shared_raw)


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
