"""Import a local copy of a medical reasoning set (`Question`, `Complex_CoT`, `Response`; the layout
of FreedomIntelligence/medical-o1-reasoning-SFT) into the chat format of clinic datasets.

The reasoning (`Complex_CoT`) becomes the assistant's `thinking`, the answer its `content`: the
fields TRL's gpt-oss chat template renders as the analysis and final channels.
Accepted inputs: a JSON array, JSON Lines, or Parquet. Bad rows are reported (row number and
reason, never the row's text) and skipped.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dataset_card import atomic_open, dumps_line

FIELDS = ("Question", "Complex_CoT", "Response")


class ReasoningImportError(ValueError):
    """The input cannot be read at all (one-line message)."""


@dataclass
class ImportResult:
    rows_read: int = 0
    written: int = 0
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # (1-based row, reason)

    @property
    def skipped(self) -> int:
        return len(self.bad_rows)

    def reasons(self) -> Counter[str]:
        return Counter(reason.split(":")[0] for _, reason in self.bad_rows)


def _iter_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReasoningImportError(f"{path}: not valid JSON ({type(exc).__name__} at {getattr(exc, 'lineno', '?')}:{getattr(exc, 'colno', '?')})") from None
    if not isinstance(data, list):
        raise ReasoningImportError(f"{path}: a JSON file must hold an array of rows")
    yield from enumerate(data, start=1)


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError:
                yield n, _BadJSON()


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise ReasoningImportError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield n, row


class _BadJSON:
    pass


def iter_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(row number, row) for JSON array, JSONL or Parquet, chosen by content, not only suffix."""
    if not path.is_file():
        raise ReasoningImportError(f"{path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(0)
        first = fh.read(4096).lstrip()[:1]
    if head == b"PAR1":
        yield from _iter_parquet(path)
    elif first == b"[":
        yield from _iter_json_array(path)
    elif first == b"{":
        yield from _iter_jsonl(path)
    elif not first:
        raise ReasoningImportError(f"{path}: the file is empty")
    else:
        raise ReasoningImportError(f"{path}: expected a JSON array, JSON Lines or Parquet")


def row_to_example(row: Any, *, source: str) -> dict[str, Any]:
    """One chat example, or ValueError with a short reason that quotes no content."""
    if isinstance(row, _BadJSON):
        raise ValueError("malformed JSON")
    if not isinstance(row, dict):
        raise ValueError(f"not an object ({type(row).__name__})")
    values = {}
    for name in FIELDS:
        value = row.get(name)
        if value is None:
            raise ValueError(f"missing field: {name}")
        if not isinstance(value, str):
            raise ValueError(f"field is not text: {name}")
        if not value.strip():
            raise ValueError(f"empty field: {name}")
        values[name] = value.strip()
    digest = hashlib.sha256("\x00".join(values[n] for n in FIELDS).encode()).hexdigest()[:16]
    return {
        "id": f"{source}-{digest}",
        "source": source,
        "messages": [
            {"role": "user", "content": values["Question"]},
            {"role": "assistant", "content": values["Response"], "thinking": values["Complex_CoT"]},
        ],
    }


def import_reasoning(
    input_path: str | Path, output_path: str | Path, *, source: str = "medical-o1-reasoning-SFT", limit: int | None = None
) -> ImportResult:
    """Convert `input_path` into chat JSONL at `output_path` (written atomically)."""
    src, dst = Path(input_path), Path(output_path)
    result = ImportResult()
    rows = iter_rows(src)
    with atomic_open(dst) as out:
        for n, row in rows:
            if limit is not None and result.written >= limit:
                break
            result.rows_read += 1
            try:
                example = row_to_example(row, source=source)
            except ValueError as exc:
                result.bad_rows.append((n, str(exc)))
                continue
            out.write(dumps_line(example))
            result.written += 1
        if result.written == 0:  # raising here discards the temporary file: no empty output
            raise ReasoningImportError(f"{src}: no valid rows ({result.skipped} bad)")
    return result
