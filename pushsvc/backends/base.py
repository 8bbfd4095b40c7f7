"""The log contract that every backend honours (one test suite checks them all).

Guarantees:

- **Per-channel total order, monotonic IDs.** ``append`` assigns each event an ID
  ``(ms, seq)`` greater than every ID the channel ever had, even across trims and restarts
  of the process (Redis: the stream's last-generated ID; ``ms`` is the server clock, so an
  ID also tells when the event was stored).
- **Idempotency.** ``append`` with an ``idempotency_key`` already used on that channel
  (within ``idempotency_ttl``) stores nothing and answers the original event.
- **Reads.** ``read_after(channel, after, limit)`` answers up to ``limit`` events with
  ``id > after`` in ID order, the channel's ``top`` (last ID ever assigned, ``(0, 0)``
  when none) and a ``Gap`` when events after ``after`` were trimmed: ``Gap.until`` is the
  greatest trimmed ID, so the events in ``(after, until]`` are the ones missing and
  everything after ``until`` that is still retained is answered.
- **Retention.** At least the newest ``max_len`` events are kept (exactly ``max_len``
  unless ``approximate``); events older than ``max_age`` seconds are trimmed when the
  channel is next written to.
- **Live notifications.** After ``await listen(channel)`` returns, every event appended
  to that channel afterwards is passed to the sink, exactly once and in ID order per
  channel, including across lost connections to the backend (the listener remembers
  the last ID per channel and re-reads the log after reconnecting). The sink is called
  from the event loop and must not block. When that re-read finds events trimmed before
  they could be passed on (a long outage on a busy channel), the ``Gap`` goes to the gap
  sink first, then the events after it: nothing is skipped silently.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pushsvc.protocol.events import Event, Gap
from pushsvc.protocol.ids import StreamId

Sink = Callable[[Event], None]
GapSink = Callable[[Gap], None]


@dataclass(frozen=True, slots=True)
class Retention:
    max_len: int = 10_000
    max_age: float = 24 * 3600.0
    approximate: bool = True
    idempotency_ttl: float = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Message:
    """One message to append."""

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

    def set_sink(self, sink: Sink, gap_sink: GapSink | None = None) -> None:
        """Where live events go (the process's hub), and the listener's gaps. Set before
        ``listen``."""
        self._sink = sink
        self._gap_sink = gap_sink

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
