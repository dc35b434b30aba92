"""`triage dataset import-text`: transcripts and notes -> scrubbed, token-bounded text chunks for CPT."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from model.cli import dataset as dataset_group
from model.text_import import TextImportConfig, TextImportError, chunk_text, load_tokenizer, run_text_import

TRANSCRIPT = """Nurse: Good morning, can you tell me your name and date of birth?

Patient: It's Rosalind Whitcombe, born March 3rd, 1957. My MRN is 5520193 on the card.

Nurse: Thank you Ms. Whitcombe. What brings you in today?

Patient: Chest tightness since last night, worse on the stairs. My daughter Fenella drove me from Quincy.

Nurse: Any allergies? Who is your doctor?

Patient: Penicillin gives me a rash. Dr. Bartholomew Ashdown at Quincy Medical Center. You can call him on 617-555-0188.
"""
PLANTED = ["Rosalind", "Whitcombe", "5520193", "Fenella", "Bartholomew", "Ashdown", "617-555-0188", "March 3rd, 1957"]


@pytest.fixture(scope="module")
def scrubber():
    from model.dataset import make_scrubber

    return make_scrubber()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "steward.key"
    path.write_text("3d" * 32 + "\n")
    return path


def _outputs(root: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(root.rglob("*")) if p.is_file())


def _rows(root: Path) -> list[dict]:
    return [json.loads(x) for s in ("train", "validation", "test") for x in (root / f"{s}.jsonl").read_text().splitlines()]


def test_folder_of_transcripts_scrubbed_and_chunked(tmp_path, key_file, scrubber, tokenizer) -> None:
    src = tmp_path / "transcripts"
    (src / "2024").mkdir(parents=True)
    for i in range(4):
        (src / "2024" / f"visit{i}.txt").write_text(TRANSCRIPT.replace("tightness", f"tightness ({i})"))
    (src / "empty.txt").write_text("  \n")
    (src / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    messages: list[str] = []
    result = run_text_import(TextImportConfig(input=src, output=tmp_path / "out", key_file=key_file, tokenizer=None,
                                              max_tokens=48), scrubber=scrubber, tokenizer=tokenizer, echo=messages.append)
    assert messages == ["skipped binary.txt line 1: not UTF-8 text", "skipped empty.txt line 1: empty file"]
    rows = _rows(tmp_path / "out")
    c = result.counts
    assert c["documents_used"] == 4 and c["chunks"] == len(rows) > 4
    for r in rows:  # every chunk within the limit by the model's own tokenizer
        assert set(r) == {"id", "document", "text", "tokens"}
        assert r["tokens"] == len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) <= 48
    by_doc: dict[str, set[str]] = {}
    for s in ("train", "validation", "test"):
        for x in (tmp_path / "out" / f"{s}.jsonl").read_text().splitlines():
            by_doc.setdefault(json.loads(x)["document"], set()).add(s)
    assert all(len(v) == 1 for v in by_doc.values())  # a document's chunks stay in one split
    text = _outputs(tmp_path / "out").casefold()
    for planted in PLANTED:
        assert planted.casefold() not in text, planted
    assert "tightness" in text and "worse on the stairs" in text and "allergies" in text
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["leak_check"]["passed"] and manifest["counts"]["bad_lines"] == 2


def test_jsonl_documents_with_identity_fields(tmp_path, key_file, scrubber, tokenizer) -> None:
    docs = [{"text": TRANSCRIPT, "name": "Rosalind Whitcombe", "mrn": "5520193"},
            {"text": "Patient Ottoline Pemberton-Hale reports a headache.\n\nAdvised rest.", "name": "Ottoline Pemberton-Hale"}]
    src = tmp_path / "docs.jsonl"
    src.write_text(json.dumps(docs[0]) + "\n{oops\n" + json.dumps({"body": "x"}) + "\n" + json.dumps(docs[1]) + "\n")
    messages: list[str] = []
    result = run_text_import(TextImportConfig(input=src, output=tmp_path / "out", key_file=key_file, tokenizer=None,
                                              max_tokens=512), scrubber=scrubber, tokenizer=tokenizer, echo=messages.append)
    assert messages == ["skipped docs.jsonl line 2: malformed JSON", "skipped docs.jsonl line 3: missing field text"]
    assert result.counts["documents_used"] == 2
    assert result.manifest["leak_check"]["identifiers_searched"] > 0
    text = _outputs(tmp_path / "out").casefold()
    for planted in PLANTED + ["Ottoline", "Pemberton"]:
        assert planted.casefold() not in text, planted


def test_chunk_text_packs_paragraphs_and_cuts_long_ones(tokenizer) -> None:
    para = "word " * 300
    chunks = chunk_text("short one.\n\nshort two.\n\n" + para, tokenizer, 40)
    assert chunks[0][0] == "short one.\n\nshort two."
    assert all(n <= 40 for _, n in chunks) and len(chunks) > 5
    assert "".join(c for c, _ in chunks[1:]).replace(" ", "") == para.replace(" ", "")


def test_cli_errors_are_one_line(tmp_path, key_file, tiny_model_dir, monkeypatch) -> None:
    runner = CliRunner()
    monkeypatch.delenv("TRIAGE_MODEL_PATH", raising=False)
    (tmp_path / "empty").mkdir()
    base = ["import-text", "--key-file", str(key_file)]
    res = runner.invoke(dataset_group, base + ["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o")])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "no tokenizer" in res.output
    tok = ["--tokenizer", str(tiny_model_dir)]
    res = runner.invoke(dataset_group, base + tok + ["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no text files" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n" + json.dumps({"text": "  "}) + "\n")
    res = runner.invoke(dataset_group, base + tok + ["--input", str(bad), "--output", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert res.output.splitlines() == ["skipped bad.jsonl line 1: malformed JSON", "skipped bad.jsonl line 2: empty field text",
                                       f"error: {bad}: no usable documents (2 skipped)"]
    res = runner.invoke(dataset_group, base + ["--tokenizer", str(tmp_path / "nomodel"), "--input", str(bad),
                                               "--output", str(tmp_path / "o")])
    assert res.exit_code == 1 and "cannot be loaded" in res.output and "Traceback" not in res.output
    with pytest.raises(TextImportError, match="the file is empty"):
        (tmp_path / "e.jsonl").write_text("")
        run_text_import(TextImportConfig(input=tmp_path / "e.jsonl", output=tmp_path / "o", key_file=key_file,
                                         tokenizer=None), tokenizer=object())
