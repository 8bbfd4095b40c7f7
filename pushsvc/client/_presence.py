"""Presence as the client sees it (sans-I/O): the server's presence frames in, member
changes out. ``PresenceViews`` keeps one view per channel; the client feeds it the frames
its connections receive and tells it which connection is in use. It never awaits.

Choices worth knowing:

- **A snapshot replaces the view**, and what is reported is the difference between the
  old view and the new one: a reconnect, a transport switch or a server's re-snapshot
  reports who really came and went meanwhile. A member present in both is not reported
  again, and a member is reported leaving only after it was reported joining.
- **One connection feeds the views: the one in use.** Two connections overlap while the
  client moves up to a better transport, and each sees the other's join and leave of the
  client's own member: applying both would count them twice. Frames of a connection not
  adopted yet (it receives its snapshot while it opens) are held and replayed when it is
  adopted; frames of a connection already replaced are dropped; and a channel takes a
  connection's join/leave only after that connection's snapshot of it.
- **One batch, one report**: the frames a connection received together (a long-poll
  answer, a WebSocket message, an SSE chunk) are reported as their net effect. A
  long-poll answer that saw diffs ends with a fresh snapshot; a member who came and went
  within it (or went and came back) is not reported at all.
- **A truncated snapshot keeps counts only** (``members()`` is empty; the counts follow
  the diffs). The members known from before and from the diffs stay known, so a join is
  reported for a member not known yet and a leave only for a known one: truncation makes
  the reports fewer, never wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pushsvc.client._models import Member, PresenceChange

# the server's presence frames ("type" on WebSocket and long-poll, "event:" on SSE)
PRESENCE_FRAMES = frozenset({"presence", "join", "leave"})


def _info(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def net(changes: list[PresenceChange]) -> list[PresenceChange]:
    """The net effect of ``changes`` (which alternate join/leave per member): a member
    whose first and last change differ is where it was, and is left out; the others keep
    their last change, in the order of those."""
    first: dict[tuple[str, str], str] = {}
    last: dict[tuple[str, str], PresenceChange] = {}
    for change in changes:
        key = (change.channel, change.member.subject)
        first.setdefault(key, change.kind)
        last.pop(key, None)
        last[key] = change
    return [c for key, c in last.items() if first[key] == c.kind]


class _View:
    """One channel's presence, as far as this client knows it."""

    __slots__ = ("channel", "connection_count", "known", "member_count", "truncated")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.known: dict[str, Member] = {}
        self.truncated = False
        self.member_count = 0  # kept for a truncated view only
        self.connection_count = 0

    def members(self) -> list[Member]:
        return [] if self.truncated else [self.known[s] for s in sorted(self.known)]

    def counts(self) -> tuple[int, int]:
        if self.truncated:
            return self.member_count, self.connection_count
        return len(self.known), sum(m.connections for m in self.known.values())

    def snapshot(self, frame: dict[str, Any]) -> list[PresenceChange]:
        self.truncated = bool(frame.get("truncated"))
        self.member_count = max(0, int(frame.get("member_count") or 0))
        self.connection_count = max(0, int(frame.get("connection_count") or 0))
        if self.truncated:
            return []
        new: dict[str, Member] = {}
        for obj in frame.get("members") or ():
            subject = str(obj["subject"])
            new[subject] = Member(subject, _info(obj.get("info")), int(obj["connections"]))
        old, self.known = self.known, new
        gone = [
            PresenceChange(self.channel, "leave", Member(s, old[s].info, 0))
            for s in sorted(old)
            if s not in new
        ]
        came = [PresenceChange(self.channel, "join", new[s]) for s in sorted(new) if s not in old]
        return gone + came

    def join(self, subject: str, info: dict[str, Any], connections: int) -> list[PresenceChange]:
        if self.truncated:
            self.member_count += connections == 1
            self.connection_count += 1
        held = self.known.get(subject)
        member = self.known[subject] = Member(subject, info, max(1, connections))
        return [] if held is not None else [PresenceChange(self.channel, "join", member)]

    def leave(self, subject: str, info: dict[str, Any], connections: int) -> list[PresenceChange]:
        if self.truncated:
            self.member_count = max(0, self.member_count - (connections <= 0))
            self.connection_count = max(0, self.connection_count - 1)
        held = self.known.get(subject)
        if held is None:  # not known: never reported, so never reported leaving
            return []
        if connections > 0:  # another connection of the member is still there
            self.known[subject] = Member(subject, held.info, connections)
            return []
        del self.known[subject]
        return [PresenceChange(self.channel, "leave", Member(subject, info, 0))]


class PresenceViews:
    """The presence of a client's channels, fed by ``receive(source, frames)`` with the
    frames a connection numbered ``source`` received together (numbers grow with each
    connection) and ``adopt(source)`` when that connection comes into use. Both answer
    the member changes to report, in order."""

    def __init__(self, channels: Iterable[str]) -> None:
        self._views = {c: _View(c) for c in channels}
        self._current = -1  # the connection in use (or last in use)
        self._held: dict[int, list[dict[str, Any]]] = {}
        self._source: dict[str, int] = {}  # channel -> connection whose snapshot it is

    def members(self, channel: str) -> list[Member]:
        return self._view(channel).members()

    def counts(self, channel: str) -> tuple[int, int]:
        return self._view(channel).counts()

    def _view(self, channel: str) -> _View:
        try:
            return self._views[channel]
        except KeyError:
            raise ValueError(f"{channel!r} is not one of this client's channels") from None

    def receive(self, source: int, frames: Sequence[dict[str, Any]]) -> list[PresenceChange]:
        if source == self._current:
            return net([c for frame in frames for c in self._apply(source, frame)])
        if source > self._current:  # a connection still opening: held until adopted
            self._held.setdefault(source, []).extend(frames)
        return []  # a connection already replaced

    def adopt(self, source: int) -> list[PresenceChange]:
        if source <= self._current:
            return []
        self._current = source
        changes = [c for frame in self._held.pop(source, ()) for c in self._apply(source, frame)]
        for older in [s for s in self._held if s < source]:
            del self._held[older]
        return net(changes)

    def forget(self, source: int) -> None:
        """The connection ``source`` closed: drop what it held."""
        self._held.pop(source, None)

    def _apply(self, source: int, frame: dict[str, Any]) -> list[PresenceChange]:
        view = self._views.get(str(frame.get("channel")))
        if view is None:
            return []
        kind = frame.get("type")
        if kind == "presence":
            self._source[view.channel] = source
            return view.snapshot(frame)
        if self._source.get(view.channel) != source:
            return []  # before this connection's snapshot of the channel
        subject, info = str(frame["subject"]), _info(frame.get("info"))
        connections = int(frame["connections"])
        if kind == "join":
            return view.join(subject, info, connections)
        if kind == "leave":
            return view.leave(subject, info, connections)
        return []
