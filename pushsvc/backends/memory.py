"""The embedded, in-process log (``memory://``): the default for one process.

It honours the same contract as Redis, including Redis-style IDs, trimming with an exact
record of the greatest trimmed ID, and idempotency keys. It is not shared between
processes: ``pushsvc serve --workers N`` needs ``redis://``.

Presence is kept per channel in a ``PresenceTable`` (``pushsvc.protocol.presence``: the
pure rules that decide diffs), on the monotonic clock. Expired entries are swept by any
presence call on their channel, and every refresh sweeps every channel that has
presence, so an entry that its owner forgot (never left, never refreshed) leaves by
itself and a channel's presence is dropped with its last entry.

Expiry (nothing grows without bound): the logs are kept in least-recently-appended
order, so the channels that may have expired are at the front. A channel with no event
for ``max_age`` + ``EXPIRY_MARGIN``, no idempotency record still in force and no
listener is evicted lazily (a read finds it expired; each append looks at the
``SWEEP_ON_APPEND`` oldest) and by a periodic sweep of at most ``SWEEP_MAX`` channels a
tick: no per-channel timer, work bounded per call.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence

from pushsvc._tasks import cancel_and_wait
from pushsvc.backends.base import (
    EXPIRY_MARGIN,
    Backend,
    ListenerStatus,
    Message,
    PresenceDiff,
    PresenceEntry,
    PresenceSnapshot,
    ReadResult,
    Retention,
    expired_gap,
)
from pushsvc.protocol.events import Event, Gap
from pushsvc.protocol.ids import ZERO, StreamId
from pushsvc.protocol.presence import PresenceTable

SWEEP_ON_APPEND = 2
SWEEP_MAX = 1000


class _Log:
    __slots__ = ("events", "idem", "idem_until", "ids", "last", "max_deleted")

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.ids: deque[StreamId] = deque()
        self.last: StreamId = ZERO
        self.max_deleted: StreamId = ZERO
        self.idem: dict[str, tuple[float, Event]] = {}
        self.idem_until = 0.0  # monotonic time the last idempotency record expires


class MemoryBackend(Backend):
    def __init__(self, url: str = "memory://", retention: Retention | None = None) -> None:
        super().__init__(retention or Retention())
        # least recently appended first: the channels that may have expired lead
        self._logs: OrderedDict[str, _Log] = OrderedDict()
        self._listening: set[str] = set()
        self._presence: dict[str, PresenceTable] = {}
        self._presence_seq = 0
        self._presence_last: dict[str, int] = {}  # channels with members: last change
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def channel_count(self) -> int:
        """Channels whose log is held (evicted ones excluded)."""
        return len(self._logs)

    async def start(self) -> None:
        if self._sweeper is None and self.retention.max_age > 0:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="pushsvc-memory-sweep")

    async def close(self) -> None:
        self._listening.clear()
        await cancel_and_wait(self._sweeper)
        self._sweeper = None

    def _log(self, channel: str) -> _Log:
        log = self._logs.get(channel)
        if log is None:
            log = self._logs[channel] = _Log()
        else:
            self._logs.move_to_end(channel)
        return log

    # --- expiry ------------------------------------------------------------------------

    def _expired(self, channel: str, log: _Log, now_ms: float, now: float) -> bool:
        """No event for max_age + margin, no idempotency record in force, no listener."""
        max_age = self.retention.max_age
        return (
            max_age > 0
            and log.last[0] <= now_ms - (max_age + EXPIRY_MARGIN) * 1000
            and log.idem_until <= now
            and channel not in self._listening
        )

    def sweep(self, limit: int = SWEEP_MAX) -> int:
        """Look at up to ``limit`` of the least recently appended channels, evict those
        expired; answer how many were evicted. Stops at the first one that is not
        expired (those behind it were appended later), except one that only a listener
        or an idempotency record holds: that one goes to the back, to be looked at
        again after the others."""
        now_ms, now = time.time() * 1000, time.monotonic()
        horizon_ms = now_ms - (self.retention.max_age + EXPIRY_MARGIN) * 1000
        evicted = 0
        for _ in range(min(limit, len(self._logs))):
            channel, log = next(iter(self._logs.items()))
            if self._expired(channel, log, now_ms, now):
                del self._logs[channel]
                evicted += 1
            elif log.last[0] <= horizon_ms:  # old, but held: look again later
                self._logs.move_to_end(channel)
            else:
                break
        return evicted

    async def _sweep_forever(self) -> None:
        interval = min(max(self.retention.max_age / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    def _read_log(self, channel: str) -> _Log | None:
        """The channel's log, None when there is none or it has just expired."""
        log = self._logs.get(channel)
        if log is not None and self._expired(channel, log, time.time() * 1000, time.monotonic()):
            del self._logs[channel]
            return None
        return log

    def _next_id(self, log: _Log, ms: int) -> StreamId:
        last_ms, last_seq = log.last
        return (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)

    async def append_many(self, messages: Sequence[Message]) -> list[Event]:
        out: list[Event] = []
        now = time.monotonic()
        now_ms = int(time.time() * 1000)
        oldest_ms = now_ms - int(self.retention.max_age * 1000)  # kept from here on
        self.sweep(SWEEP_ON_APPEND)
        for m in messages:
            log = self._log(m.channel)
            if m.idempotency_key is not None:
                seen = log.idem.get(m.idempotency_key)
                if seen is not None and seen[0] > now:
                    out.append(seen[1])
                    continue
            event = Event(m.channel, self._next_id(log, now_ms), m.name, m.data, m.binary)
            log.last = event.id
            log.events.append(event)
            log.ids.append(event.id)
            if m.idempotency_key is not None:
                log.idem_until = now + self.retention.idempotency_ttl
                log.idem[m.idempotency_key] = (log.idem_until, event)
                if len(log.idem) > 2 * self.retention.max_len:
                    self._expire_idem(log, now)
            self._trim(log, oldest_ms)
            out.append(event)
            if self._sink is not None and m.channel in self._listening:
                self._sink(event)
        return out

    def _expire_idem(self, log: _Log, now: float) -> None:
        for key in [k for k, (exp, _) in log.idem.items() if exp <= now]:
            del log.idem[key]

    def _trim(self, log: _Log, oldest_ms: int) -> None:
        max_len = self.retention.max_len
        while log.events and (len(log.events) > max_len or log.ids[0][0] < oldest_ms):
            log.events.popleft()
            log.max_deleted = log.ids.popleft()

    async def read_after(self, channel: str, after: StreamId, limit: int) -> ReadResult:
        log = self._read_log(channel)
        if log is None:
            gap = expired_gap(channel, after, int(time.time() * 1000), self.retention.max_age)
            return ReadResult([], ZERO, gap)
        gap = Gap(channel, after, log.max_deleted) if log.max_deleted > after else None
        start = bisect.bisect_right(log.ids, after)
        events = list(itertools.islice(log.events, start, start + limit))
        return ReadResult(events, log.last, gap)

    async def top(self, channel: str) -> StreamId:
        log = self._read_log(channel)
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
