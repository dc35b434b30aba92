"""`triage train` runs `triage dataset check` on a built dataset folder first and refuses one that
fails, before any model is loaded for training."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from conftest import DATA

EXPORT = DATA / "fhir" / "bulk-export-synthea-10"


def test_train_refuses_a_dataset_that_fails_the_check(tiny_model_dir: Path, tmp_path: Path) -> None:
    from model.cli import dataset
    from model.training.cli import train_group

    key = tmp_path / "steward.key"
    key.write_text("5e" * 32 + "\n")
    folder = tmp_path / "dataset"
    built = CliRunner().invoke(dataset, ["build", "--input", str(EXPORT), "--output", str(folder), "--key-file",
                                         str(key), "--max-encounters", "1", "--format", "chat", "--quiet"])
    assert built.exit_code == 0, built.output
    # A hand edit that the serving schema rejects: the assistant target loses its acuity.
    lines = (folder / "train.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    target = json.loads(row["messages"][-1]["content"])
    target["acuity"] = None
    row["messages"][-1]["content"] = json.dumps(target)
    (folder / "train.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")

    out = tmp_path / "adapter"
    result = CliRunner().invoke(train_group, ["sft", "--model_name_or_path", str(tiny_model_dir),
                                              "--dataset_path", str(folder), "--output_dir", str(out),
                                              "--max_length", "100000", "--use_cpu", "true"])
    assert result.exit_code == 1
    assert "dataset check failed" in result.output and not out.exists()
    failing = [line.split()[0] for line in result.output.splitlines() if " FAIL " in line]
    assert "targets" in failing and "invalid: {'acuity'" in result.output, result.output  # the edited target
