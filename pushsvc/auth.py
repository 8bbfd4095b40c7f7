"""Client tokens and backend API keys.

A client token is an itsdangerous-signed JSON payload::

    {"sub": "alice", "exp": 1767225600, "sub_g": ["chat:*"], "pub_g": ["chat:*"],
     "pres_g": ["chat:*"], "info": {"name": "Alice"}, "meta": {...}}

Grants are ``fnmatch`` patterns (``*`` matches anything, including ``:``). Tokens are
signed with the first of ``Settings.secrets`` and verified with any of them (rotation).
API keys are opaque strings from ``Settings.api_keys``; they may publish anywhere and read
any channel. Credentials are never logged.

``info`` is the client metadata that presence shows for the token's connections: a JSON
object of at most ``max_presence_info_bytes`` (compact JSON), checked when a token is
issued and again when it is verified (a token over the server's limit is refused, 401,
rather than shown cut).

Standard JWTs from an identity provider are accepted beside these when ``jwt_key`` or
``jwt_jwks_url`` is configured (``pushsvc.auth_jwt``, imported only then). A credential is
taken for a JWT when it has three dot-separated parts and the first decodes (base64url) to
a JSON object with a string ``alg``: a pushsvc token has two parts (or an empty first one
when compressed), an API key is matched before either. A JWT's grants come from the claim
``jwt_grants_claim``; its subject from ``sub``; it expires at ``exp`` + ``jwt_leeway``, after
which it is treated exactly like an expired pushsvc token (401, WS close 4402).

``verify`` is synchronous; ``authenticate`` is the same check that may first fetch the
IdP's key set (a JWT naming a key not cached yet), which is what the endpoints call.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from itsdangerous import BadSignature, URLSafeSerializer

from pushsvc.exceptions import Forbidden, Unauthorized
from pushsvc.protocol.events import dump_json
from pushsvc.settings import Settings

if TYPE_CHECKING:
    from pushsvc.auth_jwt import JwtVerifier

SALT = "pushsvc.token.v1"


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    expires_at: float | None = None
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    presence: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    is_api_key: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def can_subscribe(self, channel: str) -> bool:
        return self.is_api_key or _granted(channel, self.subscribe)

    def can_publish(self, channel: str) -> bool:
        return self.is_api_key or _granted(channel, self.publish)

    def can_presence(self, channel: str) -> bool:
        return self.is_api_key or _granted(channel, self.presence)

    def presence_info(self) -> bytes:
        """``info`` as presence stores it (compact JSON)."""
        return dump_json(self.info)

    def check_subscribe(self, channels: list[str]) -> None:
        denied = [c for c in channels if not self.can_subscribe(c)]
        if denied:
            raise Forbidden("token does not grant subscribe on these channels", channels=denied)

    def check_publish(self, channel: str) -> None:
        if not self.can_publish(channel):
            raise Forbidden("token does not grant publish on this channel", channel=channel)

    def check_presence(self, channel: str) -> None:
        if not self.can_presence(channel):
            raise Forbidden("token does not grant presence on this channel", channel=channel)

    def check_presence_all(self, channels: list[str]) -> None:
        denied = [c for c in channels if not self.can_presence(c)]
        if denied:
            raise Forbidden("token does not grant presence on these channels", channels=denied)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at


VERIFIED_TOKENS = 4096  # tokens remembered as verified, per app
MAX_JWT_HEADER_CHARS = 2048  # a longer first part is not taken for a JWT header
MAX_INFO_BYTES = 1024  # Settings.max_presence_info_bytes


def check_info(info: Any, limit: int = MAX_INFO_BYTES) -> bytes:
    """The compact JSON of a presence ``info``; ``ValueError`` saying why when it is not
    a JSON object or is over ``limit`` bytes."""
    if not isinstance(info, dict):
        raise ValueError("presence info must be a JSON object")
    try:
        raw = dump_json(info)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"presence info is not JSON: {exc}") from None
    if len(raw) > limit:
        raise ValueError(
            f"presence info is {len(raw)} bytes of JSON, over max_presence_info_bytes ({limit})"
        )
    return raw


class Authenticator:
    def __init__(
        self,
        secrets: tuple[str, ...],
        api_keys: tuple[str, ...],
        *,
        max_info_bytes: int = MAX_INFO_BYTES,
        jwt: JwtVerifier | None = None,
        jwt_grants_claim: str = "pushsvc",
    ) -> None:
        if not secrets:
            raise ValueError("at least one secret is needed")
        # itsdangerous signs with the LAST key of the list and verifies with all.
        self._serializer = URLSafeSerializer(list(reversed(secrets)), salt=SALT)
        self._api_keys = tuple(k.encode() for k in api_keys)
        # one principal per key, shared as verified tokens' are (every publish has one)
        self._api_principals = tuple(
            Principal(subject=f"api-key:{i}", is_api_key=True) for i in range(len(api_keys))
        )
        self.max_info_bytes = max_info_bytes
        # Tokens already verified (a long-poll sends its token with every request): a
        # signature check and a JSON parse cost more than the rest of a poll's routing.
        # Keyed by the whole token, so only the very same signed bytes hit; bounded.
        self._verified: dict[str, Principal] = {}
        self.jwt = jwt
        self.jwt_grants_claim = jwt_grants_claim

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        """The server's authenticator: secrets, API keys and, when configured, JWTs.
        Raises ``ConfigError`` for JWT settings that cannot work."""
        jwt = None
        if settings.jwt_key or settings.jwt_jwks_url:
            from pushsvc.auth_jwt import JwtVerifier  # PyJWT only when JWTs are configured

            jwt = JwtVerifier.from_settings(settings)
        return cls(
            settings.secrets,
            settings.api_keys,
            max_info_bytes=settings.max_presence_info_bytes,
            jwt=jwt,
            jwt_grants_claim=settings.jwt_grants_claim,
        )

    def issue(
        self,
        subject: str,
        *,
        subscribe: list[str] | tuple[str, ...] = (),
        publish: list[str] | tuple[str, ...] = (),
        presence: list[str] | tuple[str, ...] = (),
        ttl: float = 3600.0,
        meta: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
    ) -> str:
        """A signed token. Raises ``ValueError`` for an ``info`` that is not a JSON
        object or is over ``max_info_bytes``."""
        payload: dict[str, Any] = {
            "sub": subject,
            "exp": int(time.time() + ttl),
            "sub_g": list(subscribe),
            "pub_g": list(publish),
            "pres_g": list(presence),
        }
        if meta:
            payload["meta"] = meta
        if info is not None:
            check_info(info, self.max_info_bytes)
            payload["info"] = info
        token: str = self._serializer.dumps(payload)
        return token

    def api_key_index(self, credential: str) -> int | None:
        """Which configured API key this is (``None``: not an API key)."""
        raw = credential.encode()
        # compare against every key so that timing does not reveal which one matched
        found = None
        for index, key in enumerate(self._api_keys):
            if hmac.compare_digest(raw, key):
                found = index
        return found

    def verify(self, credential: str | None, *, allow_api_key: bool = True) -> Principal:
        """The principal of an API key, a pushsvc token or a JWT; ``Unauthorized`` saying
        why not. A JWT whose key is not cached is refused here: ``authenticate`` fetches."""
        credential = _present(credential)
        known = self._known(credential, allow_api_key)
        if known is not None:
            return known
        header = self._jwt_header(credential)
        if header is not None and self.jwt is not None:
            claims = self.jwt.decode(credential, header)
            return self._remember(credential, self._from_jwt(claims))
        return self._remember(credential, self._from_signed(credential))

    async def authenticate(
        self, credential: str | None, *, allow_api_key: bool = True
    ) -> Principal:
        """``verify``, first fetching the IdP's key set when a JWT names a key that is
        not cached (fetches are bounded and rate-limited: ``pushsvc.auth_jwt``)."""
        credential = _present(credential)
        known = self._known(credential, allow_api_key)
        if known is not None:
            return known
        header = self._jwt_header(credential)
        if header is not None and self.jwt is not None:
            claims = await self.jwt.decode_async(credential, header)
            return self._remember(credential, self._from_jwt(claims))
        return self._remember(credential, self._from_signed(credential))

    def _known(self, credential: str, allow_api_key: bool) -> Principal | None:
        if allow_api_key:
            index = self.api_key_index(credential)
            if index is not None:
                return self._api_principals[index]
        cached = self._verified.get(credential)
        if cached is not None:
            if not cached.expired():
                return cached
            del self._verified[credential]  # verified again: it says why it fails
        return None

    def _remember(self, credential: str, principal: Principal) -> Principal:
        if principal.expired():
            raise Unauthorized("token expired", reason="expired")
        if len(self._verified) >= VERIFIED_TOKENS:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[credential] = principal
        return principal

    def _from_signed(self, credential: str) -> Principal:
        try:
            payload = self._serializer.loads(credential)
        except BadSignature as exc:
            if self.jwt is None and jwt_header(credential) is not None:
                raise Unauthorized(
                    "invalid token: a JWT, but this server verifies none "
                    "(configure jwt_key or jwt_jwks_url)"
                ) from exc
            raise Unauthorized("invalid token") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("sub"), str):
            raise Unauthorized("invalid token")
        exp = payload.get("exp")
        if not isinstance(exp, int | float):
            raise Unauthorized("invalid token")
        info = payload.get("info", {})
        try:
            check_info(info, self.max_info_bytes)
        except ValueError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        return Principal(
            subject=payload["sub"],
            expires_at=float(exp),
            subscribe=_patterns(payload.get("sub_g")),
            publish=_patterns(payload.get("pub_g")),
            presence=_patterns(payload.get("pres_g")),
            meta=meta if isinstance(meta := payload.get("meta"), dict) else {},
            info=info,
        )

    def _jwt_header(self, credential: str) -> dict[str, Any] | None:
        return jwt_header(credential) if self.jwt is not None else None

    def _from_jwt(self, claims: Mapping[str, Any]) -> Principal:
        """A principal from a verified JWT's claims: ``sub``, ``exp`` (+ leeway) and the
        grants claim ``{"subscribe", "publish", "presence": [patterns], "info": {...}}``
        (absent: no grants)."""
        subject, exp = claims.get("sub"), claims.get("exp")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("invalid token: 'sub' must be a non-empty string")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise Unauthorized("invalid token: 'exp' must be a number")
        name = self.jwt_grants_claim
        grants = claims.get(name, {})
        if not isinstance(grants, dict):
            raise Unauthorized(f"invalid token: claim {name!r} must be a JSON object")
        lists: dict[str, tuple[str, ...]] = {}
        for kind in ("subscribe", "publish", "presence"):
            value = grants.get(kind, [])
            if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                raise Unauthorized(f"invalid token: {name}.{kind} must be a list of strings")
            lists[kind] = tuple(value)
        info = grants.get("info", {})
        try:
            check_info(info, self.max_info_bytes)
        except ValueError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        leeway = self.jwt.leeway if self.jwt is not None else 0.0
        return Principal(
            subject=subject,
            expires_at=float(exp) + leeway,
            subscribe=lists["subscribe"],
            publish=lists["publish"],
            presence=lists["presence"],
            info=info,
        )

    async def aclose(self) -> None:
        """Stop a JWKS fetch in flight (the app's shutdown)."""
        if self.jwt is not None:
            await self.jwt.aclose()


def _granted(channel: str, patterns: tuple[str, ...]) -> bool:
    # "*" matches every name: the common grant, answered without a pattern match per
    # request (a long-poll checks its channels on every poll)
    return "*" in patterns or any(fnmatchcase(channel, p) for p in patterns)


def _present(credential: str | None) -> str:
    if not credential:
        raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>'")
    return credential


def jwt_header(credential: str) -> dict[str, Any] | None:
    """The JOSE header of a credential shaped like a JWT (three base64url parts, the first
    a JSON object with a string ``alg``), else ``None``. Nothing is verified here."""
    head, _, rest = credential.partition(".")
    if not head or rest.count(".") != 1 or len(head) > MAX_JWT_HEADER_CHARS:
        return None
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    if isinstance(header, dict) and isinstance(header.get("alg"), str):
        return header
    return None


def _patterns(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(p for p in value if isinstance(p, str))


def credential_from(headers: Any, query: Any) -> str | None:
    """``Authorization: Bearer …`` or, where EventSource/WebSocket force it, ``?token=``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return str(value.strip())
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    token = query.get("token")
    return str(token) if token else None
