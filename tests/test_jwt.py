"""Standard JWTs from an identity provider, beside pushsvc's own tokens.

The IdP is real HTTP: a JWKS served on loopback by the test (``Idp``), with keys made by
``cryptography`` and tokens signed by PyJWT; the pushsvc server is a real one. Everything
refused gets 401 with a problem body (in-band refresh: an error frame with 4401).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pushsvc.auth import Authenticator, jwt_header
from pushsvc.auth_jwt import Jwks, JwtVerifier
from pushsvc.exceptions import ConfigError, Unauthorized
from pushsvc.protocol import codes
from pushsvc.settings import Settings
from tests.fixtures_server import API_KEY, SECRET, Server
from tests.test_bad_input import assert_problem
from tests.waiting import until
from tests.wire import poll_once, sse_collect, ws_collect

AUDIENCE = "pushsvc-test"
ISSUER = "https://idp.test/"
HMAC_SECRET = "an-hmac-secret-of-at-least-32-bytes!"
ALL = {"subscribe": ["*"], "publish": ["*"], "presence": ["*"]}

_RSA_KEYS: list[rsa.RSAPrivateKey] = []


def rsa_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit key (a few are made once per run: generating one takes ~0.1 s)."""
    if len(_RSA_KEYS) < 4:
        _RSA_KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _RSA_KEYS[-1]
    _RSA_KEYS.append(_RSA_KEYS.pop(0))
    return _RSA_KEYS[-1]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(subject: str = "alice", ttl: float = 600, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sub": subject,
        "exp": int(time.time() + ttl),
        "iat": int(time.time()),
        "aud": AUDIENCE,
        "iss": ISSUER,
        "pushsvc": ALL,
    }
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


class Idp:
    """An identity provider's JWKS endpoint on a free loopback port. ``fetches`` counts the
    GETs it answered; ``status`` other than 200 makes it answer an error."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {}
        self.jwks: list[dict[str, Any]] = []
        self.fetches = 0
        self.status = 200
        self._lock = threading.Lock()
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with idp._lock:
                    idp.fetches += 1
                    body = json.dumps({"keys": idp.jwks}).encode()
                    status = idp.status
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def add(self, kid: str, private: Any | None = None) -> Any:
        """Publish a new signing key (default RSA; pass an EC key for ES256)."""
        private = private or rsa_key()
        public = private.public_key()
        algo = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
        jwk = json.loads(algo.to_jwk(public))
        jwk.update(kid=kid, use="sig")
        with self._lock:
            self.private[kid] = private
            self.jwks.append(jwk)
        return private

    def remove(self, kid: str) -> None:
        with self._lock:
            self.jwks = [k for k in self.jwks if k["kid"] != kid]

    def sign(self, kid: str, body: dict[str, Any] | None = None) -> str:
        private = self.private[kid]
        alg = "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(body or claims(), private, algorithm=alg, headers={"kid": kid})

    def public_pem(self, kid: str) -> bytes:
        pem: bytes = (
            self.private[kid]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return pem

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def unsigned(header: dict[str, Any], body: dict[str, Any], secret: bytes | None = None) -> str:
    """A token PyJWT refuses to make: ``alg: none``, or HS256 keyed with a PUBLIC key."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def idp() -> Iterator[Idp]:
    provider = Idp()
    provider.add("k1")
    yield provider
    provider.stop()


def jwt_server(server_factory: Any, idp: Idp, **settings: Any) -> Server:
    options: dict[str, Any] = {
        "jwt_jwks_url": idp.url,
        "jwt_audience": AUDIENCE,
        "jwt_issuer": ISSUER,
        "jwt_jwks_min_fetch_interval": 60,
    }
    options.update(settings)
    server: Server = server_factory(**options)
    return server


async def next_frame(ws: Any, kind: str, timeout: float = 5) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] in (kind, "error"):
                return frame  # type: ignore[no-any-return]


# --- telling the kinds apart, and the settings (in-process) ------------------------------


def test_a_jwt_is_told_apart_from_pushsvc_tokens_and_api_keys() -> None:
    auth = Authenticator((SECRET,), (API_KEY,))
    small = auth.issue("alice", subscribe=["a"])
    compressed = auth.issue("alice", subscribe=["room:" + "x" * 40] * 50)
    assert compressed.startswith(".")  # itsdangerous compressed it: an empty first part
    for credential in (small, compressed, API_KEY, "a.b.c", "e30.e30.x", "...", ""):
        assert jwt_header(credential) is None, credential
    token = jwt.encode(claims(), HMAC_SECRET, algorithm="HS256", headers={"kid": "x"})
    assert jwt_header(token) == {"alg": "HS256", "kid": "x", "typ": "JWT"}


