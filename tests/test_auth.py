"""CDS Hooks client JWT: accepted and refused tokens on small Flask apps, real loopback JWKS server,
real Redis for the shared jti replay store."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask, g, jsonify
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_hooks import auth
from cds_hooks.store import get_store
from conftest import REDIS_URL

ISS = "https://fhir-ehr.example.com/"
OTHER_ISS = "https://other-ehr.example.com"
BASE = "http://localhost"
DISCOVERY = f"{BASE}/cds-services"
SERVICE = f"{BASE}/cds-services/triage"


# --- keys and tokens ------------------------------------------------------------------------


def _jwk(public_key: Any, kid: str, alg: str) -> dict[str, Any]:
    algo = jwt.algorithms.ECAlgorithm if alg.startswith("ES") else jwt.algorithms.RSAAlgorithm
    return {**json.loads(algo.to_jwk(public_key)), "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "es384": ec.generate_private_key(ec.SECP384R1()),
        "es256": ec.generate_private_key(ec.SECP256R1()),
        "rs384": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "intruder": ec.generate_private_key(ec.SECP384R1()),
        "rotated": ec.generate_private_key(ec.SECP384R1()),
    }


@pytest.fixture(scope="module")
def jwks(keys: dict[str, Any]) -> dict[str, Any]:
    return {
        "keys": [
            _jwk(keys["es384"].public_key(), "es384-1", "ES384"),
            _jwk(keys["es256"].public_key(), "es256-1", "ES256"),
            # No "alg" on the RSA key: RS256 and RS384 both allowed for it.
            {k: v for k, v in _jwk(keys["rs384"].public_key(), "rs-1", "RS384").items() if k != "alg"},
        ]
    }


def claims(aud: str | list[str] = SERVICE, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": ISS,
        "aud": aud,
        "exp": now + 300,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def token(keys: dict[str, Any], key: str = "es384", alg: str = "ES384", kid: str = "es384-1", **kw: Any) -> str:
    headers = kw.pop("headers", {})
    return jwt.encode(claims(**kw), keys[key], algorithm=alg, headers={"kid": kid, "typ": "JWT", **headers})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_hmac(secret: bytes, alg: str = "HS256", kid: str = "rs-1", **kw: Any) -> str:
    """HMAC-signed token, built by hand (PyJWT refuses PEM keys as HMAC secrets, as it should)."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = _b64(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode()) + "." + _b64(
        json.dumps(claims(**kw)).encode()
    )
    return signing_input + "." + _b64(hmac.new(secret, signing_input.encode(), digest).digest())


def unsigned(kid: str = "es384-1", **kw: Any) -> str:
    return _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode()) + "." + _b64(
        json.dumps(claims(**kw)).encode()
    ) + "."


# --- apps -----------------------------------------------------------------------------------


def write_clients(tmp_path: Path, entries: list[dict[str, Any]], name: str = "clients.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(entries) if name.endswith(".json") else yaml.safe_dump(entries))
    return path


def make_app(**config: Any) -> Flask:
    app = Flask("auth_test")
    app.config.update(config)
    auth.init_app(app)

    @app.get("/cds-services")
    def discovery():
        return jsonify({"services": [], "iss": g.cds_client.iss})

    @app.post("/cds-services/<service_id>")
    def invoke(service_id: str):
        return jsonify({"cards": [], "tenant": g.cds_client.tenant})

    return app


@pytest.fixture
def clients_file(tmp_path: Path, jwks: dict[str, Any]) -> Path:
    return write_clients(tmp_path, [{"iss": ISS, "jwks": jwks}, {"iss": OTHER_ISS, "jwks": {"keys": []}}])


@pytest.fixture
def app(clients_file: Path) -> Flask:
    return make_app(TRIAGE_CLIENTS_FILE=str(clients_file))


def call(app: Flask, tok: str | None, path: str = "/cds-services/triage", scheme: str = "Bearer", **kw: Any):
    headers = {} if tok is None else {"Authorization": f"{scheme} {tok}"}
    client = app.test_client()
    if path == "/cds-services":
        return client.get(path, headers=headers, **kw)
    return client.post(path, headers=headers, json={}, **kw)


def assert_refused(response) -> None:
    assert response.status_code == 401
    assert response.get_json() == {"error": "unauthorized"}
    assert response.headers["WWW-Authenticate"] == "Bearer"


# --- accepted -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,alg,kid",
    [("es384", "ES384", "es384-1"), ("rs384", "RS384", "rs-1"), ("es256", "ES256", "es256-1"), ("rs384", "RS256", "rs-1")],
)
def test_valid_tokens_are_accepted(app: Flask, keys, key: str, alg: str, kid: str) -> None:
    r = call(app, token(keys, key, alg, kid, tenant="2ddd6c3a"))
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["tenant"] == "2ddd6c3a"
    r = call(app, token(keys, key, alg, kid, aud=DISCOVERY), path="/cds-services")
    assert r.status_code == 200
    assert r.get_json()["iss"] == ISS


