"""Wire encoders (server to client) for the three transports. No I/O.

Each encoder splits a frame into a per-event part, cached on the event and shared by
every subscriber, and the subscriber's cursor, which is spliced in. A subscriber on one
channel gets a fully cached frame: its cursor after an event is ``"c1" + segment``.

WebSocket text frames are ``str`` (ASGI's ``websocket.send`` wants ``str`` for text);
SSE and long-poll frames are ``bytes``.

Server frames, all transports (JSON, one object each):

- ``event``: ``{"type":"event","channel","event","id","data"[,"encoding":"base64"],"cursor"}``
- ``gap``: ``{"type":"gap","channel","after","until","cursor"}`` -- events with
  ``after < id <= until`` were trimmed before this client read them.
- ``subscribed``: ``{"type":"subscribed","channels","cursor"}``.

SSE carries the envelope (everything but ``type`` and ``cursor``) as ``data:``, the event
type as ``event:`` (``message`` for events, so ``EventSource.onmessage`` sees them) and
the cursor as ``id:``, so a native ``EventSource`` reconnects with ``Last-Event-ID``.
On WebSocket a binary event is a binary frame: the JSON header (as for text, without
``data``), a newline, then the raw payload bytes.
"""

from __future__ import annotations

import json
from typing import Any

from pushsvc.protocol import cursor as cursor_codec
from pushsvc.protocol.events import Event, Gap, compact_json, dump_json, payload_json
from pushsvc.protocol.ids import StreamId, format_id
from pushsvc.protocol.presence import PresenceDiff, PresenceSnapshot

# A named event, not a comment: the browser's EventSource hides comments, so a heartbeat
# comment could not tell a quiet stream from a dead one there. ``onmessage`` ignores it.
SSE_HEARTBEAT = b"event: heartbeat\ndata: {}\n\n"
SSE_OPEN = b": pushsvc\n\n"


def _envelope_head(event: Event) -> bytes:
    head: bytes | None = event.cache.get("head")
    if head is None:
        head = (
            b'{"channel":'
            + dump_json(event.channel)
            + b',"event":'
            + dump_json(event.name)
            + b',"id":"'
            + event.id_str.encode()
            + b'"'
        )
        event.cache["head"] = head
    return head


def envelope(event: Event) -> bytes:
    """The JSON object of an event without cursor, as used by long-poll and SSE."""
    env: bytes | None = event.cache.get("env")
    if env is None:
        env = event.cache["env"] = _envelope_head(event) + b"," + payload_json(event) + b"}"
    return env


def cursor_of(segments: dict[str, str]) -> str:
    return cursor_codec.VERSION + "".join(segments.values())


# --- WebSocket ---------------------------------------------------------------------


def ws_event(event: Event, cursor: str | None) -> str | bytes:
    """The WS frame for ``event``; ``cursor=None`` means the single-channel cursor."""
    if event.binary:
        return _ws_binary(event, cursor)
    if cursor is None:
        frame: str | None = event.cache.get("ws1")
        if frame is None:
            frame = event.cache["ws1"] = (
                _ws_prefix(event) + cursor_codec.VERSION + event.segment + '"}'
            )
        return frame
    return _ws_prefix(event) + cursor + '"}'


def _ws_prefix(event: Event) -> str:
    prefix: str | None = event.cache.get("wsp")
    if prefix is None:
        env = envelope(event)
        prefix = event.cache["wsp"] = '{"type":"event",' + env[1:-1].decode() + ',"cursor":"'
    return prefix


def _ws_binary(event: Event, cursor: str | None) -> bytes:
    if cursor is None:
        cursor = cursor_codec.VERSION + event.segment
    return (
        b'{"type":"event",'
        + _envelope_head(event)[1:]
        + b',"encoding":"binary","cursor":"'
        + cursor.encode()
        + b'"}\n'
        + event.data
    )


_control_json = compact_json(ensure_ascii=True)


