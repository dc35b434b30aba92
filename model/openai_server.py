"""The project's transformers engine behind the OpenAI chat-completions API (`triage model serve-openai`).

The subset vLLM offers the workers: `GET /v1/models` and `POST /v1/chat/completions` with `messages`,
`reasoning_effort`, `max_tokens` and `response_format` (only the TriageReport JSON schema: the
engine's grammar is built for it). The answer's `content` is the final channel (constrained JSON),
`reasoning_content` the analysis channel. For a small deployment without vLLM, and to test the
`TRIAGE_ENGINE=openai` backend against a real HTTP server. Bad requests get a 400 with a one-line
OpenAI-style error; requests are served one at a time (the engine holds one model).
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from flask import Flask, jsonify, request

from model.prompts import REASONING_EFFORTS, render_chat_prompt


def _error(message: str, status: int = 400):
    return jsonify({"error": {"message": message, "type": "invalid_request_error"}}), status


def create_openai_app(engine: Any, *, served_names: tuple[str, ...] = ()) -> Flask:
    from model.report import report_json_schema

    app = Flask("triage-openai")
    names = served_names or (engine.model_version,)
    schema = report_json_schema()

    @app.get("/v1/models")
    def models():
        return jsonify({"object": "list", "data": [{"id": n, "object": "model", "owned_by": "triage-cds"} for n in names]})

    @app.post("/v1/chat/completions")
    def chat_completions():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error("the body must be a JSON object")
        if body.get("model") not in names:
            return _error(f"unknown model; served: {', '.join(names)}", 404)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
        ):
            return _error("messages must be a non-empty list of {role, content}")
        effort = body.get("reasoning_effort", engine.config.reasoning_effort)
        if effort not in REASONING_EFFORTS:
            return _error(f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}")
        fmt = body.get("response_format")
        if fmt is not None:
            given = (fmt.get("json_schema") or {}).get("schema") if isinstance(fmt, dict) else None
            if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or given != schema:
                return _error("response_format: only the TriageReport json_schema is served")
        try:
            prompt = render_chat_prompt(engine.tokenizer, [{"role": m["role"], "content": m["content"]} for m in messages],
                                        reasoning_effort=effort)
        except Exception:  # noqa: BLE001 - a template error is the request's fault
            return _error("messages cannot be rendered with the model's chat template")
        [result] = engine.generate_reports([prompt])
        usage = {"prompt_tokens": int(engine.last_stats.get("prompt_tokens", 0)), "completion_tokens": result.tokens}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return jsonify({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop" if result.error is None else "length",
                         "message": {"role": "assistant", "content": result.raw_final,
                                     "reasoning_content": result.analysis}}],
            "usage": usage,
        })

    return app
