"""uvicorn's ``websockets-sansio`` WebSocket protocol, leaner per connection.

uvicorn keeps the handshake's request and response objects (their header structures
are about 2 KB) on the protocol for the whole life of the connection, though nothing
reads them once the upgrade is answered. For a push server, whose connections are many
and long-lived, that is a tenth of the memory of an idle WebSocket. This subclass drops
them once ``websocket.accept`` has been sent; everything else is uvicorn's.

It also offers the app a synchronous write of ready text messages, as the ASGI scope
extension ``pushsvc.write_texts``: the hub's writer (``pushsvc.transports._writer``) calls
it with the UTF-8 payloads of one or more text messages, and it frames them (a server's
frames are not masked; no extension is negotiated without deflate) and hands them to the
transport in ONE ``write``. It declines (returns False) whenever the normal ``send`` must
decide instead: the handshake not done, a close sent or received, the socket pushing back
(flow control), an extension negotiated. That path skips only the per-message
bookkeeping of ``send`` and of the ``websockets`` protocol, which keeps none for
outgoing data frames; what goes on the wire is the same.

``pushsvc serve`` runs uvicorn with ``ws=WS_PROTOCOL``; with plain uvicorn, pass
``--ws pushsvc._uvicorn:LeanWebSocketProtocol``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

WRITE_TEXTS = "pushsvc.write_texts"  # the ASGI scope extension

WS_PROTOCOL = "pushsvc._uvicorn:LeanWebSocketProtocol"


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: object) -> None:
        super().handle_connect(event)  # type: ignore[arg-type]
        scope = getattr(self, "scope", None)
        if scope is not None:  # the app's task has not run yet: it will see this
            scope["extensions"][WRITE_TEXTS] = self.write_texts

    def write_texts(self, payloads: Sequence[bytes]) -> bool:
        """Write each payload as one unfragmented text message, all in one transport
        write; False (nothing written) when ``send`` must handle it."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or not self.writable.is_set()
            or self.conn.state is not State.OPEN
            or self.conn.extensions
            or self.conn.expect_continuation_frame
        ):
            return False
        parts: list[bytes] = []
        for data in payloads:
            n = len(data)
            if n < 126:
                parts.append(bytes((0x81, n)))
            elif n < 65536:
                parts.append(struct.pack("!BBH", 0x81, 126, n))
            else:
                parts.append(struct.pack("!BBQ", 0x81, 127, n))
            parts.append(data)
        self.transport.write(b"".join(parts))
        return True

    def start_keepalive(self) -> None:
        # uvicorn calls this once, right after it wrote the accepting response; hooking
        # here rather than in ``send`` keeps the per-message path exactly uvicorn's.
        self.request = self.response = None  # type: ignore[assignment]
        super().start_keepalive()
