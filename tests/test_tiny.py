"""The tiny offline gpt-oss model: deterministic, reloadable offline, harmony tokens and template."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, GptOssForCausalLM  # noqa: E402

from model.cli import model_group  # noqa: E402
from model.tiny import HARMONY_SPECIAL_TOKENS, build_tiny_model  # noqa: E402

torch.set_num_threads(1)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_builds_give_identical_weights_and_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert _sha(again / "model.safetensors") == _sha(tiny_model_dir / "model.safetensors")
    assert _sha(again / "tokenizer.json") == _sha(tiny_model_dir / "tokenizer.json")


def test_another_seed_gives_other_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert _sha(other / "model.safetensors") != _sha(tiny_model_dir / "model.safetensors")


def test_reloads_offline_as_gpt_oss_with_3d_experts(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert isinstance(model, GptOssForCausalLM)
    experts = model.model.layers[0].mlp.experts
    assert experts.gate_up_proj.dim() == 3 and experts.down_proj.dim() == 3
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    total = sum(p.numel() for p in model.parameters())
    in_experts = sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n)
    assert in_experts / total > 0.85  # experts dominate, as in gpt-oss-20b (19.1 of 20.9 B)
    assert model.config.vocab_size % 64 == 0


def test_tokenizer_has_harmony_tokens_and_template(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.padding_side == "left"
    for special in HARMONY_SPECIAL_TOKENS:
        ids = tok.encode(special, add_special_tokens=False)
        assert len(ids) == 1, special
    assert len(tok) <= AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.vocab_size
    messages = [{"role": "system", "content": "Triage."}, {"role": "user", "content": "Chest pain for 2 hours."}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, reasoning_effort="low")
    assert "Reasoning: low" in text
    assert "<|start|>user<|message|>Chest pain for 2 hours.<|end|>" in text
    assert text.endswith("<|start|>assistant")
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text  # byte-level round trip
    assert (tiny_model_dir / "gptoss_training.jinja").read_text().count("{%- generation %}") == 1


def test_cli_tiny_writes_a_loadable_model(tmp_path: Path) -> None:
    result = CliRunner().invoke(model_group, ["tiny", "--out", str(tmp_path / "m"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert AutoTokenizer.from_pretrained(tmp_path / "m").pad_token == "<|pad|>"


def test_cli_tiny_reports_missing_data_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(model_group, ["tiny", "--out", str(tmp_path / "m"), "--data", str(tmp_path / "nope")])
    assert result.exit_code != 0
    assert "test data not found" in result.output
    assert "Traceback" not in result.output
