"""Admission: what every transport, and the HTTP API, checks before anything flows.

Authenticate, validate the channel list, decode the cursor, check the connection limit
(``open_request``), a browser's ``Origin`` (``check_origin``) and the publish rate
(``limit_publish``). Each raises a ``PushError`` (an HTTP problem, or a WS close code)
before a byte of a stream is sent.

Same-origin behind a proxy. The copy-pasted nginx snippet sets ``Host $host``, which
drops the port, so a page at ``http://host:8080`` opens a WebSocket whose ``Origin`` does
not match the ``Host`` pushsvc sees, and is refused (the browser then falls back to SSE
without a word). ``check_origin`` therefore takes the host from ``Forwarded: host=`` or
``X-Forwarded-Host`` when the peer is a trusted proxy, trusted by the setting uvicorn's
own ``X-Forwarded-For``/``-Proto`` handling uses (``FORWARDED_ALLOW_IPS``, default
``127.0.0.1,::1``; ``*`` trusts every peer); uvicorn does not handle the forwarded host.
uvicorn's ``ProxyHeadersMiddleware`` (on by default) has by then replaced a trusted
peer's address in ``scope["client"]`` by the client's from ``X-Forwarded-For``, which
carries no port: a client address with port 0 and an ``X-Forwarded-For`` header says the
peer was trusted (a real TCP peer never has port 0). A refusal that looks like such a
proxy's doing (same host name, only the port differs, or a forwarded host from an
untrusted peer) logs one warning per process naming the fix.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pushsvc.auth import Authenticator, Principal, credential_from
from pushsvc.exceptions import BadRequest, Forbidden, Unavailable
from pushsvc.hub import Hub
from pushsvc.protocol import cursor as cursor_codec
from pushsvc.protocol.ids import StreamId
from pushsvc.protocol.names import check_channels
from pushsvc.protocol.presence import check_presence_id, client_conn_id
from pushsvc.settings import Settings

log = logging.getLogger(__name__)
FORWARDED_ALLOW_IPS = "FORWARDED_ALLOW_IPS"  # uvicorn's environment variable, and default
DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1,::1"
_warned = False  # the proxy-host warning is logged once per process


@dataclass(slots=True)
class Opening:
    principal: Principal
    channels: list[str]
    positions: dict[str, StreamId | None]
    presence: bool = False  # ?presence=1: join the channels' presence and receive it
    presence_conn: str | None = None  # from ?presence_id=: the client's own entry


async def open_request(
    settings: Settings,
    hub: Hub,
    auth: Authenticator,
    headers: Any,
    query: Any,
    cursor: str | None,
    *,
    count_connection: bool = True,
) -> Opening:
    """Authorize a subscription request. Raises a ``PushError`` before any byte flows."""
    principal = await auth.authenticate(credential_from(headers, query))
    channels = check_channels(
        query.getlist("channel"), settings.max_channels_per_session, settings.max_channel_length
    )
    principal.check_subscribe(channels)
    presence = _flag(query.get("presence"), "presence")
    presence_conn = None
    if presence:
        principal.check_presence_all(channels)
        presence_id = query.get("presence_id")
        if presence_id is not None:
            presence_conn = client_conn_id(principal.subject, check_presence_id(presence_id))
    positions = positions_from(cursor, channels)
    if count_connection and len(hub.sessions) >= settings.max_connections:
        raise Unavailable("connection limit reached on this instance", retry_after=2)
    return Opening(principal, channels, positions, presence, presence_conn)


def _flag(raw: str | None, name: str) -> bool:
    if raw is None or raw in ("", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise BadRequest(f"{name} must be 1 or 0")


def limit_publish(scope: Any, principal: Principal, count: int = 1) -> None:
    """Spend ``count`` publishes of the principal's per-instance rate (or raise 429)."""
    st = scope["app"].state._state  # (as ``transports.asgi.state``)
    limiter = st["api_key_limiter" if principal.is_api_key else "publish_limiter"]
    limiter.take(principal.subject, count)


def check_origin(
    origin: str | None,
    host: str | None,
    allowed: tuple[str, ...],
    *,
    scope: Mapping[str, Any] | None = None,
) -> None:
    """Cross-site WebSocket hijacking: a browser's Origin must be allowed. Non-browser
    clients send no Origin; same-origin pages are always allowed. With the ASGI
    ``scope``, a trusted proxy's forwarded host stands for ``host`` (module docstring)."""
    if origin is None or "*" in allowed or origin in allowed:
        return
    forwarded = forwarded_host(scope) if scope is not None else None
    trusted = forwarded is not None and peer_trusted(scope or {})
    effective = forwarded if trusted else host
    netloc = urlsplit(origin).netloc
    if effective is not None and netloc == effective:
        return
    if not _warned:
        _warn_proxy_host(origin, netloc, host, forwarded, trusted, scope)
    raise Forbidden("origin not allowed", origin=origin[:200])


