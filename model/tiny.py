"""A tiny, offline, deterministic `GptOssForCausalLM` for tests, demos and benchmarks.

Same architecture as `openai/gpt-oss-20b` (MoE with 3-D expert parameters, attention sinks,
alternating sliding/full attention, harmony special tokens and chat template) at a size that
builds in seconds on a CPU. The tokenizer is a byte-level BPE trained here on the shared test
data, so nothing is downloaded. Proportions follow the real model: the experts hold most of
the parameters, so quantization figures measured on it mean something.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"

# The harmony special tokens of o200k_harmony, in the real tokenizer's order.
HARMONY_SPECIAL_TOKENS = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|return|>",
    "<|constrain|>",
    "<|channel|>",
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|call|>",
    "<|pad|>",
]
BOS, EOS, PAD = "<|startoftext|>", "<|return|>", "<|pad|>"
# Generation stops on any of these, as in gpt-oss's generation_config (return, endoftext, call).
STOP_TOKENS = ["<|return|>", "<|endoftext|>", "<|call|>"]

TINY_CONFIG = dict(
    num_hidden_layers=2,
    hidden_size=64,
    intermediate_size=512,
    head_dim=16,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_local_experts=32,  # gpt-oss-20b: 32 experts, 4 per token
    num_experts_per_tok=4,
    sliding_window=32,
    max_position_embeddings=4096,
)
VOCAB_SIZE = 2000  # BPE target, specials included
VOCAB_MULTIPLE = 64  # the embedding is padded past the tokenizer, like gpt-oss (201088 > 200019)
CORPUS_LIMIT_CHARS = 600_000


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Build the tiny model, tokenizer, chat templates and generation config into `out_dir`."""
    import torch
    from transformers import GenerationConfig, GptOssConfig, GptOssForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir) if data_dir is not None else Path(os.environ.get("TRIAGE_DATA_DIR", DEFAULT_DATA_DIR))

    tokenizer = build_tokenizer(data)
    vocab = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in HARMONY_SPECIAL_TOKENS}
    config = GptOssConfig(
        **TINY_CONFIG,
        vocab_size=vocab,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        tie_word_embeddings=False,
    )
    config.dtype = torch.bfloat16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GptOssForCausalLM(config)
    model = model.to(torch.bfloat16).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=[ids[t] for t in STOP_TOKENS],
        pad_token_id=ids[PAD],
        do_sample=False,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.copyfile(_trl_template("gptoss_training.jinja"), out / "gptoss_training.jinja")
    return out


def build_tokenizer(data_dir: Path):
    """Byte-level BPE trained on the shared data, with harmony specials and TRL's gpt-oss template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=HARMONY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(data_dir), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[t for t in HARMONY_SPECIAL_TOKENS if t not in (BOS, EOS, PAD)],
        model_max_length=TINY_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    tokenizer.chat_template = _trl_template("gptoss.jinja").read_text()
    return tokenizer


def _trl_template(name: str) -> Path:
    import trl

    path = Path(trl.__file__).parent / "chat_templates" / name
    if not path.is_file():
        raise FileNotFoundError(f"TRL does not ship {name} (looked in {path.parent})")
    return path


def _corpus(data_dir: Path) -> Iterator[str]:
    """FHIR display strings, clinical notes and ASQ-PHI queries, in a fixed order, capped."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"test data not found at {data_dir} (set TRIAGE_DATA_DIR)")
    budget = CORPUS_LIMIT_CHARS
    for text in _texts(data_dir):
        if budget <= 0:
            return
        budget -= len(text)
        yield text


def _texts(data_dir: Path) -> Iterator[str]:
    queries = data_dir / "deid" / "asq-phi" / "synthetic_clinical_queries.txt"
    if queries.is_file():
        for block in queries.read_text(encoding="utf-8").split("===QUERY===")[1:]:
            yield block.split("===PHI_TAGS===")[0].strip()
    bulk = data_dir / "fhir" / "bulk-export-synthea-10"
    for name in ("Condition", "MedicationRequest", "Procedure", "AllergyIntolerance"):
        path = bulk / f"{name}.000.ndjson"
        if path.is_file():
            with path.open(encoding="utf-8") as lines:
                displays = sorted({d for line in lines if line.strip() for d in _displays(json.loads(line))})
            yield "\n".join(displays)
    notes = bulk / "DocumentReference.000.ndjson"
    if notes.is_file():
        with notes.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    doc = json.loads(line)
                    for content in doc.get("content", []):
                        data = content.get("attachment", {}).get("data")
                        if data:
                            yield base64.b64decode(data).decode("utf-8", errors="replace")


def _displays(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("display", "text") and isinstance(value, str):
                yield value
            else:
                yield from _displays(value)
    elif isinstance(node, list):
        for item in node:
            yield from _displays(item)


def tiny_model_cache_key(seed: int = 0) -> str:
    """Hash of this module's source and the installed TRL template, for caching builds."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(_trl_template("gptoss.jinja").read_bytes())
    digest.update(str(seed).encode())
    return digest.hexdigest()[:16]


def cached_tiny_model(cache_root: str | os.PathLike[str] | None = None, *, seed: int = 0) -> Path:
    """Build once into `cache_root/<hash>` (atomic rename, safe with concurrent test runs)."""
    root = Path(cache_root) if cache_root is not None else PROJECT_ROOT / ".tiny-model"
    target = root / tiny_model_cache_key(seed)
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    try:
        build_tiny_model(staging, seed=seed)
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its build is identical
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
