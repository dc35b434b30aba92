"""Training inputs in the formats the dataset commands write, and harmony through TRL's gpt-oss training
template: `thinking` becomes the analysis channel, and only the assistant's tokens carry loss."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.training.common import TrainingConfigError
from model.training.data import chat_datasets, dpo_datasets, kto_datasets, text_datasets
from model.training.sft import SftRunConfig

REASONING = {"id": "r1", "source": "medical-o1-reasoning-SFT", "messages": [
    {"role": "user", "content": "A 70-year-old with sudden slurred speech. Next step?"},
    {"role": "assistant", "content": "Urgent non-contrast CT of the head.", "thinking": "Stroke until proven otherwise."},
]}
CLINIC = {"id": "p-e0", "patient": "p", "acuity": 2, "label_source": "priority",
          "chat_template_kwargs": {"model_identity": "You are a triage assistant.", "reasoning_effort": "medium"},
          "messages": [{"role": "developer", "content": "Write the report."}, {"role": "user", "content": "Chest pain."},
                       {"role": "assistant", "content": "{\"acuity\":2}"}]}


def _options(tmp_path: Path, *paths: Path, **kw) -> SftRunConfig:
    return SftRunConfig(output_dir=str(tmp_path / "o"), dataset_path=[str(p) for p in paths], bf16=False, use_cpu=True, **kw)


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mixed_chat_inputs_keep_only_real_keys(tmp_path: Path) -> None:
    folder = tmp_path / "clinic"
    _write(folder / "train.jsonl", [CLINIC])
    _write(folder / "validation.jsonl", [CLINIC])
    reasoning = _write(tmp_path / "reasoning.jsonl", [REASONING])
    train, evaluation = chat_datasets(_options(tmp_path, folder, reasoning))
    assert len(train) == 2 and len(evaluation) == 1  # a bare file is training data only
    rows = list(train)
    assert "thinking" not in rows[0]["messages"][-1]  # no Arrow-made `thinking: None`
    assert rows[1]["messages"][-1]["thinking"] == "Stroke until proven otherwise."
    assert rows[0]["chat_template_kwargs"]["reasoning_effort"] == "medium"  # the example's own
    assert rows[1]["chat_template_kwargs"]["reasoning_effort"] == "low"  # the inference default


def test_harmony_analysis_channel_and_assistant_only_mask(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer
    from trl.chat_template_utils import get_training_chat_template

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = get_training_chat_template(tok)  # what SFTTrainer swaps in for assistant_only_loss
    assert template is not None and "{% generation %}" in template.replace("{%- generation %}", "{% generation %}")
    train, _ = chat_datasets(_options(tmp_path, _write(tmp_path / "r.jsonl", [REASONING])))
    row = train[0]
    enc = tok.apply_chat_template(row["messages"], chat_template=template, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True, **row["chat_template_kwargs"])
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    ignored = tok.decode([t for t, m in zip(ids, mask) if not m])
    assert "<|channel|>analysis<|message|>Stroke until proven otherwise.<|end|>" in trained
    assert "<|channel|>final<|message|>Urgent non-contrast CT of the head.<|return|>" in trained
    assert "slurred speech" in ignored and "slurred speech" not in trained


def test_text_and_preference_inputs(tmp_path: Path) -> None:
    folder = tmp_path / "clinic"
    _write(folder / "train.jsonl", [CLINIC, {"id": "s", "text": "###Human: cough ###Assistant: {}"}])
    texts, _ = text_datasets(_options(tmp_path, folder, eval_split=None))
    assert texts["text"][0] == "Write the report.\n\nChest pain.\n\n{\"acuity\":2}"
    assert texts["text"][1].startswith("###Human")
    prefs = tmp_path / "feedback"
    prompt = [{"role": "user", "content": "Chest pain."}]
    _write(prefs / "dpo.jsonl", [{"prompt": prompt, "chosen": [{"role": "assistant", "content": "a"}],
                                  "rejected": [{"role": "assistant", "content": "b"}]}])
    _write(prefs / "kto.jsonl", [{"prompt": prompt, "completion": [{"role": "assistant", "content": "a"}], "label": True},
                                 {"prompt": prompt, "completion": [{"role": "assistant", "content": "b"}], "label": False}])
    dpo, _ = dpo_datasets(_options(tmp_path, prefs))
    kto, _ = kto_datasets(_options(tmp_path, prefs))
    assert dpo[0]["chosen"] == [{"role": "assistant", "content": "a"}] and kto["label"] == [True, False]


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "last message must be the assistant's"),
    ({"messages": [{"role": "nurse", "content": "hi"}]}, "each message needs a role"),
    ({"text": 3}, "needs a role|must be a non-empty list"),
])
def test_bad_rows_are_one_line_errors(tmp_path: Path, row: dict, message: str) -> None:
    bad = _write(tmp_path / "bad.jsonl", [row])
    with pytest.raises(TrainingConfigError, match=message) as info:
        chat_datasets(_options(tmp_path, bad))
    assert "bad.jsonl line 1" in str(info.value) and "\n" not in str(info.value)
