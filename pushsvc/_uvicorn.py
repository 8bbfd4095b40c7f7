"""uvicorn's ``websockets-sansio`` WebSocket protocol, leaner per connection.

uvicorn keeps the handshake's request and response objects (their header structures
are about 4 KB) on the protocol for the whole life of the connection, though nothing
reads them once the upgrade is answered. For a push server, whose connections are many
and long-lived, that is a fifth of the memory of an idle WebSocket. This subclass drops
them once ``websocket.accept`` (or a denial) has been sent; everything else is
uvicorn's. ``pushsvc serve`` runs uvicorn with ``ws=WS_PROTOCOL``; with plain uvicorn,
pass ``--ws pushsvc._uvicorn:LeanWebSocketProtocol``.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

WS_PROTOCOL = "pushsvc._uvicorn:LeanWebSocketProtocol"


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete and getattr(self, "response", None) is not None:
            self.request = self.response = None  # type: ignore[assignment]
