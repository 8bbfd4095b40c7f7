"""The resume merge (DESIGN decision 5), free of I/O.

A ``ChannelPosition`` tracks one channel of one session. While the session is resuming,
live events are buffered; history is then delivered in order; finally the buffered live
events newer than the last delivered ID are released and the channel goes live. Every
event passes ``admit()``, which drops anything not newer than the position: so the seam
between history and live events can neither duplicate nor reorder.

If the live buffer overflows while history is being read, it is dropped and flagged: the
log holds those events too, so the caller reads the log again from the position instead
of losing anything.
"""

from __future__ import annotations

from pushsvc.protocol.events import Event
from pushsvc.protocol.ids import StreamId


class ChannelPosition:
    __slots__ = ("buffer", "buffer_limit", "live", "overflowed", "position")

    def __init__(self, position: StreamId, buffer_limit: int = 10_000) -> None:
        self.position = position
        self.live = False
        self.buffer: list[Event] = []
        self.buffer_limit = buffer_limit
        self.overflowed = False

    def admit(self, event: Event) -> bool:
        """True when ``event`` is to be delivered now (and advance the position)."""
        if event.id <= self.position:
            return False
        self.position = event.id
        return True

    def offer_live(self, event: Event) -> bool:
        """A live event arrived: deliver now (True) or buffer while resuming (False)."""
        if self.live:
            return self.admit(event)
        if len(self.buffer) >= self.buffer_limit:
            self.buffer.clear()
            self.overflowed = True
        else:
            self.buffer.append(event)
        return False

    def clamp(self, top: StreamId) -> None:
        """A position ahead of the log's top (a forged cursor, or a log that was reset)
        would skip future events: bring it back to the top."""
        if self.position > top:
            self.position = top

    def go_live(self) -> list[Event] | None:
        """Release buffered events and go live; ``None`` means the buffer overflowed and
        the log must be read again from ``position`` first."""
        if self.overflowed:
            self.overflowed = False
            return None
        out = [e for e in self.buffer if self.admit(e)]
        self.buffer.clear()
        self.live = True
        return out
