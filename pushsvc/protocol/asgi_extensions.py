"""ASGI scope extensions between pushsvc's server and its app.

The name lives here, below both sides: the server (``pushsvc.server``) offers the
extension and the WebSocket transport looks it up, so importing the app needs no uvicorn
internals, and an app served by another ASGI server simply finds no extension.
"""

# A synchronous ``write_texts(payloads: Sequence[bytes]) -> bool | None`` in
# ``scope["extensions"]``: writes ready text messages in one transport write
# (``pushsvc.server.LeanWebSocketProtocol.write_texts`` says when it declines).
WRITE_TEXTS = "pushsvc.write_texts"

# A synchronous ``write_frames(frames: Sequence[bytes]) -> bool | None`` in
# ``scope["extensions"]``, present only on a connection that negotiated pushsvc's
# permessage-deflate (``pushsvc.protocol.deflate``): writes whole, encoded frames (some
# compressed, with RSV1) in one transport write; declines as ``write_texts`` does.
WRITE_FRAMES = "pushsvc.write_frames"
