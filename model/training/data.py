"""The training inputs, read from the files the `triage dataset` commands write.

- chat examples (`dataset build` splits, `import-reasoning` JSONL): `messages` ending with the
  assistant's report (`thinking` = the analysis channel, where there is one) and
  `chat_template_kwargs`;
- plain text for continual pre-training: a row's `text`, else its messages' contents;
- preference rows (`dataset feedback`): `prompt`, `chosen`, `rejected` (DPO) or `prompt`,
  `completion`, `label` (KTO).

Messages are stored with the `Json` feature: Arrow would otherwise give every message every key
(a `thinking: None` the gpt-oss template would render).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from model.training.common import RunOptions, TrainingConfigError, input_files, iter_jsonl, template_kwargs

ROLES = {"system", "developer", "user", "assistant"}


def _messages(value: Any, where: str, *, final_assistant: bool = True) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise TrainingConfigError(f"{where}: messages must be a non-empty list")
    out = []
    for m in value:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise TrainingConfigError(f"{where}: each message needs a role ({'/'.join(sorted(ROLES))}) and text content")
        msg = {"role": m["role"], "content": m["content"]}
        if m["role"] == "assistant" and isinstance(m.get("thinking"), str) and m["thinking"].strip():
            msg["thinking"] = m["thinking"]
        out.append(msg)
    if final_assistant and out[-1]["role"] != "assistant":
        raise TrainingConfigError(f"{where}: the last message must be the assistant's")
    return out


def _dataset(rows: list[dict[str, Any]], json_columns: tuple[str, ...], what: str):
    from datasets import Dataset, Features, Json, List, Value

    if not rows:
        raise TrainingConfigError(f"no {what} examples in the inputs")
    spec: dict[str, Any] = {}
    for name, value in rows[0].items():
        if name in json_columns:
            spec[name] = List(Json()) if isinstance(value, list) else Json()
        elif isinstance(value, bool):
            spec[name] = Value("bool")
        else:
            spec[name] = Value("string")
    return Dataset.from_list(rows, features=Features(spec))


def _cap(rows: list[dict[str, Any]], n: int | None) -> list[dict[str, Any]]:
    return rows if n is None else rows[:n]


def chat_rows(opts: RunOptions, split: str | None) -> list[dict[str, Any]]:
    rows = []
    for path, n, row in iter_jsonl(input_files(opts.dataset_path or [], split)):
        rows.append({
            "messages": _messages(row.get("messages"), f"{path.name} line {n}"),
            "chat_template_kwargs": template_kwargs(row, opts.reasoning_effort),
        })
    return rows


def chat_datasets(opts: RunOptions) -> tuple[Any, Any | None]:
    """(train, eval or None) for SFT."""
    train = _cap(chat_rows(opts, opts.train_split), opts.max_train_examples)
    evaluation = _cap(chat_rows(opts, opts.eval_split), opts.max_eval_examples) if opts.eval_split else []
    cols = ("messages", "chat_template_kwargs")
    return _dataset(train, cols, "training"), (_dataset(evaluation, cols, "evaluation") if evaluation else None)


def text_of(row: dict[str, Any], where: str) -> str:
    if isinstance(row.get("text"), str):
        return row["text"]
    if isinstance(row.get("messages"), list):  # a chat example: its de-identified contents, in order
        return "\n\n".join(m["content"] for m in _messages(row["messages"], where, final_assistant=False)
                           if m["role"] != "system")
    raise TrainingConfigError(f"{where}: needs a text field or messages")


def text_datasets(opts: RunOptions) -> tuple[Any, Any | None]:
    """(train, eval or None) of plain text for continual pre-training."""
    def rows(split: str | None) -> list[dict[str, Any]]:
        return [{"text": text_of(r, f"{p.name} line {n}")} for p, n, r in iter_jsonl(input_files(opts.dataset_path or [], split))]

    train = _cap(rows(opts.train_split), opts.max_train_examples)
    evaluation = _cap(rows(opts.eval_split), opts.max_eval_examples) if opts.eval_split else []
    return _dataset(train, (), "training"), (_dataset(evaluation, (), "evaluation") if evaluation else None)


def _preference_files(opts: RunOptions, name: str, split: str | None) -> list[Path]:
    """`<folder>/<name>.jsonl` for training, `<folder>/<name>.<split>.jsonl` otherwise (a `dataset feedback`
    folder), or JSONL files given directly (training)."""
    files = []
    if split is None:
        return files
    for raw in opts.dataset_path or []:
        path = Path(raw)
        if path.is_dir():
            candidate = path / (f"{name}.jsonl" if split == opts.train_split else f"{name}.{split}.jsonl")
            if candidate.is_file():
                files.append(candidate)
        elif split == opts.train_split:
            files.append(path)
    return files


def dpo_datasets(opts: RunOptions) -> tuple[Any, Any | None]:
    def rows(split: str | None) -> list[dict[str, Any]]:
        out = []
        for path, n, row in iter_jsonl(_preference_files(opts, "dpo", split)):
            where = f"{path.name} line {n}"
            out.append({
                "prompt": _messages(row.get("prompt"), where, final_assistant=False),
                "chosen": _messages(row.get("chosen"), where),
                "rejected": _messages(row.get("rejected"), where),
                "chat_template_kwargs": template_kwargs(row, opts.reasoning_effort),
            })
        return out

    train = _cap(rows(opts.train_split), opts.max_train_examples)
    evaluation = _cap(rows(opts.eval_split), opts.max_eval_examples)
    cols = ("prompt", "chosen", "rejected", "chat_template_kwargs")
    return _dataset(train, cols, "DPO"), (_dataset(evaluation, cols, "DPO evaluation") if evaluation else None)


def kto_datasets(opts: RunOptions) -> tuple[Any, Any | None]:
    def rows(split: str | None) -> list[dict[str, Any]]:
        out = []
        for path, n, row in iter_jsonl(_preference_files(opts, "kto", split)):
            where = f"{path.name} line {n}"
            if not isinstance(row.get("label"), bool):
                raise TrainingConfigError(f"{where}: label must be true or false")
            out.append({
                "prompt": _messages(row.get("prompt"), where, final_assistant=False),
                "completion": _messages(row.get("completion"), where),
                "label": row["label"],
                "chat_template_kwargs": template_kwargs(row, opts.reasoning_effort),
            })
        return out

    train = _cap(rows(opts.train_split), opts.max_train_examples)
    evaluation = _cap(rows(opts.eval_split), opts.max_eval_examples)
    cols = ("prompt", "completion", "chat_template_kwargs")
    return _dataset(train, cols, "KTO"), (_dataset(evaluation, cols, "KTO evaluation") if evaluation else None)
