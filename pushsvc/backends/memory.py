"""The embedded, in-process log (``memory://``): the default for one process.

It honours the same contract as Redis, including Redis-style IDs, trimming with an exact
record of the greatest trimmed ID, and idempotency keys. It is not shared between
processes: ``pushsvc serve --workers N`` needs ``redis://``.

Presence is kept per channel in a ``PresenceTable`` (``pushsvc.protocol.presence``: the
pure rules that decide diffs), on the monotonic clock. Expired entries are swept by any
presence call on their channel, and every refresh sweeps every channel that has
presence, so an entry that its owner forgot (never left, never refreshed) leaves by
itself and a channel's presence is dropped with its last entry.
"""

from __future__ import annotations

import bisect
import dataclasses
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
from pushsvc.protocol.presence import PresenceTable


class _Log:
    __slots__ = ("events", "idem", "ids", "last", "max_deleted")

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.ids: deque[StreamId] = deque()
        self.last: StreamId = ZERO
        self.max_deleted: StreamId = ZERO
        self.idem: dict[str, tuple[float, Event]] = {}


class MemoryBackend(Backend):
    def __init__(self, url: str = "memory://", retention: Retention | None = None) -> None:
        super().__init__(retention or Retention())
        self._logs: dict[str, _Log] = {}
        self._listening: set[str] = set()
        self._presence: dict[str, PresenceTable] = {}
        self._presence_seq = 0
        self._presence_last: dict[str, int] = {}  # channels with members: last change

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

    def _emit(self, diffs: Iterable[PresenceDiff | None]) -> None:
        sink = self._presence_sink
        for diff in diffs:
            if diff is None:
                continue
            # one counter for all channels: it never restarts when a table is dropped
            self._presence_seq += 1
            self._presence_last[diff.channel] = self._presence_seq
            if sink is not None and diff.channel in self._listening:
                sink(dataclasses.replace(diff, seq=self._presence_seq))

    def _table(self, channel: str, now: float) -> PresenceTable | None:
        """The channel's presence with expired entries swept (None when empty)."""
        table = self._presence.get(channel)
        if table is None:
            return None
        self._emit(table.expire(now))
        if not table:
            self._drop(channel)
            return None
        return table

    def _drop(self, channel: str) -> None:
        del self._presence[channel]
        self._presence_last.pop(channel, None)

    async def presence_join(self, entry: PresenceEntry) -> int:
        now = time.monotonic()
        table = self._table(entry.channel, now)
        if table is None:
            table = self._presence[entry.channel] = PresenceTable()
        self._emit([table.join(entry, now + self.retention.presence_ttl)])
        return self._presence_last.get(entry.channel, 0)

    async def presence_leave(self, channel: str, conn_id: str) -> None:
        table = self._table(channel, time.monotonic())
        if table is not None:
            self._emit([table.leave(conn_id)])
            if not table:
                self._drop(channel)

    async def presence_refresh(
        self, entries: Sequence[PresenceEntry], sweep: Iterable[str] = ()
    ) -> list[PresenceEntry]:
        now = time.monotonic()
        deadline = now + self.retention.presence_ttl
        missing = []
        for entry in entries:  # renewed first: a late refresh does not drop its own
            table = self._presence.get(entry.channel)
            if table is None or not table.renew(entry.conn_id, deadline):
                missing.append(entry)
        for channel in list(self._presence):  # every channel: in-process, all are ours
            self._table(channel, now)
        return missing

    async def presence_snapshot(self, channel: str, limit: int) -> PresenceSnapshot:
        table = self._table(channel, time.monotonic())
        snap = PresenceSnapshot([], 0, 0) if table is None else table.snapshot(limit)
        return dataclasses.replace(snap, seq=self._presence_last.get(channel, 0))

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        table = self._table(channel, time.monotonic())
        return (0, 0) if table is None else table.stats()
