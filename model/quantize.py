"""4-bit gpt-oss: nf4 (bitsandbytes) for attention *and* MoE experts, mxfp4 (native, GPU only).

`BitsAndBytesConfig(load_in_4bit=True)` replaces `nn.Linear` layers only. In gpt-oss those are the
attention projections; the experts (`mlp.experts.gate_up_proj` / `down_proj`, 3-D parameters, 91%
of the weights) stay bf16. `quantize_experts_nf4` packs them with
`bitsandbytes.nn.parametrize.replace_parameter_4bit`, which keeps the parameter name and
dequantizes on access, so the stock experts forward runs unchanged. bitsandbytes >= 0.48 has a
CPU backend, and transformers accepts a `BitsAndBytesConfig` on CPU (checked by the tests).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

EXPERT_PARAMS = ("gate_up_proj", "down_proj")
NF4_BLOCKSIZE = 64  # bitsandbytes' default 4-bit block
NESTED_BLOCKSIZE = 256  # double quantization: one fp32 absmax per 256 uint8 absmax values


class QuantizationUnavailable(RuntimeError):
    """The requested quantization cannot run on this machine."""


def nf4_config(compute_dtype: torch.dtype = torch.bfloat16, *, double_quant: bool = True):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=double_quant,
    )


def quantize_experts_nf4(model: nn.Module, *, double_quant: bool = True) -> int:
    """Pack every MoE expert weight (3-D `nn.Parameter`) to nf4 in place; returns how many."""
    from bitsandbytes.nn.parametrize import replace_parameter_4bit
    from torch.nn.utils import parametrize

    done = 0
    for name, module in model.named_modules():
        if not name.endswith("mlp.experts"):
            continue
        for param in EXPERT_PARAMS:
            if parametrize.is_parametrized(module, param):
                continue
            weight = getattr(module, param, None)
            if isinstance(weight, nn.Parameter) and weight.dim() == 3:
                replace_parameter_4bit(module, param, quant_type="nf4", compress_statistics=double_quant)
                done += 1
    return done


def load_nf4(
    model_path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    compute_dtype: torch.dtype = torch.bfloat16,
    quantize_experts: bool = True,
    double_quant: bool = True,
    **kwargs: Any,
):
    """Load a bf16 gpt-oss checkpoint with nf4 attention (transformers) and nf4 experts (bnb)."""
    from transformers import AutoModelForCausalLM

    _require_bitsandbytes(device)
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        quantization_config=nf4_config(compute_dtype, double_quant=double_quant),
        dtype=compute_dtype,
        device_map={"": device},
        **kwargs,
    )
    if quantize_experts:
        quantize_experts_nf4(model, double_quant=double_quant)
    return model


def mxfp4_config(*, dequantize: bool = False):
    from transformers import Mxfp4Config

    return Mxfp4Config(dequantize=dequantize)


def require_mxfp4(device: str) -> None:
    """mxfp4 kernels (triton) run on CUDA GPUs only; refuse anything else with a clear message."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        raise QuantizationUnavailable(
            "mxfp4 quantization needs a CUDA GPU (native gpt-oss MXFP4 kernels); "
            f"device is {device!r}. Use quantization 'nf4' or 'none' on this machine."
        )


def _require_bitsandbytes(device: str) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:  # pragma: no cover - part of the model extra
        raise QuantizationUnavailable(f"nf4 needs bitsandbytes (pip install 'triage-cds[model]'): {exc}") from None


# -- Measuring ---------------------------------------------------------------------------------


def _component(name: str) -> str:
    if "lora_" in name:
        return "adapter"
    if ".mlp.experts." in name or name.endswith(".mlp.experts"):
        return "experts"
    if ".self_attn." in name or name.endswith(".self_attn"):
        return "attention"
    if "embed_tokens" in name or "lm_head" in name:
        return "embeddings"
    return "other"


def _state_tensors(state: Any) -> list[torch.Tensor]:
    """The tensors a bitsandbytes QuantState holds (absmax, code, offset, nested state)."""
    if state is None:
        return []
    tensors = [t for t in (state.absmax, state.code, getattr(state, "offset", None)) if isinstance(t, torch.Tensor)]
    return tensors + _state_tensors(getattr(state, "state2", None))


