"""CDS Hooks client authentication: the signed JWT of "Trusting CDS Clients" (CDS Hooks 2.0).

Every request, discovery included, must carry ``Authorization: Bearer <JWT>`` signed by a trusted
client (CORS preflight ``OPTIONS`` excepted). The checks:

- ``iss`` is listed in ``TRIAGE_CLIENTS_FILE``; its keys come from an inline JWK Set or from its
  ``jwks_url`` (cached; refetched on an unknown ``kid``, at most once per minimum interval). A
  ``jku`` header is followed only when the URL is on that client's ``jku_allow`` list.
- ``alg`` is ES384, RS384, ES256 or RS256 and fits the key (EC curve, RSA >= 2048 bits); ``none``
  and every HMAC algorithm are refused whatever the key.
- ``aud`` equals the endpoint URL: ``TRIAGE_PUBLIC_BASE_URL`` (default: the URL root the request
  arrived on) + the request path. One trailing ``/`` is ignored on both sides, nothing else.
- ``exp``, ``iat`` (not in the future) and ``jti`` are required; ``nbf`` is checked when present;
  other claims (``sub``, ``tenant``...) are tolerated. Clock leeway: ``TRIAGE_JWT_LEEWAY_S``.
- a ``jti`` is accepted once per ``iss`` for the token's lifetime (Redis when
  ``TRIAGE_JTI_REDIS_URL`` is set, so the rule holds across workers; else process memory).

Any failure answers 401 ``{"error": "unauthorized"}`` with ``WWW-Authenticate: Bearer`` and logs
only a reason category. The token itself is never logged or stored. If the shared replay store is
down the answer is 503: the client's token is not at fault, and accepting it would allow replays.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import jwt
import requests
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask, Response, current_app, g, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger(__name__)

EXTENSION_KEY = "triage_auth"
DEFAULT_LEEWAY_S = 30.0
DEFAULT_JWKS_MIN_REFRESH_S = 30.0  # floor between refetches of one JWK Set (unknown-kid floods)
DEFAULT_JWKS_CACHE_S = 3600.0  # a cached JWK Set is refetched after this, so rotated keys expire
JWKS_TIMEOUT_S = (2.0, 3.0)
JWKS_MAX_BYTES = 256 * 1024
MAX_TOKEN_CHARS = 16 * 1024
MIN_RSA_BITS = 2048

# Asymmetric algorithms only (spec: no `none`, no symmetric). Each key type allows a subset.
ALLOWED_ALGORITHMS = frozenset({"ES256", "ES384", "RS256", "RS384"})
_EC_CURVE_ALG = {"secp256r1": "ES256", "secp384r1": "ES384"}
_RSA_ALGS = frozenset({"RS256", "RS384"})
_JWS_COMPACT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")  # empty signature: alg none, refused below
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


class AuthConfigError(RuntimeError):
    """The trusted-clients configuration is unusable (raised at start-up, names the file)."""


class Unauthorized(Exception):
    """A refused token. ``reason`` is a fixed category, safe to log; never sent to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReplayStoreUnavailable(Exception):
    pass


# --- Trusted clients file -------------------------------------------------------------------


class _JwkSet(BaseModel):
    model_config = ConfigDict(extra="allow")
    keys: list[dict[str, Any]]


class ClientEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    iss: str = Field(min_length=1)
    jwks_url: str | None = None
    jwks: _JwkSet | None = None
    jku_allow: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_key_source(self) -> ClientEntry:
        if (self.jwks_url is None) == (self.jwks is None):
            raise ValueError("needs exactly one of jwks_url or jwks")
        for url in ([self.jwks_url] if self.jwks_url else []) + self.jku_allow:
            _check_key_url(url)
        return self


def _check_key_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
        return  # plain HTTP only on loopback (tests, a local sandbox)
    raise ValueError("key URLs must be https:// (http:// only on loopback)")


def load_clients_file(path: str | Path) -> list[ClientEntry]:
    """Parse and validate a JSON or YAML list of client entries; AuthConfigError names the file."""
    path = Path(path)
    where = f"TRIAGE_CLIENTS_FILE {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AuthConfigError(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise AuthConfigError(f"{where}: not valid {kind} ({type(exc).__name__})") from None
    if isinstance(data, Mapping) and "clients" in data:
        data = data["clients"]
    if not isinstance(data, list):
        raise AuthConfigError(f"{where}: must hold a list of client entries")
    entries: list[ClientEntry] = []
    seen: set[str] = set()
    for index, raw in enumerate(data):
        try:
            entry = ClientEntry.model_validate(raw)
        except ValidationError as exc:
            # Field locations and messages only: never echo key material back.
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}" for err in exc.errors()
            )
            raise AuthConfigError(f"{where}: entry {index}: {problems}") from None
        if entry.iss in seen:
            raise AuthConfigError(f"{where}: entry {index}: duplicate iss")
        seen.add(entry.iss)
        if entry.jwks is not None:
            try:
                _parse_jwk_set(entry.jwks.model_dump(), strict=True)
            except ValueError as exc:
                raise AuthConfigError(f"{where}: entry {index}: jwks: {exc}") from None
        entries.append(entry)
    return entries


