"""With auth on (the default), the app refuses requests without a valid client JWT.

The JWT rules themselves are tested in the auth tests; this checks that create_app wires them in
front of every endpoint, and that a valid ES384 token gets through to the hook.
"""
from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.support.cds_app import load, make_app, patient_view, uscore_paths

ISS = "https://ehr.example.org"


@pytest.fixture(scope="module")
def signing_key():
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def client(tmp_path_factory, signing_key):
    instance = tmp_path_factory.mktemp("auth-on")
    jwk = json.loads(ECAlgorithm.to_jwk(signing_key.public_key()))
    jwk.update(kid="k1", alg="ES384", use="sig")
    clients = instance / "clients.json"
    clients.write_text(json.dumps([{"iss": ISS, "jwks": {"keys": [jwk]}}]))
    app = make_app(instance, TRIAGE_INSECURE_NO_AUTH=False, TRIAGE_CLIENTS_FILE=str(clients),
                   TRIAGE_PUBLIC_BASE_URL="https://triage.example.org")
    return app.test_client()


def token(key, path: str) -> str:
    now = int(time.time())
    claims = {"iss": ISS, "aud": f"https://triage.example.org{path}", "exp": now + 300, "iat": now,
              "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, algorithm="ES384", headers={"kid": "k1", "typ": "JWT"})


@pytest.mark.parametrize("method, path", [("GET", "/cds-services"), ("POST", "/cds-services/triage"),
                                          ("POST", "/cds-services/triage/feedback"),
                                          ("POST", "/cds-services/unknown")])
def test_no_token_is_401_without_detail(client, method, path):
    response = client.open(path, method=method, json={})
    assert response.status_code == 401
    assert response.get_json() == {"error": "unauthorized"}


def test_valid_token_reaches_the_hook(client, signing_key):
    path = "/cds-services/triage"
    body = patient_view(load(uscore_paths()[1]))
    response = client.post(path, json=body, headers={"Authorization": f"Bearer {token(signing_key, path)}"})
    assert response.status_code == 200
    assert response.get_json()["cards"]
    discovery = client.get("/cds-services",
                           headers={"Authorization": f"Bearer {token(signing_key, '/cds-services')}"})
    assert discovery.status_code == 200


def test_token_for_another_endpoint_is_refused(client, signing_key):
    response = client.post("/cds-services/triage", json={},
                           headers={"Authorization": f"Bearer {token(signing_key, '/cds-services')}"})
    assert response.status_code == 401
