"""Standard JWTs from an identity provider, verified with PyJWT (``cryptography`` does the
crypto; nothing here signs or checks a signature by hand).

Imported only when ``jwt_key`` or ``jwt_jwks_url`` is configured, so a server without
JWTs never loads PyJWT.

Algorithm confusion is stopped by tying every key to the algorithms of its own family:
an HMAC secret verifies ``HS*`` only, an RSA key ``RS*``/``PS*`` only, an EC key the one
``ES*`` of its curve; the token's ``alg`` must be in that set AND in ``jwt_algorithms``
before PyJWT sees the token, and PyJWT is given that one algorithm. ``none`` is never in
any set. A JWKS holds public keys only: symmetric (``oct``) keys in it are ignored.

The JWKS is fetched with httpx (timeout, size bound, no redirects), cached (at most
``JWKS_MAX_KEYS`` keys, replaced as a whole by each successful fetch so that keys removed
at the IdP stop verifying), refetched when a token names an unknown ``kid`` and in the
background once older than ``jwt_jwks_refresh_interval``. Fetches are single-flight and at
most one starts per ``jwt_jwks_min_fetch_interval``: a flood of tokens with forged
``kid``s costs the IdP one request per interval, and while the IdP is down the cached keys
keep working and an unknown ``kid`` gets a 401 at once (never a 500, never a hang beyond
the fetch timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from pushsvc.exceptions import ConfigError, Unauthorized
from pushsvc.settings import Settings

log = logging.getLogger("pushsvc.auth")

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
SUPPORTED = (*HMAC_ALGORITHMS, *RSA_ALGORITHMS, *EC_ALGORITHMS.values())

MIN_HMAC_BYTES = 32  # RFC 7518 3.2: a key at least as long as the hash output
MIN_RSA_BITS = 2048
JWKS_MAX_KEYS = 64  # keys kept from one JWKS document; more are ignored
JWKS_MAX_BYTES = 256 * 1024  # a JWKS document larger than this is refused


class UnknownKeyId(Unauthorized):
    """The token names a ``kid`` the cached JWKS does not hold (yet)."""


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """A public key (or HMAC secret) and the algorithms it may verify."""

    key: Any  # bytes | rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    algorithms: tuple[str, ...]


def key_algorithms(key: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The algorithms of ``key``'s own family that ``allowed`` lets through."""
    if isinstance(key, bytes):
        family: tuple[str, ...] = HMAC_ALGORITHMS
    elif isinstance(key, rsa.RSAPublicKey):
        family = RSA_ALGORITHMS
    elif isinstance(key, ec.EllipticCurvePublicKey):
        alg = EC_ALGORITHMS.get(key.curve.name)
        family = (alg,) if alg else ()
    else:
        family = ()
    return tuple(a for a in allowed if a in family)


def check_algorithms(algorithms: tuple[str, ...]) -> tuple[str, ...]:
    if not algorithms:
        raise ConfigError("jwt_algorithms must name at least one algorithm")
    unknown = [a for a in algorithms if a not in SUPPORTED]
    if unknown:
        raise ConfigError(
            f"jwt_algorithms: {', '.join(unknown)} not supported (supported: "
            f"{', '.join(SUPPORTED)}; 'none' is never accepted)"
        )
    return algorithms