# --- Keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerificationKey:
    key: Any  # a cryptography public key
    algorithms: frozenset[str]  # what this key may verify


def _verification_key(jwk: Mapping[str, Any]) -> VerificationKey:
    """A public signing key and its allowed algorithms, or ValueError."""
    kty = jwk.get("kty")
    if kty not in ("EC", "RSA"):
        raise ValueError(f"unsupported key type {kty!r}")  # symmetric 'oct' keys are never trusted
    if jwk.get("use") not in (None, "sig"):
        raise ValueError("key is not for signatures")
    if "d" in jwk:
        raise ValueError("private key material in a JWK Set")
    try:
        key = jwt.PyJWK(dict(jwk), algorithm="ES256" if kty == "EC" else "RS256").key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        raise ValueError("malformed key") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_CURVE_ALG.get(key.curve.name)
        algs = frozenset({alg}) if alg else frozenset()
    elif isinstance(key, rsa.RSAPublicKey):
        algs = _RSA_ALGS if key.key_size >= MIN_RSA_BITS else frozenset()
    else:
        raise ValueError("not a public key")
    if jwk.get("alg"):
        algs = algs & {jwk["alg"]}
    if not algs:
        raise ValueError("no accepted algorithm for this key")
    return VerificationKey(key=key, algorithms=algs)


def _parse_jwk_set(data: Any, *, strict: bool) -> dict[str, VerificationKey]:
    """kid -> key. ``strict`` (inline sets, checked at start-up) refuses any bad key; fetched
    sets skip keys we cannot use (a client may publish encryption or other keys beside)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWK Set (an object with a 'keys' list)")
    keys: dict[str, VerificationKey] = {}
    for index, jwk in enumerate(data["keys"]):
        try:
            if not isinstance(jwk, Mapping):
                raise ValueError("not an object")
            kid = jwk.get("kid")
            if not isinstance(kid, str) or not kid:
                raise ValueError("missing kid")
            keys[kid] = _verification_key(jwk)
        except ValueError as exc:
            if strict:
                raise ValueError(f"key {index}: {exc}") from None
    return keys


class KeySource(Protocol):
    def get(self, kid: str) -> VerificationKey | None: ...


@dataclass
class StaticKeys:
    keys: dict[str, VerificationKey]

    def get(self, kid: str) -> VerificationKey | None:
        return self.keys.get(kid)


@dataclass
class RemoteKeys:
    """A JWK Set fetched over HTTPS, cached, refetched on an unknown kid (rate-limited)."""

    url: str
    min_refresh_s: float = DEFAULT_JWKS_MIN_REFRESH_S
    cache_s: float = DEFAULT_JWKS_CACHE_S
    session: requests.Session = field(default_factory=requests.Session)
    _keys: dict[str, VerificationKey] = field(default_factory=dict)
    _fetched_at: float = -math.inf
    _attempted_at: float = -math.inf
    _lock: threading.Lock = field(default_factory=threading.Lock)
    fetch_count: int = 0

    def get(self, kid: str) -> VerificationKey | None:
        now = time.monotonic()
        key = self._keys.get(kid)
        if key is not None and now - self._fetched_at < self.cache_s:
            return key
        with self._lock:
            key = self._keys.get(kid)
            fresh = now - self._fetched_at < self.cache_s
            if key is not None and fresh:
                return key
            if time.monotonic() - self._attempted_at >= self.min_refresh_s:
                self._fetch()
            elif not fresh:
                return None  # stale and not allowed to refetch yet: trust nothing old
            return self._keys.get(kid)

    def _fetch(self) -> None:
        self._attempted_at = time.monotonic()
        self.fetch_count += 1
        try:
            resp = self.session.get(
                self.url, timeout=JWKS_TIMEOUT_S, allow_redirects=False, headers={"Accept": "application/json"}
            )
            resp.raise_for_status()
            if len(resp.content) > JWKS_MAX_BYTES:
                raise ValueError("JWK Set too large")
            keys = _parse_jwk_set(resp.json(), strict=False)
        except (requests.RequestException, ValueError) as exc:
            log.warning("JWK Set fetch failed url=%s (%s)", self.url, type(exc).__name__)
            return  # keep the previous keys until they age out
        self._keys = keys
        self._fetched_at = time.monotonic()


@dataclass
class TrustedClient:
    iss: str
    keys: KeySource
    jku: dict[str, RemoteKeys]  # allow-listed jku URL -> its key source


# --- jti replay stores ----------------------------------------------------------------------


class JtiStore(Protocol):
    def add(self, key: str, expires_at: float) -> bool:
        """Record ``key`` until ``expires_at`` (epoch seconds); False if it was already there."""


class MemoryJtiStore:
    """Process-local replay cache: fine for one process, not across gunicorn workers."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._next_purge = 0.0

    def add(self, key: str, expires_at: float) -> bool:
        now = time.time()
        with self._lock:
            if now >= self._next_purge or len(self._seen) > 100_000:
                self._seen = {k: exp for k, exp in self._seen.items() if exp > now}
                self._next_purge = now + 60
            if self._seen.get(key, 0.0) > now:
                return False
            self._seen[key] = expires_at
            return True


