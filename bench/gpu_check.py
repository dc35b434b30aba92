"""Prepared GPU check for one H100/H200 (under 8 minutes): gpt-oss-20b's real architecture with random
weights (speed and memory depend on shapes, not values), nothing downloaded.

    python bench/gpu_check.py [--json OUT.json]              # on the GPU machine
    python bench/gpu_check.py --config tiny --device cpu     # the same code paths on the tiny model (CPU)

1. nf4 weight memory: the model is built on the meta device, materialised on the GPU in bf16 with
   random values, then quantized as the engine serves it (attention projections as bitsandbytes
   `Linear4bit`, the MoE experts with `bitsandbytes.nn.parametrize.replace_parameter_4bit`, nf4 with
   double quantization). Measured `memory_allocated` against the computed 12.5 GB
   (`model.quantize.gpt_oss_20b_memory_table`, "nf4 attention + experts").
2. Generation tokens/s at batch 1 and 8 (greedy, 128 prompt tokens, 64 new tokens, no early stop).
3. One LoRA training step of the seed config (r=8 on q/k/v/o, QLoRA on the nf4 model, batch 4 x 2048
   tokens, gradient checkpointing, AdamW): time and peak memory.

Prints one JSON object (also written to --json, or to $OUT/gpu_check.json when OUT is set).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _allocated(device: str) -> int | None:
    import torch

    return torch.cuda.memory_allocated() if device == "cuda" else None


def build_nf4(config_name: str, device: str):
    """Random-weight gpt-oss quantized to nf4 the way the engine serves it; returns (model, seconds)."""
    import bitsandbytes as bnb
    import torch
    from torch import nn
    from transformers import GptOssConfig, GptOssForCausalLM

    from model.quantize import GPT_OSS_20B, quantize_experts_nf4
    from model.tiny import TINY_CONFIG

    dims = dict(GPT_OSS_20B) if config_name == "20b" else {**TINY_CONFIG, "vocab_size": 2048, "tie_word_embeddings": False}
    config = GptOssConfig(**dims)
    config._attn_implementation = "eager"
    started = time.perf_counter()
    with torch.device("meta"):
        model = GptOssForCausalLM(config)
    model = model.to(torch.bfloat16).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm.weight", "layernorm.weight")):
                param.fill_(1.0)
            elif name.endswith(("bias", "sinks")):
                param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=gen)
        for layer in model.model.layers:  # attention projections -> bnb Linear4bit (as BitsAndBytesConfig does)
            attn = layer.self_attn
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                old: nn.Linear = getattr(attn, proj)
                new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=old.bias is not None,
                                        compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                                        device="meta")
                new.weight = bnb.nn.Params4bit(old.weight.data.to("cpu") if device == "cpu" else old.weight.data,
                                               requires_grad=False, compress_statistics=True, quant_type="nf4")
                new.weight = new.weight.to(device)  # quantizes
                if old.bias is not None:
                    new.bias = nn.Parameter(old.bias.data, requires_grad=False)
                setattr(attn, proj, new)
                del old
        quantize_experts_nf4(model)
    if device == "cuda":
        torch.cuda.empty_cache()
    _sync(device)
    model.eval()
    return model, time.perf_counter() - started


def generation(model, device: str, batch: int, prompt: int = 128, new: int = 64) -> dict:
    import torch

    ids = torch.randint(0, model.config.vocab_size - 1, (batch, prompt), device=device)
    with torch.inference_mode():
        model.generate(input_ids=ids[:, :16], max_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
        _sync(device)
        started = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, pad_token_id=0)
        _sync(device)
    seconds = time.perf_counter() - started
    made = (out.shape[1] - prompt) * batch
    return {"batch": batch, "new_tokens": made, "seconds": round(seconds, 3), "tokens_per_s": round(made / seconds, 1)}


def lora_step(model, device: str, batch: int, length: int) -> dict:
    import torch
    from peft import get_peft_model

    from model.training.common import RunOptions, lora_config

    peft_model = get_peft_model(model, lora_config(RunOptions()))  # the seed: r=8, alpha 16, q/k/v/o
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    peft_model.train()
    peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model.enable_input_require_grads()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=5e-5)
    ids = torch.randint(0, model.config.vocab_size - 1, (batch, length), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    started = time.perf_counter()
    loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return {"batch": batch, "length": length, "trainable_parameters": trainable, "seconds": round(seconds, 2),
            "tokens_per_s": round(batch * length / seconds, 1), "loss": round(float(loss), 4),
            "peak_memory_gb": round(peak / 1e9, 2) if peak is not None else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["20b", "tiny"], default="20b")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-length", type=int, default=2048)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from model.quantize import gpt_oss_20b_memory_table

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU here (use --device cpu --config tiny to try the code paths)")
    result: dict = {"config": args.config, "device": args.device,
                    "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                    "torch": torch.__version__}
    t0 = time.perf_counter()
    model, build_s = build_nf4(args.config, args.device)
    measured = _allocated(args.device)
    computed = next(r for r in gpt_oss_20b_memory_table() if r.scheme.startswith("nf4 attention + experts"))
    result["nf4_weights"] = {
        "build_s": round(build_s, 1),
        "measured_gb": round(measured / 1e9, 2) if measured is not None else None,
        "computed_gb_20b": round(computed.total_bytes / 1e9, 2),
        "ratio": round(measured / computed.total_bytes, 3) if measured is not None and args.config == "20b" else None,
    }
    print(json.dumps(result["nf4_weights"]), flush=True)
    result["generation"] = [generation(model, args.device, b) for b in (1, 8)]
    print(json.dumps(result["generation"]), flush=True)
    length = args.train_length if args.config == "20b" else min(args.train_length, 256)
    if args.device == "cpu":  # bitsandbytes repacks 4-bit weights for CPU inference (eval): train on a fresh copy
        model, _ = build_nf4(args.config, args.device)
    result["lora_step"] = lora_step(model, args.device, args.train_batch, length)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2)
    print(text)
    target = args.json or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
    if target:
        target.write_text(text)


if __name__ == "__main__":
    main()
