"""JSON-Schema-constrained decoding of the harmony `final` channel with xgrammar.

xgrammar compiles the schema into a token mask; this module adds what the mask alone gets wrong
for our reports, each checked by tests:

* **Special tokens.** xgrammar treats harmony's added tokens (`<|endoftext|>`, ...) as text it
  may place inside a string; they are masked (the stop token `<|return|>` excepted).
* **Control characters.** xgrammar's length-bounded strings (`maxLength`) accept any byte but
  `"`, `\\`, CR and LF, so a byte-level tokenizer can put raw control characters (\\x01, tab) in a
  JSON string, which JSON forbids. Compact JSON needs no control byte anywhere, so every token
  holding one is masked.
* **`pattern` with `minLength`/`maxLength`.** xgrammar ignores the lengths when both are present
  and crashes on regex repetitions above 128 (`{1,400}`). The grammar is built from a copy of the
  schema without those patterns; the control-byte mask enforces what they said.
* **Broken UTF-8.** Byte-level tokens split characters; xgrammar accepts byte sequences that
  are not UTF-8 inside strings (they decode to U+FFFD, which also breaks `maxLength`). Tokens
  that would break the UTF-8 of the text so far are masked.
* **Blank strings.** The report model strips strings before `min_length=1`, so `" "` is invalid.
  While a string is still blank, tokens that would keep it blank (spaces) or close it are masked:
  no string value is ever blank.
* **Budget.** An untrained model rarely closes a string or a list by itself. When the remaining
  token budget falls under a reserve, closing tokens get a large bonus so the JSON completes
  inside `max_new_tokens` (a shortened but valid report) instead of being cut off.

One `JsonSchemaLogitsProcessor` serves one `generate()` call, with one matcher per batch row.
"""
from __future__ import annotations

import copy
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import xgrammar as xgr
from transformers import LogitsProcessor, PreTrainedTokenizerBase

_CLOSE_BONUS = 1.0e4  # beats any real logit gap, stays finite so masks still win
_LENGTH_BONUS = 10.0  # in closing mode, longer forced tokens finish keys sooner
_RESERVE_MARGIN = 16  # closing from the middle of a string costs a few tokens more than from scratch


def grammar_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Copy of `schema` that xgrammar compiles correctly (see module notes)."""
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: walk(v) for k, v in node.items()}
            if out.get("type") == "string" and "pattern" in out and ({"minLength", "maxLength"} & out.keys()):
                del out["pattern"]
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(copy.deepcopy(schema))


class ReportGrammar:
    """A schema compiled once for a tokenizer; makes a fresh logits processor per generate call."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        schema: dict[str, Any],
        *,
        vocab_size: int,
        stop_token_ids: Sequence[int],
    ) -> None:
        self.stop_token_ids = list(stop_token_ids)
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_token_ids
        )
        compiler = xgr.GrammarCompiler(self.info)
        self.compiled = compiler.compile_json_schema(
            json.dumps(grammar_schema(schema)), any_whitespace=False, separators=(",", ":"), strict_mode=True
        )
        self.vocab_size = vocab_size
        # Added/special tokens (harmony's <|endoftext|>, <|start|>, ...) are not text: never in JSON.
        special = set(self.info.special_token_ids) | set(tokenizer.all_special_ids)
        special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        self.special = torch.zeros(vocab_size, dtype=torch.bool)
        self.special[[i for i in special if i < vocab_size and i not in self.stop_token_ids]] = True
        special |= set(self.stop_token_ids)
        self.token_bytes: list[bytes] = [
            b"" if i in special else bytes(b) for i, b in enumerate(self.info.decoded_vocab)
        ] + [b""] * max(0, vocab_size - len(self.info.decoded_vocab))

        def mask(pred) -> torch.Tensor:
            return torch.tensor([bool(b) and pred(b) for b in self.token_bytes], dtype=torch.bool)

        self.control = mask(lambda b: any(x < 0x20 for x in b))
        # UTF-8: which tokens may follow k pending continuation bytes (k = 0..3).
        self.utf8_ok = torch.stack([mask(lambda b, k=k: _utf8_step(b, k) is not None) for k in range(4)])
        self.starts_quote = mask(lambda b: b[:1] == b'"')
        self.starts_close = mask(lambda b: b[:1] in (b"]", b"}"))
        self.keeps_blank = mask(lambda b: b.split(b'"', 1)[0].strip(b" ") == b"")
        self.length = torch.tensor([float(len(b)) for b in self.token_bytes])

    def logits_processor(self, max_new_tokens: int, *, closing_reserve: int = 0) -> JsonSchemaLogitsProcessor:
        """A processor for one generate call. The reserve is raised to what the shortest report needs."""
        if closing_reserve > 0:
            closing_reserve = max(closing_reserve, self.shortest_report_tokens + _RESERVE_MARGIN)
        return JsonSchemaLogitsProcessor(self, max_new_tokens=max_new_tokens, closing_reserve=closing_reserve)

    @functools.cached_property
    def shortest_report_tokens(self) -> int:
        """Tokens the closing policy needs from scratch (flat logits), stop token included."""
        limit = 4096
        proc = JsonSchemaLogitsProcessor(self, max_new_tokens=limit, closing_reserve=limit)
        ids = torch.zeros((1, 1), dtype=torch.long)
        for step in range(1, limit + 1):
            token = int(proc(ids, torch.zeros((1, self.vocab_size))).argmax(-1))
            if token in self.stop_token_ids:
                return step
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        return limit


