"""The sandbox's development signing key: an EC P-384 key made once in the instance folder.

Only the sandbox trusts it (its `iss` is added to the app's trusted clients when
`TRIAGE_SANDBOX=1`, and nowhere else), and only the sandbox's token endpoint signs with it.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

SANDBOX_ISS = "urn:triage-cds:sandbox"
KID = "triage-sandbox-1"
TOKEN_LIFETIME_S = 120


def load_or_create(instance_path: str) -> ec.EllipticCurvePrivateKey:
    path = Path(instance_path) / "sandbox-signing-key.pem"
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.replace(tmp, path)  # two workers starting at once: one file wins, both read it next time
    return key


def public_jwks(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=KID, alg="ES384", use="sig")
    return {"keys": [jwk]}


def sign(key: ec.EllipticCurvePrivateKey, audience: str) -> str:
    now = int(time.time())
    claims = {"iss": SANDBOX_ISS, "sub": "sandbox-nurse", "aud": audience, "iat": now,
              "exp": now + TOKEN_LIFETIME_S, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, algorithm="ES384", headers={"kid": KID, "typ": "JWT"})
