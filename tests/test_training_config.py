"""Training configs: TRL-style dataclasses, YAML + flag overrides, and the shipped configs' LoRA sizes
on gpt-oss-20b's real architecture (built on the meta device: shapes, no weights)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import ROOT
from model.training.common import TrainingConfigError, lora_config, parse_stage_args, resolved_config
from model.training.cpt import CptRunConfig
from model.training.dpo import DpoRunConfig
from model.training.kto import KtoRunConfig
from model.training.sft import SftRunConfig

CONFIGS = ROOT / "configs"
CPU = ["--bf16", "false"]  # the shipped configs say bf16 (GPU); this machine has no GPU

# Trainable LoRA parameters on gpt-oss-20b (24 layers, hidden 2880, 64 query / 8 key-value heads of 64,
# 32 experts of 2880). q/k/v/o at r=8: 24 * 8 * ((2880+4096) + 2*(2880+512) + (4096+2880)) = 3,981,312 (the
# seed's "3.98 M"). Experts of layers 7, 15, 23 at r=8: 3 * 8*32 * ((2880+5760) + (2880+2880)) = 11,059,200,
# so the cookbook's 15,040,512, as OpenAI's cookbook prints it.
EXPECTED_TRAINABLE = {
    "sft-seed": 3_981_312,
    "sft-cookbook": 15_040_512,
    "cpt-notes": 3_981_312,
}
CONFIG_CLASSES = {"sft-seed": SftRunConfig, "sft-cookbook": SftRunConfig, "cpt-notes": CptRunConfig,
                  "dpo-feedback": DpoRunConfig, "kto-feedback": KtoRunConfig}


@pytest.mark.parametrize("config_class", [CptRunConfig, SftRunConfig, DpoRunConfig, KtoRunConfig])
def test_every_option_is_documented(config_class: type) -> None:
    undocumented = [f.name for f in dataclasses.fields(config_class) if f.init and not f.metadata.get("help")]
    assert undocumented == []


@pytest.mark.parametrize("name", sorted(CONFIG_CLASSES))
def test_shipped_configs_parse(name: str) -> None:
    config = parse_stage_args(CONFIG_CLASSES[name], ["--config", str(CONFIGS / f"{name}.yaml"), *CPU], check=False)
    assert config.base_model_id == "openai/gpt-oss-20b"
    if name.startswith(("dpo", "kto")):
        assert config.init_adapter == "/adapters/sft-seed"  # a stage starts from the previous one


def test_seed_config_is_the_seed_run() -> None:
    c = parse_stage_args(SftRunConfig, ["--config", str(CONFIGS / "sft-seed.yaml"), *CPU], check=False)
    assert (c.lora_r, c.lora_target_modules, c.learning_rate) == (8, ["q_proj", "k_proj", "v_proj", "o_proj"], 5e-5)
    assert (c.per_device_train_batch_size, c.gradient_accumulation_steps, c.num_train_epochs) == (4, 4, 2)
    assert (c.max_length, c.lr_scheduler_type.value, c.warmup_steps) == (2048, "cosine", 0.05)
    assert c.assistant_only_loss is True


def test_flags_override_yaml_and_resolved_config_round_trips(tmp_path: Path) -> None:
    argv = ["--config", str(CONFIGS / "sft-seed.yaml"), *CPU, "--learning_rate", "1e-4", "--lora_r", "16"]
    c = parse_stage_args(SftRunConfig, argv, check=False)
    assert (c.learning_rate, c.lora_r, c.lora_alpha) == (1e-4, 16, 16)
    saved = tmp_path / "training_config.yaml"
    saved.write_text(yaml.safe_dump(resolved_config(c)))
    again = parse_stage_args(SftRunConfig, ["--config", str(saved)], check=False)
    assert resolved_config(again) == resolved_config(c)


@pytest.mark.parametrize("argv, message", [
    (["--config", "/nonexistent.yaml"], "no such file"),
    (["--no_such_option", "1"], "not used by the HfArgumentParser"),
    (["--lora_r", "eight"], "invalid int value"),
])
def test_bad_options_are_one_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(TrainingConfigError, match=message) as info:
        parse_stage_args(SftRunConfig, [*argv, *CPU], check=False)
    assert "\n" not in str(info.value)


def test_unknown_yaml_key_and_missing_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 0.1\n")
    with pytest.raises(TrainingConfigError, match="unknown options .*learning_rat"):
        parse_stage_args(SftRunConfig, ["--config", str(bad)], check=False)
    with pytest.raises(TrainingConfigError, match="model_name_or_path: no model at /models"):
        parse_stage_args(SftRunConfig, ["--config", str(CONFIGS / "sft-seed.yaml"), *CPU])


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    from model.training.cli import train_group

    result = CliRunner().invoke(train_group, ["sft", "--config", str(CONFIGS / "sft-seed.yaml"), *CPU])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["error: model_name_or_path: no model at /models/gpt-oss-20b-bf16 "
                                                  "(config.json missing)"]
    assert "Traceback" not in result.output


def test_cli_help_lists_options() -> None:
    from model.training.cli import train_group

    result = CliRunner().invoke(train_group, ["dpo", "--help"])
    assert result.exit_code == 0
    assert "--init_adapter" in result.output and "--beta" in result.output and "--lora_target_parameters" in result.output


@pytest.fixture(scope="module")
def gpt_oss_20b_meta():
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    from model.quantize import GPT_OSS_20B, gpt_oss_parameter_counts

    def build():
        with torch.device("meta"):
            return GptOssForCausalLM(GptOssConfig(**GPT_OSS_20B))

    model = build()
    assert sum(p.numel() for p in model.parameters()) == gpt_oss_parameter_counts()["total"] == 20_914_757_184
    return build


@pytest.mark.parametrize("name", sorted(EXPECTED_TRAINABLE))
def test_trainable_parameters_on_real_architecture(name: str, gpt_oss_20b_meta) -> None:
    from peft import get_peft_model

    config = parse_stage_args(CONFIG_CLASSES[name], ["--config", str(CONFIGS / f"{name}.yaml"), *CPU], check=False)
    model = get_peft_model(gpt_oss_20b_meta(), lora_config(config))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == EXPECTED_TRAINABLE[name]
    lora = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    if name == "sft-cookbook":  # all-linear is q/k/v/o in gpt-oss; the experts come from target_parameters
        assert {n for n, p in model.named_parameters() if p.requires_grad and "experts" in n}
        layers = {int(n.split("layers.")[1].split(".")[0]) for n, p in model.named_parameters()
                  if p.requires_grad and "experts" in n}
        assert layers == {7, 15, 23}
    else:
        assert lora == {"q_proj", "k_proj", "v_proj", "o_proj"}