def _warn_proxy_host(
    origin: str,
    netloc: str,
    host: str | None,
    forwarded: str | None,
    trusted: bool,
    scope: Mapping[str, Any] | None,
) -> None:
    global _warned
    fix = (
        "set `proxy_set_header Host $http_host;` in the proxy, or have it send "
        "`proxy_set_header X-Forwarded-Host $http_host;` and trust its address in "
        f"{FORWARDED_ALLOW_IPS} (now {_allow_ips()!r})"
    )
    if forwarded is not None and not trusted:
        client = (scope or {}).get("client") or ("?",)
        why = (
            f"the X-Forwarded-Host/Forwarded host {forwarded!r} came from {client[0]}, "
            f"which {FORWARDED_ALLOW_IPS} does not trust"
        )
    elif host is not None and urlsplit("//" + host).hostname == urlsplit(origin).hostname:
        why = (
            f"the Host header {host!r} has the Origin's host name but not its port "
            f"({netloc!r}), as a proxy configured with `proxy_set_header Host $host;` sends it"
        )
    else:
        return  # a genuinely foreign origin: no configuration to fix
    _warned = True
    log.warning(
        "WebSocket refused for Origin %s: %s; browsers fall back to SSE. To fix, %s. "
        "(logged once per process)",
        origin[:200],
        why,
        fix,
    )


def forwarded_host(scope: Mapping[str, Any]) -> str | None:
    """The host a proxy says the client asked for: ``Forwarded: host=`` (RFC 7239, the
    first element), else the first ``X-Forwarded-Host``; None without either."""
    x_forwarded = None
    for name, value in scope.get("headers") or ():
        if name == b"forwarded":
            first = value.decode("latin-1").split(",")[0]
            for pair in first.split(";"):
                key, _, val = pair.strip().partition("=")
                if key.lower() == "host" and val:
                    return val.strip().strip('"') or None
        elif name == b"x-forwarded-host" and x_forwarded is None:
            x_forwarded = value.decode("latin-1").split(",")[0].strip() or None
    return x_forwarded


def peer_trusted(scope: Mapping[str, Any]) -> bool:
    """Whether the peer is a proxy ``FORWARDED_ALLOW_IPS`` trusts (module docstring)."""
    always, hosts, networks = _trusted(_allow_ips())
    if always:
        return True
    client = scope.get("client")
    if not client:
        return False
    host, port = client[0], client[1]
    if _is_trusted(str(host), hosts, networks):
        return True
    # uvicorn replaced a trusted peer's address by X-Forwarded-For's, which has no port
    headers = scope.get("headers") or ()
    return port == 0 and any(name == b"x-forwarded-for" for name, _ in headers)


def _allow_ips() -> str:
    return os.environ.get(FORWARDED_ALLOW_IPS, DEFAULT_FORWARDED_ALLOW_IPS)


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _trusted(spec: str) -> tuple[bool, frozenset[str | _Address], tuple[_Network, ...]]:
    """uvicorn's reading of ``FORWARDED_ALLOW_IPS``: ``*``, addresses, networks, literals."""
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if "*" in items:
        return True, frozenset(), ()
    hosts: set[str | _Address] = set()
    networks: list[_Network] = []
    for item in items:
        try:
            if "/" in item:
                networks.append(ipaddress.ip_network(item, strict=False))
            else:
                hosts.add(ipaddress.ip_address(item))
        except ValueError:
            hosts.add(item)  # a literal, e.g. a unix socket path
    return False, frozenset(hosts), tuple(networks)


def _is_trusted(
    host: str, hosts: frozenset[str | _Address], networks: tuple[_Network, ...]
) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host in hosts
    return ip in hosts or any(ip in net for net in networks)


def positions_from(cursor: str | None, channels: list[str]) -> dict[str, StreamId | None]:
    """Positions on the requested (already authorized) channels only: a cursor never adds
    a channel by itself."""
    if cursor is not None and len(cursor) > cursor_codec.MAX_CURSOR_CHARS:
        raise BadRequest("cursor too long")
    return cursor_codec.positions_for(cursor or None, channels)
