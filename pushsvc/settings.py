"""One frozen ``Settings`` object holds every setting and limit with its default.

``Settings.from_env()`` reads ``PUSHSVC_<FIELD>`` for each field (upper case); tuples are
comma-separated. The CLI mirrors these fields one to one.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pushsvc.exceptions import ConfigError


@dataclass(frozen=True, slots=True)
class Settings:
    backend_url: str = "memory://"
    # Token signing secrets: the first signs, all verify (rotation). Empty: generated.
    secrets: tuple[str, ...] = ()
    # Backend API keys for POST /v1/publish. Empty: generated.
    api_keys: tuple[str, ...] = ()
    # Browser origins allowed to open a WebSocket (cross-site WebSocket hijacking). Empty:
    # same-origin only (Origin's host equals Host) plus non-browser clients that send no
    # Origin; "*" allows any origin.
    allowed_origins: tuple[str, ...] = ()
    # CORS for SSE, long-poll, publish, negotiate and history (starlette's CORSMiddleware).
    cors_origins: tuple[str, ...] = ()
    cors_allow_credentials: bool = False
    # One log line per HTTP request (uvicorn's access log). Off: the proxy in front logs
    # requests, and a push service's requests are mostly publishes and polls.
    access_log: bool = False

    # Retention of each channel's log.
    retention_max_len: int = 10_000
    retention_max_age: float = 24 * 3600.0
    retention_approximate: bool = True

    # Heartbeats and timeouts (seconds).
    heartbeat_interval: float = 15.0
    sse_retry_ms: int = 2_000
    poll_timeout_default: float = 20.0
    poll_timeout_max: float = 25.0
    # A WebSocket subscribed to nothing and silent for this long is closed (4000).
    idle_timeout: float = 60.0

    # Limits.
    max_channel_length: int = 128
    max_event_name_length: int = 64
    max_channels_per_session: int = 64
    max_publish_bytes: int = 64 * 1024
    max_batch_messages: int = 100
    max_frame_bytes: int = 128 * 1024
    # WebSocket permessage-deflate (opt-in): each event compressed once for every
    # connection that negotiated it (pushsvc.protocol.deflate).
    ws_compression: bool = False
    ws_compression_level: int = 6
    ws_compression_min_bytes: int = 256
    max_connections: int = 20_000
    outbound_queue_messages: int = 1_000
    outbound_queue_bytes: int = 4 * 1024 * 1024
    history_page: int = 500
    history_limit_max: int = 1_000
    # Minutes, not the log's day: clients retry for seconds (Publisher: 30 s deadline) or
    # across a reconnect; Centrifugo keeps idempotency results 5 minutes.
    idempotency_ttl: float = 600.0
    # Publish rate per token subject and per API key, per instance (token bucket; 0: off).
    publish_rate: float = 50.0
    publish_burst: float = 100.0
    api_key_publish_rate: float = 5_000.0
    api_key_publish_burst: float = 10_000.0

    # Presence (DESIGN 8): entries are renewed in one batch per interval per process and
    # expire ``presence_ttl`` seconds after their last renewal.
    presence_refresh_interval: float = 5.0
    presence_ttl: float = 15.0
    presence_snapshot_max: int = 1_000
    max_presence_info_bytes: int = 1_024

    # Token lifetimes.
    token_ttl_default: float = 3600.0

    # Standard JWTs from an identity provider, accepted beside pushsvc's own tokens when
    # jwt_key or jwt_jwks_url is set (docs/how-to/identity-provider-tokens.md).
    jwt_key: str = ""
    jwt_jwks_url: str = ""
    jwt_algorithms: tuple[str, ...] = ("HS256", "RS256", "ES256")
    jwt_audience: tuple[str, ...] = ()
    jwt_issuer: str = ""
    jwt_leeway: float = 0.0
    jwt_grants_claim: str = "pushsvc"
    jwt_jwks_timeout: float = 5.0
    jwt_jwks_min_fetch_interval: float = 10.0
    jwt_jwks_refresh_interval: float = 3600.0

    # Observability.
    log_json: bool = False
    metrics_latency_every: int = 16

    def __post_init__(self) -> None:
        for name in (
            "heartbeat_interval",
            "poll_timeout_default",
            "poll_timeout_max",
            "retention_max_age",
            "presence_refresh_interval",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if not self.presence_ttl > 2 * self.presence_refresh_interval:
            # one late or failed refresh must not expire a live member
            raise ConfigError(
                f"presence_ttl ({self.presence_ttl} s) must be more than twice "
                f"presence_refresh_interval ({self.presence_refresh_interval} s)"
            )
        if self.presence_snapshot_max < 0:
            raise ConfigError("presence_snapshot_max must not be negative")
        if not 1 <= self.ws_compression_level <= 9:
            raise ConfigError("ws_compression_level must be from 1 to 9")
        if self.ws_compression_min_bytes < 0:
            raise ConfigError("ws_compression_min_bytes must not be negative")
        if self.max_presence_info_bytes < 2:
            raise ConfigError("max_presence_info_bytes must be at least 2 (the size of {})")
        for name in (
            "retention_max_len",
            "max_channels_per_session",
            "max_publish_bytes",
            "max_frame_bytes",
            "outbound_queue_messages",
            "history_page",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in ("jwt_leeway", "jwt_jwks_min_fetch_interval"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        for name in ("jwt_jwks_timeout", "jwt_jwks_refresh_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if not self.jwt_grants_claim:
            raise ConfigError("jwt_grants_claim must name a claim")

    def with_generated_credentials(self) -> tuple[Settings, dict[str, str]]:
        """Fill in an ephemeral secret and API key where none is configured.

        Answers the new settings and what was generated (for the CLI to print).
        """
        generated: dict[str, str] = {}
        new = self
        if not self.secrets:
            generated["secret"] = secrets.token_urlsafe(32)
            new = dataclasses.replace(new, secrets=(generated["secret"],))
        if not self.api_keys:
            generated["api_key"] = secrets.token_urlsafe(24)
            new = dataclasses.replace(new, api_keys=(generated["api_key"],))
        return new, generated

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = "PUSHSVC_" + f.name.upper()
            if key in env:
                values[f.name] = _parse(f, env[key])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# One line per setting: the reference (docs/reference/settings.md) is generated from this,
# and a test keeps it complete.
DESCRIPTIONS: dict[str, str] = {
    "backend_url": "The log: `memory://` (in-process) or `redis://host:port/db?prefix=…`.",
    "secrets": "Token signing secrets; the first signs, all verify (rotation). "
    "Empty: an ephemeral one is generated and printed.",
    "api_keys": "Backend API keys for publish and server endpoints; remove one to revoke it. "
    "Empty: an ephemeral one is generated and printed.",
    "allowed_origins": "Browser origins allowed to open a WebSocket. Empty: same-origin only "
    "(plus clients that send no Origin); `*`: any.",
    "cors_origins": "Origins allowed by CORS on SSE, long-poll, publish, negotiate, history.",
    "cors_allow_credentials": "Send `Access-Control-Allow-Credentials: true` to CORS origins.",
    "access_log": "One log line per HTTP request (uvicorn's access log, `--access-log`); off by "
    "default, as the proxy in front logs requests. Written from a background thread; "
    "credentials in query strings are redacted (docs/how-to/monitor.md).",
    "retention_max_len": "Events kept per channel (at least this many when approximate).",
    "retention_max_age": "Seconds an event is kept; trimmed when the channel is next written. "
    "A channel with no event for this long (+1 s) is dropped whole (Redis keys expire).",
    "retention_approximate": "Trim with Redis `MAXLEN ~` (cheaper; keeps slightly more).",
    "heartbeat_interval": "Seconds between heartbeats on an otherwise quiet connection; also "
    "the granularity of token-expiry and idle checks.",
    "sse_retry_ms": "The SSE `retry:` field: EventSource's reconnection delay.",
    "poll_timeout_default": "Long-poll wait when the request names no timeout (seconds).",
    "poll_timeout_max": "Longest long-poll wait a request may ask for (below proxies' 30 s).",
    "idle_timeout": "A WebSocket subscribed to nothing and silent this long is closed (4000).",
    "max_channel_length": "Longest channel name (alphabet: A-Z a-z 0-9 _ - : . @ = + /).",
    "max_event_name_length": "Longest event name.",
    "max_channels_per_session": "Channels one connection or request may subscribe to.",
    "max_publish_bytes": "Largest payload of one message (413 / close 1009).",
    "max_batch_messages": "Messages in one batch publish.",
    "max_frame_bytes": "Largest WebSocket frame from a client (close 1009).",
    "ws_compression": "Offer WebSocket permessage-deflate (`--ws-compression`): events are "
    "compressed once and the same frame goes to every connection that negotiated it; no "
    "compression state is kept per connection (docs/reference/websocket.md).",
    "ws_compression_level": "zlib level (1-9) of the compressed WebSocket frames.",
    "ws_compression_min_bytes": "Frames shorter than this go uncompressed on a compressing "
    "connection (small JSON barely shrinks on its own).",
    "max_connections": "Open streams per instance (503 + Retry-After / close 1013).",
    "outbound_queue_messages": "Frames queued for one connection before it is cut as a slow "
    "consumer (4008); the client resumes from its cursor.",
    "outbound_queue_bytes": "Bytes queued for one connection before the slow-consumer cut.",
    "history_page": "Events read from the log per round trip when resuming; also the most one "
    "long-poll answer carries.",
    "history_limit_max": "Largest `limit` of the history endpoint.",
    "idempotency_ttl": "Seconds an idempotency key (publish retry) is remembered: "
    "longer than clients retry (the Python Publisher gives up after 30 s).",
    "publish_rate": "Publishes per second per token subject, per instance (429 / 4429).",
    "publish_burst": "Burst of the per-subject publish bucket.",
    "api_key_publish_rate": "Publishes per second per API key, per instance.",
    "api_key_publish_burst": "Burst of the per-API-key publish bucket.",
    "presence_refresh_interval": "Seconds between the presence refreshes of a process: ONE "
    "batched backend call renews every local presence entry and sweeps expired ones.",
    "presence_ttl": "Seconds a presence entry lives after its last refresh (more than twice the "
    "interval); a crashed instance's members leave within `presence_ttl` + "
    "`presence_refresh_interval`.",
    "presence_snapshot_max": "Most members a presence snapshot lists; above it, it answers the "
    "counts only, with `truncated: true`.",
    "max_presence_info_bytes": "Largest presence `info` of a token (compact JSON object), "
    "checked by `pushsvc token --info` and when a token is verified (401).",
    "token_ttl_default": "Lifetime of tokens minted by `pushsvc token` without `--ttl`.",
    "jwt_key": "Verify standard JWTs with this key: a PEM public key or certificate (RSA, "
    "EC), `@PATH` of a file holding one, or an HMAC secret (32 bytes or more). Empty: no "
    "static key.",
    "jwt_jwks_url": "Verify standard JWTs with the IdP's JWKS at this URL (https), chosen by "
    "the token's `kid`; fetched when first needed, cached, refetched on an unknown `kid`.",
    "jwt_algorithms": "JWT algorithms accepted (HS*, RS*, PS*, ES*; never `none`); each key "
    "also verifies only the algorithms of its own type.",
    "jwt_audience": "Accepted JWT audiences (`aud` must hold one). Empty: not checked "
    "(a warning is logged).",
    "jwt_issuer": "Required JWT issuer (`iss`). Empty: not checked.",
    "jwt_leeway": "Seconds of clock skew allowed on `exp`, `nbf` and `iat`; a JWT lives "
    "until `exp` + leeway on every transport.",
    "jwt_grants_claim": 'The JWT claim holding the grants: `{"subscribe": [...], '
    '"publish": [...], "presence": [...], "info": {...}}` (channel patterns).',
    "jwt_jwks_timeout": "Seconds a JWKS fetch may take.",
    "jwt_jwks_min_fetch_interval": "Fewest seconds between two JWKS fetches (unknown `kid`s "
    "beyond that get 401 until the next fetch is allowed).",
    "jwt_jwks_refresh_interval": "Seconds after which the cached JWKS is refetched in the "
    "background (keys removed at the IdP stop verifying).",
    "log_json": "One JSON line per connection open/close (transport, subject, duration, close "
    "code and reason) on stderr, logger `pushsvc.connections`.",
    "metrics_latency_every": "Sample the publish-to-write latency histogram on one write in "
    "N per transport (1: every write).",
}


def settings_markdown() -> str:
    """The settings reference table (docs/reference/settings.md)."""
    rows = ["| setting | env | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = f.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        rows.append(
            f"| `{f.name}` | `PUSHSVC_{f.name.upper()}` | `{shown!s}` | {DESCRIPTIONS[f.name]} |"
        )
    return "\n".join(rows) + "\n"


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    default = f.default
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"PUSHSVC_{f.name.upper()}: cannot parse {raw!r}") from exc
    return raw


__all__ = ["Settings"]
