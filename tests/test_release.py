"""Adapters as releases: card + evaluation gate, `triage model info/attach-metrics/promote/rollback`, and
workers that follow the registry between batches without a restart (tiny model, real PEFT adapters)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from model.cli import model_group
from model.engine import Engine, EngineConfig, adapter_version_of
from model.release import Registry, ReleaseRefused, check_adapter
from model.training.card import attach_evaluation, read_card, write_card

SMALL = dict(max_new_tokens_analysis=0, max_new_tokens_final=160, final_closing_reserve=160, device="cpu")


def make_adapter(tiny_model_dir: Path, out: Path, seed: int, *, gate: bool | None = True) -> Path:
    """A LoRA adapter whose B weights are random (so it changes the outputs), with its card and, unless
    gate is None, a metrics.json in `triage evaluate`'s shape attached."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    model.save_pretrained(out)
    (out / "training_config.yaml").write_text("lora_r: 4\n")
    config = SimpleNamespace(model_name_or_path=str(tiny_model_dir), base_model_id="tiny-gpt-oss", base_model_revision=None,
                             load_mode="bf16", init_adapter=None, dataset_path=["/datasets/x"])
    write_card(out, stage="sft", config=config, training={"examples": {"train": 2}}, manifest=None)
    if gate is not None:
        metrics = out.parent / f"{out.name}-metrics.json"
        metrics.write_text(json.dumps({"adapter_version": adapter_version_of(out), "acuity": {"exact": 0.5},
                                       "gate": {"passed": gate, "under_triage_rate": 0.05}}))
        attach_evaluation(out, metrics)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_adapter(tiny_model_dir, root / "a", 1),
        "b": make_adapter(tiny_model_dir, root / "b", 2),
        "failed": make_adapter(tiny_model_dir, root / "failed", 3, gate=False),
        "unevaluated": make_adapter(tiny_model_dir, root / "unevaluated", 4, gate=None),
    }


def base_version(tiny_model_dir: Path) -> str:
    from model.engine import model_version_of

    return model_version_of(tiny_model_dir)


def test_card_records_base_config_and_gate(adapters: dict[str, Path], tiny_model_dir: Path) -> None:
    card = read_card(adapters["a"])
    assert card["adapter_version"] == adapter_version_of(adapters["a"]) and card["stage"] == "sft"
    assert card["base_model"]["id"] == "tiny-gpt-oss" and card["base_model"]["version"] == base_version(tiny_model_dir)
    assert card["evaluation"]["gate"]["passed"] is True and card["evaluation"]["metrics"]["acuity"] == {"exact": 0.5}
    assert "Triage CDS adapter" in (adapters["a"] / "README.md").read_text()


def test_promote_refuses_what_must_not_be_served(adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    base = base_version(tiny_model_dir)
    with pytest.raises(ReleaseRefused, match="failed safety gate"):
        check_adapter(adapters["failed"], base)
    with pytest.raises(ReleaseRefused, match="has no safety gate"):
        check_adapter(adapters["unevaluated"], base)
    with pytest.raises(ReleaseRefused, match="was made for base model"):
        check_adapter(adapters["a"], "gpt-oss-20b@0123456789ab+nf4")
    with pytest.raises(ReleaseRefused, match="no PEFT adapter here"):
        check_adapter(tiny_model_dir, base)  # not an adapter at all
    import shutil

    cardless = tmp_path / "cardless"
    shutil.copytree(adapters["b"], cardless)
    (cardless / "model_card.json").unlink()
    with pytest.raises(ReleaseRefused, match="no model_card.json"):
        check_adapter(cardless, base)
    tampered = tmp_path / "tampered"
    shutil.copytree(adapters["b"], tampered)
    weights = tampered / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ReleaseRefused, match="changed after its card"):
        check_adapter(tampered, base)
    assert check_adapter(adapters["a"], base + "+nf4")["stage"] == "sft"  # the worker's quantization is no other base


