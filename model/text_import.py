"""`triage dataset import-text`: conversation transcripts and notes -> de-identified plain-text
chunks for continual pre-training (CPT).

Input: a folder of text files (`*.txt`, `*.md`, any depth) or a JSON Lines file of documents
(`{"text": ...}`, optionally with the identity columns of `triage dataset import`: id, name, mrn,
phone...). Each document is scrubbed by the free-text scrubber paragraph by paragraph (with the
document's own identifiers where the JSONL gives them; dates shifted by a per-document offset from
the key), then cut into chunks of at most `max_tokens` tokens of the configured model's tokenizer,
at paragraph boundaries where it can (a paragraph longer than a chunk is cut between tokens).
Every chunk is searched for every identifier the input names (the build's `LeakScanner`); a chunk
with a hit is dropped and counted. Every output file is scanned again after writing.

Output (the format `triage train cpt` reads: TRL's language-modelling format, one `text` per row):

    OUTPUT/train.jsonl, validation.jsonl, test.jsonl   {"id", "document", "text", "tokens"}
    OUTPUT/manifest.json, README.md

Documents are split (by a keyed hash of their pseudonym and the seed), never their chunks.
"""
from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dataset_card import CARD_NAME, MANIFEST_NAME, atomic_open, dumps_line, sha256_file, write_json

TEXT_SUFFIXES = (".txt", ".md", ".text")
_PARAGRAPH = re.compile(r"\n[ \t]*\n+")


class TextImportError(RuntimeError):
    """The import cannot run or produced nothing: one line, naming the file, quoting no content."""


@dataclass
class TextImportConfig:
    input: Path
    output: Path
    key_file: Path | None
    tokenizer: str | None  # a model folder or hub name (offline); the configured model's by default
    max_tokens: int = 2048
    text_field: str = "text"
    seed: int = 13
    split: tuple[float, float, float] = (0.9, 0.1, 0.0)
    overwrite: bool = False


@dataclass
class TextImportResult:
    output: Path
    manifest: dict[str, Any]
    elapsed_s: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest["counts"]


@dataclass
class _Doc:
    where: str  # file name (and line) for messages
    text: str
    values: dict[str, str]  # identity columns (JSONL only)


class _Bad:
    def __init__(self, where: str, reason: str) -> None:
        self.where, self.reason = where, reason


def iter_documents(path: Path, text_field: str) -> Iterator[_Doc | _Bad]:
    from .dataset_import import IDENTITY_FIELDS

    if not path.exists():
        raise TextImportError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.casefold() in TEXT_SUFFIXES)
        if not files:
            raise TextImportError(f"{path}: no text files (*.txt, *.md) in the folder")
        for p in files:
            rel = str(p.relative_to(path))
            try:
                text = p.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                yield _Bad(f"{rel} line 1", "not UTF-8 text")
                continue
            if not text.strip():
                yield _Bad(f"{rel} line 1", "empty file")
                continue
            yield _Doc(rel, text, {f: "" for f in IDENTITY_FIELDS})
        return
    if path.stat().st_size == 0:
        raise TextImportError(f"{path}: the file is empty")
    if path.suffix.casefold() not in (".jsonl", ".ndjson"):
        raise TextImportError(f"{path}: expected a folder of text files or a .jsonl of documents")
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                yield _Bad(where, "malformed JSON")
                continue
            if not isinstance(row, dict):
                yield _Bad(where, "not an object")
                continue
            text = row.get(text_field)
            if not isinstance(text, str):
                yield _Bad(where, f"missing field {text_field}" if text is None else f"field {text_field} is not text")
                continue
            if not text.strip():
                yield _Bad(where, f"empty field {text_field}")
                continue
            values = {f: str(row.get(f) or "").strip() for f in IDENTITY_FIELDS}
            yield _Doc(where, text, values)