def test_epic_style_extra_claims_and_aud_forms_are_tolerated(app: Flask, keys) -> None:
    now = int(time.time())
    epic = token(keys, sub="urn:oid:1.2.840.114350", nbf=now - 5, tenant="clinic-7", aud=[SERVICE])
    assert call(app, epic).status_code == 200
    assert call(app, token(keys, aud=SERVICE + "/")).status_code == 200  # one trailing slash ignored
    assert call(app, token(keys, aud=["https://elsewhere.example/x", SERVICE])).status_code == 200
    assert call(app, token(keys), scheme="bearer").status_code == 200  # auth scheme is case-insensitive


def test_clock_leeway(app: Flask, keys) -> None:
    now = int(time.time())
    assert call(app, token(keys, exp=now - 10, iat=now - 300)).status_code == 200
    assert call(app, token(keys, iat=now + 10)).status_code == 200
    assert_refused(call(app, token(keys, exp=now - 60, iat=now - 300)))
    strict = make_app(TRIAGE_CLIENTS_FILE=str(app.config["TRIAGE_CLIENTS_FILE"]), TRIAGE_JWT_LEEWAY_S=0)
    assert_refused(call(strict, token(keys, exp=now - 2, iat=now - 300)))


# --- refused --------------------------------------------------------------------------------