def load_static_key(value: str, allowed: tuple[str, ...]) -> VerifyKey:
    """``jwt_key``: a PEM public key or certificate (RSA or EC), ``@PATH`` of a file
    holding one (or an HMAC secret), or else an HMAC secret."""
    if value.startswith("@"):
        try:
            with open(value[1:], "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise ConfigError(f"jwt_key: cannot read {value[1:]!r}: {exc.strerror}") from None
    else:
        raw = value.encode()
    key: Any
    if raw.lstrip().startswith(b"-----BEGIN"):
        key = _load_pem(raw)
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            raise ConfigError(f"jwt_key: an RSA key of {key.key_size} bits (at least 2048)")
    else:
        key = raw.rstrip(b"\r\n") if value.startswith("@") else raw
        if len(key) < MIN_HMAC_BYTES:
            raise ConfigError(f"jwt_key: an HMAC secret needs at least {MIN_HMAC_BYTES} bytes")
    algorithms = key_algorithms(key, allowed)
    if not algorithms:
        kind = "an HMAC secret" if isinstance(key, bytes) else f"a {type(key).__name__}"
        raise ConfigError(
            f"jwt_key is {kind}, but jwt_algorithms ({', '.join(allowed)}) allows none of "
            "the algorithms of its family"
        )
    return VerifyKey(key, algorithms)


def _load_pem(raw: bytes) -> Any:
    if b"PRIVATE KEY-----" in raw:
        raise ConfigError("jwt_key is a private key: give the IdP's PUBLIC key")
    try:
        if b"-----BEGIN CERTIFICATE-----" in raw:
            return x509.load_pem_x509_certificate(raw).public_key()
        return serialization.load_pem_public_key(raw)
    except ValueError as exc:
        raise ConfigError(f"jwt_key: not a PEM public key or certificate: {exc}") from None


def jwk_key(jwk: Mapping[str, Any], allowed: tuple[str, ...]) -> VerifyKey | None:
    """One JWKS entry as a ``VerifyKey`` (``None``: not usable for verifying here)."""
    kty = jwk.get("kty")
    if jwk.get("use", "sig") != "sig":
        return None
    try:
        if kty == "RSA":
            key: Any = RSAAlgorithm.from_jwk(dict(jwk))
        elif kty == "EC":
            key = ECAlgorithm.from_jwk(dict(jwk))
        else:
            return None  # oct (a shared secret has no place in a public JWKS), OKP, ...
    except Exception:  # a malformed entry is skipped, the rest of the set still counts
        return None
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        key = key.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return None
    algorithms = key_algorithms(key, allowed)
    declared = jwk.get("alg")
    if isinstance(declared, str):
        algorithms = tuple(a for a in algorithms if a == declared)
    return VerifyKey(key, algorithms) if algorithms else None


class Jwks:
    """The IdP's key set: fetched, cached, refreshed; fetches bounded and rate-limited."""

    def __init__(
        self,
        url: str,
        algorithms: tuple[str, ...],
        *,
        timeout: float = 5.0,
        min_fetch_interval: float = 10.0,
        refresh_interval: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.algorithms = algorithms
        self.timeout = timeout
        self.min_fetch_interval = min_fetch_interval
        self.refresh_interval = refresh_interval
        self.clock = clock
        self.keys: dict[str, VerifyKey] = {}
        self.fetched_at: float | None = None  # the last successful fetch
        self.attempted_at: float | None = None  # the last fetch started
        self.fetches = 0  # fetches started
        self._inflight: asyncio.Task[None] | None = None

    def get(self, kid: str) -> VerifyKey | None:
        return self.keys.get(kid)

    def may_fetch(self) -> bool:
        last = self.attempted_at
        return last is None or self.clock() - last >= self.min_fetch_interval

    def stale(self) -> bool:
        return self.fetched_at is None or self.clock() - self.fetched_at >= self.refresh_interval

    async def refresh(self) -> None:
        """Fetch now unless a fetch is running (then wait for it) or one started less
        than ``min_fetch_interval`` ago (then return at once)."""
        task = self._start()
        if task is not None:
            # shielded: a caller that goes away does not cancel the others' fetch
            await asyncio.shield(task)

    def refresh_in_background(self) -> None:
        self._start()

    def _start(self) -> asyncio.Task[None] | None:
        if self._inflight is not None:
            return self._inflight
        if not self.may_fetch():
            return None
        self.attempted_at = self.clock()
        self.fetches += 1
        task = asyncio.get_running_loop().create_task(self._fetch())
        self._inflight = task
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight = None

    async def _fetch(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):  # the whole fetch, however it trickles
                document = await self._download()
            keys = self._parse(document)
        except TimeoutError:
            log.warning("JWKS fetch from %s timed out after %s s", self.url, self.timeout)
            return
        except (httpx.HTTPError, ValueError) as exc:
            # the cached keys stay: the IdP being down must not log everybody out
            log.warning("JWKS fetch from %s failed: %s", self.url, exc)
            return
        except Exception:
            # whatever the IdP answers, a token gets 401 (never a 500); the keys stay
            log.exception("JWKS fetch from %s failed", self.url)
            return
        self.keys = keys
        self.fetched_at = self.clock()
        log.info("JWKS fetched from %s: %d key(s)", self.url, len(keys))

    async def _download(self) -> Any:
        async with (
            httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client,
            client.stream("GET", self.url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > JWKS_MAX_BYTES:
                    raise ValueError(f"a JWKS over {JWKS_MAX_BYTES} bytes")
        return json.loads(body)

    def _parse(self, document: Any) -> dict[str, VerifyKey]:
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ValueError("not a JWKS document (no 'keys' list)")
        keys: dict[str, VerifyKey] = {}
        for entry in entries:
            if len(keys) >= JWKS_MAX_KEYS:
                log.warning(
                    "JWKS from %s: more than %d keys, the rest ignored", self.url, JWKS_MAX_KEYS
                )
                break
            if not isinstance(entry, dict) or not isinstance(kid := entry.get("kid"), str):
                continue  # a key without a kid cannot be chosen by a token
            key = jwk_key(entry, self.algorithms)
            if key is not None:
                keys[kid] = key
        return keys

    async def aclose(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._inflight


class JwtVerifier:
    """Verifies a JWT's signature and registered claims; answers its claims."""

    def __init__(
        self,
        *,
        algorithms: tuple[str, ...],
        key: VerifyKey | None = None,
        jwks: Jwks | None = None,
        audience: tuple[str, ...] = (),
        issuer: str = "",
        leeway: float = 0.0,
    ) -> None:
        if key is None and jwks is None:
            raise ConfigError("JWT verification needs jwt_key or jwt_jwks_url")
        self.algorithms = check_algorithms(algorithms)
        self.key = key
        self.jwks = jwks
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtVerifier:
        algorithms = check_algorithms(settings.jwt_algorithms)
        key = load_static_key(settings.jwt_key, algorithms) if settings.jwt_key else None
        jwks = None
        if settings.jwt_jwks_url:
            url = urlsplit(settings.jwt_jwks_url)
            if url.scheme not in ("https", "http") or not url.hostname:
                raise ConfigError("jwt_jwks_url must be an https:// URL")
            if url.scheme == "http" and url.hostname not in ("localhost", "127.0.0.1", "::1"):
                log.warning("jwt_jwks_url is plain http: anyone on the path can swap the keys")
            jwks = Jwks(
                settings.jwt_jwks_url,
                algorithms,
                timeout=settings.jwt_jwks_timeout,
                min_fetch_interval=settings.jwt_jwks_min_fetch_interval,
                refresh_interval=settings.jwt_jwks_refresh_interval,
            )
        if not settings.jwt_audience:
            log.warning(
                "jwt_audience is not set: JWTs the IdP issued for any audience are accepted"
            )
        return cls(
            algorithms=algorithms,
            key=key,
            jwks=jwks,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway,
        )

    def decode(self, token: str, header: Mapping[str, Any]) -> dict[str, Any]:
        """The verified claims; ``Unauthorized`` saying why not (``UnknownKeyId`` when
        the JWKS may not hold the token's key yet)."""
        key = self._key_for(header)
        alg = header.get("alg")
        if alg not in key.algorithms:
            raise Unauthorized(f"invalid token: algorithm {str(alg)[:20]!r} not accepted")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[str(alg)],
                audience=list(self.audience) or None,
                issuer=self.issuer or None,
                leeway=self.leeway,
                options={"require": ["exp", "sub"], "verify_aud": bool(self.audience)},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired", reason="expired") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        return claims

    async def decode_async(self, token: str, header: Mapping[str, Any]) -> dict[str, Any]:
        """``decode``, fetching the JWKS first when the token names a key it lacks."""
        jwks = self.jwks
        if jwks is not None and jwks.stale() and jwks.fetched_at is not None:
            jwks.refresh_in_background()  # the cached keys answer meanwhile
        try:
            return self.decode(token, header)
        except UnknownKeyId:
            if jwks is None:
                raise
            await jwks.refresh()
        return self.decode(token, header)

    def _key_for(self, header: Mapping[str, Any]) -> VerifyKey:
        kid = header.get("kid")
        if self.jwks is not None and (kid is not None or self.key is None):
            if not isinstance(kid, str):
                raise Unauthorized("invalid token: no 'kid' in the header to choose a JWKS key")
            key = self.jwks.get(kid)
            if key is None:
                raise UnknownKeyId(f"invalid token: unknown key id {kid[:64]!r}")
            return key
        assert self.key is not None  # one of the two is configured (__init__)
        return self.key

    async def aclose(self) -> None:
        if self.jwks is not None:
            await self.jwks.aclose()
