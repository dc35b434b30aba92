"""An engine backend that asks an OpenAI-compatible server for the reports (`TRIAGE_ENGINE=openai`).

At scale the model runs in vLLM (gpt-oss-20b in MXFP4 on one H100/H200, LoRA adapters with
`--enable-lora`, JSON-schema output on the final channel); the Celery queue, deadlines, report cache
and batching stay as they are, and a worker sends its batch's requests to the server at once (the
server batches them continuously). Each request is a chat completion: the same messages as the
transformers engine renders, `reasoning_effort`, and `response_format` with the TriageReport JSON
schema; the server's `reasoning_content` is the analysis channel. `model` is the adapter's name on
the server (`--lora-modules name=path`) when one is set, else the base model's.

Same interface as `model.engine.Engine` for `model.tasks.run_batch`: `render`, `generate_reports`,
`refresh_adapter`, `model_version`, `adapter_version`, `counters`. Failures (server down, timeout,
bad answer) are per-request results with an error, never exceptions.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from model.engine import EngineConfig, EngineConfigError, GenerationResult


def openai_versions(config: EngineConfig) -> tuple[str, str]:
    """(model_version, adapter_version) as this backend reports them (the API computes the same)."""
    return f"{config.openai_model}@openai", config.openai_adapter or "none"


class OpenAIEngine:
    def __init__(self, config: EngineConfig, *, session: requests.Session | None = None) -> None:
        if not config.openai_base_url or not config.openai_model:
            raise EngineConfigError("TRIAGE_ENGINE=openai needs TRIAGE_OPENAI_BASE_URL and TRIAGE_OPENAI_MODEL")
        from model.report import parse_report, report_json_schema

        self.config = config
        self.base_url = config.openai_base_url.rstrip("/")
        self.model_version, self.adapter_version = openai_versions(config)
        self.served_model = config.openai_adapter or config.openai_model
        self.schema = report_json_schema()
        self.parse = parse_report
        self.tokenizer = None
        self.counters: Counter[str] = Counter()
        self.last_stats: dict[str, Any] = {}
        self.session = session or requests.Session()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="triage-openai")

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The request's messages (JSON): the server applies the chat template."""
        return json.dumps(messages, ensure_ascii=False)

    def refresh_adapter(self) -> bool:  # the server owns its adapters (vLLM --lora-modules)
        return False

    def generate_reports(self, prompts: list[str]) -> list[GenerationResult]:
        started = time.perf_counter()
        results = list(self._pool.map(self._one, prompts))
        if results and all(r.error and r.error.startswith(("server", "malformed")) for r in results):
            # the server, not the reports, failed: the batch fails (not cached as invalid reports)
            raise RuntimeError(f"OpenAI-compatible server failed: {results[0].error}")
        elapsed = time.perf_counter() - started
        generated = sum(r.tokens for r in results)
        self.last_stats = {"batch_size": len(prompts), "generated_tokens": generated, "seconds": elapsed,
                           "tokens_per_second": generated / elapsed if elapsed > 0 else 0.0,
                           "rejected": sum(r.report is None for r in results)}
        return results

    def _one(self, prompt: str) -> GenerationResult:
        cfg = self.config
        body = {
            "model": self.served_model,
            "messages": json.loads(prompt),
            "max_tokens": cfg.max_new_tokens_analysis + cfg.max_new_tokens_final,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "seed": cfg.seed,
            "reasoning_effort": cfg.reasoning_effort,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "TriageReport", "schema": self.schema, "strict": True}},
        }
        try:
            response = self.session.post(f"{self.base_url}/chat/completions", json=body, timeout=cfg.openai_timeout_s)
        except requests.RequestException as exc:
            return self._failed(f"server unreachable ({type(exc).__name__})")
        if response.status_code != 200:
            return self._failed(f"server answered {response.status_code}")
        try:
            data = response.json()
            message = data["choices"][0]["message"]
            raw = message.get("content") or ""
            analysis = message.get("reasoning_content") or message.get("reasoning") or ""
            tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError):
            return self._failed("malformed server answer")
        try:
            report, error = self.parse(raw), None
        except ValueError as exc:  # InvalidReport: its message never echoes the text
            report, error = None, str(exc)
        self.counters["reports" if report is not None else "rejected"] += 1
        return GenerationResult(report=report, raw_final=raw, analysis=analysis, error=error, tokens=tokens)

    def _failed(self, why: str) -> GenerationResult:
        self.counters["server_errors"] += 1
        return GenerationResult(report=None, raw_final="", analysis="", error=why, tokens=0)
