"""Service settings: every one comes from a `TRIAGE_*` environment variable with a documented default.

`app.config` keys are the environment variable names themselves, so an operator, a test's
`test_config` and the code all say the same thing. `triage serve --help` and the README list them
from `SETTINGS`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from model.settings import (
    INFERENCE_SETTINGS,
    InferenceSetting,
    parse_bool,
    parse_non_negative_float,
    parse_positive_float,
    parse_positive_int,
    parse_str,
)


class SettingsError(ValueError):
    """A `TRIAGE_*` variable holds a value that cannot be parsed (message names the variable only)."""


Setting = InferenceSetting  # name (env var and app.config key), default, parse, help

MIB = 1024 * 1024

SETTINGS: tuple[Setting, ...] = (
    Setting("TRIAGE_DATABASE_URL", None, parse_str,
            "SQLAlchemy URL of the card/feedback store. Default: a SQLite file `triage.sqlite` in the "
            "app's instance folder. PostgreSQL: postgresql+psycopg://user@host/db."),
    Setting("TRIAGE_INSECURE_NO_AUTH", False, parse_bool,
            "1 turns off the CDS Hooks client JWT check (development only; logs a warning)."),
    Setting("TRIAGE_CLIENTS_FILE", None, parse_str,
            "JSON or YAML file listing trusted CDS clients: `iss` plus `jwks_url` or inline `jwks`."),
    Setting("TRIAGE_PUBLIC_BASE_URL", None, parse_str,
            "Public base URL (scheme://host[:port][/prefix]) used to build the exact JWT `aud`; "
            "default: the URL the request arrived on."),
    Setting("TRIAGE_JTI_REDIS_URL", None, parse_str,
            "Redis URL of the shared JWT `jti` replay store; default: in-process memory."),
    Setting("TRIAGE_JWT_LEEWAY_S", 30.0, parse_non_negative_float,
            "Clock leeway in seconds when checking JWT `exp`/`iat`/`nbf`."),
    Setting("TRIAGE_JWKS_MIN_REFRESH_S", 30.0, parse_non_negative_float,
            "Least seconds between two fetches of a client's `jwks_url` (refresh on unknown `kid`)."),
    Setting("TRIAGE_JWKS_CACHE_S", 3600.0, parse_non_negative_float,
            "Seconds a fetched JWK Set is cached."),
    Setting("TRIAGE_MAX_BODY_BYTES", 5 * MIB, parse_positive_int,
            "Largest accepted request body in bytes (larger: 413). Default 5 MiB."),
    Setting("TRIAGE_FHIR_TIMEOUT_S", 3.0, parse_positive_float,
            "Timeout in seconds of each call to the EHR's FHIR server (connect and read)."),
    Setting("TRIAGE_STALE_VITALS_HOURS", 24.0, parse_positive_float,
            "Vital signs older than this many hours are flagged stale on the card."),
    Setting("TRIAGE_PSEUDONYM_KEY_FILE", None, parse_str,
            "File holding the secret pseudonym (HMAC) key. Default: the service makes one in its "
            "instance folder and keeps it (with a warning: demo only)."),
    Setting("TRIAGE_SCRUB_FREE_TEXT", True, parse_bool,
            "1 scrubs free text (condition/observation notes, code.text, clinical notes) with Presidio "
            "and the clinical recognizers before it leaves the API process; 0 drops all free text."),
    Setting("TRIAGE_SPACY_MODEL", "en_core_web_sm", parse_str,
            "spaCy model behind Presidio's NER (installed package name). Production deployments name "
            "a larger one, e.g. en_core_web_lg."),
    Setting("TRIAGE_HOOK_DEADLINE_MS", 450, parse_positive_int,
            "Deadline of one hook call in milliseconds; the rules card is always returned within it."),
    Setting("TRIAGE_BROKER_URL", None, parse_str,
            "Celery broker (Redis URL) of the AI report queue. Unset: reports run in-process "
            "(embedded worker thread, no Redis needed)."),
    Setting("TRIAGE_MODEL_PATH", None, parse_str,
            "Local directory of the base model (bf16 gpt-oss-20b, or the tiny model). Unset: "
            "rules-only service, said so in discovery and on the rules card."),
    Setting("TRIAGE_ADAPTER_PATH", None, parse_str,
            "Local directory of the PEFT LoRA adapter the workers load (optional)."),
    Setting("TRIAGE_CORS_ORIGINS", "*", parse_str,
            "Comma-separated origins allowed by CORS (browser clients such as the CDS Hooks sandbox)."),
    Setting("TRIAGE_INSTANCE_DIR", None, parse_str,
            "Instance folder (default SQLite file, demo pseudonym key). Default: Flask's instance "
            "folder of the package."),
    Setting("TRIAGE_READY_TIMEOUT_S", 0.5, parse_positive_float,
            "Seconds each check of `/ready` (database, Redis, broker, worker ping) may take."),
    Setting("TRIAGE_LOG_FORMAT", "json", parse_str,
            "Log lines as `json` objects (with the request id) or plain `text`."),
    Setting("TRIAGE_AUDIT_RETENTION_DAYS", 365.0, parse_positive_float,
            "Days the audit rows of hook calls (hook_audit table) are kept; older rows are deleted."),
    Setting("TRIAGE_SANDBOX", False, parse_bool,
            "1 serves the EHR sandbox page at /sandbox (loopback callers only; it signs client JWTs "
            "with a development key that only it trusts). On in `make serve`; never in a deployment."),
    Setting("TRIAGE_SANDBOX_DATA", None, parse_str,
            "Folder of FHIR Bundles (one patient each) the sandbox offers; default: the shared "
            "Synthea bundles next to the project when present."),
    Setting("TRIAGE_SANDBOX_VIGNETTES", None, parse_str,
            "JSONL of reference vignettes the sandbox offers; default: eval/vignettes/dev.jsonl of the "
            "project (the development set; the held-out set is never shown)."),
    Setting("TRIAGE_LOG_LEVEL", "INFO", parse_str, "Log level of the service (DEBUG, INFO, WARNING...)."),
)

SETTINGS += INFERENCE_SETTINGS  # queue, batching, cache: read by model.reports as well

_BY_NAME = {s.name: s for s in SETTINGS}


def load_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Defaults overridden by the environment. Raises SettingsError naming the bad variable."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.name)
        if raw is None:
            values[setting.name] = setting.default
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{setting.name}: {exc}") from None
    return values


def describe() -> str:
    """One line per setting, for --help texts and docs."""
    return "\n".join(f"{s.name} (default: {s.default!r}): {s.help}" for s in SETTINGS)


def default_for(name: str) -> Any:
    return _BY_NAME[name].default
