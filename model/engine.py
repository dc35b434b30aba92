"""The inference engine: gpt-oss (+ optional LoRA adapter) -> validated TriageReports, in batches.

Generation follows harmony in two phases per batch:

1. `analysis`: `<|start|>assistant<|channel|>analysis<|message|>` then free text up to
   `max_new_tokens_analysis` (stops at `<|end|>`);
2. `final`: `<|end|><|start|>assistant<|channel|>final<|message|>` then JSON constrained to the
   TriageReport schema (model.constrained), ending with `<|return|>`.

Both phases batch all prompts with LEFT padding. Every output is validated with `parse_report`;
invalid ones come back with `report=None` and an error, and are counted, never raised.
The real model is one setting away: `TRIAGE_MODEL_PATH=/models/gpt-oss-20b-bf16`.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

QUANTIZATIONS = ("none", "nf4", "mxfp4")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "bfloat16", "float16", "float32")
EFFORTS = ("low", "medium", "high")

ASSISTANT_START = "<|start|>assistant"
ANALYSIS_HEADER = "<|channel|>analysis<|message|>"
FINAL_HEADER = "<|start|>assistant<|channel|>final<|message|>"
PREFIX_CACHE_SIZE = 4  # shared prompt prefixes (system + developer messages) kept prefilled


class EngineConfigError(ValueError):
    """A setting is missing or invalid; the message names the setting."""


@dataclass
class EngineConfig:
    engine: str = field(default="transformers", metadata={"env": "TRIAGE_ENGINE", "help": "transformers (the model in this process) | openai (an OpenAI-compatible server such as vLLM: TRIAGE_OPENAI_*)."})
    openai_base_url: str | None = field(default=None, metadata={"env": "TRIAGE_OPENAI_BASE_URL", "help": "Base URL of the OpenAI-compatible server, e.g. http://vllm:8000/v1."})
    openai_model: str | None = field(default=None, metadata={"env": "TRIAGE_OPENAI_MODEL", "help": "The base model's name on that server (e.g. openai/gpt-oss-20b)."})
    openai_adapter: str | None = field(default=None, metadata={"env": "TRIAGE_OPENAI_ADAPTER", "help": "The LoRA adapter's name on that server (vLLM --lora-modules NAME=path); requests name it as the model."})
    openai_timeout_s: float = field(default=120.0, metadata={"env": "TRIAGE_OPENAI_TIMEOUT_S", "help": "Seconds one request to the server may take."})
    model_path: str | None = field(default=None, metadata={"env": "TRIAGE_MODEL_PATH", "help": "Local directory of the base model (bf16 gpt-oss or the tiny model)."})
    adapter_path: str | None = field(default=None, metadata={"env": "TRIAGE_ADAPTER_PATH", "help": "Local directory of a PEFT LoRA adapter."})
    adapter_registry: str | None = field(default=None, metadata={"env": "TRIAGE_ADAPTER_REGISTRY", "help": "Release registry folder (`triage model promote`): its current adapter is served instead of TRIAGE_ADAPTER_PATH and followed between batches, without a restart."})
    quantization: str = field(default="none", metadata={"env": "TRIAGE_QUANTIZATION", "help": "none | nf4 (bitsandbytes, attention and experts) | mxfp4 (GPU only)."})
    merge_adapter: bool = field(default=False, metadata={"env": "TRIAGE_MERGE_ADAPTER", "help": "Merge the LoRA weights into the base weights after loading."})
    device: str = field(default="auto", metadata={"env": "TRIAGE_DEVICE", "help": "auto | cpu | cuda."})
    dtype: str = field(default="auto", metadata={"env": "TRIAGE_DTYPE", "help": "auto (bf16 on GPU or when quantized, else fp32 on CPU) | bfloat16 | float16 | float32."})
    max_new_tokens_analysis: int = field(default=256, metadata={"env": "TRIAGE_MAX_NEW_TOKENS_ANALYSIS", "help": "Token budget of the analysis channel (0 skips it)."})
    max_new_tokens_final: int = field(default=768, metadata={"env": "TRIAGE_MAX_NEW_TOKENS_FINAL", "help": "Token budget of the final JSON report."})
    final_closing_reserve: int = field(default=192, metadata={"env": "TRIAGE_FINAL_CLOSING_RESERVE", "help": "Last tokens of the final budget spent closing the JSON."})
    prefill_chunk: int = field(default=256, metadata={"env": "TRIAGE_PREFILL_CHUNK", "help": "Prompt tokens prefilled per forward pass (bounds activation memory; on CPU, 256 keeps the MoE intermediates in cache)."})
    reasoning_effort: str = field(default="low", metadata={"env": "TRIAGE_REASONING_EFFORT", "help": "harmony reasoning effort for prompts: low | medium | high."})
    temperature: float = field(default=0.0, metadata={"env": "TRIAGE_TEMPERATURE", "help": "0 = greedy decoding; above 0 samples."})
    top_p: float = field(default=1.0, metadata={"env": "TRIAGE_TOP_P", "help": "Nucleus sampling (with temperature > 0)."})
    seed: int = field(default=0, metadata={"env": "TRIAGE_SEED", "help": "Seed set before each batch (sampling)."})

    def __post_init__(self) -> None:
        self.quantization = self.quantization.lower()
        _choice("engine", self.engine, ("transformers", "openai"))
        _choice("quantization", self.quantization, QUANTIZATIONS)
        _choice("device", self.device, DEVICES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("reasoning_effort", self.reasoning_effort, EFFORTS)
        for name in ("max_new_tokens_analysis", "final_closing_reserve"):
            if getattr(self, name) < 0:
                raise EngineConfigError(f"{name} must be >= 0")
        if self.prefill_chunk < 1:
            raise EngineConfigError("prefill_chunk must be >= 1")
        if self.max_new_tokens_final < 1:
            raise EngineConfigError("max_new_tokens_final must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise EngineConfigError("temperature must be >= 0 and top_p in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> EngineConfig:
        """Read each field from its TRIAGE_* variable (see `metadata['env']`); overrides win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _convert(f.name, f.metadata["env"], raw.strip(), f.type)
        values.update(overrides)
        return cls(**values)


