"""WebSocket close codes used by pushsvc: the one table, and what a client does after each.

Codes below 4000 are RFC 6455's; 4000-4999 are private to pushsvc. ``CLOSE_CODES`` is the
source of truth: ``python -m pushsvc._docs`` generates docs/reference/close-codes.md and
the policy block of ``static/pushsvc.js`` and ``static/pushsvc.d.ts`` from it, the Python
client imports it, and tests/test_close_codes.py fails when any of them differs.

A client does one of three things after a close (``Policy``):

- ``resume``: reconnect with backoff and resume from its cursor (nothing is lost); a
  code marked ``immediate`` (1012, a drain: the instance is leaving, the others are
  fine) reconnects at once, without a backoff delay;
- ``reauth``: "fatal unless the client can get a fresh token": reconnect only through a
  new credentials check (``POST /v1/negotiate`` with a token from the client's token
  source, a callable); the client stops when that check is refused, so a client with a
  fixed token stops;
- ``stop``: reconnecting as is cannot help (a malformed request, a channel not granted):
  the client stops and reports the close to the application.

A code not in the table (1005/1006: no close frame, the network dropped the connection;
a proxy's own code) is ``resume``. pushsvc never closes a live connection with 1000: a
1000 the client did not send comes from an intermediary and is resumed too.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

WS_1000_NORMAL_CLOSURE = 1000
WS_1001_GOING_AWAY = 1001
WS_1009_MESSAGE_TOO_BIG = 1009
WS_1011_INTERNAL_ERROR = 1011
WS_1012_SERVICE_RESTART = 1012
WS_1013_TRY_AGAIN_LATER = 1013
WS_4000_HEARTBEAT_TIMEOUT = 4000
WS_4008_SLOW_CONSUMER = 4008
WS_4400_BAD_REQUEST = 4400
WS_4401_UNAUTHORIZED = 4401
WS_4402_TOKEN_EXPIRED = 4402
WS_4403_FORBIDDEN = 4403
WS_4404_NOT_FOUND = 4404
WS_4429_RATE_LIMITED = 4429


class Policy(StrEnum):
    """What a client does after a close (see the module docstring)."""

    RESUME = "resume"
    REAUTH = "reauth"
    STOP = "stop"


class CloseCode(NamedTuple):
    name: str
    sent: str  # when the server sends it
    policy: Policy
    immediate: bool = False  # resume without a backoff delay (another instance is up)


CLOSE_CODES: dict[int, CloseCode] = {
    WS_1000_NORMAL_CLOSURE: CloseCode(
        "normal",
        "never by the server to a live connection; the client closes with it on purpose",
        Policy.RESUME,
    ),
    WS_1001_GOING_AWAY: CloseCode(
        "going-away",
        "the server is shutting down without a drain (the app's hub closed)",
        Policy.RESUME,
    ),
    WS_1009_MESSAGE_TOO_BIG: CloseCode(
        "too-big", "a frame exceeded max_frame_bytes", Policy.RESUME
    ),
    WS_1011_INTERNAL_ERROR: CloseCode("internal", "server or backend failure", Policy.RESUME),
    WS_1012_SERVICE_RESTART: CloseCode(
        "service-restart",
        "the instance is draining (SIGTERM): resume on another one",
        Policy.RESUME,
        immediate=True,
    ),
    WS_1013_TRY_AGAIN_LATER: CloseCode("try-later", "connection limit reached", Policy.RESUME),
    WS_4000_HEARTBEAT_TIMEOUT: CloseCode(
        "idle", "subscribed to nothing and no client frame within idle_timeout", Policy.RESUME
    ),
    WS_4008_SLOW_CONSUMER: CloseCode(
        "slow-consumer",
        "the outbound queue overflowed; resume from the last cursor loses nothing",
        Policy.RESUME,
    ),
    WS_4400_BAD_REQUEST: CloseCode(
        "bad-request", "malformed frame, cursor or channel name", Policy.STOP
    ),
    WS_4401_UNAUTHORIZED: CloseCode("unauthorized", "missing or invalid token", Policy.REAUTH),
    WS_4402_TOKEN_EXPIRED: CloseCode(
        "token-expired", "the connection's token expired", Policy.REAUTH
    ),
    WS_4403_FORBIDDEN: CloseCode("forbidden", "channel not granted by the token", Policy.STOP),
    WS_4404_NOT_FOUND: CloseCode("not-found", "unknown resource", Policy.STOP),
    WS_4429_RATE_LIMITED: CloseCode("rate-limited", "publish rate exceeded", Policy.RESUME),
}

_AFTER = {
    Policy.RESUME: "reconnects and resumes",
    Policy.REAUTH: "reconnects with a fresh token; stops without one",
    Policy.STOP: "stops",
}


def close_policy(code: int) -> Policy:
    """What a client does after ``code``: a code not in the table (1005, 1006: the
    connection dropped) is resumed."""
    entry = CLOSE_CODES.get(code)
    return Policy.RESUME if entry is None else entry.policy


def reconnect_at_once(code: int) -> bool:
    """Whether a client resumes after ``code`` without a backoff delay (a drain)."""
    entry = CLOSE_CODES.get(code)
    return entry is not None and entry.immediate


def policies() -> dict[int, str]:
    """code -> policy name, the form the clients embed."""
    return {code: str(entry.policy) for code, entry in sorted(CLOSE_CODES.items())}


def _after(entry: CloseCode) -> str:
    if entry.immediate:
        return "reconnects at once (no backoff delay) and resumes"
    return _AFTER[entry.policy]


def _immediate() -> str:
    return ", ".join(str(c) for c, e in sorted(CLOSE_CODES.items()) if e.immediate)


def close_codes_markdown() -> str:
    """The close-code table (docs/reference/close-codes.md)."""
    rows = ["| code | name | sent when | policy | the client |", "|---|---|---|---|---|"]
    for code, entry in sorted(CLOSE_CODES.items()):
        rows.append(
            f"| {code} | {entry.name} | {entry.sent} | `{entry.policy}` | {_after(entry)} |"
        )
    rows.append(
        f"| other (1005, 1006) | | no close frame: the connection dropped | `{Policy.RESUME}` "
        f"| {_AFTER[Policy.RESUME]} |"
    )
    return "\n".join(rows) + "\n"


def close_codes_js() -> str:
    """The policy block embedded in static/pushsvc.js."""
    lines = [
        "// What the client does after a close code; a code not listed (1005, 1006: the",
        "// connection dropped) is resumed. resume: reconnect and resume from the cursor;",
        "// reauth: reconnect through a new negotiate, which stops the client unless",
        "// options.token is a function (a fresh token); stop: close the client.",
        "export const CLOSE_CODES = Object.freeze({",
    ]
    for code, entry in sorted(CLOSE_CODES.items()):
        lines.append(
            f'  {code}: Object.freeze({{ name: "{entry.name}", policy: "{entry.policy}" }}),'
        )
    lines.append("});")
    lines.append("// Resumed without a backoff delay: a drain (another instance takes over).")
    lines.append(f"export const RECONNECT_AT_ONCE = Object.freeze([{_immediate()}]);")
    return "\n".join(lines) + "\n"


def close_codes_dts() -> str:
    """The policy block embedded in static/pushsvc.d.ts."""
    names = " | ".join(f'"{p}"' for p in Policy)
    lines = [
        "/** What the client does after a close: see CLOSE_CODES. */",
        f"export type ClosePolicy = {names};",
        "/** Every close code pushsvc sends; a code not listed (1005, 1006) is resumed. */",
        "export declare const CLOSE_CODES: {",
    ]
    for code, entry in sorted(CLOSE_CODES.items()):
        lines.append(
            f'  readonly {code}: {{ readonly name: "{entry.name}"; '
            f'readonly policy: "{entry.policy}" }};'
        )
    lines.append("};")
    lines.append("/** Close codes resumed without a backoff delay (a drain). */")
    lines.append("export declare const RECONNECT_AT_ONCE: readonly number[];")
    return "\n".join(lines) + "\n"
