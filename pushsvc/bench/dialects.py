"""How the load generator talks to a server: pushsvc's own protocol, or a peer's.

A ``Dialect`` tells the raw clients of :mod:`pushsvc.bench.wire`:

- how to subscribe: the WebSocket and SSE paths (``{channel}`` is replaced, URL-quoted)
  and the WebSocket handshake after the upgrade (``ws_protocol``):

  - ``pushsvc``: a ``subscribe`` frame, confirmed by a ``subscribed`` frame; the URL asks
    for batch framing (``batch=1``: one text message may carry several JSON frames
    separated by ``"\\n"``, which the client splits);
  - ``raw``: the upgrade is the subscription (the peer registers the socket before it
    answers 101); every text message is one event's payload;
  - ``socketio``: Engine.IO v4 / Socket.IO v5 protocol over a raw WebSocket
    (``/socket.io/?EIO=4&transport=websocket``): receive the open packet ``0{...}``, send
    ``40`` (connect to the default namespace), the subscription is confirmed by
    ``40{...}``; events arrive as ``42["m","<payload>"]``; server pings ``2`` are answered
    with ``3``;

  SSE (``sse_protocol``): ``pushsvc`` waits for its ``subscribed`` event; ``raw`` counts
  the response headers (status 200) as the subscription;
- how to publish: ``POST`` to ``publish_path`` (on ``publish_port`` when the peer
  publishes on a port of its own), the body being the payload; any 2xx is success;
- where the event's identity is: pushsvc's events carry their ID (``"id":"<ms>-<seq>"``,
  the backend's clock and sequence) and arrive in ID order. A peer only relays the
  payload, so the generator writes it into the payload: ``@<ms>-<seq>@`` followed by
  padding, where ``<ms>`` is the generator's wall clock (milliseconds) right before the
  publish request is sent and ``<seq>`` the event's number in its phase. The pattern needs
  no JSON escaping, so it survives inside a Socket.IO packet. Latency is the receive wall
  clock minus ``<ms>`` (1 ms resolution, as for pushsvc); completeness counts distinct
  ``<seq>`` per subscriber (order-insensitive: the latency phase publishes from several
  connections at once, which a peer may relay in any order). ``PUSHSVC_AS_PEER`` measures
  pushsvc the same way (the payload is its event's ``data``), for the comparison.
- whether a subscriber can resume after a dropped connection (``resume``: the transports
  on which it can; the storm scenario): pushsvc with its cursor (WebSocket ``subscribe``
  frame's ``cursor``, SSE ``Last-Event-ID``); Nchan with its message ID, on SSE as
  ``Last-Event-ID`` and on WebSocket (which sends IDs only with the ``ws+meta.nchan``
  subprotocol, ``ws_subprotocol``) as the ``last_event_id`` query parameter
  (``ws_cursor_param``). The others relay live events only: their clients reconnect
  without a position and miss what was published meanwhile.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from urllib.parse import quote

PUSHSVC_ID_RE = re.compile(rb'"id":"(\d+)-(\d+)"')
PEER_ID_RE = re.compile(rb"@(\d+)-(\d+)@")


@dataclass(frozen=True)
class Dialect:
    name: str
    ws_path: str | None = "/ws?channel={channel}"
    sse_path: str | None = "/sse?channel={channel}"
    publish_path: str = "/publish?channel={channel}"
    publish_port: int | None = None  # None: the server's port
    ws_protocol: str = "raw"  # "pushsvc", "raw" or "socketio"
    sse_protocol: str = "raw"  # "pushsvc" or "raw"
    # where latency starts: "server" (pushsvc's event ID) or "generator" (the payload's
    # ``@<ms>-<seq>@``, written right before the publish request; every peer's)
    clock: str = "generator"
    # storm: the transports on which a subscriber resumes from the last ID it received
    resume: tuple[str, ...] = ()
    ws_subprotocol: str | None = None  # asked for when the client keeps a cursor
    ws_cursor_param: str | None = None  # WebSocket resume: the query parameter

    @property
    def is_pushsvc(self) -> bool:
        return self.ws_protocol == "pushsvc"

    @property
    def ordered(self) -> bool:
        """Events are told apart by their server-assigned IDs, which arrive in order
        (pushsvc with ``clock="server"``); otherwise by the payload's sequence number."""
        return self.is_pushsvc and self.clock == "server"

    @property
    def id_re(self) -> re.Pattern[bytes]:
        return PUSHSVC_ID_RE if self.ordered else PEER_ID_RE

    @property
    def transports(self) -> tuple[str, ...]:
        out = []
        if self.ws_path is not None:
            out.append("websocket")
        if self.sse_path is not None:
            out.append("sse")
        if self.is_pushsvc:
            out.append("long-polling")
        return tuple(out)

    def path(self, template: str | None, channel: str) -> str:
        if template is None:
            raise ValueError(f"{self.name} has no such endpoint")
        return template.format(channel=quote(channel, safe=""))

    def payload(self, n: int, size: int) -> bytes:
        """A peer's event payload: ``@<ms>-<n>@`` and padding up to ``size`` bytes."""
        head = b"@%d-%d@" % (int(time.time() * 1000), n)
        return head + b"x" * max(0, size - len(head))


PUSHSVC = Dialect(
    "pushsvc",
    ws_path="/v1/ws?batch=1",
    sse_path="/v1/sse?channel={channel}",
    publish_path="/v1/publish",
    ws_protocol="pushsvc",
    sse_protocol="pushsvc",
    clock="server",
    resume=("websocket", "sse", "long-polling"),
)

# pushsvc measured exactly as a peer is (the comparison): the payload (the event's
# ``data``, a string) carries ``@<ms>-<seq>@``, latency starts at the generator's clock
# before the publish request, completeness counts distinct sequence numbers.
PUSHSVC_AS_PEER = Dialect(
    "pushsvc",
    ws_path=PUSHSVC.ws_path,
    sse_path=PUSHSVC.sse_path,
    publish_path=PUSHSVC.publish_path,
    ws_protocol="pushsvc",
    sse_protocol="pushsvc",
    clock="generator",
    resume=PUSHSVC.resume,
)

# nginx + Nchan (benchmarks/peers/nchan.conf.template): its message buffer lets a
# subscriber resume from a message ID (``<time>:<tag>``)
NCHAN = Dialect(
    "nchan",
    resume=("websocket", "sse"),
    ws_subprotocol="ws+meta.nchan",
    ws_cursor_param="last_event_id",
)


def socketio(name: str) -> Dialect:
    """A Socket.IO v4 server (node's or python-socketio): WebSocket only."""
    return Dialect(
        name,
        ws_path="/socket.io/?EIO=4&transport=websocket&channel={channel}",
        sse_path=None,
        ws_protocol="socketio",
    )
