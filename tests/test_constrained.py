"""Constrained decoding of the `final` channel: xgrammar mask plus our fixes, without a model.

A decoding loop over adversarial random logits (pushing towards control characters, blanks and
never closing) checks that every output is strict JSON and a valid TriageReport.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
xgr = pytest.importorskip("xgrammar")
from transformers import AutoConfig, AutoTokenizer  # noqa: E402

from model.constrained import ReportGrammar, _utf8_step, grammar_schema  # noqa: E402
from model.report import TriageReport, parse_report, report_json_schema  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def grammar(tiny_model_dir: Path, tokenizer) -> ReportGrammar:
    vocab = AutoConfig.from_pretrained(tiny_model_dir).vocab_size
    return ReportGrammar(
        tokenizer, report_json_schema(), vocab_size=vocab, stop_token_ids=[tokenizer.convert_tokens_to_ids("<|return|>")]
    )


def _decode_loop(grammar: ReportGrammar, scores_fn, *, batch: int, max_new_tokens: int, reserve: int) -> list:
    # Text is rebuilt from the raw token bytes, specials included, so a leaked one shows.
    """generate()'s contract, by hand: call the processor, take the argmax, append, stop on <|return|>."""
    stop = grammar.stop_token_ids[0]
    proc = grammar.logits_processor(max_new_tokens, closing_reserve=reserve)
    ids = torch.zeros((batch, 1), dtype=torch.long)
    done = torch.zeros(batch, dtype=torch.bool)
    for step in range(max_new_tokens):
        scores = proc(ids, scores_fn(step, batch))
        nxt = scores.argmax(-1)
        nxt[done] = stop
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == stop
        if done.all():
            break
    new = ids[:, 1:]
    status = proc.finish(new)
    raw = [bytes(b) for b in grammar.info.decoded_vocab]
    texts = []
    for row in new.tolist():
        body = row[: row.index(stop)] if stop in row else row
        texts.append(b"".join(raw[t] for t in body).decode("utf-8"))  # strict: broken UTF-8 raises
    return list(zip(texts, status))


def _strings(node):
    if isinstance(node, dict):
        if node.get("type") == "string":
            yield node
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def test_grammar_schema_keeps_lengths_and_drops_patterns_beside_them() -> None:
    schema = {"type": "object", "properties": {
        "a": {"type": "string", "maxLength": 400, "pattern": "^[^\\x00-\\x1f]{1,400}$"},
        "b": {"type": "string", "pattern": "^[a-z]+$"},
        "c": {"type": "array", "items": {"type": "string", "minLength": 1, "pattern": "^x+$"}},
    }}
    cleaned = grammar_schema(schema)
    assert cleaned["properties"]["a"] == {"type": "string", "maxLength": 400}
    assert cleaned["properties"]["b"] == schema["properties"]["b"]  # a pattern alone is kept
    assert cleaned["properties"]["c"]["items"] == {"type": "string", "minLength": 1}
    assert "pattern" in schema["properties"]["a"]  # the input is not modified
    for node in _strings(grammar_schema(report_json_schema())):
        assert not ("pattern" in node and {"minLength", "maxLength"} & node.keys())


def test_plain_grammar_lets_control_characters_into_bounded_strings(grammar: ReportGrammar) -> None:
    # The trap this module fixes: xgrammar's maxLength strings accept raw control bytes.
    matcher = xgr.GrammarMatcher(grammar.compiled)
    assert matcher.accept_string('{"acuity":3,"summary":"a\x01b')
    assert grammar.control.sum() > 0
    assert bool(grammar.control[grammar.info.decoded_vocab.index(b"\t")])
    endoftext = grammar.info.decoded_vocab.index(b"<|endoftext|>")
    assert matcher.accept_token(endoftext)  # ... and harmony's special tokens too
    assert bool(grammar.special[endoftext]) and not bool(grammar.special[grammar.stop_token_ids[0]])


