"""An adapter folder's model card: what it was made from, how, and whether it passed evaluation.

`model_card.json` (read by `triage model info`, `promote` and the workers) and `README.md` (the same
for people, Hugging Face style). The evaluation is attached later from the `metrics.json` that
`triage evaluate` writes (its top-level `"gate": {"passed": bool, ...}` is the safety verdict);
promotion refuses an adapter without a passed gate.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CARD_FILE = "model_card.json"
CARD_FORMAT = "triage-adapter-card/1"


class CardError(ValueError):
    """No card, or a card or metrics file that cannot be used (one-line message)."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_version(model_version: str) -> str:
    """`name@hash` of a base model version, without the `+quantization` a worker adds."""
    return model_version.split("+", 1)[0]


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("triage-cds", "trl", "peft", "transformers", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def write_card(out_dir: str | os.PathLike[str], *, stage: str, config: Any, training: dict[str, Any],
               manifest: Path | None) -> dict[str, Any]:
    from model.engine import adapter_version_of, model_version_of
    from model.training.common import CONFIG_FILE

    out = Path(out_dir)
    base_dir = Path(config.model_name_or_path)
    base_cfg = json.loads((base_dir / "config.json").read_text())
    init = None
    if config.init_adapter:
        init_card = read_card(config.init_adapter, required=False)
        init = {"path": str(config.init_adapter), "version": adapter_version_of(config.init_adapter),
                "stage": init_card.get("stage") if init_card else None}
    card = {
        "format": CARD_FORMAT,
        "adapter_version": adapter_version_of(out),
        "stage": stage,
        "base_model": {
            "id": config.base_model_id or base_cfg.get("_name_or_path") or base_dir.name,
            "revision": config.base_model_revision,
            "version": base_version(model_version_of(base_dir)),
            "load_mode": config.load_mode,
        },
        "init_adapter": init,
        "config": {"file": CONFIG_FILE, "sha256": sha256_file(out / CONFIG_FILE)},
        "dataset": {
            "inputs": [str(p) for p in config.dataset_path or []],
            "manifest": str(manifest) if manifest else None,
            "manifest_sha256": sha256_file(manifest) if manifest else None,
        },
        "training": training,
        "evaluation": None,
        "libraries": _library_versions(),
    }
    save_card(out, card)
    return card


def save_card(out_dir: str | os.PathLike[str], card: dict[str, Any]) -> None:
    out = Path(out_dir)
    tmp = out / f".{CARD_FILE}.tmp"
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / CARD_FILE)
    readme = out / "README.md"
    tmp = out / ".README.md.tmp"
    tmp.write_text(render_readme(card))
    os.replace(tmp, readme)


def read_card(adapter_dir: str | os.PathLike[str], *, required: bool = True) -> dict[str, Any] | None:
    path = Path(adapter_dir) / CARD_FILE
    if not path.is_file():
        if required:
            raise CardError(f"{adapter_dir}: no {CARD_FILE} (not an adapter made by `triage train`)")
        return None
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CardError(f"{path}: not valid JSON") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise CardError(f"{path}: not a {CARD_FORMAT} card")
    return card


def read_gate(metrics_path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, gate) from a `triage evaluate` metrics.json; the gate's `passed` must be a bool."""
    path = Path(metrics_path)
    if not path.is_file():
        raise CardError(f"{path}: no such metrics file")
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CardError(f"{path}: not valid JSON") from None
    gate = metrics.get("gate") if isinstance(metrics, dict) else None
    if not isinstance(gate, dict) or not isinstance(gate.get("passed"), bool):
        raise CardError(f'{path}: no safety gate verdict (a top-level "gate": {{"passed": true|false}})')
    return metrics, gate


def attach_evaluation(adapter_dir: str | os.PathLike[str], metrics_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Record `triage evaluate`'s metrics and gate verdict in the adapter's card."""
    from model.engine import adapter_version_of

    card = read_card(adapter_dir)
    metrics, gate = read_gate(metrics_path)
    evaluated = metrics.get("adapter_version")
    if isinstance(evaluated, str) and evaluated != card["adapter_version"]:
        raise CardError(f"{metrics_path}: metrics are for adapter {evaluated}, not {card['adapter_version']}")
    if adapter_version_of(adapter_dir) != card["adapter_version"]:
        raise CardError(f"{adapter_dir}: the adapter weights changed after its card was written")
    card["evaluation"] = {
        "metrics_file": str(metrics_path),
        "metrics_sha256": sha256_file(metrics_path),
        "metrics": {k: v for k, v in metrics.items() if k != "gate"},
        "gate": gate,
    }
    save_card(adapter_dir, card)
    return card


def gate_passed(card: dict[str, Any]) -> bool:
    evaluation = card.get("evaluation") or {}
    return (evaluation.get("gate") or {}).get("passed") is True


def summary_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    base = card["base_model"]
    training = card.get("training") or {}
    dataset = card.get("dataset") or {}
    evaluation = card.get("evaluation")
    loss = training.get("first_loss"), training.get("final_loss")
    rows = [
        ("adapter", card["adapter_version"]),
        ("stage", card["stage"] + (f" (from {card['init_adapter']['version']})" if card.get("init_adapter") else "")),
        ("base model", f"{base['id']}" + (f" @ {base['revision']}" if base.get("revision") else "")
         + f" ({base['version']}, {base.get('load_mode')})"),
        ("config", f"{card['config']['file']} (sha256 {card['config']['sha256'][:12]})"),
        ("dataset manifest", f"{dataset.get('manifest')} (sha256 {dataset['manifest_sha256'][:12]})"
         if dataset.get("manifest_sha256") else "none recorded"),
        ("examples", ", ".join(f"{k} {v}" for k, v in (training.get("examples") or {}).items()) or "?"),
        ("trainable parameters", f"{training.get('trainable_parameters', 0):,}"),
        ("steps", str(training.get("global_steps"))),
        ("loss", f"{loss[0]:.4f} -> {loss[1]:.4f}" if None not in loss else "not logged"),
    ]
    if evaluation is None:
        rows.append(("evaluation", "none attached (promotion refused until `triage model attach-metrics`)"))
    else:
        gate = evaluation["gate"]
        rows.append(("safety gate", "PASSED" if gate.get("passed") else "FAILED"))
        rows.append(("metrics", f"{evaluation['metrics_file']} (sha256 {evaluation['metrics_sha256'][:12]})"))
    return rows


def render_readme(card: dict[str, Any]) -> str:
    base = card["base_model"]
    header = [
        "---",
        f"base_model: {base['id']}",
        "library_name: peft",
        "pipeline_tag: text-generation",
        f"tags: [lora, triage-cds, {card['stage']}]",
        "---",
        "",
        f"# Triage CDS adapter {card['adapter_version']}",
        "",
        "A LoRA adapter made by `triage train` for preliminary triage reports reviewed by a nurse. "
        "Not a diagnosis; not for use without the service's safety gate and a clinician.",
        "",
        "| | |",
        "|---|---|",
    ]
    body = [f"| {k} | {v} |" for k, v in summary_rows(card)]
    evaluation = card.get("evaluation")
    tail = []
    if evaluation:
        tail = ["", "## Evaluation", "", "```json",
                json.dumps({"gate": evaluation["gate"], **evaluation["metrics"]}, indent=2, sort_keys=True), "```"]
    return "\n".join(header + body + tail) + "\n"