def test_pushsvc_tokens_and_api_keys_keep_working_when_jwts_are_configured() -> None:
    settings = Settings(secrets=(SECRET,), api_keys=(API_KEY,), jwt_key=HMAC_SECRET)
    auth = Authenticator.from_settings(settings)
    own = auth.issue("bob", subscribe=["news"], ttl=60)
    assert auth.verify(own).subject == "bob"
    assert auth.verify(API_KEY).is_api_key
    token = jwt.encode(claims("carol"), HMAC_SECRET, algorithm="HS256")
    principal = auth.verify(token)
    assert principal.subject == "carol" and principal.can_publish("anything")
    assert auth.verify(token) is principal  # remembered, like a pushsvc token


def test_a_jwt_on_a_server_without_jwt_settings_is_refused_saying_why() -> None:
    auth = Authenticator.from_settings(Settings(secrets=(SECRET,), api_keys=(API_KEY,)))
    assert auth.jwt is None
    token = jwt.encode(claims(), HMAC_SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="configure jwt_key"):
        auth.verify(token)


def test_a_static_rsa_key_verifies_rs256_and_refuses_hmac_keyed_with_it(tmp_path: Path) -> None:
    private = rsa_key()
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "idp.pem").write_bytes(pem)
    for value in (pem.decode(), "@" + str(tmp_path / "idp.pem")):
        auth = Authenticator.from_settings(Settings(secrets=(SECRET,), jwt_key=value))
        good = jwt.encode(claims(), private, algorithm="RS256")
        assert auth.verify(good).subject == "alice"
        confused = unsigned({"alg": "HS256", "typ": "JWT"}, claims("mallory"), secret=pem)
        with pytest.raises(Unauthorized, match="algorithm 'HS256' not accepted"):
            auth.verify(confused)
        with pytest.raises(Unauthorized, match="algorithm 'none' not accepted"):
            auth.verify(unsigned({"alg": "none"}, claims("mallory")))


def test_an_ec_key_verifies_es256() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    auth = Authenticator.from_settings(Settings(secrets=(SECRET,), jwt_key=pem.decode()))
    assert auth.verify(jwt.encode(claims(), private, algorithm="ES256")).subject == "alice"
    with pytest.raises(Unauthorized, match="not accepted"):
        auth.verify(jwt.encode(claims(), rsa_key(), algorithm="RS256"))


def test_jwt_settings_that_cannot_work_are_refused_at_startup(tmp_path: Path) -> None:
    private = rsa_key()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    cases = {
        "never accepted": {"jwt_key": HMAC_SECRET, "jwt_algorithms": ("HS256", "none")},
        "PUBLIC key": {"jwt_key": private_pem},
        "at least 32 bytes": {"jwt_key": "short"},
        "allows none of": {"jwt_key": public_pem, "jwt_algorithms": ("HS256",)},
        "cannot read": {"jwt_key": "@" + str(tmp_path / "missing.pem")},
        "https": {"jwt_jwks_url": "ftp://idp.example/jwks"},
    }
    for message, options in cases.items():
        with pytest.raises(ConfigError, match=message):
            Authenticator.from_settings(Settings(secrets=(SECRET,), **options))
    with pytest.raises(ConfigError, match="jwt_leeway"):
        Settings(jwt_leeway=-1)


def test_grants_come_from_the_configured_claim_and_a_malformed_one_is_refused() -> None:
    claim = "https://example.com/pushsvc"  # IdPs such as Auth0 want namespaced claims
    settings = Settings(secrets=(SECRET,), jwt_key=HMAC_SECRET, jwt_grants_claim=claim)
    auth = Authenticator.from_settings(settings)
    grants = {"subscribe": ["room:*"], "presence": ["room:1"], "info": {"name": "Alice"}}
    body = claims(pushsvc=None, **{claim: grants})
    principal = auth.verify(jwt.encode(body, HMAC_SECRET, algorithm="HS256"))
    assert principal.can_subscribe("room:7") and not principal.can_subscribe("other")
    assert principal.can_presence("room:1") and not principal.can_publish("room:1")
    assert principal.info == {"name": "Alice"}
    bare = auth.verify(jwt.encode(claims("bob", pushsvc=None), HMAC_SECRET, algorithm="HS256"))
    assert bare.subject == "bob" and not bare.can_subscribe("room:1")  # no claim: no grants
    for bad in ({"subscribe": "room:*"}, ["room:*"], {"publish": [1]}, {"info": "x"}):
        token = jwt.encode(claims(**{claim: bad}), HMAC_SECRET, algorithm="HS256")
        with pytest.raises(Unauthorized, match="invalid token"):
            auth.verify(token)


