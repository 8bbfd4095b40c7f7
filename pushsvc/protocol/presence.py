"""Presence records and the pure table that decides presence diffs (sans-I/O).

A ``PresenceTable`` is one channel's presence: connection entries with a deadline, and
members (subjects) with their entry count. It is fed ``join`` / ``leave`` / ``renew`` /
``expire(now)`` and answers the diffs each causes; the caller owns the clock and the
delivery. The memory backend keeps one per channel; the Redis backend's Lua scripts
implement the same rules on Redis keys, and one contract suite checks both.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pushsvc.exceptions import BadRequest


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    """One connection of a member on a channel. ``info`` is a JSON object, encoded."""

    channel: str
    conn_id: str
    subject: str
    info: bytes = b"{}"


@dataclass(frozen=True, slots=True)
class PresenceDiff:
    """A connection entry added (``join``) or removed (``leave``: left or expired);
    ``connections`` is the member's entry count after the change. ``seq`` orders the
    channel's changes (greater: later; a snapshot says the last one it includes)."""

    channel: str
    kind: Literal["join", "leave"]
    subject: str
    info: bytes
    connections: int
    seq: int = 0


@dataclass(frozen=True, slots=True)
class PresenceSnapshot:
    """Members as ``(subject, info, connections)``, sorted by subject; empty and
    ``truncated`` when there are more than the limit asked for."""

    members: list[tuple[str, bytes, int]]
    member_count: int
    connection_count: int
    truncated: bool = False
    seq: int = 0  # the ``seq`` of the last change it includes


class PresenceTable:
    """One channel's presence. Deadlines are plain numbers on the caller's clock; an
    entry whose deadline is ``<= now`` is expired."""

    __slots__ = ("conns", "members")

    def __init__(self) -> None:
        self.conns: dict[str, tuple[PresenceEntry, float]] = {}
        # subject -> (entry count, info of its latest entry)
        self.members: dict[str, tuple[int, bytes]] = {}

    def __len__(self) -> int:
        return len(self.conns)

    def join(self, entry: PresenceEntry, deadline: float) -> PresenceDiff | None:
        """Add ``entry`` (a ``join``), or only renew it when its ``conn_id`` is here."""
        held = self.conns.get(entry.conn_id)
        if held is not None:
            self.conns[entry.conn_id] = (held[0], deadline)
            return None
        self.conns[entry.conn_id] = (entry, deadline)
        count = self.members.get(entry.subject, (0, b""))[0] + 1
        self.members[entry.subject] = (count, entry.info)
        return PresenceDiff(entry.channel, "join", entry.subject, entry.info, count)

    def leave(self, conn_id: str) -> PresenceDiff | None:
        held = self.conns.pop(conn_id, None)
        if held is None:
            return None
        entry = held[0]
        count, info = self.members[entry.subject]
        if count > 1:
            self.members[entry.subject] = (count - 1, info)
        else:
            del self.members[entry.subject]
        return PresenceDiff(entry.channel, "leave", entry.subject, entry.info, count - 1)

    def renew(self, conn_id: str, deadline: float) -> bool:
        """Push an entry's deadline; False when it is not here (nothing is added)."""
        held = self.conns.get(conn_id)
        if held is None:
            return False
        self.conns[conn_id] = (held[0], deadline)
        return True

    def expire(self, now: float) -> list[PresenceDiff]:
        """Remove the entries expired at ``now``: a ``leave`` each."""
        expired = [c for c, (_, deadline) in self.conns.items() if deadline <= now]
        return [diff for c in expired if (diff := self.leave(c)) is not None]

    def stats(self) -> tuple[int, int]:
        return len(self.members), len(self.conns)

    def snapshot(self, limit: int) -> PresenceSnapshot:
        if len(self.members) > limit:
            return PresenceSnapshot([], len(self.members), len(self.conns), truncated=True)
        members = [(s, info, n) for s, (n, info) in sorted(self.members.items())]
        return PresenceSnapshot(members, len(self.members), len(self.conns))


def presence_version(seqs: Iterable[int]) -> str:
    """What a long-poll client holds: the ``seq`` of the last change of each of its
    channels, in order. It echoes this; when the channels' seqs still say the same,
    nothing changed since and the poll waits instead of answering snapshots."""
    return "p" + ".".join(map(str, seqs))


_PRESENCE_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


def check_presence_id(raw: object) -> str:
    if not isinstance(raw, str) or not _PRESENCE_ID.fullmatch(raw):
        raise BadRequest(
            "presence_id must be 8 to 64 characters of A-Z a-z 0-9 _ -, chosen once by the "
            "client and sent with each of its connections and polls"
        )
    return raw


def client_conn_id(subject: str, presence_id: str) -> str:
    """The presence connection ID of a client that names itself (``presence_id``): the
    same on every transport and instance, so its long-polls, and a WebSocket or SSE
    stream it moves to, are one connection entry; bound to the subject, so that nobody
    else's ``presence_id`` can touch it."""
    digest = hashlib.blake2b(subject.encode(), digest_size=6).hexdigest()
    return f"c.{digest}.{presence_id}"
