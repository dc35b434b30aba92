"""Pseudonym keys, HMAC pseudonyms and per-patient date shifts."""
from __future__ import annotations

import os
import pickle
import stat

import pytest

from deidentify import Deidentifier, MissingKeyError, load_key
from deidentify.pseudonym import KEY_ENV, Pseudonymizer, demo_key, key_fingerprint

KEY = b"k" * 32
KEY2 = b"q" * 32


def test_same_key_same_pseudonym_different_key_different() -> None:
    a, b, c = Pseudonymizer(KEY), Pseudonymizer(KEY), Pseudonymizer(KEY2)
    assert a.pseudonym("Patient", "123") == b.pseudonym("Patient", "123")
    assert a.pseudonym("Patient", "123") != c.pseudonym("Patient", "123")
    assert a.pseudonym("Patient", "123") != a.pseudonym("Patient", "124")
    # domain separation: the same value in another kind is unrelated
    assert a.pseudonym("Patient", "123") != a.pseudonym("Encounter", "123")
    p = a.pseudonym("Patient", "123")
    assert len(p) == 36 and p.count("-") == 4 and p == p.lower()


def test_date_shift_stable_negative_in_range() -> None:
    p = Pseudonymizer(KEY)
    shifts = {p.date_shift_days(f"patient-{i}") for i in range(300)}
    assert all(-365 <= s <= -1 for s in shifts)
    assert len(shifts) > 100  # spread over the range
    assert p.date_shift_days("x") == Pseudonymizer(KEY).date_shift_days("x")
    narrow = Pseudonymizer(KEY, shift_range=(10, 12))
    assert {narrow.date_shift_days(f"p{i}") for i in range(100)} == {-10, -11, -12}
    with pytest.raises(ValueError):
        Pseudonymizer(KEY, shift_range=(0, 5))


def test_load_key_from_env_and_path(tmp_path, monkeypatch) -> None:
    f = tmp_path / "key"
    f.write_text("a" * 64 + "\n")
    monkeypatch.setenv(KEY_ENV, str(f))
    assert load_key() == b"a" * 64
    g = tmp_path / "other"
    g.write_bytes(b"b" * 40)
    assert load_key(g) == b"b" * 40


@pytest.mark.parametrize("content", [None, b"short"])
def test_missing_or_short_key_is_a_clear_error(tmp_path, monkeypatch, content) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(MissingKeyError) as e:
        load_key()
    assert KEY_ENV in str(e.value)
    f = tmp_path / "k"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(MissingKeyError) as e:
        load_key(f)
    assert str(f) in str(e.value) and KEY_ENV in str(e.value)
    assert isinstance(e.value, KeyError)


def test_demo_key_made_once_private(tmp_path) -> None:
    k1 = demo_key(tmp_path / "inst")
    k2 = demo_key(tmp_path / "inst")
    assert k1 == k2 and len(k1) >= 32
    mode = stat.S_IMODE(os.stat(tmp_path / "inst" / "pseudonym.key").st_mode)
    assert mode == 0o600


def test_from_config_demo_only_without_env(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(MissingKeyError):
        Deidentifier.from_config(None)
    d = Deidentifier.from_config(None, demo_instance_dir=tmp_path)
    assert d.fingerprint == key_fingerprint(demo_key(tmp_path))
    f = tmp_path / "real.key"
    f.write_bytes(KEY)
    assert Deidentifier.from_config(str(f)).fingerprint == key_fingerprint(KEY)


def test_key_never_exposed() -> None:
    key = os.urandom(32)
    d = Deidentifier(key)
    for text in (repr(d), str(d), repr(d.pseudonymizer), d.fingerprint,
                 d.pseudonym("Patient", "1")):
        assert key.hex() not in text and repr(key) not in text
    assert len(d.fingerprint) == 16 and d.fingerprint != key.hex()[:16]
    with pytest.raises(TypeError):
        pickle.dumps(d)
    with pytest.raises(TypeError):
        pickle.dumps(d.pseudonymizer)
    with pytest.raises(MissingKeyError) as e:
        Pseudonymizer(key[:10])
    assert key[:10].hex() not in str(e.value)
