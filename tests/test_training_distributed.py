"""`triage train` distributed over two CPU processes (gloo) against one process: the same loss curve
within a stated tolerance (slow).

`accelerate launch --multi_gpu` (configs/accelerate/ddp.yaml) starts its processes with torchrun; on
CPU accelerate's launcher has no multi-process mode without MPI, so the test runs torchrun itself, and
accelerate's PartialState picks gloo from the environment torchrun sets, as it picks NCCL on GPUs.

Same two examples, same global batch (1 process x 2 examples against 2 processes x 1), same seed: every
step sees the same examples, the loss is averaged over the same tokens (transformers'
`average_tokens_across_devices`) and the gradients are all-reduced, so the curves agree up to float
summation order.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TOLERANCE = 1e-4  # relative, per logged step (measured: 7.629073, 7.568904, 7.421985 against 7.629074, 7.568904, 7.421987)
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    from model.training.card import read_card

    data = tmp_path / "chat.jsonl"
    rows = [[{"role": "user", "content": "Chest pain and sweating for an hour, HR 120."},
             {"role": "assistant", "content": json.dumps({"acuity": 2, "summary": "Possible ACS"})}],
            [{"role": "user", "content": "Twisted ankle yesterday, walking with pain."},
             {"role": "assistant", "content": json.dumps({"acuity": 4, "summary": "Ankle sprain"})}]]
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_model_dir), "dataset_path": [str(data)], "eval_split": None,
        "bf16": False, "use_cpu": True, "activation_checkpointing": False, "save_strategy": "no", "logging_steps": 1,
        "learning_rate": 1.0e-2, "lr_scheduler_type": "constant", "num_train_epochs": STEPS, "seed": 0,
        "dataloader_num_workers": 0, "lora_target_modules": ["all-linear"],
    }))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    subprocess.run([sys.executable, "-m", "cds_hooks.cli", "train", "sft", "--config", str(config),
                    "--output_dir", str(one), "--per_device_train_batch_size", "2"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    two = tmp_path / "two"
    launch = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                             "-m", "cds_hooks.cli", "train", "sft", "--config", str(config),
                             "--output_dir", str(two), "--per_device_train_batch_size", "1"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert launch.returncode == 0, launch.stderr[-3000:]
    assert launch.stdout.count("sft adapter written to") == 1  # only the main process reports
    single, double = read_card(one)["training"], read_card(two)["training"]
    assert double["processes"] == 2 and single["processes"] == 1
    assert len(single["losses"]) == len(double["losses"]) == STEPS
    print("1 process:", single["losses"], "\n2 processes:", double["losses"])
    for a, b in zip(single["losses"], double["losses"]):
        assert abs(a - b) <= TOLERANCE * abs(a)
    assert single["losses"][-1] < single["losses"][0]  # it trained
