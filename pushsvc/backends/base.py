"""The log contract that every backend honours (one test suite checks them all).

Guarantees:

- **Per-channel total order, monotonic IDs.** ``append`` assigns each event an ID
  ``(ms, seq)`` greater than every ID the channel ever had, even across trims and restarts
  of the process (Redis: the stream's last-generated ID; ``ms`` is the server clock, so an
  ID also tells when the event was stored).
- **Idempotency.** ``append`` with an ``idempotency_key`` already used on that channel
  (within ``idempotency_ttl``) stores nothing and answers the original event, even
  when the channel expired meanwhile (below).
- **Reads.** ``read_after(channel, after, limit)`` answers up to ``limit`` events with
  ``id > after`` in ID order, the channel's ``top`` (last ID ever assigned, ``(0, 0)``
  when none) and a ``Gap`` when events after ``after`` were trimmed: ``Gap.until`` is the
  greatest trimmed ID, so the events in ``(after, until]`` are the ones missing and
  everything after ``until`` that is still retained is answered.
- **Retention.** At least the newest ``max_len`` events are kept (exactly ``max_len``
  unless ``approximate``); events older than ``max_age`` seconds are trimmed when the
  channel is next written to.
- **Expiry: nothing grows without bound.** A channel with no event for ``max_age`` +
  ``EXPIRY_MARGIN`` seconds is dropped whole (Redis: its stream key expires, armed by
  the append itself; memory: evicted lazily and by a bounded periodic sweep, unless a
  listener holds it); its idempotency records expire on their own TTL. A dropped
  channel reads as one never written (``top`` is ``(0, 0)``; its next event still gets
  an ID above every earlier one, from the clock), except that a reader positioned on it
  cannot be told that nothing followed its position: ``read_after`` with ``after`` older
  than the expiry horizon (now - ``max_age``, the newest a dropped event can be) answers
  ``Gap(after, (horizon_ms + 1, 0))`` (``expired_gap``): a possible loss is explicit,
  never silent. ``after == (0, 0)`` gets no gap (nothing seen, nothing known lost), nor
  does a position newer than the horizon (no event after it can have expired).
- **Live notifications.** After ``await listen(channel)`` returns, every event appended
  to that channel afterwards is passed to the sink, exactly once and in ID order per
  channel, including across lost connections to the backend (the listener remembers
  the last ID per channel and re-reads the log after reconnecting). The sink is called
  from the event loop and must not block. When that re-read finds events trimmed before
  they could be passed on (a long outage on a busy channel), the ``Gap`` goes to the gap
  sink first, then the events after it: nothing is skipped silently.

Presence (DESIGN 8), per channel, kept beside the log but never in it:

- **Model.** A connection entry ``(channel, conn_id, subject, info)``; a member is a
  subject with one or more entries. ``PresenceDiff.connections`` is the member's entry
  count *after* the change: a ``join`` at 1 is the member joining, a ``leave`` at 0 the
  member leaving; a diff is emitted for every entry added or removed, so that a view can
  keep the counts. A member's ``info`` is that of its most recently added entry.
- **Idempotent.** ``presence_join`` of a ``conn_id`` already present renews it and emits
  nothing; ``presence_leave`` of an unknown one does nothing.
- **Expiry.** An entry expires ``retention.presence_ttl`` seconds after it was joined or
  last renewed by ``presence_refresh`` (the backend's clock). Expired entries are swept,
  with a ``leave`` diff each, by any presence call on their channel, and every refresh
  sweeps the channels it renews or is asked to sweep. A process that refreshes every
  ``interval`` and sweeps the channels it watches therefore sees the members of a
  crashed process leave within ``presence_ttl + interval``. Storage of a channel whose
  entries all left or expired is freed (Redis: its keys carry a TTL and are deleted when
  empty): nothing grows without bound.
- **Live only.** Diffs are not appended to the log and are not replayed after a lost
  listener connection: the snapshot is the recovery. Like events, diffs of a channel go
  to the presence sink of every process listening to it (``listen``; the one that
  caused them included), from the event loop; the sink must not block.
- **Counts.** ``presence_stats`` answers (members, connections) without a scan of the
  members (Redis: two ``HLEN``; plus the sweep of entries that expired meanwhile).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pushsvc.protocol.events import Event, Gap
from pushsvc.protocol.ids import ZERO, StreamId
from pushsvc.protocol.presence import PresenceDiff, PresenceEntry, PresenceSnapshot

Sink = Callable[[Event], None]
GapSink = Callable[[Gap], None]


# Seconds a channel outlives the ``max_age`` of its newest event before it is dropped: a
# clock stepped back by less than this still cannot drop an event younger than ``max_age``
# (see ``expired_gap``).
EXPIRY_MARGIN = 1.0


@dataclass(frozen=True, slots=True)
class Retention:
    max_len: int = 10_000
    max_age: float = 24 * 3600.0
    approximate: bool = True
    # How long a retried publish is recognised: minutes, the span over which clients retry
    # (see ``Settings.idempotency_ttl``), not the log's retention.
    idempotency_ttl: float = 600.0
    # Seconds a presence entry lives after its last renewal.
    presence_ttl: float = 15.0


@dataclass(slots=True)
class Message:
    """One message to append. (Not frozen: a frozen dataclass's ``__init__`` sets each
    field through ``object.__setattr__``, four times the cost, and a batch publish
    builds one per message.)"""

    channel: str
    name: str
    data: bytes
    binary: bool = False
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class ReadResult:
    events: list[Event]
    top: StreamId
    gap: Gap | None = None


PresenceSink = Callable[[PresenceDiff], None]


def expired_gap(channel: str, after: StreamId, now_ms: int, max_age: float) -> Gap | None:
    """The gap a reader at ``after`` gets from a channel that holds nothing (never
    written, or dropped after ``max_age`` with no event): every dropped event was at
    least ``max_age`` old, so its ID is below ``(now_ms - max_age + 1, 0)``. That bound
    fits a cursor (a seq of ``MAX_SEQ`` would not), and no event can ever have it: a new
    one is stamped ``now_ms`` or later."""
    if after == ZERO or max_age <= 0:
        return None
    until = (now_ms - int(max_age * 1000) + 1, 0)
    return Gap(channel, after, until) if after < until else None


@dataclass(frozen=True, slots=True)
class ListenerStatus:
    connected: bool
    reconnects: int
    channels: int


class Backend(abc.ABC):
    """A durable per-channel log with live notifications."""

    def __init__(self, retention: Retention) -> None:
        self.retention = retention
        self._sink: Sink | None = None
        self._gap_sink: GapSink | None = None
        self._presence_sink: PresenceSink | None = None

    def set_sink(self, sink: Sink, gap_sink: GapSink | None = None) -> None:
        """Where live events go (the process's hub), and the listener's gaps. Set before
        ``listen``."""
        self._sink = sink
        self._gap_sink = gap_sink

    def set_presence_sink(self, sink: PresenceSink) -> None:
        """Where the presence diffs of listened channels go. Set before ``listen``."""
        self._presence_sink = sink

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect. Raise ``BackendError`` when the backend cannot be reached."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def append_many(self, messages: Sequence[Message]) -> list[Event]:
        """Append messages, in order; answer the stored events (or, for a repeated
        idempotency key, the original event)."""

    async def append(self, message: Message) -> Event:
        return (await self.append_many([message]))[0]

    @abc.abstractmethod
    async def read_after(self, channel: str, after: StreamId, limit: int) -> ReadResult: ...

    @abc.abstractmethod
    async def top(self, channel: str) -> StreamId:
        """The last ID assigned on ``channel``, ``(0, 0)`` if none."""

    @abc.abstractmethod
    async def listen(self, channel: str) -> None:
        """Start live notifications for ``channel``; returns once they are in force."""

    @abc.abstractmethod
    async def unlisten(self, channel: str) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """One round trip to the backend; raise ``BackendError`` on failure."""

    def listener_status(self) -> ListenerStatus:
        return ListenerStatus(connected=True, reconnects=0, channels=0)

    # --- presence ----------------------------------------------------------------------

    @abc.abstractmethod
    async def presence_join(self, entry: PresenceEntry) -> int:
        """Add ``entry`` (a ``join`` diff), or renew it when its ``conn_id`` is present.
        Answers the channel's ``seq`` after it (that of its last change): unchanged by a
        renewal, so a caller can tell whether anything changed since a seq it knows."""

    async def presence_join_many(self, entries: Sequence[PresenceEntry]) -> None:
        """``presence_join`` of each entry (Redis: in one round trip)."""
        for entry in entries:
            await self.presence_join(entry)

    @abc.abstractmethod
    async def presence_leave(self, channel: str, conn_id: str) -> None:
        """Remove an entry (a ``leave`` diff); nothing when it is not there."""

    @abc.abstractmethod
    async def presence_refresh(
        self, entries: Sequence[PresenceEntry], sweep: Iterable[str] = ()
    ) -> list[PresenceEntry]:
        """Renew ``entries`` and sweep the expired entries of their channels and of the
        channels in ``sweep``, in one batched round trip. Answer the entries that were
        not present (expired and swept meanwhile, or not joined yet): they are NOT added
        back; the caller joins those that are still live."""

    @abc.abstractmethod
    async def presence_snapshot(self, channel: str, limit: int) -> PresenceSnapshot:
        """The channel's members (expired entries swept first); counts only, with
        ``truncated``, when there are more than ``limit`` members."""

    @abc.abstractmethod
    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """(members, connections) of the channel (expired entries swept first)."""


__all__ = [
    "EXPIRY_MARGIN",
    "Backend",
    "GapSink",
    "ListenerStatus",
    "Message",
    "PresenceDiff",
    "PresenceEntry",
    "PresenceSink",
    "PresenceSnapshot",
    "ReadResult",
    "Retention",
    "Sink",
    "expired_gap",
]
