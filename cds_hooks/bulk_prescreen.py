"""`triage prescreen`: start the AI reports of a day's booked patients before the nurses open them.

    triage prescreen --service http://triage:8080 --fhir-server https://ehr.example.org/fhir \\
        --date 2026-12-02 [--jwt-key client.pem --jwt-iss https://ehr.example.org --jwt-kid k1]

Reads the day's Appointments (`Appointment?date=...` on the FHIR server, or a Bundle/NDJSON file
with `--appointments`), and for each booked patient sends the running service the same
`appointment-book` call an EHR would (service `triage-prescreen`), with `fhirServer` and no
prefetch: the service fetches the patient's data itself, de-identifies it and queues the report,
so only the service ever holds the pseudonym key. The FHIR bearer token is read from the
environment (`TRIAGE_PRESCREEN_FHIR_TOKEN`), never from the command line. Prints counts only:
patient ids are identifiers.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import click

from cds_hooks.serve import _OneLineCommand  # usage errors as one `Error: ...` line

TOKEN_ENV = "TRIAGE_PRESCREEN_FHIR_TOKEN"
SERVICE_ID = "triage-prescreen"


def appointments_from_file(path: Path) -> list[dict[str, Any]]:
    """Appointments of a FHIR Bundle (JSON) or NDJSON file; other resources are ignored."""
    text = path.read_text(encoding="utf-8")
    try:
        resources: Iterable[Any] = _bundle_resources(json.loads(text))
    except json.JSONDecodeError:
        try:
            resources = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise click.ClickException(f"{path.name}: neither a FHIR Bundle (JSON) nor NDJSON") from None
    return [r for r in resources if isinstance(r, dict) and r.get("resourceType") == "Appointment"]


def _bundle_resources(body: Any) -> list[Any]:
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        return [e.get("resource") for e in body.get("entry") or [] if isinstance(e, dict)]
    return [body]


def patients_of(appointments: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """patient id -> that patient's appointments (cancelled and no-show ones left out)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for appt in appointments:
        if appt.get("status") in ("cancelled", "noshow", "entered-in-error"):
            continue
        for participant in appt.get("participant") or []:
            ref = ((participant or {}).get("actor") or {}).get("reference") or ""
            if ref.startswith("Patient/") and len(ref) > len("Patient/"):
                out.setdefault(ref.split("/", 1)[1], []).append(appt)
    return out


def client_jwt(key_pem: bytes, iss: str, kid: str | None, aud: str) -> str:
    """A CDS Hooks client JWT for one call (ES384 for EC keys, RS384 for RSA keys)."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(key_pem, password=None)
    alg = "ES384" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS384"
    now = int(time.time())
    headers = {"typ": "JWT", **({"kid": kid} if kid else {})}
    claims = {"iss": iss, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def hook_bodies(patients: dict[str, list[dict[str, Any]]], fhir_server: str, token: str | None,
                user: str) -> Iterator[dict[str, Any]]:
    for pid, appts in patients.items():
        body: dict[str, Any] = {
            "hook": "appointment-book",
            "hookInstance": str(uuid.uuid4()),
            "fhirServer": fhir_server,
            "context": {"userId": user, "patientId": pid,
                        "appointments": {"resourceType": "Bundle", "type": "collection",
                                         "entry": [{"resource": a} for a in appts]}},
        }
        if token:
            body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                         "scope": "patient/*.read", "subject": "triage-prescreen"}
        yield body


@click.command("prescreen", cls=_OneLineCommand)
@click.option("--service", required=True, help="Base URL of the running triage service.")
@click.option("--fhir-server", required=True,
              help="FHIR base URL the service reads each patient's data from (and the appointments, with --date).")
@click.option("--date", "day", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Day of the appointment list (YYYY-MM-DD): searches Appointment?date=DAY. Default: today.")
@click.option("--appointments", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A FHIR Bundle (JSON) or NDJSON file of Appointments, instead of the search.")
@click.option("--jwt-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="PEM private key (EC P-384 or RSA) that signs the CDS client JWT; its public key must be "
                   "in the service's TRIAGE_CLIENTS_FILE.")
@click.option("--jwt-iss", default=None, help="`iss` of the client JWT (required with --jwt-key).")
@click.option("--jwt-kid", default=None, help="`kid` of the signing key in the client's JWK Set.")
@click.option("--user", default="Practitioner/prescreen", show_default=True, help="context.userId of the calls.")
@click.option("--concurrency", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Calls in flight at once.")
def prescreen(service: str, fhir_server: str, day: Any, appointments: Path | None, jwt_key: Path | None,
              jwt_iss: str | None, jwt_kid: str | None, user: str, concurrency: int) -> None:
    """Queue the AI reports of a day's booked patients (appointment-book calls to the service)."""
    import requests

    from fhir_adapter.client import FhirClient, FhirError

    if jwt_key and not jwt_iss:
        raise click.ClickException("--jwt-key needs --jwt-iss")
    token = os.environ.get(TOKEN_ENV) or None
    if appointments is not None:
        appts = appointments_from_file(appointments)
    else:
        when = (day.date() if day else date.today()).isoformat()
        try:
            with FhirClient(fhir_server, access_token=token) as fhir:
                appts = [r for r in _bundle_resources(fhir.search(f"Appointment?date={when}&_count=200"))
                         if isinstance(r, dict) and r.get("resourceType") == "Appointment"]
        except FhirError as exc:
            raise click.ClickException(f"cannot read the appointment list: {exc}") from None
    patients = patients_of(appts)
    url = service.rstrip("/") + f"/cds-services/{SERVICE_ID}"
    key_pem = jwt_key.read_bytes() if jwt_key else None

    def send(body: dict[str, Any]) -> str:
        headers = {"Content-Type": "application/json"}
        if key_pem is not None:
            headers["Authorization"] = f"Bearer {client_jwt(key_pem, jwt_iss, jwt_kid, url)}"
        try:
            response = requests.post(url, json=body, headers=headers, timeout=30)
        except requests.RequestException as exc:
            return f"unreachable ({type(exc).__name__})"
        return "ok" if response.status_code == 200 else f"HTTP {response.status_code}"

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(send, hook_bodies(patients, fhir_server, token, user)))
    failed = [r for r in results if r != "ok"]
    reasons = ", ".join(f"{n} x {why}" for why, n in sorted({r: failed.count(r) for r in failed}.items()))
    click.echo(f"prescreen: {len(appts)} appointments, {len(patients)} patients, "
               f"{len(results) - len(failed)} submitted, {len(failed)} failed" + (f" ({reasons})" if reasons else ""))
    if failed:
        raise SystemExit(1)
