"""SFT training throughput on CPU with the tiny model: packing and padding-free batches against plain
padding, as ratios measured in this one run.

    .venv/bin/python bench/train_bench.py [--examples 32] [--rounds 1] [--max-length 256] [--json OUT]

Each mode trains one epoch over the same chat examples (lengths spread from ~30 to ~70% of --max-length tokens, never truncated,
as a clinic set mixed with short imported Q&A is) with the same LoRA (r=8, q/k/v/o), batch of 4
sequences (packing: one block of 4 x --max-length), fp32, no checkpointing. Throughput = the examples' real
tokens (no padding) / train_runtime. Modes:

- padding: each batch padded to its longest example (the baseline);
- padding_free: the batch's examples flattened into one row with position_ids (TRL `padding_free`);
- packing: examples packed best-fit-decreasing into blocks of 4 x --max-length, one block per step
  (TRL `packing`, bfd_split): at most the tokens of a padded batch of 4.

On CPU transformers runs gpt-oss's attention eagerly: a flattened or packed row is one long sequence
(attention cost grows with its square, and examples are not masked from each other), so the CPU ratio
says what padding costs here, not what FlashAttention's variable-length kernels give on a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MODES = {
    "padding": {},
    "padding_free": {"padding_free": True},
    "packing": {"packing": True, "packing_strategy": "bfd_split"},
}


def examples(tokenizer, n: int, max_length: int, seed: int = 0) -> list[dict]:
    """Chat examples of spread lengths from the tiny model's own corpus text (no PHI: shared test data)."""
    from model.tiny import DEFAULT_DATA_DIR, _corpus

    words = " ".join(t for t in _corpus(DEFAULT_DATA_DIR) if t.strip()).split()
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        size = rng.randint(10, max(11, int(max_length * 0.15)))  # words: never truncated, so every mode sees every token
        start = rng.randrange(0, len(words) - 2 * size)
        rows.append({"messages": [
            {"role": "user", "content": " ".join(words[start:start + size])},
            {"role": "assistant", "content": " ".join(words[start + size:start + size + size // 3 + 1])},
        ]})
    return rows


def run(mode: str, model_dir: Path, rows: list[dict], max_length: int, out: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from model.training.common import RunOptions, lora_config

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    args = SFTConfig(output_dir=str(out / mode), bf16=False, use_cpu=True, activation_checkpointing=False,
                     per_device_train_batch_size=1 if mode == "packing" else 4, num_train_epochs=1,
                     max_length={"padding_free": None, "packing": 4 * max_length}.get(mode, max_length),
                     assistant_only_loss=True, learning_rate=1e-4, logging_steps=1000,
                     save_strategy="no", report_to="none", seed=0, dataloader_num_workers=0, disable_tqdm=True,
                     **MODES[mode])
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=lora_config(RunOptions()))
    data = trainer.train_dataset
    tokens = sum(len(x) for x in data["input_ids"])
    started = time.perf_counter()
    metrics = trainer.train().metrics
    seconds = time.perf_counter() - started
    return {"mode": mode, "tokens": tokens, "steps": trainer.state.global_step, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "train_loss": round(metrics["train_loss"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1, help="Median of N rounds per mode (alternating order).")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from model.tiny import cached_tiny_model

    model_dir = cached_tiny_model(ROOT / ".tiny-model")
    rows = examples(AutoTokenizer.from_pretrained(model_dir), args.examples, args.max_length)
    out = Path(tempfile.mkdtemp(prefix="train-bench-"))
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
        for mode in order:
            results[mode].append(run(mode, model_dir, rows, args.max_length, out))
            print(json.dumps(results[mode][-1]), flush=True)
    summary = {m: statistics.median(x["tokens_per_s"] for x in v) for m, v in results.items()}
    base = summary["padding"]
    print(f"\nSFT tokens/s on CPU, tiny model, {args.examples} examples, max length {args.max_length}, "
          f"median of {args.rounds} round(s):")
    for mode, tps in summary.items():
        print(f"  {mode:<13} {tps:>9.1f} tokens/s   {tps / base:5.2f}x padding")
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "tokens_per_s": summary,
                                         "ratio_vs_padding": {m: v / base for m, v in summary.items()}}, indent=2))


if __name__ == "__main__":
    main()