def _log():
    import logging

    return logging.getLogger(__name__)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise EngineConfigError(f"{name} must be one of {', '.join(allowed)} (got {value!r})")


def _convert(name: str, var: str, raw: str, annotation: Any) -> Any:
    kind = str(annotation)
    try:
        if kind.startswith("bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise EngineConfigError(f"{var}: cannot read {raw!r} as {kind.split(' ')[0]}") from None
    return raw


@dataclass
class GenerationResult:
    report: Any | None  # TriageReport when valid
    raw_final: str
    analysis: str
    error: str | None
    tokens: int  # generated tokens, both channels


class Engine:
    """A loaded model ready to write reports. Build it with `Engine.load(config)`."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: EngineConfig,
        *,
        model_version: str,
        adapter_version: str,
        schema: dict[str, Any] | None = None,
        parse: Callable[[str], Any] | None = None,
    ) -> None:
        from model.constrained import ReportGrammar
        from model.report import parse_report, report_json_schema

        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.model_version = model_version
        self.adapter_version = adapter_version
        self.parse = parse or parse_report
        self.device = next(model.parameters()).device
        self.counters: Counter[str] = Counter()
        self.last_stats: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._prefixes: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._watch: Any = None  # model.release.RegistryWatch when a release registry is configured
        self._refused: str | None = None  # the last release refused (not retried until it changes)
        self.prefill_by_row = True  # False: one padded prefill inside generate (the reference path)
        self._ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (
            "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>",
            "<|endoftext|>", "<|startoftext|>",
        )}
        missing = [t for t, i in self._ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise EngineConfigError(f"tokenizer lacks harmony tokens {missing}: not a gpt-oss tokenizer")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._ids["<|endoftext|>"]
        self.grammar = ReportGrammar(
            tokenizer,
            schema if schema is not None else report_json_schema(),
            vocab_size=model.config.vocab_size if hasattr(model, "config") else len(tokenizer),
            stop_token_ids=[self._ids["<|return|>"]],
        )

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, config: EngineConfig | None = None, **kwargs: Any) -> Engine:
        """Load the base model from a local path, quantize, attach (and maybe merge) the adapter."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from model.quantize import load_nf4, mxfp4_config, require_mxfp4

        config = config or EngineConfig.from_env()
        if config.engine == "openai":
            from model.openai_engine import OpenAIEngine

            return OpenAIEngine(config)  # type: ignore[return-value] - same interface for run_batch
        if not config.model_path:
            raise EngineConfigError("no model configured: set TRIAGE_MODEL_PATH to a local model directory")
        model_dir = Path(config.model_path)
        if not (model_dir / "config.json").is_file():
            raise EngineConfigError(f"TRIAGE_MODEL_PATH: no model at {model_dir} (config.json missing)")
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise EngineConfigError("device is cuda but no CUDA GPU is available")
        dtype = _torch_dtype(config.dtype, device, config.quantization)

        if config.quantization == "nf4":
            model = load_nf4(model_dir, device=device, compute_dtype=dtype, local_files_only=True)
        elif config.quantization == "mxfp4":
            require_mxfp4(device)
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, quantization_config=mxfp4_config(), dtype=dtype, device_map={"": device}, local_files_only=True
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=dtype, device_map={"": device}, local_files_only=True  # straight onto the GPU
            )

        if device == "cpu":
            use_sink_attention(model)
        model_version = model_version_of(model_dir, config.quantization)
        adapter_version = "none"
        adapter_dir = Path(config.adapter_path) if config.adapter_path else None
        watch = None
        if config.adapter_registry:
            from model.release import RegistryWatch, ReleaseRefused, check_adapter

            if config.merge_adapter:
                raise EngineConfigError("TRIAGE_MERGE_ADAPTER cannot be used with TRIAGE_ADAPTER_REGISTRY (a merged "
                                        "adapter cannot be swapped)")
            watch = RegistryWatch(config.adapter_registry)
            try:
                release = watch.current()
                if release is not None:
                    adapter_dir = Path(release["adapter_path"])
                    check_adapter(adapter_dir, model_version)
            except ReleaseRefused as exc:
                raise EngineConfigError(f"TRIAGE_ADAPTER_REGISTRY: {exc}") from None
        if adapter_dir is not None:
            from peft import PeftModel

            if not (adapter_dir / "adapter_config.json").is_file():
                raise EngineConfigError(f"TRIAGE_ADAPTER_PATH: no PEFT adapter at {adapter_dir}")
            model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
            if config.merge_adapter:
                model = model.merge_and_unload()
            adapter_version = adapter_version_of(adapter_dir)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        tokenizer.padding_side = "left"
        engine = cls(model, tokenizer, config, model_version=model_version, adapter_version=adapter_version, **kwargs)
        engine._watch = watch
        return engine

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The harmony prompt for `messages` (what `generate_reports` takes)."""
        from model.prompts import render_chat_prompt

        return render_chat_prompt(self.tokenizer, messages, reasoning_effort=self.config.reasoning_effort)

    # -- served adapter --------------------------------------------------------------------------

    def refresh_adapter(self) -> bool:
        """Follow the release registry (between batches): True when the served adapter changed.

        A release this worker must not serve (another base model, a failed gate, changed weights)
        is refused and logged; the adapter already loaded stays.
        """
        watch = getattr(self, "_watch", None)
        if watch is None:
            return False
        from model.release import ReleaseRefused, check_adapter

        try:
            release = watch.current()
        except ReleaseRefused as exc:
            _log().error("adapter registry unreadable, keeping %s: %s", self.adapter_version, exc)
            return False
        wanted = release["adapter_version"] if release else "none"
        if wanted == self.adapter_version or wanted == self._refused:
            return False
        try:
            if release is not None:
                check_adapter(release["adapter_path"], self.model_version)
            self.use_adapter(release["adapter_path"] if release else None)
        except (ReleaseRefused, OSError, ValueError) as exc:
            self._refused = wanted
            self.counters["adapter_refused"] += 1
            _log().error("adapter %s refused, keeping %s: %s", wanted, self.adapter_version, exc)
            return False
        _log().info("now serving adapter %s", self.adapter_version)
        return True

    def use_adapter(self, adapter_dir: str | os.PathLike[str] | None) -> None:
        """Swap the LoRA adapter on the loaded base model (None: the base model alone)."""
        from peft import PeftModel

        with self._lock:
            if self.config.merge_adapter:
                raise EngineConfigError("a merged adapter cannot be swapped")
            base = self.model.unload() if isinstance(self.model, PeftModel) else self.model
            model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False) if adapter_dir else base
            self.model = model.eval()
            self.adapter_version = adapter_version_of(adapter_dir) if adapter_dir else "none"
            self._prefixes.clear()  # prefilled prefixes were computed with the old weights
            self.counters["adapter_swaps"] += 1

    # -- generation ------------------------------------------------------------------------------

    def generate_reports(self, prompts: list[str]) -> list[GenerationResult]:
        """Reports for harmony prompts (ending with `<|start|>assistant`), one generate per phase."""
        if not prompts:
            return []
        with self._lock:
            return self._generate(list(prompts))

    def _generate(self, prompts: list[str]) -> list[GenerationResult]:
        import torch

        cfg, tok = self.config, self.tokenizer
        started = time.perf_counter()
        if not cfg.greedy:
            torch.manual_seed(cfg.seed)
        bases = []
        for prompt in prompts:
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            tail = tok(ASSISTANT_START, add_special_tokens=False)["input_ids"]
            bases.append(ids[: -len(tail)] if ids[-len(tail):] == tail else ids)
        assistant = tok(ASSISTANT_START, add_special_tokens=False)["input_ids"]
        # Shared prefix: everything before the last message's <|start|> (system + developer).
        start = self._ids["<|start|>"]
        prefixes = [max((k for k, t in enumerate(b) if t == start), default=0) for b in bases]

        analysis_ids: list[list[int]] = [[] for _ in prompts]
        if cfg.max_new_tokens_analysis > 0:
            header = assistant + tok(ANALYSIS_HEADER, add_special_tokens=False)["input_ids"]
            stops = [self._ids[t] for t in ("<|end|>", "<|return|>", "<|call|>", "<|endoftext|>")]
            suppress = [self._ids[t] for t in ("<|start|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|startoftext|>")]
            suppress += [self.pad_id]
            new = self._run([b + header for b in bases], cfg.max_new_tokens_analysis, eos=stops, prefixes=prefixes,
                            suppress_tokens=suppress)
            for i, row in enumerate(new.tolist()):
                cut = next((k for k, t in enumerate(row) if t in stops or t == self.pad_id), len(row))
                analysis_ids[i] = row[:cut]
            contexts = [b + header + a + [self._ids["<|end|>"]] for b, a in zip(bases, analysis_ids)]
        else:
            contexts = list(bases)

        final_header = tok(FINAL_HEADER, add_special_tokens=False)["input_ids"]
        processor = self.grammar.logits_processor(cfg.max_new_tokens_final, closing_reserve=min(cfg.final_closing_reserve, cfg.max_new_tokens_final))
        stop = self._ids["<|return|>"]
        new = self._run([c + final_header for c in contexts], cfg.max_new_tokens_final, eos=[stop], prefixes=prefixes,
                        logits_processor=[processor])
        status = processor.finish(new)

        results = []
        final_tokens = 0
        for i, row in enumerate(new.tolist()):
            body = row[: row.index(stop)] if stop in row else [t for t in row if t != self.pad_id]
            final_tokens += len(body) + int(stop in row)
            raw = tok.decode(body, skip_special_tokens=False)
            complete, failure = status[i]
            report, error = None, failure
            if complete:
                try:
                    report = self.parse(raw)
                except ValueError as exc:  # InvalidReport; its message never echoes the text
                    error = str(exc)
            self.counters["reports" if report is not None else "rejected"] += 1
            results.append(GenerationResult(
                report=report,
                raw_final=raw,
                analysis=tok.decode(analysis_ids[i], skip_special_tokens=True),
                error=error,
                tokens=len(analysis_ids[i]) + len(body) + int(stop in row),
            ))
        elapsed = time.perf_counter() - started
        generated = sum(r.tokens for r in results)
        self.counters["closing_steps"] += processor.closing_steps
        self.last_stats = {
            "batch_size": len(prompts),
            "prompt_tokens": sum(len(b) for b in bases),
            "analysis_tokens": sum(len(a) for a in analysis_ids),
            "final_tokens": final_tokens,
            "generated_tokens": generated,
            "seconds": elapsed,
            "tokens_per_second": generated / elapsed if elapsed > 0 else 0.0,
            "rejected": sum(r.report is None for r in results),
            "closing_steps": processor.closing_steps,
        }
        return results

    def _run(self, rows: list[list[int]], max_new_tokens: int, *, eos: list[int], prefixes: list[int] | None = None,
             **kwargs: Any):
        """Left-padded batched generate; returns only the new tokens (batch x steps).

        The prompts are prefilled row by row (`_prefill`) into one left-padded cache, so generate
        only decodes, all rows at once.
        """
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        if self.prefill_by_row:
            kwargs["past_key_values"] = self._prefill(rows, prefixes or [0] * len(rows), width,
                                                      reserve=max_new_tokens + 1)
        sampling: dict[str, Any] = {"do_sample": False} if self.config.greedy else {
            "do_sample": True, "temperature": self.config.temperature, "top_p": self.config.top_p, "top_k": 0,
        }
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=max_new_tokens,
                eos_token_id=eos,
                pad_token_id=self.pad_id,
                **sampling,
                **kwargs,
            )
        return out[:, width:].cpu()

    def _prefill(self, rows: list[list[int]], prefixes: list[int], width: int, *, reserve: int = 0):
        """A left-padded batch cache holding every row but its last token, which generate feeds.

        Why not one padded forward: eager attention (gpt-oss has no SDPA path, its sinks) builds
        batch x heads x width x width scores, so a batched prefill of long prompts costs more than
        the rows one by one, plus the padding. Row by row there is no padding, the cache holds the
        same keys and values a padded prefill would (pad slots zero and masked), and a row's prefill
        is the same computation in a batch as alone. `prefixes[i]` tokens of row i (the messages
        before the last one, identical across requests) come from a cache kept between calls.
        Full-attention layers get room for `reserve` more tokens (`model.kv_cache`).
        """
        import torch
        from transformers import DynamicCache

        from model.kv_cache import ReservedLayer

        caches, lengths = [], []
        with torch.inference_mode():
            for row, cut in zip(rows, prefixes):
                body = row[:-1]
                cut = min(cut, len(body))
                cache = self._prefix_cache(tuple(body[:cut]))
                rest = body[cut:]
                step = self.config.prefill_chunk  # chunks of 256: prefill measured ~35% faster on CPU than one pass
                for start in range(0, len(rest), step):
                    self.model(input_ids=torch.tensor([rest[start:start + step]], device=self.device),
                               past_key_values=cache, use_cache=True, logits_to_keep=1)
                caches.append(cache)
                lengths.append(len(body))
        merged = DynamicCache(config=self.model.config)
        for index, layer in enumerate(merged.layers):
            keys = [c.layers[index].keys for c in caches]
            values = [c.layers[index].values for c in caches]
            span = max(k.shape[-2] for k in keys)
            padded_keys = torch.cat([_left_pad(k, span) for k in keys])
            padded_values = torch.cat([_left_pad(v, span) for v in values])
            if reserve and not layer.is_sliding:
                merged.layers[index] = ReservedLayer(padded_keys, padded_values, reserve)
                continue
            layer.lazy_initialization(keys[0], values[0])
            layer.keys, layer.values = padded_keys, padded_values
            if hasattr(layer, "cumulative_length"):  # sliding layers count every (padded) position seen
                layer.cumulative_length = width - 1
        return merged

    def _prefix_cache(self, prefix: tuple[int, ...]):
        """A private copy of the cache after `prefix` (computed once, kept for the next calls)."""
        import copy

        import torch
        from transformers import DynamicCache

        if not prefix:
            return DynamicCache(config=self.model.config)
        cached = self._prefixes.pop(prefix, None)
        if cached is None:
            cached = DynamicCache(config=self.model.config)
            with torch.inference_mode():
                self.model(input_ids=torch.tensor([list(prefix)], device=self.device), past_key_values=cached,
                           use_cache=True, logits_to_keep=1)
            self.counters["prefix_prefills"] += 1
        self._prefixes[prefix] = cached  # most recently used last
        while len(self._prefixes) > PREFIX_CACHE_SIZE:
            self._prefixes.pop(next(iter(self._prefixes)))
        return copy.deepcopy(cached)


def _left_pad(states, span: int):
    """Zeros before `states` (1 x heads x n x dim) up to `span` positions (masked by the 2-D mask)."""
    import torch

    missing = span - states.shape[-2]
    if missing <= 0:
        return states
    pad = torch.zeros((*states.shape[:-2], missing, states.shape[-1]), dtype=states.dtype, device=states.device)
    return torch.cat([pad, states], dim=-2)


SINK_ATTENTION = "cpu_fused_sinks"  # no "sdpa" in the name: transformers would refuse it for gpt-oss


def sink_attention_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float,
                           dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """gpt-oss attention (with its per-head sinks) on PyTorch's fused CPU attention kernel.

    transformers runs gpt-oss eagerly (no SDPA: the sinks), materialising and re-reading the
    heads x queries x keys scores six times; this kernel streams them. A sink is one extra logit
    in the softmax and has no value, so it only rescales the output:
    out = softmax(scores) @ V * exp(lse) / (exp(lse) + exp(sink)) = sdpa(...) * sigmoid(lse - sink).
    A fully masked query gets lse ~ -3e38, i.e. output 0, as in the eager path.
    """
    import torch

    batch, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    # GQA without copying the KV cache each step: a key head's query heads become extra query rows.
    query = query.reshape(batch, key.shape[1], groups * length, dim)
    if attention_mask is not None:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]].to(query.dtype).repeat(1, 1, groups, 1)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, False, attn_mask=attention_mask, scale=scaling
    )
    out, lse = out.reshape(batch, heads, length, dim), lse.reshape(batch, heads, length)
    gate = torch.sigmoid(lse.float() - module.sinks.float().view(1, -1, 1)).to(out.dtype)
    return (out * gate.unsqueeze(-1)).transpose(1, 2).contiguous(), None


def use_sink_attention(model: Any) -> bool:
    """Switch a CPU gpt-oss model to `sink_attention_forward`; False where it does not apply."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    if getattr(model.config, "model_type", None) != "gpt_oss" or next(model.parameters()).device.type != "cpu":
        return False
    AttentionInterface.register(SINK_ATTENTION, sink_attention_forward)
    AttentionMaskInterface.register(SINK_ATTENTION, eager_mask)  # additive float mask, always materialised
    model.set_attn_implementation(SINK_ATTENTION)
    return model.config._attn_implementation == SINK_ATTENTION