def test_a_jwt_lives_until_exp_plus_leeway_and_needs_sub_and_exp() -> None:
    settings = Settings(secrets=(SECRET,), jwt_key=HMAC_SECRET, jwt_leeway=30)
    auth = Authenticator.from_settings(settings)
    late = claims(ttl=-10)
    principal = auth.verify(jwt.encode(late, HMAC_SECRET, algorithm="HS256"))
    assert principal.expires_at == late["exp"] + 30
    with pytest.raises(Unauthorized, match="token expired"):
        auth.verify(jwt.encode(claims(ttl=-40), HMAC_SECRET, algorithm="HS256"))
    for missing in ("exp", "sub"):
        body = {k: v for k, v in claims().items() if k != missing}
        with pytest.raises(Unauthorized, match=missing):
            auth.verify(jwt.encode(body, HMAC_SECRET, algorithm="HS256"))


async def test_a_stale_key_set_is_refreshed_in_the_background_and_drops_removed_keys(
    idp: Idp,
) -> None:
    now = [1000.0]
    jwks = Jwks(
        idp.url, ("RS256",), min_fetch_interval=5, refresh_interval=60, clock=lambda: now[0]
    )
    verifier = JwtVerifier(algorithms=("RS256",), jwks=jwks, audience=(AUDIENCE,))
    token = idp.sign("k1")
    header = jwt_header(token)
    assert header is not None
    assert (await verifier.decode_async(token, header))["sub"] == "alice"
    assert jwks.fetches == 1
    idp.remove("k1")  # revoked at the IdP
    now[0] += 61
    # stale: the cached key still answers while the refetch runs in the background
    assert (await verifier.decode_async(token, header))["sub"] == "alice"
    await until(lambda: jwks.fetched_at == now[0], 5, "the background refetch")
    with pytest.raises(Unauthorized, match="unknown key id"):
        await verifier.decode_async(token, header)
    assert jwks.fetches == 2  # the unknown kid did not fetch again within the interval
    await verifier.aclose()


async def test_an_idp_that_answers_an_error_keeps_the_cached_keys(idp: Idp) -> None:
    jwks = Jwks(idp.url, ("RS256",), min_fetch_interval=0)
    verifier = JwtVerifier(algorithms=("RS256",), jwks=jwks)
    token = idp.sign("k1", claims(aud=None))
    header = jwt_header(token)
    assert header is not None
    await verifier.decode_async(token, header)
    idp.status = 500
    idp.add("k2")
    other = idp.sign("k2", claims(aud=None))
    other_header = jwt_header(other)
    assert other_header is not None
    with pytest.raises(Unauthorized, match="unknown key id"):
        await verifier.decode_async(other, other_header)
    assert jwks.fetches == 2 and set(jwks.keys) == {"k1"}
    assert (await verifier.decode_async(token, header))["sub"] == "alice"


# --- a real server and a real JWKS ------------------------------------------------------

# the server tests run on the memory backend: what is checked here is auth, not the log
on_a_server = pytest.mark.parametrize("backend_url", ["memory"], indirect=True)


@on_a_server
async def test_a_jwt_is_accepted_on_every_transport_and_by_publish(
    server_factory: Any, idp: Idp
) -> None:
    server = jwt_server(server_factory, idp)
    token = idp.sign("k1", claims(pushsvc={"subscribe": ["room:*"], "publish": ["room:*"]}))
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        r = await client.post("/v1/negotiate", json={"channels": ["room:1"]}, headers=bearer(token))
        assert r.status_code == 200, r.text
        assert r.json()["subject"] == "alice"
        cursor = r.json()["cursor"]
        r = await client.post(
            "/v1/publish", json={"channel": "room:1", "data": "hi"}, headers=bearer(token)
        )
        assert r.status_code == 200, r.text
        event_id = r.json()["id"]
        forbidden = await client.post(
            "/v1/publish", json={"channel": "other", "data": 1}, headers=bearer(token)
        )
        assert_problem(forbidden, 403)  # authenticated, but the grants do not reach there
    items, _ = await ws_collect(server.ws_url, ["room:1"], token, 1, cursor=cursor)
    assert [i["id"] for i in items] == [event_id]
    items, _ = await sse_collect(server.url, ["room:1"], token, 1, last_event_id=cursor)
    assert [i["id"] for i in items] == [event_id]
    body = await poll_once(server.url, ["room:1"], token, cursor, timeout=0)
    assert [e["id"] for e in body["events"]] == [event_id]
    # pushsvc's own tokens keep working beside them
    own = await poll_once(server.url, ["room:1"], server.token(), cursor, timeout=0)
    assert [e["id"] for e in own["events"]] == [event_id]
    assert idp.fetches == 1  # fetched once, then cached