def _pem(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


REFUSED = {
    "alg none": lambda k: unsigned(),
    "HS256 signed with the RSA public key PEM": lambda k: forged_hmac(_pem(k["rs384"].public_key())),
    "HS384 signed with the EC public key PEM": lambda k: forged_hmac(_pem(k["es384"].public_key()), "HS384", "es384-1"),
    "HS512": lambda k: forged_hmac(b"secret", "HS512"),
    "expired": lambda k: token(k, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
    "future iat": lambda k: token(k, iat=int(time.time()) + 600),
    "future nbf": lambda k: token(k, nbf=int(time.time()) + 600),
    "wrong aud (other service)": lambda k: token(k, aud=f"{BASE}/cds-services/other"),
    "wrong aud (discovery)": lambda k: token(k, aud=DISCOVERY),
    "wrong aud (other host)": lambda k: token(k, aud="https://cds.example.org/cds-services/triage"),
    "wrong aud (prefix)": lambda k: token(k, aud=BASE),
    "aud not a string": lambda k: token(k, aud=[1, 2]),
    "unknown iss": lambda k: token(k, iss="https://evil.example.com/"),
    "known iss, none of its keys": lambda k: token(k, iss=OTHER_ISS),
    "unknown kid": lambda k: token(k, kid="nope"),
    "missing kid": lambda k: jwt.encode(claims(), k["es384"], algorithm="ES384"),
    "jku not allow-listed": lambda k: token(k, headers={"jku": "https://evil.example.com/jwks"}),
    "signed by another key with a trusted kid": lambda k: token(k, key="intruder"),
    "ES256 on a P-384 key": lambda k: token(k, key="es256", alg="ES256", kid="es384-1"),
    "RS384 header on an EC kid": lambda k: token(k, key="rs384", alg="RS384", kid="es384-1"),
    "missing jti": lambda k: token(k, jti=None),
    "empty jti": lambda k: token(k, jti=""),
    "missing exp": lambda k: token(k, exp=None),
    "missing iat": lambda k: token(k, iat=None),
    "missing aud": lambda k: token(k, aud=None),
    "malformed: one segment": lambda k: "abc",
    "malformed: garbage segments": lambda k: "a.b.c",
    "malformed: not base64": lambda k: "ey!!.ey$$.sig",
    "malformed: huge": lambda k: "a" * 20_000 + ".b.c",
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_tokens_are_refused_without_detail(app: Flask, keys, case: str) -> None:
    assert_refused(call(app, REFUSED[case](keys)))


def test_no_token_wrong_scheme_and_empty_bearer(app: Flask, keys) -> None:
    assert_refused(call(app, None))
    assert_refused(call(app, None, path="/cds-services"))
    assert_refused(call(app, token(keys), scheme="Basic"))
    assert_refused(call(app, token(keys), scheme="Token"))
    assert_refused(call(app, "", scheme="Bearer"))
    assert_refused(app.test_client().post("/cds-services/triage", headers={"Authorization": token(keys)}))
    assert_refused(app.test_client().get("/no-such-route"))  # unauthenticated probing learns nothing


def test_replayed_jti_is_refused(app: Flask, keys) -> None:
    tok = token(keys)
    assert call(app, tok).status_code == 200
    assert_refused(call(app, tok))
    # Same jti from another trusted issuer is a different nonce.
    jti = str(uuid.uuid4())
    assert call(app, token(keys, jti=jti)).status_code == 200
    assert_refused(call(app, token(keys, jti=jti)))  # a fresh token reusing the nonce


@pytest.mark.redis
def test_replay_is_refused_across_app_instances_sharing_redis(clients_file: Path, keys) -> None:
    first = make_app(TRIAGE_CLIENTS_FILE=str(clients_file), TRIAGE_JTI_REDIS_URL=REDIS_URL)
    second = make_app(TRIAGE_CLIENTS_FILE=str(clients_file), TRIAGE_JTI_REDIS_URL=REDIS_URL)
    tok = token(keys, exp=int(time.time()) + 20)
    assert call(first, tok).status_code == 200
    assert_refused(call(second, tok))
    assert_refused(call(first, tok))
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    jti = jwt.decode(tok, options={"verify_signature": False})["jti"]
    key = "triage:jti:" + hashlib.sha256(f"{ISS}\x00{jti}".encode()).hexdigest()
    ttl = r.ttl(key)
    assert 0 < ttl <= 20 + 30 + 1  # held for the token's lifetime (+ leeway), then forgotten
    r.delete(key)


def test_unreachable_replay_store_fails_closed(clients_file: Path, keys) -> None:
    app = make_app(TRIAGE_CLIENTS_FILE=str(clients_file), TRIAGE_JTI_REDIS_URL="redis://127.0.0.1:1/0")
    r = call(app, token(keys))
    assert r.status_code == 503
    assert r.get_json() == {"error": "unavailable"}


def test_preflight_options_needs_no_token(app: Flask) -> None:
    r = app.test_client().options("/cds-services/triage", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert r.status_code == 200


def test_public_base_url_sets_the_audience(clients_file: Path, keys) -> None:
    app = make_app(TRIAGE_CLIENTS_FILE=str(clients_file), TRIAGE_PUBLIC_BASE_URL="https://cds.example.org/triage/")
    assert call(app, token(keys, aud="https://cds.example.org/triage/cds-services/triage")).status_code == 200
    assert_refused(call(app, token(keys, aud=SERVICE)))  # the URL the proxy forwarded to is not the audience


def test_exempt_views_need_no_token(app: Flask) -> None:
    @app.get("/healthz")
    @auth.exempt
    def healthz():
        return "ok"

    assert app.test_client().get("/healthz").status_code == 200


# --- logs -----------------------------------------------------------------------------------


def test_tokens_never_reach_the_logs(app: Flask, keys, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = [token(keys)] + [REFUSED[c](keys) for c in ("alg none", "expired", "unknown iss", "wrong aud (other service)")]
    tokens.append(tokens[0])  # replay
    for tok in tokens:
        call(app, tok)
    text = caplog.text
    for tok in tokens:
        for part in tok.split("."):
            if len(part) > 16:
                assert part not in text
    reasons = [r.getMessage() for r in caplog.records if r.name == "cds_hooks.auth"]
    assert "JWT refused: algorithm_refused" in reasons
    assert "JWT refused: expired" in reasons
    assert "JWT refused: unknown_iss" in reasons
    assert "JWT refused: wrong_aud" in reasons
    assert "JWT refused: replayed_jti" in reasons


def test_insecure_mode_warns_and_lets_requests_through(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    app = Flask("insecure")
    app.config["TRIAGE_INSECURE_NO_AUTH"] = True
    auth.init_app(app)
    app.add_url_rule("/cds-services", "d", lambda: {"services": []})
    assert app.test_client().get("/cds-services").status_code == 200
    assert any(r.levelno == logging.WARNING and "TRIAGE_INSECURE_NO_AUTH" in r.getMessage() for r in caplog.records)


def test_no_clients_configured_refuses_everything_with_a_warning(keys, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    app = make_app()
    assert_refused(call(app, token(keys)))
    assert any("no trusted CDS clients" in r.getMessage() for r in caplog.records)


# --- clients file ---------------------------------------------------------------------------


def test_clients_file_may_be_json(tmp_path: Path, jwks, keys) -> None:
    path = write_clients(tmp_path, [{"iss": ISS, "jwks": jwks}], "clients.json")
    assert call(make_app(TRIAGE_CLIENTS_FILE=str(path)), token(keys)).status_code == 200


@pytest.mark.parametrize(
    "content,expected",
    [
        (None, "cannot read"),
        ("iss: [unclosed", "not valid YAML"),
        ("{}", "list of client entries"),
        (yaml.safe_dump([{"jwks": {"keys": []}}]), "entry 0: iss"),
        (yaml.safe_dump([{"iss": ISS}]), "exactly one of jwks_url or jwks"),
        (yaml.safe_dump([{"iss": ISS, "jwks": {"keys": []}, "jwks_url": "https://a.example/jwks"}]), "exactly one"),
        (yaml.safe_dump([{"iss": ISS, "jwks_url": "http://ehr.example.com/jwks"}]), "https"),
        (yaml.safe_dump([{"iss": ISS, "jwks": {"keys": []}, "jku_allow": ["ftp://x"]}]), "https"),
        (yaml.safe_dump([{"iss": ISS, "jwks": {"keys": []}, "color": "red"}]), "color"),
        (yaml.safe_dump([{"iss": ISS, "jwks": {"keys": []}}, {"iss": ISS, "jwks": {"keys": []}}]), "duplicate iss"),
        (yaml.safe_dump([{"iss": ISS, "jwks": {"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0LXZhbHVl"}]}}]), "unsupported key type"),
        (yaml.safe_dump([{"iss": ISS, "jwks": {"keys": [{"kty": "EC", "kid": "e", "crv": "P-384", "x": "AA", "y": "AA"}]}}]), "malformed key"),
    ],
)
def test_bad_clients_file_is_a_clear_startup_error(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "clients.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(auth.AuthConfigError) as info:
        make_app(TRIAGE_CLIENTS_FILE=str(path))
    message = str(info.value)
    assert str(path) in message and expected in message
    assert "c2VjcmV0LXZhbHVl" not in message  # key material is never echoed


def test_private_key_in_inline_jwks_is_refused(tmp_path: Path, keys) -> None:
    private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(keys["es384"]))
    path = write_clients(tmp_path, [{"iss": ISS, "jwks": {"keys": [{**private, "kid": "p"}]}}])
    with pytest.raises(auth.AuthConfigError, match="private key material"):
        make_app(TRIAGE_CLIENTS_FILE=str(path))


# --- remote JWK Sets (real HTTP on loopback) ------------------------------------------------


class JwksServer:
    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                doc = server.documents.get(self.path)
                body = json.dumps(doc).encode() if doc is not None else b"{}"
                self.send_response(200 if doc is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


def test_jwks_url_is_fetched_cached_and_refreshed_on_unknown_kid(tmp_path: Path, keys, jwks_server: JwksServer) -> None:
    jwks_server.documents["/jwks"] = {"keys": [_jwk(keys["es384"].public_key(), "k1", "ES384")]}
    path = write_clients(tmp_path, [{"iss": ISS, "jwks_url": f"{jwks_server.base}/jwks"}])
    app = make_app(TRIAGE_CLIENTS_FILE=str(path), TRIAGE_JWKS_MIN_REFRESH_S=0)
    assert call(app, token(keys, kid="k1")).status_code == 200
    assert call(app, token(keys, kid="k1")).status_code == 200
    assert jwks_server.hits["/jwks"] == 1  # cached
    # The client rotates its key: the unknown kid triggers one refetch and is then accepted.
    jwks_server.documents["/jwks"]["keys"].append(_jwk(keys["rotated"].public_key(), "k2", "ES384"))
    assert call(app, token(keys, key="rotated", kid="k2")).status_code == 200
    assert jwks_server.hits["/jwks"] == 2
    assert_refused(call(app, token(keys, kid="k3")))
    assert jwks_server.hits["/jwks"] == 3


def test_unknown_kid_refetch_is_rate_limited(tmp_path: Path, keys, jwks_server: JwksServer) -> None:
    jwks_server.documents["/jwks"] = {"keys": [_jwk(keys["es384"].public_key(), "k1", "ES384")]}
    path = write_clients(tmp_path, [{"iss": ISS, "jwks_url": f"{jwks_server.base}/jwks"}])
    app = make_app(TRIAGE_CLIENTS_FILE=str(path), TRIAGE_JWKS_MIN_REFRESH_S=60)
    assert call(app, token(keys, kid="k1")).status_code == 200
    for _ in range(5):
        assert_refused(call(app, token(keys, kid=f"flood-{uuid.uuid4()}")))
    assert jwks_server.hits["/jwks"] == 1
    assert call(app, token(keys, kid="k1")).status_code == 200


def test_jwks_server_down_or_broken_gives_401(tmp_path: Path, keys, jwks_server: JwksServer) -> None:
    jwks_server.documents["/broken"] = {"nokeys": True}
    path = write_clients(
        tmp_path,
        [
            {"iss": ISS, "jwks_url": f"{jwks_server.base}/missing"},
            {"iss": OTHER_ISS, "jwks_url": f"{jwks_server.base}/broken"},
        ],
    )
    app = make_app(TRIAGE_CLIENTS_FILE=str(path), TRIAGE_JWKS_MIN_REFRESH_S=0)
    assert_refused(call(app, token(keys)))
    assert_refused(call(app, token(keys, iss=OTHER_ISS)))


def test_jku_is_honoured_only_when_allow_listed(tmp_path: Path, keys, jwks_server: JwksServer) -> None:
    jwks_server.documents["/ehr/jwks"] = {"keys": [_jwk(keys["rotated"].public_key(), "jku-key", "ES384")]}
    jwks_server.documents["/evil/jwks"] = {"keys": [_jwk(keys["intruder"].public_key(), "evil", "ES384")]}
    allowed = f"{jwks_server.base}/ehr/jwks"
    path = write_clients(tmp_path, [{"iss": ISS, "jwks": {"keys": []}, "jku_allow": [allowed]}])
    app = make_app(TRIAGE_CLIENTS_FILE=str(path))
    assert call(app, token(keys, key="rotated", kid="jku-key", headers={"jku": allowed})).status_code == 200
    evil = f"{jwks_server.base}/evil/jwks"
    assert_refused(call(app, token(keys, key="intruder", kid="evil", headers={"jku": evil})))
    assert "/evil/jwks" not in jwks_server.hits  # never even fetched
    # Without jku the client's own (empty) set is used, not the jku one.
    assert_refused(call(app, token(keys, key="rotated", kid="jku-key")))


REASONS = {
    "alg none": "algorithm_refused",
    "HS256 signed with the RSA public key PEM": "algorithm_refused",
    "expired": "expired",
    "future iat": "not_yet_valid",
    "future nbf": "not_yet_valid",
    "wrong aud (other service)": "wrong_aud",
    "unknown iss": "unknown_iss",
    "unknown kid": "unknown_kid",
    "missing kid": "missing_kid",
    "jku not allow-listed": "jku_not_allowed",
    "signed by another key with a trusted kid": "bad_signature",
    "ES256 on a P-384 key": "algorithm_key_mismatch",
    "missing jti": "missing_claim",
    "missing aud": "missing_claim",
    "malformed: garbage segments": "malformed",
}


@pytest.mark.parametrize("case", list(REASONS))
def test_refusals_log_their_reason_category(app: Flask, keys, case: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cds_hooks.auth")
    assert_refused(call(app, REFUSED[case](keys)))
    assert [r.getMessage() for r in caplog.records if r.name == "cds_hooks.auth"] == [f"JWT refused: {REASONS[case]}"]


# --- junk and the real application ----------------------------------------------------------

_header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
_b64ish = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.one_of(
        _header_text,
        _header_text.map(lambda s: "Bearer " + s),
        st.tuples(_b64ish, _b64ish, _b64ish).map(lambda p: "Bearer eyJ" + ".eyJ".join(p[:2]) + "." + p[2]),
        st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3).map(
            lambda h: "Bearer " + _b64(json.dumps(h).encode()) + "." + _b64(b'{"iss": 1}') + ".c2ln"
        ),
    )
)
def test_junk_authorization_headers_are_401_never_5xx(app: Flask, header: str) -> None:
    assert_refused(app.test_client().get("/cds-services", headers={"Authorization": header}))


def test_through_create_app_discovery_needs_a_token_and_cors_exposes_401(tmp_path: Path, clients_file: Path, keys) -> None:
    from support.cds_app import make_app as make_service

    app = make_service(tmp_path, TRIAGE_INSECURE_NO_AUTH=False, TRIAGE_CLIENTS_FILE=str(clients_file))
    client = app.test_client()
    origin = {"Origin": "https://sandbox.cds-hooks.org"}
    r = client.get("/cds-services", headers=origin)
    assert_refused(r)
    assert r.headers.get("Access-Control-Allow-Origin")  # the browser client can read the 401
    pre = client.options(
        "/cds-services",
        headers={**origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"},
    )
    assert pre.status_code == 200
    assert "authorization" in pre.headers.get("Access-Control-Allow-Headers", "").lower()
    r = client.get("/cds-services", headers={"Authorization": f"Bearer {token(keys, aud=DISCOVERY)}"})
    assert r.status_code == 200
    assert any(s["id"] == "triage" for s in r.get_json()["services"])
    get_store(app).dispose()


def test_through_create_app_a_bad_clients_file_fails_at_startup(tmp_path: Path) -> None:
    from support.cds_app import make_app as make_service

    bad = tmp_path / "clients.yaml"
    bad.write_text("- iss: https://ehr.example\n")
    with pytest.raises(auth.AuthConfigError, match=re.escape(str(bad))):
        make_service(tmp_path, TRIAGE_INSECURE_NO_AUTH=False, TRIAGE_CLIENTS_FILE=str(bad))