def _torch_dtype(name: str, device: str, quantization: str = "none"):
    import torch

    if name == "auto":  # fp32 on CPU for speed and precision, except where memory is the point
        return torch.bfloat16 if device == "cuda" or quantization != "none" else torch.float32
    return getattr(torch, name)


def _short_hash(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()[:12]


def model_version_of(model_dir: str | os.PathLike[str], quantization: str = "none") -> str:
    """`<name>@<hash of config.json and the weight files' names and sizes>[+quantization]`.

    Cheap on a 40 GB checkpoint (no weight bytes are read) and changes with any re-export.
    """
    path = Path(model_dir)
    config = json.loads((path / "config.json").read_text())
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    digest = _short_hash((path / "config.json").read_bytes(), *(f"{p.name}:{p.stat().st_size}".encode() for p in weights))
    name = config.get("_name_or_path") or path.name
    name = Path(str(name)).name or path.name
    return f"{name}@{digest}" + ("" if quantization == "none" else f"+{quantization}")


def adapter_version_of(adapter_dir: str | os.PathLike[str]) -> str:
    """`<name>@<hash of adapter_config.json and the adapter weights>` (adapters are small)."""
    path = Path(adapter_dir)
    weights = sorted(p for p in path.iterdir() if p.name.startswith("adapter_model"))
    digest = _short_hash((path / "adapter_config.json").read_bytes(), *(p.read_bytes() for p in weights))
    return f"{path.name}@{digest}"