@on_a_server
async def test_a_websocket_refreshes_its_jwt_in_band(server_factory: Any, idp: Idp) -> None:
    server = jwt_server(server_factory, idp)
    first = idp.sign("k1", claims(ttl=60))
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={first}") as ws:
        later = claims(ttl=3600)
        await ws.send(json.dumps({"type": "refresh", "token": idp.sign("k1", later)}))
        refreshed = await next_frame(ws, "refreshed")
        assert refreshed["type"] == "refreshed" and refreshed["expires_at"] == later["exp"]
        refusals = {
            "expired": idp.sign("k1", claims(ttl=-60)),
            "wrong audience": idp.sign("k1", claims(aud="someone-else")),
            "unknown kid": jwt.encode(claims(), rsa_key(), algorithm="RS256", headers={"kid": "x"}),
            "alg none": unsigned({"alg": "none", "kid": "k1"}, claims()),
        }
        for what, token in refusals.items():
            await ws.send(json.dumps({"type": "refresh", "token": token}))
            error = await next_frame(ws, "refreshed")
            assert error["type"] == "error", what
            assert error["op"] == "refresh" and error["code"] == codes.WS_4401_UNAUTHORIZED, what
        await ws.send(json.dumps({"type": "refresh", "token": idp.sign("k1", claims("mallory"))}))
        assert (await next_frame(ws, "refreshed"))["type"] == "error"  # another subject
        await ws.send(json.dumps({"type": "ping", "id": 7}))
        assert (await next_frame(ws, "pong"))["id"] == 7  # and the connection stays


@on_a_server
async def test_refused_jwts_get_401_with_a_problem_body(server_factory: Any, idp: Idp) -> None:
    server = jwt_server(server_factory, idp)
    assert (await poll_once(server.url, ["a"], idp.sign("k1"), timeout=0))["events"] == []
    rsa_public_pem = idp.public_pem("k1")
    good = claims()
    refusals = {
        "expired": idp.sign("k1", claims(ttl=-60)),
        "wrong audience": idp.sign("k1", claims(aud="someone-else")),
        "wrong issuer": idp.sign("k1", claims(iss="https://evil.example/")),
        "no exp": idp.sign("k1", {k: v for k, v in good.items() if k != "exp"}),
        "alg none": unsigned({"alg": "none", "typ": "JWT", "kid": "k1"}, good),
        # algorithm confusion: HS256 keyed with the RSA PUBLIC key everybody can download
        "confusion": unsigned({"alg": "HS256", "kid": "k1"}, good, secret=rsa_public_pem),
        "tampered": idp.sign("k1")[:-4] + "AAAA",
        "unknown kid": jwt.encode(good, rsa_key(), algorithm="RS256", headers={"kid": "k9"}),
    }
    why = {
        "expired": "token expired",
        "wrong audience": "udience",
        "wrong issuer": "issuer",
        "no exp": '"exp"',
        "alg none": "algorithm 'none' not accepted",
        "confusion": "algorithm 'HS256' not accepted",
        "tampered": "Signature verification failed",
        "unknown kid": "unknown key id 'k9'",
    }
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for what, token in refusals.items():
            poll = await client.get(
                "/v1/poll", params={"channel": "a", "timeout": 0}, headers=bearer(token)
            )
            body = assert_problem(poll, 401)
            assert body["type"].endswith("/unauthorized"), what
            assert why[what] in body["detail"], (what, body)
            publish = await client.post(
                "/v1/publish", json={"channel": "a", "data": 1}, headers=bearer(token)
            )
            assert_problem(publish, 401)
            sse = await client.get("/v1/sse", params={"channel": "a"}, headers=bearer(token))
            assert_problem(sse, 401)
            with pytest.raises(InvalidStatus) as refused:
                async with websockets.connect(f"{server.ws_url}/v1/ws?token={token}"):
                    pass
            assert refused.value.response.status_code == 401, what
    assert assert_problem(
        httpx.get(
            server.url + "/v1/poll",
            params={"channel": "a"},
            headers=bearer(refusals["expired"]),
        ),
        401,
    )["detail"].startswith("token expired")