def load_tokenizer(name: str | None) -> Any:
    if not name:
        raise TextImportError("no tokenizer: pass --tokenizer (a model folder) or set TRIAGE_MODEL_PATH")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise TextImportError("transformers is not installed: pip install 'triage-cds[model]'") from None
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # noqa: BLE001 - many error types; one line
        raise TextImportError(f"tokenizer {name}: cannot be loaded ({type(exc).__name__})") from None
    if not getattr(tok, "is_fast", False):
        raise TextImportError(f"tokenizer {name}: a fast tokenizer is needed (token offsets)")
    return tok


def chunk_text(text: str, tokenizer: Any, max_tokens: int) -> list[tuple[str, int]]:
    """(chunk, tokens): paragraphs packed greedily up to `max_tokens`; a longer paragraph is cut
    between tokens (at token offsets). Chunks are whitespace-trimmed."""
    def count(t: str) -> int:
        return len(tokenizer(t, add_special_tokens=False)["input_ids"])

    chunks: list[tuple[str, int]] = []
    held: list[str] = []
    held_n = 0
    for para in (p.strip() for p in _PARAGRAPH.split(text)):
        if not para:
            continue
        n = count(para)
        if n > max_tokens:
            if held:
                chunks.append(("\n\n".join(held), held_n))
                held, held_n = [], 0
            enc = tokenizer(para, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
            pieces = [para[p[0][0]:p[-1][1]].strip() for i in range(0, len(offsets), max_tokens)
                      if (p := offsets[i:i + max_tokens])]
            pieces = [p for p in pieces if p]
            chunks += [(p, count(p)) for p in pieces[:-1]]
            if pieces:  # the tail is packed with what follows
                held, held_n = [pieces[-1]], count(pieces[-1])
            continue
        joined = held_n + n + (count("\n\n") if held else 0)
        if held and joined > max_tokens:
            chunks.append(("\n\n".join(held), held_n))
            held, held_n = [], 0
        held.append(para)
        held_n = count("\n\n".join(held)) if len(held) > 1 else n
    if held:
        chunks.append(("\n\n".join(held), held_n))
    # A piece cut at token offsets can re-tokenize a token longer (rare): never above the limit.
    out: list[tuple[str, int]] = []
    for c, n in chunks:
        while n > max_tokens and c:
            c = c[: int(len(c) * max_tokens / n) - 1].rstrip()
            n = count(c)
        if c:
            out.append((c, n))
    return out


def run_text_import(cfg: TextImportConfig, *, echo: Callable[[str], None] | None = None,
                    scrubber: Any = None, tokenizer: Any = None) -> TextImportResult:
    from deidentify.leaks import IdentifierSet
    from deidentify.pseudonym import MissingKeyError, Pseudonymizer, key_fingerprint, load_key

    from .dataset import SPLITS, DatasetError, LeakScanner, assign_splits, make_scrubber, prepare_output, scan_outputs, tool_version
    from .dataset_import import _OutputCfg, content_key, identity_of

    t0 = time.monotonic()
    timings: dict[str, float] = {}
    if cfg.max_tokens < 8:
        raise TextImportError("--max-tokens must be at least 8")
    try:
        key = load_key(cfg.key_file)
    except MissingKeyError as exc:
        raise TextImportError(str(exc)) from None
    fingerprint = key_fingerprint(key)
    pseudonymizer = Pseudonymizer(key)
    del key
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.tokenizer)

    docs: list[_Doc] = []
    bad: list[tuple[str, str]] = []
    for item in iter_documents(cfg.input, cfg.text_field):
        if isinstance(item, _Bad):
            bad.append((item.where, item.reason))
            if echo:
                echo(f"skipped {item.where}: {item.reason}")
        else:
            docs.append(item)
    if not docs:
        raise TextImportError(f"{cfg.input}: no usable documents ({len(bad)} skipped)")
    try:
        prepare_output(_OutputCfg(cfg.output, cfg.overwrite))
    except DatasetError as exc:
        raise TextImportError(str(exc)) from None

    t = time.monotonic()
    if scrubber is None:
        try:
            scrubber = make_scrubber()
        except DatasetError as exc:
            raise TextImportError(str(exc)) from None
    timings["load"] = time.monotonic() - t

    from deidentify.structured import known_identifiers, patient_key

    identifiers = IdentifierSet()
    identities = []
    for d in docs:  # the identity columns as `triage dataset import` reads them
        try:  # a document without an id is known by its content, as a curated record is
            identity = (identity_of({**d.values, "id": d.values["id"] or content_key({"history": d.text})})
                        if any(d.values.values()) else None)
        except ValueError as exc:
            bad.append((d.where, str(exc)))
            if echo:
                echo(f"skipped {d.where}: {exc}")
            identity = False
        identities.append(identity)
        if identity:
            identifiers.update(IdentifierSet.from_identity(identity))
    scanner = LeakScanner(identifiers)

    t = time.monotonic()
    drops: Counter[str] = Counter()
    removed: Counter[str] = Counter()
    leak_types: Counter[str] = Counter()
    chunks: dict[str, list[tuple[str, int]]] = {}
    texts_scrubbed = 0
    for d, identity in zip(docs, identities):
        if identity is False:
            continue
        doc_key = patient_key(identity) if identity is not None else content_key({"history": d.text})
        pseudo = pseudonymizer.pseudonym("document", doc_key)
        shift = pseudonymizer.date_shift_days(doc_key)
        paras = _PARAGRAPH.split(d.text)
        known = known_identifiers(identity) if identity is not None else None
        results = scrubber.scrub_many(paras, known=known, date_shift_days=shift)
        texts_scrubbed += len(paras)
        for r in results:
            for s in getattr(r, "spans", ()) or ():
                removed[getattr(s, "entity_type", "OTHER")] += 1
        scrubbed = "\n\n".join(r.text for r in results)
        kept = []
        for text, n in chunk_text(scrubbed, tokenizer, cfg.max_tokens):
            hits = scanner.find(text)
            if hits:
                drops["leak_check"] += 1
                leak_types.update(hits)
                continue
            kept.append((text, n))
        if not kept:
            drops["document_without_text"] += 1
            continue
        if pseudo in chunks:
            drops["duplicate_document"] += 1
            continue
        chunks[pseudo] = kept
    timings["documents"] = time.monotonic() - t
    if not chunks:
        raise TextImportError(f"{cfg.input}: no usable documents ({len(bad)} skipped, {sum(drops.values())} dropped)")

    t = time.monotonic()
    out = cfg.output
    splits = assign_splits(chunks, cfg.seed, cfg.split)
    per_split: Counter[str] = Counter()
    docs_split: Counter[str] = Counter()
    tokens_split: Counter[str] = Counter()
    from contextlib import ExitStack

    with ExitStack() as stack:
        files = {s: stack.enter_context(atomic_open(out / f"{s}.jsonl")) for s in SPLITS}
        for pseudo in sorted(chunks):
            s = splits[pseudo]
            docs_split[s] += 1
            for k, (text, n) in enumerate(chunks[pseudo]):
                files[s].write(dumps_line({"id": f"{pseudo}-c{k}", "document": pseudo, "text": text, "tokens": n}))
                per_split[s] += 1
                tokens_split[s] += n
    inputs = ([{"path": str(p.relative_to(cfg.input)), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
               for p in sorted(cfg.input.rglob("*")) if p.is_file() and p.suffix.casefold() in TEXT_SUFFIXES]
              if cfg.input.is_dir() else
              [{"path": cfg.input.name, "bytes": cfg.input.stat().st_size, "sha256": sha256_file(cfg.input)}])
    manifest: dict[str, Any] = {
        "tool": "triage dataset import-text",
        "tool_version": tool_version(),
        "format": "text (TRL language modelling: one `text` per row), for `triage train cpt`",
        "inputs": inputs,
        "settings": {"tokenizer": str(cfg.tokenizer) if cfg.tokenizer else "(given)", "max_tokens": cfg.max_tokens,
                     "text_field": cfg.text_field, "seed": cfg.seed, "split": list(cfg.split)},
        "deidentification": {"key_fingerprint": fingerprint,
                             "scrubber": "deidentify.text.TextScrubber (Presidio + clinical recognizers + known identifiers)",
                             "date_shift_days": "-365..-1 per document",
                             "removed_by_type": dict(sorted(removed.items()))},
        "counts": {
            "documents": len(docs) + len(bad), "documents_used": len(chunks), "paragraphs_scrubbed": texts_scrubbed,
            "chunks": sum(per_split.values()), "chunks_per_split": {s: per_split.get(s, 0) for s in SPLITS},
            "documents_per_split": {s: docs_split.get(s, 0) for s in SPLITS},
            "tokens_per_split": {s: tokens_split.get(s, 0) for s in SPLITS},
            "bad_lines": len(bad), "dropped": dict(sorted(drops.items())),
        },
        "bad_lines": [{"where": w, "reason": r} for w, r in bad],
        "leak_check": {"dropped_chunks": drops.get("leak_check", 0), "dropped_by_identifier_type": dict(sorted(leak_types.items())),
                       "identifiers_searched": scanner.size, "files_scanned": 0, "output_hits": 0, "passed": True},
    }
    written = [out / f"{s}.jsonl" for s in SPLITS]
    hits = scan_outputs(written, scanner)
    manifest["leak_check"].update(files_scanned=len(written) + 2, output_hits=sum(hits.values()), passed=not hits)
    with atomic_open(out / CARD_NAME) as fh:
        fh.write(_card(manifest))
    write_json(out / MANIFEST_NAME, manifest)
    hits.update(scan_outputs([out / MANIFEST_NAME, out / CARD_NAME], scanner))
    timings["write"] = time.monotonic() - t
    if hits:
        from .dataset import LeakFound

        raise LeakFound("leak check FAILED: identifiers found in output files ("
                        + ", ".join(f"{k}={v}" for k, v in sorted(hits.items())) + "); do not share this output")
    return TextImportResult(out, manifest, time.monotonic() - t0, timings)


def _card(m: dict[str, Any]) -> str:
    c = m["counts"]
    rows = "\n".join(f"| {s} | {c['documents_per_split'][s]} | {c['chunks_per_split'][s]} | {c['tokens_per_split'][s]} |"
                     for s in c["chunks_per_split"])
    return f"""# Triage CDS continual pre-training text (de-identified)

Plain-text chunks for continual pre-training (`triage train cpt`), made by `triage dataset import-text`
(tool version {m['tool_version']}) from conversation transcripts and notes. Each document was scrubbed by
{m['deidentification']['scrubber']}, dates shifted by a per-document offset derived from the key
(fingerprint `{m['deidentification']['key_fingerprint']}`), then cut into chunks of at most
{m['settings']['max_tokens']} tokens of `{m['settings']['tokenizer']}`, at paragraph boundaries where possible.
Rows: `{{"id", "document" (keyed pseudonym), "text", "tokens"}}`; documents, not chunks, are split.

| split | documents | chunks | tokens |
|---|---|---|---|
{rows}

Documents read: {c['documents']}; used: {c['documents_used']}; skipped (bad input): {c['bad_lines']};
dropped: {json.dumps(c['dropped'])}. Identifiers removed by the scrubber, by type:
{json.dumps(m['deidentification']['removed_by_type'])}.

Leak check: every chunk searched for the {m['leak_check']['identifiers_searched']} identifier strings the input's
identity fields name (a hit drops the chunk: {m['leak_check']['dropped_chunks']}); output files scanned again
after writing: {m['leak_check']['output_hits']} hits ({'passed' if m['leak_check']['passed'] else 'FAILED'}).

Known limits: free-text de-identification is statistical; a folder of text files names no identifiers,
so only the scrubber protects it (no leak-check terms). Transcripts of speech carry names and places
in forms a scrubber can miss (spelled out, misheard): review a sample before sharing.
"""
