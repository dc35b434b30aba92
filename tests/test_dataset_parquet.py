"""The Parquet copy read by Arrow's JSON reader is the table built from Python rows, byte for byte."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from model import dataset_card as dc


def _rows() -> list[dict]:
    rows = []
    for i in range(300):
        messages = [{"role": "developer", "content": "fixed instructions " * 20},
                    {"role": "user", "content": f"Patient {i}: \u00e9\u2026 \"quoted\" \\ back\nline two"},
                    {"role": "assistant", "content": json.dumps({"acuity": i % 5}), "extra": "ignored"}]
        if i % 7 == 0:
            messages[2]["thinking"] = "because"
        rows.append({"id": f"p{i}-e{i}", "patient": f"p{i}", "acuity": None if i % 3 == 0 else i % 5 + 1,
                     "label_source": None if i % 3 == 0 else "encounter.class", "messages": messages,
                     "chat_template_kwargs": None if i % 11 == 0 else {"model_identity": "m", "reasoning_effort": "low"}})
    return rows


def test_arrow_reader_gives_the_python_table(tmp_path: Path) -> None:
    src = tmp_path / "train.jsonl"
    src.write_text("".join(dc.dumps_line(r) for r in _rows()), encoding="utf-8")
    fast, slow = tmp_path / "fast.parquet", tmp_path / "slow.parquet"
    dc.write_parquet(fast, src)
    schema = dc.parquet_schema()
    table = pa.table(dc._python_columns(src.read_text(encoding="utf-8").splitlines(), schema), schema=schema)
    pq.write_table(table, slow, compression="zstd")
    assert fast.read_bytes() == slow.read_bytes()
    assert pq.read_table(fast).num_rows == 300


def test_empty_split(tmp_path: Path) -> None:
    src = tmp_path / "test.jsonl"
    src.write_text("")
    dc.write_parquet(tmp_path / "test.parquet", src)
    assert pq.read_table(tmp_path / "test.parquet").num_rows == 0


def test_large_splits_are_streamed_in_row_groups(tmp_path: Path) -> None:
    """Row groups of a bounded size (memory stays flat), the same rows, the same bytes each time;
    the Python fallback (a row Arrow cannot read in blocks) gives the same rows too."""
    src = tmp_path / "train.jsonl"
    src.write_text("".join(dc.dumps_line(r) for r in _rows() * 4), encoding="utf-8")
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    dc.write_parquet(a, src, row_group_bytes=64 << 10)
    dc.write_parquet(b, src, row_group_bytes=64 << 10)
    assert a.read_bytes() == b.read_bytes()
    meta = pq.ParquetFile(a).metadata
    assert meta.num_rows == 1200 and meta.num_row_groups > 1
    schema = dc.parquet_schema()
    want = pa.table(dc._python_columns(src.read_text(encoding="utf-8").splitlines(), schema), schema=schema)
    assert pq.read_table(a).equals(want)
    dc._write_groups(c, dc._groups(dc._python_batches(src, schema, rows=100), 64 << 10, schema), schema)
    assert pq.read_table(c).equals(want) and pq.ParquetFile(c).metadata.num_row_groups > 1
    # Runs of a row or two (a run always ends at a line end): the same rows.
    dc.write_parquet(c, src, row_group_bytes=1 << 10)
    assert pq.read_table(c).equals(want) and pq.ParquetFile(c).metadata.num_row_groups >= 600