class RedisJtiStore:
    """Shared replay cache: ``SET key 1 NX EXAT exp`` is atomic across processes."""

    def __init__(self, url: str, prefix: str = "triage:jti:") -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._prefix = prefix
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError,)

    def add(self, key: str, expires_at: float) -> bool:
        try:
            return bool(self._redis.set(self._prefix + key, b"1", nx=True, exat=int(math.ceil(expires_at))))
        except self._errors as exc:
            raise ReplayStoreUnavailable(type(exc).__name__) from None


# --- Verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientIdentity:
    """What a verified token says about the caller (put in ``flask.g.cds_client``)."""

    iss: str
    sub: str | None
    tenant: str | None


def _normalise_url(url: str) -> str:
    return url[:-1] if url.endswith("/") else url


class Authenticator:
    def __init__(
        self,
        clients: list[ClientEntry],
        *,
        leeway_s: float = DEFAULT_LEEWAY_S,
        jti_store: JtiStore | None = None,
        public_base_url: str | None = None,
        jwks_min_refresh_s: float = DEFAULT_JWKS_MIN_REFRESH_S,
        jwks_cache_s: float = DEFAULT_JWKS_CACHE_S,
    ) -> None:
        self.leeway_s = float(leeway_s)
        self.jti_store = jti_store or MemoryJtiStore()
        self.public_base_url = _normalise_url(public_base_url) if public_base_url else None
        session = requests.Session()
        remote: dict[str, RemoteKeys] = {}

        def remote_keys(url: str) -> RemoteKeys:
            if url not in remote:
                remote[url] = RemoteKeys(url, jwks_min_refresh_s, jwks_cache_s, session)
            return remote[url]

        self.clients: dict[str, TrustedClient] = {}
        for entry in clients:
            keys: KeySource
            if entry.jwks is not None:
                keys = StaticKeys(_parse_jwk_set(entry.jwks.model_dump(), strict=True))
            else:
                keys = remote_keys(entry.jwks_url or "")
            self.clients[entry.iss] = TrustedClient(entry.iss, keys, {u: remote_keys(u) for u in entry.jku_allow})

    def trust(self, iss: str, jwks: Mapping[str, Any]) -> None:
        """Trust one more client with an inline JWK Set (the development sandbox's key)."""
        self.clients[iss] = TrustedClient(iss, StaticKeys(_parse_jwk_set(dict(jwks), strict=True)), {})

    def expected_audience(self) -> str:
        base = self.public_base_url or _normalise_url(request.url_root)
        return _normalise_url(base + request.path)

    def verify(self, token: str, audience: str) -> ClientIdentity:
        if len(token) > MAX_TOKEN_CHARS or not _JWS_COMPACT.match(token):
            raise Unauthorized("malformed")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthorized("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise Unauthorized("algorithm_refused")
        if header.get("typ") not in (None, "JWT", "jwt"):
            raise Unauthorized("malformed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("missing_kid")
        iss = unverified.get("iss")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            raise Unauthorized("unknown_iss")
        source: KeySource = client.keys
        if "jku" in header:
            jku = header["jku"]
            if not isinstance(jku, str) or jku not in client.jku:
                raise Unauthorized("jku_not_allowed")
            source = client.jku[jku]
        key = source.get(kid)
        if key is None:
            raise Unauthorized("unknown_kid")
        if alg not in key.algorithms:
            raise Unauthorized("algorithm_key_mismatch")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                issuer=client.iss,
                leeway=self.leeway_s,
                # aud is compared below (trailing-slash rule); PyJWT still requires its presence.
                options={"require": ["iss", "aud", "exp", "iat", "jti"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("not_yet_valid") from None
        except jwt.MissingRequiredClaimError:
            raise Unauthorized("missing_claim") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("bad_signature") from None
        except jwt.PyJWTError:
            raise Unauthorized("invalid_claims") from None
        aud = claims["aud"]
        auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(auds, list) or not all(isinstance(a, str) for a in auds):
            raise Unauthorized("wrong_aud")
        if _normalise_url(audience) not in {_normalise_url(a) for a in auds}:
            raise Unauthorized("wrong_aud")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise Unauthorized("missing_claim")
        exp = float(claims["exp"])
        replay_key = hashlib.sha256(f"{client.iss}\x00{jti}".encode()).hexdigest()
        if not self.jti_store.add(replay_key, exp + self.leeway_s):
            raise Unauthorized("replayed_jti")
        sub, tenant = claims.get("sub"), claims.get("tenant")
        return ClientIdentity(
            iss=client.iss,
            sub=sub if isinstance(sub, str) else None,
            tenant=tenant if isinstance(tenant, str) else None,
        )


# --- Flask integration ----------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def exempt(view: F) -> F:
    """Mark a view as public (e.g. a load-balancer health check). CDS endpoints must not be."""
    view._triage_auth_exempt = True  # type: ignore[attr-defined]
    return view


def unauthorized_response() -> Response:
    response = jsonify({"error": "unauthorized"})
    response.status_code = 401
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _bearer_token() -> str:
    header = request.headers.get("Authorization")
    if not header:
        raise Unauthorized("no_token")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized("wrong_scheme")
    token = token.strip()
    if not token:
        raise Unauthorized("no_token")
    return token


def _check_request() -> Response | None:
    if request.method == "OPTIONS":
        return None  # CORS preflight carries no credentials by design
    view = current_app.view_functions.get(request.endpoint or "")
    if view is not None and getattr(view, "_triage_auth_exempt", False):
        return None
    authenticator: Authenticator = current_app.extensions[EXTENSION_KEY]
    try:
        g.cds_client = authenticator.verify(_bearer_token(), authenticator.expected_audience())
    except Unauthorized as refused:
        log.warning("JWT refused: %s", refused.reason)
        return unauthorized_response()
    except ReplayStoreUnavailable as exc:
        log.error("JWT jti replay store unavailable (%s): refusing", exc)
        response = jsonify({"error": "unavailable"})
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return response
    return None


def init_app(app: Flask) -> Authenticator | None:
    """Require a client JWT on every request of ``app``; reads these ``app.config`` keys:

    ``TRIAGE_INSECURE_NO_AUTH`` (no check, logs a warning), ``TRIAGE_CLIENTS_FILE``,
    ``TRIAGE_PUBLIC_BASE_URL``, ``TRIAGE_JWT_LEEWAY_S`` (default 30), ``TRIAGE_JTI_REDIS_URL``,
    ``TRIAGE_JWKS_MIN_REFRESH_S`` (default 30), ``TRIAGE_JWKS_CACHE_S`` (default 3600).
    Raises AuthConfigError at start-up when the clients file is unusable.
    """
    if _truthy(app.config.get("TRIAGE_INSECURE_NO_AUTH")):
        log.warning(
            "TRIAGE_INSECURE_NO_AUTH is set: CDS Hooks client JWTs are NOT checked; "
            "anyone who can reach this service can call it. Development only."
        )
        app.extensions[EXTENSION_KEY] = None
        return None
    clients_file = app.config.get("TRIAGE_CLIENTS_FILE")
    clients = load_clients_file(clients_file) if clients_file else []
    if not clients:
        log.warning("no trusted CDS clients configured (TRIAGE_CLIENTS_FILE): every request will get 401")
    redis_url = app.config.get("TRIAGE_JTI_REDIS_URL")
    authenticator = Authenticator(
        clients,
        leeway_s=_number(app, "TRIAGE_JWT_LEEWAY_S", DEFAULT_LEEWAY_S),
        jti_store=RedisJtiStore(redis_url) if redis_url else MemoryJtiStore(),
        public_base_url=app.config.get("TRIAGE_PUBLIC_BASE_URL") or None,
        jwks_min_refresh_s=_number(app, "TRIAGE_JWKS_MIN_REFRESH_S", DEFAULT_JWKS_MIN_REFRESH_S),
        jwks_cache_s=_number(app, "TRIAGE_JWKS_CACHE_S", DEFAULT_JWKS_CACHE_S),
    )
    if not redis_url:
        log.info("jti replay store: process memory (set TRIAGE_JTI_REDIS_URL when running several workers)")
    app.extensions[EXTENSION_KEY] = authenticator
    app.before_request(_check_request)
    return authenticator


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def _number(app: Flask, key: str, default: float) -> float:
    value = app.config.get(key)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AuthConfigError(f"{key}: must be a number") from None
    if number < 0 or math.isnan(number):
        raise AuthConfigError(f"{key}: must not be negative")
    return number
