"""`triage model ...`, `triage worker` and `triage dataset ...`.

Implementations are imported inside each command so the CLI starts without torch.
"""
from __future__ import annotations

import click


@click.group("model")
def model_group() -> None:
    """Model tooling: the tiny offline test model, adapter cards, promotion and rollback."""


@model_group.command("tiny")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option("--seed", default=0, show_default=True, type=int, help="Weight initialisation seed.")
@click.option("--data", "data_dir", default=None, type=click.Path(file_okay=False), help="Shared data (tokenizer corpus).")
def tiny_command(out_dir: str, seed: int, data_dir: str | None) -> None:
    """Build the tiny offline gpt-oss model (weights, tokenizer, harmony template)."""
    from model.tiny import build_tiny_model

    try:
        path = build_tiny_model(out_dir, seed=seed, data_dir=data_dir)
    except (FileNotFoundError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"tiny model written to {path}")


def _registry(registry: str | None) -> str:
    import os

    path = registry or os.environ.get("TRIAGE_ADAPTER_REGISTRY")
    if not path:
        raise click.ClickException("no release registry: pass --registry DIR or set TRIAGE_ADAPTER_REGISTRY")
    return path


_REGISTRY_OPTION = click.option("--registry", default=None, type=click.Path(file_okay=False),
                                help="Release registry folder (else TRIAGE_ADAPTER_REGISTRY), the one the workers follow.")


@model_group.command("info")
@click.argument("adapter_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the whole card as JSON.")
def info_command(adapter_dir: str, as_json: bool) -> None:
    """Print an adapter's model card: base model, stage, config, dataset hash, evaluation and gate."""
    import json

    from model.training.card import CardError, read_card, summary_rows

    try:
        card = read_card(adapter_dir)
    except CardError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(card, indent=2, sort_keys=True))
        return
    rows = summary_rows(card)
    width = max(len(k) for k, _ in rows)
    click.echo("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))


@model_group.command("attach-metrics")
@click.argument("adapter_dir", type=click.Path(file_okay=False))
@click.option("--metrics", "metrics", required=True, type=click.Path(dir_okay=False),
              help="metrics.json written by `triage evaluate` (with its top-level gate verdict).")
def attach_metrics_command(adapter_dir: str, metrics: str) -> None:
    """Record `triage evaluate`'s metrics and safety-gate verdict in the adapter's card."""
    from model.training.card import CardError, attach_evaluation

    try:
        card = attach_evaluation(adapter_dir, metrics)
    except CardError as exc:
        raise click.ClickException(str(exc)) from None
    verdict = "passed" if card["evaluation"]["gate"]["passed"] else "FAILED"
    click.echo(f"{card['adapter_version']}: safety gate {verdict}")


@model_group.command("promote")
@click.argument("adapter_dir", type=click.Path(file_okay=False))
@_REGISTRY_OPTION
@click.option("--base-model", default=None, type=click.Path(file_okay=False),
              help="The served base model directory (else TRIAGE_MODEL_PATH): the adapter must be made for it.")
def promote_command(adapter_dir: str, registry: str | None, base_model: str | None) -> None:
    """Serve this adapter: workers load it between batches (no restart). Refused if its safety gate did
    not pass or it was made for another base model."""
    import os

    from model.engine import model_version_of
    from model.release import Registry, ReleaseRefused

    base = base_model or os.environ.get("TRIAGE_MODEL_PATH")
    if not base:
        raise click.ClickException("no base model: pass --base-model DIR or set TRIAGE_MODEL_PATH")
    try:
        base_version = model_version_of(base)
    except (OSError, ValueError):
        raise click.ClickException(f"--base-model: no model at {base} (config.json missing)") from None
    try:
        entry = Registry(_registry(registry)).promote(adapter_dir, base_model_version=base_version)
    except ReleaseRefused as exc:
        raise click.ClickException(f"refused: {exc}") from None
    click.echo(f"serving {entry['adapter_version']} ({entry['stage']}) from {entry['adapter_path']}")


@model_group.command("rollback")
@_REGISTRY_OPTION
def rollback_command(registry: str | None) -> None:
    """Serve the previous release again (workers switch between batches)."""
    from model.release import Registry, ReleaseRefused

    try:
        entry = Registry(_registry(registry)).rollback()
    except ReleaseRefused as exc:
        raise click.ClickException(f"refused: {exc}") from None
    click.echo(f"serving {entry['adapter_version']} ({entry['stage']}) from {entry['adapter_path']} again")


@model_group.command("serve-openai")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port.")
@click.option("--name", "names", multiple=True, help="Model name(s) clients use (default: the model version).")
def serve_openai_command(host: str, port: int, names: tuple[str, ...]) -> None:
    """Serve the configured model (TRIAGE_MODEL_PATH, TRIAGE_ADAPTER_PATH...) behind an OpenAI-compatible
    chat-completions API, for TRIAGE_ENGINE=openai workers where vLLM is not used."""
    from werkzeug.serving import run_simple

    from model.engine import Engine, EngineConfig, EngineConfigError
    from model.openai_server import create_openai_app

    try:
        config = EngineConfig.from_env(engine="transformers")
        engine = Engine.load(config)
    except EngineConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"serving {engine.model_version} (adapter {engine.adapter_version}) on http://{host}:{port}/v1", err=True)
    run_simple(host, port, create_openai_app(engine, served_names=names), threaded=True)


