"""nf4 for gpt-oss attention and experts on CPU, honest byte counts, mxfp4 refused on CPU."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")
from torch.nn.utils import parametrize  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from model.engine import Engine, EngineConfig  # noqa: E402
from model.quantize import (  # noqa: E402
    QuantizationUnavailable,
    format_memory_table,
    gpt_oss_20b_memory_table,
    gpt_oss_parameter_counts,
    load_nf4,
    nf4_bytes_per_weight,
    parameter_bytes,
    require_mxfp4,
)

torch.set_num_threads(1)
TOKENS = torch.tensor([[11, 250, 37, 900, 4, 1500, 77, 12]])


@pytest.fixture(scope="module")
def bf16(tiny_model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()


@pytest.fixture(scope="module")
def nf4(tiny_model_dir: Path):
    return load_nf4(tiny_model_dir, device="cpu").eval()


def test_nf4_packs_attention_and_experts(nf4) -> None:
    layer = nf4.model.layers[0]
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert isinstance(getattr(layer.self_attn, proj), bnb.nn.Linear4bit)
    experts = layer.mlp.experts
    for name in ("gate_up_proj", "down_proj"):
        assert parametrize.is_parametrized(experts, name)
        assert getattr(experts.parametrizations, name).original.dtype == torch.uint8
        assert getattr(experts, name).dim() == 3  # dequantized on access, same shape as before
    assert not isinstance(nf4.lm_head, bnb.nn.Linear4bit)  # output head stays bf16, as in QLoRA


def test_nf4_cuts_parameter_memory_threefold_with_experts_counted(bf16, nf4) -> None:
    before, after = parameter_bytes(bf16), parameter_bytes(nf4)
    assert before["experts"] > 0.9 * before["total"]
    assert before["total"] / after["total"] >= 3.0
    assert before["experts"] / after["experts"] >= 3.5
    assert before["attention"] / after["attention"] >= 2.0  # biases and sinks stay bf16
    assert after["embeddings"] == before["embeddings"]


def test_parameter_bytes_counts_quantization_state(nf4) -> None:
    counts = gpt_oss_parameter_counts(nf4.config)
    expected = counts["experts_weights"] * nf4_bytes_per_weight() + counts["experts_other"] * 2
    measured = parameter_bytes(nf4)["experts"]
    packed_only = counts["experts_weights"] / 2 + counts["experts_other"] * 2
    assert measured > packed_only  # absmax and nested state are counted
    assert abs(measured - expected) / expected < 0.01


def test_attention_only_nf4_leaves_the_experts_big(tiny_model_dir: Path, bf16) -> None:
    attention_only = load_nf4(tiny_model_dir, device="cpu", quantize_experts=False)
    sizes = parameter_bytes(attention_only)
    assert sizes["experts"] == parameter_bytes(bf16)["experts"]
    assert parameter_bytes(bf16)["total"] / sizes["total"] < 1.1


def test_nf4_forward_stays_finite_and_close(bf16, nf4) -> None:
    with torch.no_grad():
        ref = bf16(TOKENS).logits.float()
        out = nf4(TOKENS).logits.float()
    assert torch.isfinite(out).all()
    assert out.shape == ref.shape
    assert (out - ref).abs().mean() < ref.abs().mean()  # quantization noise, not garbage


def test_parameter_counts_formula_matches_a_real_model(bf16) -> None:
    counts = gpt_oss_parameter_counts(bf16.config)
    assert counts["total"] == sum(p.numel() for p in bf16.parameters())
    in_experts = sum(p.numel() for n, p in bf16.named_parameters() if ".mlp.experts." in n)
    assert counts["experts_weights"] + counts["experts_other"] == in_experts


def test_gpt_oss_20b_counts_and_memory_table() -> None:
    counts = gpt_oss_parameter_counts()
    assert 20.8e9 < counts["total"] < 21.0e9
    assert 19.0e9 < counts["experts_weights"] + counts["experts_other"] < 19.2e9
    rows = {r.scheme.split(" (")[0]: r for r in gpt_oss_20b_memory_table()}
    bf16, attn, both, mx = (rows[k] for k in ("bf16", "nf4 attention only", "nf4 attention + experts", "mxfp4 experts"))
    assert 41e9 < bf16.total_bytes < 42.5e9
    assert bf16.experts_bytes == attn.experts_bytes > 38e9  # BitsAndBytesConfig alone leaves 38 GB of experts
    assert attn.total_bytes / bf16.total_bytes > 0.95
    assert both.total_bytes < mx.total_bytes < attn.total_bytes
    assert bf16.total_bytes / both.total_bytes > 3.0
    assert "nf4 attention + experts" in format_memory_table(list(rows.values()))


def test_mxfp4_is_refused_on_cpu_with_a_clear_message(tiny_model_dir: Path) -> None:
    with pytest.raises(QuantizationUnavailable, match="mxfp4 quantization needs a CUDA GPU"):
        require_mxfp4("cpu")
    with pytest.raises(QuantizationUnavailable, match="Use quantization 'nf4' or 'none'"):
        Engine.load(EngineConfig(model_path=str(tiny_model_dir), quantization="mxfp4", device="cpu"))