# UTF-8 lead bytes: (continuation bytes, range of the first one); RFC 3629 table 3.
_UTF8_LEADS: dict[int, tuple[int, int, int]] = {
    **{b: (1, 0x80, 0xBF) for b in range(0xC2, 0xE0)},
    0xE0: (2, 0xA0, 0xBF),
    **{b: (2, 0x80, 0xBF) for b in (*range(0xE1, 0xED), 0xEE, 0xEF)},
    0xED: (2, 0x80, 0x9F),  # no surrogates
    0xF0: (3, 0x90, 0xBF),
    **{b: (3, 0x80, 0xBF) for b in range(0xF1, 0xF4)},
    0xF4: (3, 0x80, 0x8F),
}
_REPRESENTATIVE_LEAD = {1: b"\xc3", 2: b"\xe1", 3: b"\xf1"}


def _utf8_pending(data: bytes) -> int | None:
    """Continuation bytes `data` still owes if it is a valid UTF-8 prefix, else None."""
    i, n = 0, len(data)
    while i < n:
        lead = data[i]
        if lead < 0x80:
            i += 1
            continue
        if lead not in _UTF8_LEADS:
            return None
        need, low, high = _UTF8_LEADS[lead]
        for j in range(need):
            if i + 1 + j >= n:
                return need - j
            byte = data[i + 1 + j]
            if not (low <= byte <= high if j == 0 else 0x80 <= byte <= 0xBF):
                return None
        i += 1 + need
    return 0


def _utf8_step(data: bytes, pending: int) -> int | None:
    """Like `_utf8_pending` after an unknown character owing `pending` bytes (loose: any lead).

    Byte-level tokens split characters, and xgrammar lets a string hold byte sequences that are
    not UTF-8 (lone continuation bytes, surrogates), which decode to U+FFFD.
    """
    return _utf8_pending(_REPRESENTATIVE_LEAD.get(pending, b"") + data)


@dataclass
class _Row:
    matcher: xgr.GrammarMatcher
    failed: str | None = None
    in_string: bool = False
    escaped: bool = False
    string_bytes: bytearray = field(default_factory=bytearray)
    pending: int = 0  # UTF-8 continuation bytes still owed

    @property
    def partial_char(self) -> bytes:
        """The incomplete character at the end of the text (empty when none)."""
        if not self.pending:
            return b""
        tail = bytes(self.string_bytes[-4:])
        start = max(i for i, b in enumerate(tail) if b & 0xC0 != 0x80)
        return tail[start:]

    def scan(self, data: bytes) -> None:
        """Track whether the JSON text so far ends inside a string (the grammar keeps it valid)."""
        step = _utf8_pending(self.partial_char + data)
        self.pending = step if step is not None else 0
        for byte in data:
            if not self.in_string:
                if byte == 0x22:
                    self.in_string, self.string_bytes = True, bytearray()
            elif self.escaped:
                self.escaped = False
                self.string_bytes.append(byte)
            elif byte == 0x5C:
                self.escaped = True
                self.string_bytes.append(byte)
            elif byte == 0x22:
                self.in_string = False
            else:
                self.string_bytes.append(byte)

    @property
    def blank_string(self) -> bool:
        return self.in_string and self.string_bytes.strip(b" ") == b""