def test_attach_metrics_needs_a_gate_verdict(adapters: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "metrics.json"
    bad.write_text(json.dumps({"acuity": {"exact": 0.9}}))
    runner = CliRunner()
    res = runner.invoke(model_group, ["attach-metrics", str(adapters["unevaluated"]), "--metrics", str(bad)])
    assert res.exit_code == 1 and "no safety gate verdict" in res.output and "Traceback" not in res.output
    bad.write_text(json.dumps({"adapter_version": "other@000000000000", "gate": {"passed": True}}))
    res = runner.invoke(model_group, ["attach-metrics", str(adapters["unevaluated"]), "--metrics", str(bad)])
    assert res.exit_code == 1 and "metrics are for adapter other@000000000000" in res.output


def test_cli_info_promote_rollback(adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    reg = str(tmp_path / "registry")
    res = runner.invoke(model_group, ["info", str(adapters["a"])])
    assert res.exit_code == 0 and "safety gate" in res.output and "PASSED" in res.output
    assert read_card(adapters["a"])["adapter_version"] in res.output
    common = ["--registry", reg, "--base-model", str(tiny_model_dir)]
    res = runner.invoke(model_group, ["promote", str(adapters["failed"]), *common])
    assert res.exit_code == 1 and "refused" in res.output and "failed safety gate" in res.output
    res = runner.invoke(model_group, ["rollback", "--registry", reg])
    assert res.exit_code == 1 and "no earlier release" in res.output
    for name in ("a", "b"):
        res = runner.invoke(model_group, ["promote", str(adapters[name]), *common])
        assert res.exit_code == 0, res.output
    assert Registry(reg).current()["adapter_version"] == adapter_version_of(adapters["b"])
    res = runner.invoke(model_group, ["rollback", "--registry", reg])
    assert res.exit_code == 0 and adapter_version_of(adapters["a"]) in res.output
    assert Registry(reg).current()["adapter_path"] == str(adapters["a"].resolve())


def _payload(tmp_path: Path) -> dict:
    from tests.test_queue import payloads

    return payloads(tmp_path, 1)[0]


def test_worker_follows_promote_and_rollback_between_batches(adapters: dict[str, Path], tiny_model_dir: Path,
                                                              tmp_path: Path) -> None:
    from model.reports import ReportService
    from model.settings import inference_settings
    from model.tasks import run_batch

    registry = Registry(tmp_path / "registry")
    base = base_version(tiny_model_dir)
    registry.promote(adapters["a"], base_model_version=base)
    engine = Engine.load(EngineConfig(model_path=str(tiny_model_dir), adapter_registry=str(registry.root), **SMALL))
    version_a, version_b = adapter_version_of(adapters["a"]), adapter_version_of(adapters["b"])
    assert engine.adapter_version == version_a
    payload = _payload(tmp_path)
    first = run_batch([payload], engine, None)[0]
    assert first["adapter_version"] == version_a

    # the API's cache key follows the registry the same way
    service = ReportService(inference_settings({"TRIAGE_MODEL_PATH": str(tiny_model_dir)}),
                            engine_config=EngineConfig(model_path=str(tiny_model_dir), adapter_registry=str(registry.root)))
    assert service.versions() == (engine.model_version, version_a)

    registry.promote(adapters["b"], base_model_version=base)
    second = run_batch([payload], engine, None)[0]
    assert second["adapter_version"] == version_b and engine.counters["adapter_swaps"] == 1
    assert service.versions() == (engine.model_version, version_b)
    fresh = Engine.load(EngineConfig(model_path=str(tiny_model_dir), adapter_path=str(adapters["b"]), **SMALL))
    ids = engine.tokenizer("Fever and cough.", return_tensors="pt")["input_ids"]
    with torch.no_grad():  # the swapped model is the same function as a fresh load of b
        assert torch.allclose(engine.model(input_ids=ids).logits, fresh.model(input_ids=ids).logits, atol=1e-5)

    # a release this worker must not serve (edited in by hand): refused, b stays
    state = json.loads(registry.state_path.read_text())
    state["releases"].append({**state["releases"][-1], "adapter_path": str(adapters["failed"]),
                              "adapter_version": adapter_version_of(adapters["failed"])})
    registry.state_path.write_text(json.dumps(state))
    third = run_batch([payload], engine, None)[0]
    assert third["adapter_version"] == version_b and engine.counters["adapter_refused"] == 1

    # rollback (the hand-made entry, then b): a again, between batches
    registry.rollback()
    registry.rollback()
    assert run_batch([payload], engine, None)[0]["adapter_version"] == version_a
    with torch.no_grad():
        again = Engine.load(EngineConfig(model_path=str(tiny_model_dir), adapter_path=str(adapters["a"]), **SMALL))
        assert torch.allclose(engine.model(input_ids=ids).logits, again.model(input_ids=ids).logits, atol=1e-5)


def test_ai_card_source_names_the_adapter() -> None:
    from cds_hooks.ai_cards import ai_source

    source = ai_source("gpt-oss-20b@0123456789ab+nf4", "sft-seed@abcdef012345")
    assert "adapter sft-seed@abcdef012345" in source.label
