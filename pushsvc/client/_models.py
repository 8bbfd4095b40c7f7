"""What the client yields (events and gaps), what its presence views hold (members and
their changes), and the names of states and transports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

TRANSPORTS: tuple[str, ...] = ("websocket", "sse", "long-polling")

# on_state(state, transport) is called with one of these
CONNECTING = "connecting"
CONNECTED = "connected"  # on the best transport available
DEGRADED = "degraded"  # on a fallback transport (better ones are re-probed)
DISCONNECTED = "disconnected"
GAP = "gap"  # an event; the connection state does not change
STATES: tuple[str, ...] = (CONNECTING, CONNECTED, DEGRADED, DISCONNECTED, GAP)


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a channel. ``data`` is the JSON value, or ``bytes`` for a binary
    event. ``cursor`` resumes every channel of the client right after this event."""

    channel: str
    event: str
    id: str
    data: Any
    cursor: str

    @property
    def binary(self) -> bool:
        return isinstance(self.data, bytes)


@dataclass(frozen=True, slots=True)
class Gap:
    """Events of ``channel`` with ``after < id <= until`` were trimmed from the server's
    log before this client read them. Delivery goes on after ``until``."""

    channel: str
    after: str
    until: str
    cursor: str = ""


@dataclass(frozen=True, slots=True)
class Member:
    """A member of a channel's presence: a token subject, the ``info`` of its token (of
    its most recently joined connection) and its number of connections."""

    subject: str
    info: dict[str, Any]
    connections: int


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """``member`` appeared on (``join``) or disappeared from (``leave``) ``channel``'s
    presence. A leave carries ``connections == 0``."""

    channel: str
    kind: Literal["join", "leave"]
    member: Member


def parse_id(text: str) -> tuple[int, int]:
    """``"ms-seq"`` as an int tuple, so that IDs compare in log order."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