class JsonSchemaLogitsProcessor(LogitsProcessor):
    """Masks logits to the grammar, row by row; rows that finish or fail are forced to stop."""

    def __init__(self, grammar: ReportGrammar, *, max_new_tokens: int, closing_reserve: int = 0) -> None:
        self.grammar = grammar
        self.max_new_tokens = max_new_tokens
        self.closing_reserve = closing_reserve
        self.rows: list[_Row] = []
        self.steps = 0
        self.closing_steps = 0
        self._bitmask: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        g = self.grammar
        batch = input_ids.shape[0]
        if not self.rows:
            self.rows = [_Row(xgr.GrammarMatcher(g.compiled)) for _ in range(batch)]
            self._bitmask = xgr.allocate_token_bitmask(batch, g.vocab_size)
        elif batch != len(self.rows):
            raise RuntimeError(f"batch changed from {len(self.rows)} to {batch} rows; use one processor per call")
        else:
            for i, row in enumerate(self.rows):
                if row.failed is None and not row.matcher.is_terminated():
                    token = int(input_ids[i, -1])
                    if row.matcher.accept_token(token):
                        row.scan(g.token_bytes[token] if token < len(g.token_bytes) else b"")
                    else:
                        row.failed = f"token {token} rejected by the grammar"

        work = scores.float().cpu()
        vocab = min(work.shape[1], g.vocab_size)
        closing = self.max_new_tokens - self.steps <= self.closing_reserve
        self.closing_steps += int(closing)
        neg_inf = torch.finfo(work.dtype).min
        done = [row.failed is not None or row.matcher.is_terminated() for row in self.rows]
        for i, row in enumerate(self.rows):
            if not done[i]:
                row.matcher.fill_next_token_bitmask(self._bitmask, i)
        xgr.apply_token_bitmask_inplace(work, self._bitmask, vocab_size=vocab)
        # The extra masks for all rows at once (one batch tensor op each, not per row and token).
        live_rows = torch.tensor([not d for d in done])
        view = work[:, :vocab]
        pending = torch.tensor([row.pending for row in self.rows])
        extra = (g.control[:vocab] | g.special[:vocab]) | ~g.utf8_ok[pending, :vocab]
        for i, row in enumerate(self.rows):
            if row.pending and not done[i]:  # rare: check the few candidates exactly
                prefix = row.partial_char
                for t in torch.nonzero(~extra[i] & (view[i] > neg_inf)).flatten().tolist():
                    if _utf8_pending(prefix + g.token_bytes[t]) is None:
                        extra[i, t] = True
        blank = torch.tensor([row.blank_string for row in self.rows])
        extra |= blank[:, None] & g.keeps_blank[:vocab]
        # A row keeps the grammar's choice where the extra masks would leave nothing.
        apply = live_rows & ((view > neg_inf) & ~extra).any(dim=1)
        view.masked_fill_(apply[:, None] & extra, neg_inf)
        if work.shape[1] > vocab:
            work[:, vocab:] = neg_inf
        stuck = live_rows & ~(work > neg_inf).any(dim=1)
        for i in torch.nonzero(stuck).flatten().tolist():
            self.rows[i].failed = "no token allowed"
        if closing:
            in_string = torch.tensor([row.in_string for row in self.rows])
            prefer = torch.where(in_string[:, None], g.starts_quote[:vocab], g.starts_close[:vocab])
            bonus = prefer.float() * _CLOSE_BONUS + g.length[:vocab] * _LENGTH_BONUS
            boost = (live_rows & ~stuck)[:, None] & (view > neg_inf)
            view.add_(torch.where(boost, bonus, 0.0))
        for i in [i for i, d in enumerate(done) if d] + torch.nonzero(stuck).flatten().tolist():
            work[i] = neg_inf  # finished, failed or stuck rows: stop
            work[i, g.stop_token_ids[0]] = 0.0
        self.steps += 1
        return work.to(device=scores.device, dtype=scores.dtype)

    def finish(self, new_tokens: torch.Tensor) -> list[tuple[bool, str | None]]:
        """(complete, failure) per row after generate: feeds each row the last token it sampled.

        `new_tokens` is the generated part only (batch x steps); generate never calls the
        processor after the last step, so that token has not been seen yet.
        """
        if not self.rows:
            return [(False, "no token generated")] * int(new_tokens.shape[0])
        out: list[tuple[bool, str | None]] = []
        for i, row in enumerate(self.rows):
            if row.failed is None and not row.matcher.is_terminated() and new_tokens.shape[1] == self.steps:
                token = int(new_tokens[i, -1])
                if not row.matcher.accept_token(token):
                    row.failed = f"token {token} rejected by the grammar"
            complete = row.failed is None and row.matcher.is_terminated()
            out.append((complete, row.failed if row.failed else None if complete else "token budget ran out"))
        return out