def ws_control(kind: str, **fields: Any) -> str:
    return _control_json({"type": kind, **fields})


def ws_gap(gap: Gap, cursor: str) -> str:
    return ws_control(
        "gap",
        channel=gap.channel,
        after=format_id(gap.after),
        until=format_id(gap.until),
        cursor=cursor,
    )


# --- SSE -----------------------------------------------------------------------------


def sse_event(event: Event, cursor: str | None) -> bytes:
    if cursor is None:
        frame: bytes | None = event.cache.get("sse1")
        if frame is None:
            frame = event.cache["sse1"] = (
                _sse_prefix(event)
                + cursor_codec.VERSION.encode()
                + event.segment.encode()
                + b"\n\n"
            )
        return frame
    return _sse_prefix(event) + cursor.encode() + b"\n\n"


def _sse_prefix(event: Event) -> bytes:
    prefix: bytes | None = event.cache.get("ssep")
    if prefix is None:
        prefix = event.cache["ssep"] = b"event: message\ndata: " + envelope(event) + b"\nid: "
    return prefix


def sse_control(kind: str, cursor: str | None, **fields: Any) -> bytes:
    out = b"event: " + kind.encode() + b"\ndata: " + dump_json(fields) + b"\n"
    if cursor is not None:
        out += b"id: " + cursor.encode() + b"\n"
    return out + b"\n"


def sse_gap(gap: Gap, cursor: str) -> bytes:
    return sse_control(
        "gap", cursor, channel=gap.channel, after=format_id(gap.after), until=format_id(gap.until)
    )


def sse_retry(ms: int) -> bytes:
    return b"retry: " + str(int(ms)).encode() + b"\n\n"


# --- presence (all transports) --------------------------------------------------------
#
# ``presence``: ``{"type":"presence","channel","members":[{"subject","info","connections"}],
# "member_count","connection_count","truncated"}`` replaces the client's view of a channel;
# ``join`` / ``leave``: ``{"type","channel","subject","info","connections"}``, the member's
# connection count after the change (a join at 1: the member appeared; a leave at 0: it
# left). SSE sends them as ``event: presence|join|leave`` with no ``id:`` (they do not move
# the cursor); long-poll as items of the answer.


def presence_fields(channel: str, snapshot: PresenceSnapshot) -> dict[str, Any]:
    return {
        "channel": channel,
        "members": [
            {"subject": subject, "info": json.loads(info), "connections": connections}
            for subject, info, connections in snapshot.members
        ],
        "member_count": snapshot.member_count,
        "connection_count": snapshot.connection_count,
        "truncated": snapshot.truncated,
    }


def presence_diff_fields(diff: PresenceDiff) -> dict[str, Any]:
    return {
        "channel": diff.channel,
        "subject": diff.subject,
        "info": json.loads(diff.info),
        "connections": diff.connections,
    }


def poll_item(kind: str, fields: dict[str, Any]) -> bytes:
    return dump_json({"type": kind, **fields})


# --- long-poll -----------------------------------------------------------------------


def poll_gap(gap: Gap) -> bytes:
    return dump_json(
        {
            "type": "gap",
            "channel": gap.channel,
            "after": format_id(gap.after),
            "until": format_id(gap.until),
        }
    )


def poll_event(event: Event) -> bytes:
    frame: bytes | None = event.cache.get("poll")
    if frame is None:
        frame = event.cache["poll"] = b'{"type":"event",' + envelope(event)[1:]
    return frame


def poll_response(items: list[bytes], cursor: str, presence_version: str | None = None) -> bytes:
    """One long-poll answer: every pending item in one body, written once."""
    body = b'{"events":[' + b",".join(items) + b'],"cursor":"' + cursor.encode() + b'"'
    if presence_version is not None:
        body += b',"presence_version":"' + presence_version.encode() + b'"'
    return body + b"}"


def positions_cursor(positions: dict[str, StreamId]) -> str:
    return cursor_codec.encode(positions)
