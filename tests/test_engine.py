"""The engine on the tiny model (CPU): config from env, batching, constrained reports, adapters."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from model.engine import Engine, EngineConfig, EngineConfigError, GenerationResult  # noqa: E402
from model.report import InvalidReport, TriageReport, parse_report  # noqa: E402

torch.set_num_threads(1)
COMPLAINTS = [
    "Crushing chest pain for two hours, sweating, history of hypertension.",
    "Fever and cough for three days.",
    "Twisted ankle while running yesterday, can walk with pain, no numbness.",
]
SMALL = dict(max_new_tokens_analysis=8, max_new_tokens_final=256, final_closing_reserve=100)


def _prompts(model_dir: Path, complaints: list[str] = COMPLAINTS) -> list[str]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    return [
        tok.apply_chat_template(
            [{"role": "system", "content": "Triage nurse assistant."}, {"role": "user", "content": c}],
            tokenize=False, add_generation_prompt=True, reasoning_effort="low",
        )
        for c in complaints
    ]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    return Engine.load(EngineConfig(model_path=str(tiny_model_dir), device="cpu", **SMALL))


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LoRA r=8 on all-linear (q/k/v/o in gpt-oss), B weights set deterministically so it matters."""
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    targets = {n.split(".")[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj"}  # experts are 3-D params, router is no Linear
    out = tmp_path_factory.mktemp("adapter") / "triage-lora"
    peft_model.save_pretrained(out)
    return out


# -- configuration -------------------------------------------------------------------------------


def test_from_env_reads_the_model_path_and_settings(tmp_path: Path) -> None:
    cfg = EngineConfig.from_env({
        "TRIAGE_MODEL_PATH": "/models/gpt-oss-20b-bf16",
        "TRIAGE_ADAPTER_PATH": "/models/triage-lora",
        "TRIAGE_QUANTIZATION": "NF4",
        "TRIAGE_MERGE_ADAPTER": "true",
        "TRIAGE_MAX_NEW_TOKENS_FINAL": "512",
        "TRIAGE_TEMPERATURE": "0.7",
        "TRIAGE_REASONING_EFFORT": "medium",
    })
    assert cfg.model_path == "/models/gpt-oss-20b-bf16" and cfg.adapter_path == "/models/triage-lora"
    assert cfg.quantization == "nf4" and cfg.merge_adapter is True
    assert cfg.max_new_tokens_final == 512 and cfg.temperature == 0.7 and not cfg.greedy
    assert cfg.reasoning_effort == "medium"
    assert EngineConfig.from_env({}).model_path is None


@pytest.mark.parametrize("env, message", [
    ({"TRIAGE_QUANTIZATION": "int3"}, "quantization must be one of"),
    ({"TRIAGE_MAX_NEW_TOKENS_FINAL": "lots"}, "TRIAGE_MAX_NEW_TOKENS_FINAL"),
    ({"TRIAGE_MERGE_ADAPTER": "maybe"}, "TRIAGE_MERGE_ADAPTER"),
    ({"TRIAGE_DEVICE": "tpu"}, "device must be one of"),
])
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(EngineConfigError, match=message):
        EngineConfig.from_env(env)


def test_load_without_a_model_or_with_a_wrong_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineConfigError, match="no model configured"):
        Engine.load(EngineConfig())
    with pytest.raises(EngineConfigError, match="config.json missing"):
        Engine.load(EngineConfig(model_path=str(tmp_path)))


def test_the_real_model_is_one_setting_away(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_MODEL_PATH", str(tiny_model_dir))
    monkeypatch.setenv("TRIAGE_DEVICE", "cpu")
    monkeypatch.setenv("TRIAGE_MAX_NEW_TOKENS_ANALYSIS", "0")
    engine = Engine.load()  # no arguments: everything from TRIAGE_* variables
    assert engine.config.model_path == str(tiny_model_dir)
    assert engine.model_version.startswith(tiny_model_dir.name + "@")
    assert engine.adapter_version == "none"


# -- generation ----------------------------------------------------------------------------------


def test_batch_reports_parse_and_stats_are_kept(engine: Engine) -> None:
    before = engine.counters["reports"]
    results = engine.generate_reports(_prompts(Path(engine.config.model_path)))
    assert len(results) == 3 and all(isinstance(r, GenerationResult) for r in results)
    for r in results:
        assert r.error is None and isinstance(r.report, TriageReport)
        assert parse_report(r.raw_final) == r.report
        assert 0 < r.tokens <= SMALL["max_new_tokens_analysis"] + SMALL["max_new_tokens_final"]
    stats = engine.last_stats
    assert stats["batch_size"] == 3 and stats["rejected"] == 0
    assert stats["generated_tokens"] == sum(r.tokens for r in results)
    assert stats["tokens_per_second"] > 0
    assert engine.counters["reports"] == before + 3
    assert engine.generate_reports([]) == []


def test_left_padded_batch_matches_each_prompt_alone(engine: Engine) -> None:
    assert engine.tokenizer.padding_side == "left"
    prompts = _prompts(Path(engine.config.model_path))
    batched = engine.generate_reports(prompts)
    alone = [engine.generate_reports([p])[0] for p in (prompts[0], prompts[2])]  # shortest and longest
    assert (batched[0].analysis, batched[0].raw_final) == (alone[0].analysis, alone[0].raw_final)
    assert (batched[2].analysis, batched[2].raw_final) == (alone[1].analysis, alone[1].raw_final)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sampled_reports_always_validate_without_control_characters(tiny_model_dir: Path, seed: int) -> None:
    engine = Engine.load(EngineConfig(model_path=str(tiny_model_dir), device="cpu", temperature=1.5, seed=seed, **SMALL))
    results = engine.generate_reports(_prompts(tiny_model_dir))
    for r in results:
        assert r.error is None, r.error
        assert isinstance(r.report, TriageReport)
        json.loads(r.raw_final)  # strict JSON: raw control characters in strings would raise
        assert not any(ord(ch) < 0x20 for ch in r.raw_final)
        assert "<|" not in r.raw_final
    assert engine.counters["rejected"] == 0


def test_invalid_reports_are_rejected_and_counted_not_raised(tiny_model_dir: Path) -> None:
    def picky(text: str) -> TriageReport:
        raise InvalidReport("invalid triage report (1 problems): acuity: policy")

    engine = Engine.load(EngineConfig(model_path=str(tiny_model_dir), device="cpu", **SMALL), parse=picky)
    results = engine.generate_reports(_prompts(tiny_model_dir)[:2])
    assert [r.report for r in results] == [None, None]
    assert all("acuity: policy" in r.error for r in results)
    assert engine.counters["rejected"] == 2 and engine.last_stats["rejected"] == 2


def test_a_cut_off_report_is_rejected_with_its_reason(tiny_model_dir: Path) -> None:
    engine = Engine.load(EngineConfig(
        model_path=str(tiny_model_dir), device="cpu", max_new_tokens_analysis=0, max_new_tokens_final=12,
        final_closing_reserve=0,
    ))
    [result] = engine.generate_reports(_prompts(tiny_model_dir)[:1])
    assert result.report is None and result.error == "token budget ran out"
    assert engine.counters["rejected"] == 1


# -- adapters ------------------------------------------------------------------------------------


def _logits(engine: Engine, prompt: str) -> torch.Tensor:
    ids = engine.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return engine.model(input_ids=ids).logits[0, -1].float()


def test_an_adapter_changes_the_outputs(engine: Engine, adapter_dir: Path, tiny_model_dir: Path) -> None:
    adapted = Engine.load(EngineConfig(model_path=str(tiny_model_dir), adapter_path=str(adapter_dir), device="cpu", **SMALL))
    prompt = _prompts(tiny_model_dir)[0]
    base_logits, lora_logits = _logits(engine, prompt), _logits(adapted, prompt)
    assert (base_logits - lora_logits).abs().max() > 1e-2
    assert adapted.adapter_version.startswith("triage-lora@") and adapted.adapter_version != "none"
    assert adapted.model_version == engine.model_version
    base_out = engine.generate_reports([prompt])[0]
    lora_out = adapted.generate_reports([prompt])[0]
    assert lora_out.report is not None
    assert (base_out.analysis, base_out.raw_final) != (lora_out.analysis, lora_out.raw_final)

    merged = Engine.load(EngineConfig(
        model_path=str(tiny_model_dir), adapter_path=str(adapter_dir), merge_adapter=True, device="cpu", **SMALL
    ))
    assert not any("lora_" in n for n, _ in merged.model.named_parameters())
    assert torch.allclose(_logits(merged, prompt), lora_logits, atol=1e-4)


def test_adapter_version_follows_the_weights(adapter_dir: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from model.engine import adapter_version_of

    copy = tmp_path / "triage-lora"
    shutil.copytree(adapter_dir, copy)
    assert adapter_version_of(copy) == adapter_version_of(adapter_dir)
    weights = load_file(copy / "adapter_model.safetensors")
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1
    save_file(weights, copy / "adapter_model.safetensors")
    assert adapter_version_of(copy) != adapter_version_of(adapter_dir)


def test_nf4_engine_with_adapter_writes_valid_reports(tiny_model_dir: Path, adapter_dir: Path) -> None:
    engine = Engine.load(EngineConfig(
        model_path=str(tiny_model_dir), adapter_path=str(adapter_dir), quantization="nf4", device="cpu", **SMALL
    ))
    assert engine.model_version.endswith("+nf4")
    results = engine.generate_reports(_prompts(tiny_model_dir)[:2])
    assert all(isinstance(r.report, TriageReport) for r in results), [r.error for r in results]


def test_prompts_from_model_prompts_generate_valid_reports(engine: Engine) -> None:
    from model.prompts import developer_instructions, render_chat_prompt

    messages = [
        {"role": "developer", "content": developer_instructions()},
        {"role": "user", "content": "Write the triage report for this patient.\n\n" + COMPLAINTS[0]},
    ]
    prompt = render_chat_prompt(engine.tokenizer, messages, reasoning_effort=engine.config.reasoning_effort)
    assert prompt.endswith("<|start|>assistant")
    [result] = engine.generate_reports([prompt])
    assert isinstance(result.report, TriageReport), result.error
    assert engine.last_stats["prompt_tokens"] > engine.model.config.sliding_window  # sliding layers engaged


# -- batching speed-ups: exact against the reference paths -----------------------------------------


def _shared_prefix_prompts(engine: Engine) -> list[str]:
    from model.prompts import developer_instructions, render_chat_prompt

    return [
        render_chat_prompt(engine.tokenizer, [
            {"role": "developer", "content": developer_instructions()},
            {"role": "user", "content": "Write the triage report for this patient.\n\n" + c},
        ], reasoning_effort="low")
        for c in COMPLAINTS
    ]


def test_row_prefill_with_a_shared_prefix_matches_one_padded_prefill(tiny_model_dir: Path) -> None:
    engine = Engine.load(EngineConfig(model_path=str(tiny_model_dir), device="cpu", **SMALL))
    prompts = _shared_prefix_prompts(engine)
    fast = engine.generate_reports(prompts)
    again = engine.generate_reports(prompts[1:])  # prefix reused from the first call
    assert engine.counters["prefix_prefills"] == 1
    engine.prefill_by_row = False  # transformers' own left-padded prefill inside generate
    reference = engine.generate_reports(prompts)
    assert engine.counters["prefix_prefills"] == 1
    assert [(r.analysis, r.raw_final) for r in fast] == [(r.analysis, r.raw_final) for r in reference]
    assert [(r.analysis, r.raw_final) for r in again] == [(r.analysis, r.raw_final) for r in reference[1:]]
    assert all(r.report is not None for r in fast)
    assert any(r.analysis for r in fast)  # the analysis phase ran too


def test_chunked_prefill_matches_one_pass(tiny_model_dir: Path) -> None:
    # Chunks of 13 tokens cross the tiny model's 32-token sliding window many times.
    engines = [Engine.load(EngineConfig(model_path=str(tiny_model_dir), device="cpu", prefill_chunk=chunk, **SMALL))
               for chunk in (13, 100_000)]
    prompts = _shared_prefix_prompts(engines[0])
    rows = [engines[0].tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(r) for r in rows)
    cut = [len(r) // 2 for r in rows]
    chunked, whole = (e._prefill(rows, cut, width) for e in engines)
    for a, b in zip(chunked.layers, whole.layers):
        assert a.keys.shape == b.keys.shape and torch.allclose(a.keys, b.keys, atol=1e-5)
        assert torch.allclose(a.values, b.values, atol=1e-5)
    outputs = [[r.raw_final for r in e.generate_reports(prompts)] for e in engines]
    assert outputs[0] == outputs[1]
    with pytest.raises(EngineConfigError, match="prefill_chunk"):
        EngineConfig(model_path=str(tiny_model_dir), prefill_chunk=0)


def test_reserved_kv_layer_writes_in_place_then_grows_past_its_reserve() -> None:
    from model.kv_cache import ReservedLayer

    gen = torch.Generator().manual_seed(1)
    keys, values = torch.randn(2, 2, 5, 4, generator=gen), torch.randn(2, 2, 5, 4, generator=gen)
    layer = ReservedLayer(keys, values, reserve=2)
    buffer = layer.keys.data_ptr()
    ref_k, ref_v = keys, values
    for step in range(4):
        k, v = torch.randn(2, 2, 1, 4, generator=gen), torch.randn(2, 2, 1, 4, generator=gen)
        out_k, out_v = layer.update(k, v)
        ref_k, ref_v = torch.cat([ref_k, k], dim=-2), torch.cat([ref_v, v], dim=-2)
        assert torch.equal(out_k, ref_k) and torch.equal(out_v, ref_v)
        assert (out_k.data_ptr() == buffer) == (step < 2)  # in place within the reserve, then torch.cat
    assert layer.get_seq_length() == 9


def test_fused_sink_attention_matches_eager(tiny_model_dir: Path) -> None:
    from model.engine import SINK_ATTENTION, use_sink_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert model.config._attn_implementation == "eager"
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1900, (2, 200), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :57] = 0  # left padding: fully masked queries must not poison the rest
    with torch.no_grad():
        eager = model(input_ids=ids, attention_mask=mask).logits
        assert use_sink_attention(model) and model.config._attn_implementation == SINK_ATTENTION
        fused = model(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(fused).all()
    assert torch.allclose(fused[0], eager[0], atol=1e-5) and torch.allclose(fused[1, 57:], eager[1, 57:], atol=1e-5)
    with torch.no_grad():  # and the sinks matter: without them the outputs differ
        model.model.layers[0].self_attn.sinks.add_(5.0)
        assert not torch.allclose(model(input_ids=ids[:1]).logits, fused[:1], atol=1e-3)


def test_the_cpu_engine_uses_fused_sink_attention(engine: Engine) -> None:
    from model.engine import SINK_ATTENTION

    assert engine.model.config._attn_implementation == SINK_ATTENTION
