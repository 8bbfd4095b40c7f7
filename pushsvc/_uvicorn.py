"""uvicorn's ``websockets-sansio`` WebSocket protocol, leaner per connection.

uvicorn keeps the handshake's request and response objects (their header structures
are about 2 KB) on the protocol for the whole life of the connection, though nothing
reads them once the upgrade is answered. For a push server, whose connections are many
and long-lived, that is a tenth of the memory of an idle WebSocket. This subclass drops
them once ``websocket.accept`` has been sent; everything else is uvicorn's.

``pushsvc serve`` runs uvicorn with ``ws=WS_PROTOCOL``; with plain uvicorn, pass
``--ws pushsvc._uvicorn:LeanWebSocketProtocol``.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

WS_PROTOCOL = "pushsvc._uvicorn:LeanWebSocketProtocol"


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    def start_keepalive(self) -> None:
        # uvicorn calls this once, right after it wrote the accepting response; hooking
        # here rather than in ``send`` keeps the per-message path exactly uvicorn's.
        self.request = self.response = None  # type: ignore[assignment]
        super().start_keepalive()