@click.group("dataset")
def dataset() -> None:
    """Build de-identified fine-tuning datasets from clinic records."""


from model.dataset_cli import add_dataset_commands  # noqa: E402 - build, import-reasoning, feedback

add_dataset_commands(dataset)


# `worker` (a click.Command) is defined below by the queue work.


@click.command("worker")
@click.option("--pool", "-P", type=click.Choice(["prefork", "solo", "threads"]), default="prefork", show_default=True,
              help="prefork with concurrency 1 per GPU: the model loads in the child after fork (one CUDA "
                   "context per process, never in the parent), hard time limits can kill a stuck batch and "
                   "the parent replaces the child. solo runs in the main process (debugging, no hard limit).")
@click.option("--concurrency", "-c", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Pool processes. One per GPU: each process holds a whole model.")
@click.option("--loglevel", "-l", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False))
@click.option("--queue", "-Q", "queue", default=None, help="Queue to consume (default: TRIAGE_INFERENCE_QUEUE or 'inference').")
@click.option("--hostname", "-n", default=None, help="Worker node name (default: triage-inference@<host>).")
def worker(pool: str, concurrency: int, loglevel: str, queue: str | None, hostname: str | None) -> None:
    """Run a Celery worker for AI reports on the inference queue (broker: TRIAGE_BROKER_URL)."""
    import os

    from model.queue import app, settings_of

    settings = settings_of(app)
    if not settings.broker_url:
        raise click.ClickException("TRIAGE_BROKER_URL is not set: the worker needs a broker (e.g. redis://redis:6379/0)")
    if os.environ.get("TRIAGE_ENGINE", "transformers") != "openai":  # an OpenAI-compatible server holds the model
        if not settings.model_path:
            raise click.ClickException("TRIAGE_MODEL_PATH is not set: the worker needs a model directory")
        if not os.path.isfile(os.path.join(settings.model_path, "config.json")):
            raise click.ClickException(f"TRIAGE_MODEL_PATH: no model at {settings.model_path} (config.json missing)")
    argv = [
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel.upper()}",
        f"--queues={queue or settings.queue}",
        f"--hostname={hostname or 'triage-inference@%h'}",
        "--without-gossip",
        "--without-mingle",
    ]
    raise SystemExit(app.worker_main(argv=argv) or 0)


@dataset.command("worker")
@click.option("--loglevel", "-l", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False))
@click.option("--queue", "-Q", "queue", default=None, help="Queue to consume (default: TRIAGE_DATASET_QUEUE or 'datasets').")
@click.option("--hostname", "-n", default=None, help="Worker node name (default: triage-datasets@<host>).")
def dataset_worker(loglevel: str, queue: str | None, hostname: str | None) -> None:
    """Run a Celery worker that builds dataset shards for `triage dataset build --celery N`.

    One shard at a time, in the worker's main process (a shard's own --workers processes do the
    parallel de-identification). The export, the output folder and the key file must be at the
    same paths as on the machine that runs `build --celery` (shared storage). No model is loaded.
    """
    from model.dataset_queue import app

    if str(app.conf.broker_url).startswith("memory://"):
        raise click.ClickException("TRIAGE_BROKER_URL is not set: the worker needs a broker (e.g. redis://redis:6379/0)")
    argv = [
        "worker", "--pool=solo", f"--loglevel={loglevel.upper()}",
        f"--queues={queue or app.conf.triage_dataset_queue}",
        f"--hostname={hostname or 'triage-datasets@%h'}", "--without-gossip", "--without-mingle",
    ]
    raise SystemExit(app.worker_main(argv=argv) or 0)


@click.command("flower")
@click.option("--address", default="127.0.0.1", show_default=True, help="Address Flower listens on.")
@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True, help="Flower's port.")
def flower(address: str, port: int) -> None:
    """Flower, the Celery monitor, on the inference queue's broker (needs the `flower` package)."""
    try:
        import flower as _flower  # noqa: F401
    except ImportError:
        raise click.ClickException("Flower is not installed: pip install flower") from None
    from model.queue import app

    raise SystemExit(app.start(argv=["flower", f"--address={address}", f"--port={port}"]) or 0)