def parameter_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes really stored for weights, by component: packed 4-bit data plus quantization state.

    Keys: attention, experts, embeddings, other, adapter (LoRA), total. Tensors shared between
    modules are counted once.
    """
    seen: set[tuple[int, int]] = set()
    sizes = dict.fromkeys(("attention", "experts", "embeddings", "other", "adapter"), 0)

    def add(name: str, tensor: torch.Tensor) -> None:
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.device.type != "meta" else (id(tensor), 0)
        if key in seen:
            return
        seen.add(key)
        sizes[_component(name)] += tensor.numel() * tensor.element_size()

    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        add(name, tensor)
        for extra in _state_tensors(getattr(tensor, "quant_state", None)):  # Linear4bit weights
            add(name, extra)
    for name, module in model.named_modules():  # replace_parameter_4bit parametrizations
        for extra in _state_tensors(getattr(module, "quant_state", None)):
            add(name, extra)
    sizes["total"] = sum(sizes.values())
    return sizes


# -- gpt-oss-20b on paper --------------------------------------------------------------------------

GPT_OSS_20B = dict(
    num_hidden_layers=24,
    hidden_size=2880,
    num_attention_heads=64,
    num_key_value_heads=8,
    head_dim=64,
    num_local_experts=32,
    intermediate_size=2880,
    vocab_size=201088,
    tie_word_embeddings=False,
)


def gpt_oss_parameter_counts(config: dict[str, Any] | Any = None) -> dict[str, int]:
    """Parameter counts by component from a gpt-oss config (dict or GptOssConfig).

    Weight matrices and biases are split (`*_weights` / `*_other`) because only weight matrices
    are quantized.
    """
    c = dict(GPT_OSS_20B) if config is None else (dict(config) if isinstance(config, dict) else config.to_dict())
    layers, h, hd = c["num_hidden_layers"], c["hidden_size"], c["head_dim"]
    q, kv, e, inter = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd, c["num_local_experts"], c["intermediate_size"]
    attention_weights = layers * (h * q + 2 * h * kv + q * h)
    attention_other = layers * (q + 2 * kv + h + c["num_attention_heads"])  # biases, sinks
    experts_weights = layers * e * (h * 2 * inter + inter * h)
    experts_other = layers * e * (2 * inter + h)  # biases
    embeddings = c["vocab_size"] * h * (1 if c.get("tie_word_embeddings") else 2)
    other = layers * (e * h + e + 2 * h) + h  # routers, layer norms, final norm
    counts = dict(
        attention_weights=attention_weights,
        attention_other=attention_other,
        experts_weights=experts_weights,
        experts_other=experts_other,
        embeddings=embeddings,
        other=other,
    )
    counts["total"] = sum(counts.values())
    return counts


def nf4_bytes_per_weight(*, double_quant: bool = True, blocksize: int = NF4_BLOCKSIZE) -> float:
    """4 bits plus the absmax per block (fp32, or uint8 + a fp32 per 256 blocks when nested)."""
    if double_quant:
        return 0.5 + 1 / blocksize + 4 / (blocksize * NESTED_BLOCKSIZE)
    return 0.5 + 4 / blocksize


MXFP4_BYTES_PER_WEIGHT = 0.5 + 1 / 32  # 4-bit e2m1 + one e8m0 scale byte per 32 values


@dataclass(frozen=True)
class MemoryRow:
    scheme: str
    attention_bytes: int
    experts_bytes: int
    embeddings_bytes: int
    other_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.attention_bytes + self.experts_bytes + self.embeddings_bytes + self.other_bytes

    @property
    def total_gib(self) -> float:
        return self.total_bytes / 2**30

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "total_bytes": self.total_bytes, "total_gib": round(self.total_gib, 2)}


def gpt_oss_20b_memory_table(config: dict[str, Any] | None = None) -> list[MemoryRow]:
    """Weight memory of gpt-oss-20b under each scheme, from its real parameter counts."""
    n = gpt_oss_parameter_counts(config)
    nf4 = nf4_bytes_per_weight()
    bf16 = 2

    def row(scheme: str, attention: float, experts: float) -> MemoryRow:
        return MemoryRow(
            scheme=scheme,
            attention_bytes=int(n["attention_weights"] * attention + n["attention_other"] * bf16),
            experts_bytes=int(n["experts_weights"] * experts + n["experts_other"] * bf16),
            embeddings_bytes=n["embeddings"] * bf16,
            other_bytes=n["other"] * bf16,
        )

    return [
        row("bf16", bf16, bf16),
        row("nf4 attention only (BitsAndBytesConfig)", nf4, bf16),
        row("nf4 attention + experts (replace_parameter_4bit)", nf4, nf4),
        row("mxfp4 experts (hub checkpoint, GPU kernels)", bf16, MXFP4_BYTES_PER_WEIGHT),
    ]


def format_memory_table(rows: list[MemoryRow]) -> str:
    head = f"{'scheme':<52}{'attention':>11}{'experts':>11}{'embed':>9}{'other':>8}{'total':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
        lines.append(
            f"{r.scheme:<52}{gb(r.attention_bytes):>11}{gb(r.experts_bytes):>11}{gb(r.embeddings_bytes):>9}"
            f"{gb(r.other_bytes):>8}{gb(r.total_bytes):>10}"
        )
    return "\n".join(lines)
