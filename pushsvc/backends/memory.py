"""The embedded, in-process log (``memory://``): the default for one process.

It honours the same contract as Redis, including Redis-style IDs, trimming with an exact
record of the greatest trimmed ID, and idempotency keys. It is not shared between
processes: ``pushsvc serve --workers N`` needs ``redis://``.

Presence is kept per channel in two dicts (connection entries with their deadline, and
members with their entry count); expired entries are swept by any presence call on their
channel, and every refresh sweeps every channel that has presence, so an entry that its
owner forgot (never left, never refreshed) leaves by itself and a channel's presence is
dropped with its last entry.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import deque
from collections.abc import Iterable, Sequence

from pushsvc.backends.base import (
    Backend,
    ListenerStatus,
    Message,
    PresenceDiff,
    PresenceEntry,
    PresenceSnapshot,
    ReadResult,
    Retention,
)
from pushsvc.protocol.events import Event, Gap
from pushsvc.protocol.ids import ZERO, StreamId


class _Log:
    __slots__ = ("events", "idem", "ids", "last", "max_deleted")

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.ids: deque[StreamId] = deque()
        self.last: StreamId = ZERO
        self.max_deleted: StreamId = ZERO
        self.idem: dict[str, tuple[float, Event]] = {}


class _Presence:
    __slots__ = ("conns", "members")

    def __init__(self) -> None:
        # conn_id -> [entry, deadline (monotonic)]
        self.conns: dict[str, tuple[PresenceEntry, float]] = {}
        # subject -> (entry count, info of its latest entry)
        self.members: dict[str, tuple[int, bytes]] = {}


class MemoryBackend(Backend):
    def __init__(self, url: str = "memory://", retention: Retention | None = None) -> None:
        super().__init__(retention or Retention())
        self._logs: dict[str, _Log] = {}
        self._listening: set[str] = set()
        self._presence: dict[str, _Presence] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._listening.clear()

    def _log(self, channel: str) -> _Log:
        log = self._logs.get(channel)
        if log is None:
            log = self._logs[channel] = _Log()
        return log

    def _next_id(self, log: _Log) -> StreamId:
        ms = int(time.time() * 1000)
        last_ms, last_seq = log.last
        return (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)

    async def append_many(self, messages: Sequence[Message]) -> list[Event]:
        out: list[Event] = []
        now = time.monotonic()
        for m in messages:
            log = self._log(m.channel)
            if m.idempotency_key is not None:
                seen = log.idem.get(m.idempotency_key)
                if seen is not None and seen[0] > now:
                    out.append(seen[1])
                    continue
            event = Event(m.channel, self._next_id(log), m.name, m.data, m.binary)
            log.last = event.id
            log.events.append(event)
            log.ids.append(event.id)
            if m.idempotency_key is not None:
                log.idem[m.idempotency_key] = (now + self.retention.idempotency_ttl, event)
                if len(log.idem) > 2 * self.retention.max_len:
                    self._expire_idem(log, now)
            self._trim(log)
            out.append(event)
            if self._sink is not None and m.channel in self._listening:
                self._sink(event)
        return out

    def _expire_idem(self, log: _Log, now: float) -> None:
        for key in [k for k, (exp, _) in log.idem.items() if exp <= now]:
            del log.idem[key]

    def _trim(self, log: _Log) -> None:
        min_ms = int((time.time() - self.retention.max_age) * 1000)
        while log.events and (len(log.events) > self.retention.max_len or log.ids[0][0] < min_ms):
            log.events.popleft()
            log.max_deleted = log.ids.popleft()

    async def read_after(self, channel: str, after: StreamId, limit: int) -> ReadResult:
        log = self._logs.get(channel)
        if log is None:
            return ReadResult([], ZERO)
        gap = Gap(channel, after, log.max_deleted) if log.max_deleted > after else None
        start = bisect.bisect_right(log.ids, after)
        events = list(itertools.islice(log.events, start, start + limit))
        return ReadResult(events, log.last, gap)

    async def top(self, channel: str) -> StreamId:
        log = self._logs.get(channel)
        return ZERO if log is None else log.last

    async def listen(self, channel: str) -> None:
        self._listening.add(channel)

    async def unlisten(self, channel: str) -> None:
        self._listening.discard(channel)

    async def ping(self) -> None:
        return None

    def listener_status(self) -> ListenerStatus:
        return ListenerStatus(True, 0, len(self._listening))

    # --- presence ----------------------------------------------------------------------

    def _emit(self, diff: PresenceDiff) -> None:
        if self._presence_sink is not None and diff.channel in self._listening:
            self._presence_sink(diff)

    def _add(self, p: _Presence, entry: PresenceEntry, deadline: float) -> None:
        p.conns[entry.conn_id] = (entry, deadline)
        count = p.members.get(entry.subject, (0, b""))[0] + 1
        p.members[entry.subject] = (count, entry.info)
        self._emit(PresenceDiff(entry.channel, "join", entry.subject, entry.info, count))

    def _remove(self, p: _Presence, conn_id: str) -> None:
        entry, _ = p.conns.pop(conn_id)
        count, info = p.members[entry.subject]
        if count > 1:
            p.members[entry.subject] = (count - 1, info)
        else:
            del p.members[entry.subject]
        self._emit(PresenceDiff(entry.channel, "leave", entry.subject, entry.info, count - 1))

    def _swept(self, channel: str, now: float) -> _Presence | None:
        """The channel's presence with expired entries removed (None when empty)."""
        p = self._presence.get(channel)
        if p is None:
            return None
        for conn_id in [c for c, (_, deadline) in p.conns.items() if deadline <= now]:
            self._remove(p, conn_id)
        if not p.conns:
            del self._presence[channel]
            return None
        return p

    async def presence_join(self, entry: PresenceEntry) -> None:
        now = time.monotonic()
        p = self._swept(entry.channel, now)
        if p is None:
            p = self._presence[entry.channel] = _Presence()
        deadline = now + self.retention.presence_ttl
        if entry.conn_id in p.conns:
            p.conns[entry.conn_id] = (p.conns[entry.conn_id][0], deadline)
        else:
            self._add(p, entry, deadline)

    async def presence_leave(self, channel: str, conn_id: str) -> None:
        p = self._swept(channel, time.monotonic())
        if p is not None and conn_id in p.conns:
            self._remove(p, conn_id)
            if not p.conns:
                del self._presence[channel]

    async def presence_refresh(
        self, entries: Sequence[PresenceEntry], sweep: Iterable[str] = ()
    ) -> list[PresenceEntry]:
        now = time.monotonic()
        deadline = now + self.retention.presence_ttl
        missing = []
        for entry in entries:  # renewed first: a late refresh does not drop its own
            p = self._presence.get(entry.channel)
            held = None if p is None else p.conns.get(entry.conn_id)
            if p is None or held is None:
                missing.append(entry)
            else:
                p.conns[entry.conn_id] = (held[0], deadline)
        for channel in list(self._presence):  # every channel: in-process, all are ours
            self._swept(channel, now)
        return missing

    async def presence_snapshot(self, channel: str, limit: int) -> PresenceSnapshot:
        p = self._swept(channel, time.monotonic())
        if p is None:
            return PresenceSnapshot([], 0, 0)
        if len(p.members) > limit:
            return PresenceSnapshot([], len(p.members), len(p.conns), truncated=True)
        members = [(s, info, n) for s, (n, info) in sorted(p.members.items())]
        return PresenceSnapshot(members, len(p.members), len(p.conns))

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        p = self._swept(channel, time.monotonic())
        return (0, 0) if p is None else (len(p.members), len(p.conns))
