"""The census name dictionary: first names and surnames of the 1990 US Census name files, as
shipped by the PyPI package `names` (MIT licence; the lists are public-domain Census Bureau data:
5,163 first names, 88,799 surnames). Used with the clinical-vocabulary veto (a dictionary name
that is also a clinical or common English word needs a title, a relation or another name beside it).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

# Frequency cut: the rarest census surnames are mostly spelling variants and common words.
MIN_SURNAME_RANK = 60_000


def _read(name: str, limit: int | None = None) -> frozenset[str]:
    import names as census

    path = Path(census.__file__).with_name(name)
    out = set()
    with path.open(encoding="ascii") as fh:
        for i, line in enumerate(fh):
            if limit is not None and i >= limit:
                break
            word = line.split(" ", 1)[0].strip().lower()
            if len(word) >= 2 and word.isalpha():
                out.add(word)
    return frozenset(out)


@lru_cache(maxsize=1)
def census_first_names() -> frozenset[str]:
    return _read("dist.female.first") | _read("dist.male.first")


@lru_cache(maxsize=1)
def census_last_names() -> frozenset[str]:
    return _read("dist.all.last", MIN_SURNAME_RANK)