@on_a_server
async def test_key_rotation_a_new_kid_is_accepted_after_one_refetch(
    server_factory: Any, idp: Idp
) -> None:
    server = jwt_server(server_factory, idp, jwt_jwks_min_fetch_interval=0.5)
    assert (await poll_once(server.url, ["a"], idp.sign("k1"), timeout=0))["events"] == []
    assert idp.fetches == 1
    idp.add("k2", ec.generate_private_key(ec.SECP256R1()))  # rotated, and to ES256
    rotated = idp.sign("k2", claims("bob"))

    async def accepted() -> bool:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(
                server.url + "/v1/poll",
                params={"channel": "a", "timeout": 0},
                headers=bearer(rotated),
            )
        return r.status_code == 200

    # the first try may fall within 0.5 s of the first fetch: then it is refused until
    # the next fetch is allowed
    await until(accepted, 10, "the rotated key to be accepted")
    assert idp.fetches == 2
    # the old key keeps working while the IdP still publishes it
    assert await poll_once(server.url, ["a"], idp.sign("k1", claims("carl")), timeout=0)


@on_a_server
async def test_a_flood_of_forged_kids_costs_the_idp_a_bounded_number_of_fetches(
    server_factory: Any, idp: Idp
) -> None:
    server = jwt_server(server_factory, idp, jwt_jwks_min_fetch_interval=60)
    assert (await poll_once(server.url, ["a"], idp.sign("k1"), timeout=0))["events"] == []
    forger = rsa_key()
    forged = [
        jwt.encode(claims(), forger, algorithm="RS256", headers={"kid": secrets.token_hex(8)})
        for _ in range(200)
    ]
    started = time.monotonic()
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits) as client:
        answers = await asyncio.gather(
            *(
                client.get("/v1/poll", params={"channel": "a", "timeout": 0}, headers=bearer(t))
                for t in forged
            )
        )
    assert {r.status_code for r in answers} == {401}
    assert all("unknown key id" in r.json()["detail"] for r in answers)
    assert idp.fetches <= 2  # the first fetch, and at most one for the whole flood
    assert time.monotonic() - started < 30
    assert await poll_once(server.url, ["a"], idp.sign("k1", claims("bob")), timeout=0)


@on_a_server
async def test_while_the_idp_is_down_cached_keys_work_and_unknown_kids_get_401(
    server_factory: Any, idp: Idp
) -> None:
    server = jwt_server(server_factory, idp, jwt_jwks_min_fetch_interval=0)
    assert (await poll_once(server.url, ["a"], idp.sign("k1"), timeout=0))["events"] == []
    idp.add("k2")
    newer = idp.sign("k2")
    idp.stop()  # the IdP is down: its port refuses connections
    # a token not seen before, signed with the cached key: still verifies
    assert await poll_once(server.url, ["a"], idp.sign("k1", claims("bob")), timeout=0)
    started = time.monotonic()
    refused = httpx.get(
        server.url + "/v1/poll", params={"channel": "a", "timeout": 0}, headers=bearer(newer)
    )
    assert_problem(refused, 401)
    assert time.monotonic() - started < 3  # no hang: the fetch failed at once


@on_a_server
def test_a_server_whose_idp_was_never_reachable_answers_401(server_factory: Any) -> None:
    gone = Idp()
    gone.add("k1")
    token = gone.sign("k1")
    gone.stop()
    server = jwt_server(server_factory, gone)
    refused = httpx.get(
        server.url + "/v1/poll", params={"channel": "a", "timeout": 0}, headers=bearer(token)
    )
    assert_problem(refused, 401)


@on_a_server
async def test_jwt_expiry_on_a_live_websocket_closes_with_4402(
    server_factory: Any, idp: Idp
) -> None:
    server = jwt_server(server_factory, idp, heartbeat_interval=0.3)
    short = idp.sign("k1", claims(ttl=2))
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={short}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "channels": ["exp"]}))
        assert (await next_frame(ws, "subscribed"))["type"] == "subscribed"
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(8):
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == codes.WS_4402_TOKEN_EXPIRED


def test_a_server_without_jwt_settings_does_not_load_pyjwt() -> None:
    code = (
        "import sys; from pushsvc.app import create_app; from pushsvc.settings import Settings;"
        "create_app(Settings(secrets=('s',), api_keys=('k',)));"
        "print(sorted(m for m in sys.modules if m == 'jwt' or m.startswith('jwt.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
