"""`triage dataset import-reasoning`: Question / Complex_CoT / Response -> chat with thinking."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from model.cli import dataset
from model.reasoning_import import ReasoningImportError, import_reasoning

ROWS = [
    {"Question": "A 60-year-old with crushing chest pain ... next step?", "Complex_CoT": "Think about ACS first.", "Response": "Obtain an ECG."},
    {"Question": "Fever and neck stiffness in a 20-year-old?", "Complex_CoT": "Meningitis must be excluded.", "Response": "Blood cultures, then antibiotics."},
    {"Question": "Missing reasoning", "Response": "x"},
    {"Question": "", "Complex_CoT": "c", "Response": "r"},
    {"Question": 42, "Complex_CoT": "c", "Response": "r"},
]


def _check(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    user, assistant = rows[0]["messages"]
    assert user == {"role": "user", "content": ROWS[0]["Question"]}
    assert assistant == {"role": "assistant", "content": ROWS[0]["Response"], "thinking": ROWS[0]["Complex_CoT"]}
    return rows


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet"])
def test_import_formats(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / f"in.{fmt}"
    if fmt == "json":
        src.write_text(json.dumps(ROWS))
    elif fmt == "jsonl":
        src.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n{not json\n")
    else:
        good = [r for r in ROWS if isinstance(r.get("Question"), str)]
        pq.write_table(pa.Table.from_pylist(good), src)
    result = import_reasoning(src, tmp_path / "out.jsonl")
    _check(tmp_path / "out.jsonl")
    reasons = [r for _, r in result.bad_rows]
    assert "missing field: Complex_CoT" in reasons and "empty field: Question" in reasons
    if fmt != "parquet":
        assert "field is not text: Question" in reasons
    if fmt == "jsonl":
        assert (6, "malformed JSON") in result.bad_rows  # reported by line number


def test_import_loads_and_renders_with_gptoss_template(tmp_path: Path) -> None:
    from datasets import load_dataset
    from jinja2 import Template

    import trl

    src = tmp_path / "in.json"
    src.write_text(json.dumps(ROWS))
    import_reasoning(src, tmp_path / "out.jsonl")
    ds = load_dataset("json", data_files=str(tmp_path / "out.jsonl"), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 2
    template = (Path(trl.__file__).parent / "chat_templates" / "gptoss.jinja").read_text()
    text = Template(template).render(messages=[dict(m) for m in json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])["messages"]],
                                     raise_exception=lambda m: (_ for _ in ()).throw(ValueError(m)), strftime_now=lambda f: "2025-01-01")
    assert "<|channel|>analysis<|message|>Think about ACS first.<|end|>" in text
    assert "<|channel|>final<|message|>Obtain an ECG." in text


def test_import_errors_and_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.json"
    bad.write_text('{"Question": ')
    res = runner.invoke(dataset, ["import-reasoning", "--input", str(bad), "--output", str(tmp_path / "o.jsonl")])
    assert res.exit_code != 0
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(ReasoningImportError):
        import_reasoning(empty, tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in ROWS))
    res = runner.invoke(dataset, ["import-reasoning", "--input", str(src), "--output", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 0, res.output
    assert "2 examples written" in res.output and "skipped row 3: missing field: Complex_CoT" in res.output
    assert "Missing reasoning" not in res.output  # row content is never echoed
