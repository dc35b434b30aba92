"""The other two stages on the tiny model (slow): continual pre-training on packed plain text, then KTO
starting from its adapter (a stage starts from the previous stage's adapter)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CPU = ["--bf16", "false", "--use_cpu", "true", "--activation_checkpointing", "false", "--save_strategy", "no",
       "--logging_steps", "1", "--learning_rate", "5e-3", "--per_device_train_batch_size", "2", "--max_steps", "2",
       "--eval_split", "none", "--seed", "0"]
NOTES = ["Patient reports chest pain radiating to the left arm, with sweating since the morning.",
         "Fever and productive cough for three days; no shortness of breath at rest.",
         "Twisted ankle while running; able to bear weight with pain; no numbness.",
         "Headache, worst of life, sudden onset during exercise; neck stiffness."]


def _run(args: list[str]) -> str:
    from model.training.cli import train_group

    result = CliRunner().invoke(train_group, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_cpt_then_kto_from_its_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    from model.training.card import read_card

    clinic = tmp_path / "clinic"
    clinic.mkdir()
    (clinic / "train.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": n * 3}, {"role": "assistant", "content": "{}"}]}) + "\n"
        for n in NOTES))
    cpt_dir = tmp_path / "cpt"
    _run(["cpt", "--model_name_or_path", str(tiny_model_dir), "--dataset_path", str(clinic), "--output_dir", str(cpt_dir),
          "--max_length", "128", *CPU])
    cpt = read_card(cpt_dir)
    assert cpt["stage"] == "cpt" and cpt["training"]["global_steps"] == 2
    assert math.isfinite(cpt["training"]["final_loss"])

    feedback = tmp_path / "feedback"
    feedback.mkdir()
    prompt = [{"role": "user", "content": "60 years old. Chest pain, sweating, HR 120."}]
    (feedback / "kto.jsonl").write_text("".join(
        json.dumps({"prompt": prompt, "completion": [{"role": "assistant", "content": json.dumps({"acuity": a})}],
                    "label": a == 2}) + "\n" for a in (2, 4, 2, 5)))
    kto_dir = tmp_path / "kto"
    _run(["kto", "--model_name_or_path", str(tiny_model_dir), "--init_adapter", str(cpt_dir), "--dataset_path",
          str(feedback), "--output_dir", str(kto_dir), "--max_length", "512", *CPU])
    kto = read_card(kto_dir)
    assert kto["stage"] == "kto" and kto["init_adapter"]["version"] == cpt["adapter_version"]
    assert kto["training"]["examples"] == {"train": 4, "eval": 0, "desirable": 2, "undesirable": 2}
    assert math.isfinite(kto["training"]["final_loss"]) and not (kto_dir / "ref").exists()
    # the adapter trained on (its LoRA settings come from the CPT adapter, not the lora_* options)
    assert json.loads((kto_dir / "adapter_config.json").read_text())["r"] == 8
