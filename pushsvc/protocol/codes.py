"""WebSocket close codes used by pushsvc: the one table (docs/reference/close-codes.md is
checked against it by the tests).

Codes below 4000 are RFC 6455's; 4000-4999 are private to pushsvc. A client reconnects
with its cursor after every code except 4400, 4401 (without a fresh token) and 4403.
"""

from __future__ import annotations

WS_1000_NORMAL_CLOSURE = 1000
WS_1001_GOING_AWAY = 1001
WS_1009_MESSAGE_TOO_BIG = 1009
WS_1011_INTERNAL_ERROR = 1011
WS_1013_TRY_AGAIN_LATER = 1013
WS_4000_HEARTBEAT_TIMEOUT = 4000
WS_4008_SLOW_CONSUMER = 4008
WS_4400_BAD_REQUEST = 4400
WS_4401_UNAUTHORIZED = 4401
WS_4402_TOKEN_EXPIRED = 4402
WS_4403_FORBIDDEN = 4403
WS_4404_NOT_FOUND = 4404
WS_4429_RATE_LIMITED = 4429

# code -> (name, meaning, should the client reconnect and resume)
CLOSE_CODES: dict[int, tuple[str, str, bool]] = {
    WS_1000_NORMAL_CLOSURE: ("normal", "closed by the client or the server on purpose", False),
    WS_1001_GOING_AWAY: ("going-away", "the server is shutting down or restarting", True),
    WS_1009_MESSAGE_TOO_BIG: ("too-big", "a frame exceeded max_frame_bytes", True),
    WS_1011_INTERNAL_ERROR: ("internal", "server or backend failure", True),
    WS_1013_TRY_AGAIN_LATER: ("try-later", "connection limit reached", True),
    WS_4000_HEARTBEAT_TIMEOUT: (
        "idle",
        "subscribed to nothing and no client frame within idle_timeout",
        True,
    ),
    WS_4008_SLOW_CONSUMER: (
        "slow-consumer",
        "the outbound queue overflowed; resume from the last cursor loses nothing",
        True,
    ),
    WS_4400_BAD_REQUEST: ("bad-request", "malformed frame, cursor or channel name", False),
    WS_4401_UNAUTHORIZED: ("unauthorized", "missing or invalid token", False),
    WS_4402_TOKEN_EXPIRED: ("token-expired", "the token expired; reconnect with a fresh one", True),
    WS_4403_FORBIDDEN: ("forbidden", "channel not granted by the token", False),
    WS_4404_NOT_FOUND: ("not-found", "unknown resource", False),
    WS_4429_RATE_LIMITED: ("rate-limited", "publish rate exceeded", True),
}


def close_codes_markdown() -> str:
    """The close-code table (docs/reference/close-codes.md)."""
    rows = ["| code | name | meaning | client reconnects and resumes |", "|---|---|---|---|"]
    for code, (name, meaning, resume) in sorted(CLOSE_CODES.items()):
        rows.append(f"| {code} | {name} | {meaning} | {'yes' if resume else 'no'} |")
    return "\n".join(rows) + "\n"