@pytest.mark.parametrize("seed", range(12))
def test_adversarial_logits_still_give_valid_reports(grammar: ReportGrammar, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    vocab = grammar.vocab_size
    push = grammar.control.float() * 50.0  # favour control characters
    blanks = torch.tensor([b.strip() == b"" and b != b"" for b in grammar.token_bytes]).float() * 40.0
    quotes = grammar.starts_quote.float() * 30.0  # ... and closing right after a blank
    specials = grammar.special.float() * 45.0  # ... and harmony tokens such as <|endoftext|>
    split_chars = torch.tensor([any(x >= 0x80 for x in b) for b in grammar.token_bytes]).float() * 35.0
    # ... and byte tokens that make surrogates (ED A0..BF) or bytes UTF-8 never uses (F5..FF)
    surrogate = torch.tensor([b == b"\xed" or (len(b) == 1 and (0xA0 <= b[0] <= 0xBF or b[0] >= 0xF5))
                              for b in grammar.token_bytes]).float() * 40.0

    def scores(step: int, batch: int) -> torch.Tensor:
        noise = torch.randn((batch, vocab), generator=gen)
        return noise + push + blanks + quotes + specials + split_chars * (step % 2) + surrogate

    results = _decode_loop(grammar, scores, batch=3, max_new_tokens=400, reserve=150)
    for text, (complete, failure) in results:
        assert complete and failure is None, (failure, text)
        assert not any(ord(ch) < 0x20 for ch in text)
        assert "<|" not in text
        json.loads(text)  # strict: raw control characters in strings would raise
        assert isinstance(parse_report(text), TriageReport)


@pytest.mark.parametrize("data, pending, expected", [
    (b"abc", 0, 0),
    (b"\xc3", 0, 1),  # first byte of a 2-byte character
    (b"\xa9 ok", 1, 0),  # completes it
    (b"\xa9", 0, None),  # stray continuation byte
    (b"x", 1, None),  # character left incomplete
    (b"\xe2\x82", 0, 1),
    (b"\xac", 1, 0),
    (b"\xff", 0, None),
    (b"\xed\xa0\x80", 0, None),  # a surrogate
    (b"\xed\x9f\xbf", 0, 0),
    (b"\xf0\x9f", 0, 2),
    (b"\xc0\xaf", 0, None),  # overlong
])
def test_utf8_step(data: bytes, pending: int, expected: int | None) -> None:
    assert _utf8_step(data, pending) == expected


def test_budget_reserve_closes_the_json_in_time(grammar: ReportGrammar) -> None:
    gen = torch.Generator().manual_seed(7)
    never_close = (grammar.starts_quote | grammar.starts_close).float() * -20.0

    def scores(step: int, batch: int) -> torch.Tensor:
        return torch.randn((batch, grammar.vocab_size), generator=gen) + never_close

    closed = _decode_loop(grammar, scores, batch=2, max_new_tokens=300, reserve=150)
    assert all(complete for _, (complete, _) in closed)
    for text, _ in closed:
        parse_report(text)
    # Without a reserve the same model runs out of budget inside the JSON: rejected, not crashed.
    gen.manual_seed(7)
    cut = _decode_loop(grammar, scores, batch=2, max_new_tokens=300, reserve=0)
    assert all(not complete and failure == "token budget ran out" for _, (complete, failure) in cut)


def test_one_matcher_per_row_and_batch_size_is_fixed(grammar: ReportGrammar) -> None:
    proc = grammar.logits_processor(8)
    proc(torch.zeros((2, 1), dtype=torch.long), torch.zeros((2, grammar.vocab_size)))
    assert len(proc.rows) == 2 and proc.rows[0].matcher is not proc.rows[1].matcher
    with pytest.raises(RuntimeError, match="batch changed"):
        proc(torch.zeros((3, 2), dtype=torch.long), torch.zeros((3, grammar.vocab_size)))
