"""Build `data/clinical_words.txt`: lower-case clinical vocabulary for re-casing ALL-CAPS text.

The words come from FHIR terminology displays (`display`, `code.text`) and the clinical notes of
the synthetic exports in `shared/data/fhir`, counted only where the source writes them in lower
case (so proper names, which are capitalised, never enter), and never a word of any Patient,
Practitioner, Organization or Location name or address. Regenerate with

    .venv/bin/python -m deidentify.wordlist ../shared/data/fhir
"""
from __future__ import annotations

import base64
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

OUT = Path(__file__).with_name("data") / "clinical_words.txt"
_WORD = re.compile(r"(?<![\w'])[a-z][a-z'-]*[a-z](?![\w'])")
_IDENTITY_TYPES = {"Patient", "Practitioner", "Organization", "Location", "RelatedPerson", "PractitionerRole"}


def _resources(root: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(root.rglob("*")):
        if path.suffix == ".ndjson":
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield json.loads(line)
        elif path.suffix == ".json":
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("resourceType") == "Bundle":
                yield from (e["resource"] for e in doc.get("entry", []) if e.get("resource"))
            elif "resourceType" in doc:
                yield doc


def _strings(node: Any, keys: tuple[str, ...]) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in keys and isinstance(v, str):
                yield v
            else:
                yield from _strings(v, keys)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, keys)


def build(root: Path, min_count: int = 2) -> list[str]:
    counts: Counter[str] = Counter()
    identity_words: set[str] = set()
    for res in _resources(root):
        kind = res.get("resourceType")
        if kind in _IDENTITY_TYPES:
            for s in _strings({k: res.get(k) for k in ("name", "address", "alias")}, ("family", "given", "line", "city", "text", "name", "district")):
                identity_words.update(w.lower() for w in re.findall(r"[A-Za-z']+", s))
            continue
        texts = list(_strings(res, ("display", "text")))
        if kind == "DocumentReference":
            for c in res.get("content", []) or []:
                att = c.get("attachment") or {}
                if att.get("contentType", "").startswith("text/plain") and att.get("data"):
                    texts.append(base64.b64decode(att["data"]).decode("utf-8", "replace"))
        for t in texts:
            counts.update(_WORD.findall(t))
    return sorted(w for w, n in counts.items() if n >= min_count and len(w) >= 3 and w not in identity_words)


def main(argv: list[str]) -> None:
    root = Path(argv[0] if argv else "../shared/data/fhir")
    words = build(root)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(words) + "\n", encoding="utf-8")
    print(f"{len(words)} words -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1:])
