"""permessage-deflate (RFC 7692) for the WebSocket wire, compressed once per event.

The server negotiates ``server_no_context_takeover`` (``pushsvc.server``): each message
it sends is then compressed on its own, without reference to earlier ones, so ONE
compressed frame of an event is valid on every connection that negotiated it, and the
hub shares it as it shares the plain frame (DESIGN 3: ``DeflateWebSocketWire`` is a wire
format of its own in the hub's per-event memo, encoded only when some session chose it).
The compressor is one ``zlib`` stream per wire, reset by a full flush after each
message: nothing is kept per connection, and no compressor is built per event.

Frames come out whole (header with RSV1, unmasked: a server's), as ``DeflatedFrame``, a
``bytes`` that also carries the plain frame: when the socket pushes back, the writer
falls back to ASGI ``send``, which can only take the plain text (the server compresses
it then, per send). Frames under ``min_bytes`` are not compressed: a message without
RSV1 is allowed on a connection that negotiated the extension, and a small JSON frame
barely shrinks without shared context. Control frames (subscribed, gap, pong, presence,
errors) go plain.

``SERVER_WINDOW_BITS`` is the window of the shared frames: a client that asks for a
smaller ``server_max_window_bits`` could not inflate them and is served plain.
"""

from __future__ import annotations

import zlib

from pushsvc.protocol.events import Event
from pushsvc.protocol.wires import Frame, WebSocketWire
from pushsvc.protocol.wsframes import OP_BINARY, OP_TEXT, frame_header

__all__ = [
    "CLIENT_MAX_WINDOW_BITS",
    "SERVER_WINDOW_BITS",
    "DeflateWebSocketWire",
    "DeflatedFrame",
    "Deflater",
    "deflate_wire",
]

SERVER_WINDOW_BITS = 15
# Answered to a client that offers ``client_max_window_bits``: its frames to the server
# then need at most a 4 KiB window to inflate. The server also answers
# ``client_no_context_takeover``, so that inflater lives for one message only.
CLIENT_MAX_WINDOW_BITS = 12

_TAIL = b"\x00\x00\xff\xff"


class DeflatedFrame(bytes):
    """A whole compressed WebSocket frame; ``plain`` is the frame it compresses (``str``:
    a text message, ``bytes``: a binary one)."""

    plain: str | bytes


class Deflater:
    """Compresses one message at a time into a raw DEFLATE payload that ends on a byte
    boundary with its ``00 00 ff ff`` tail removed (RFC 7692 7.2.1). A full flush after
    each message resets the stream's history, so each payload inflates on its own."""

    __slots__ = ("_zlib", "level")

    def __init__(self, level: int = 6) -> None:
        self.level = level
        self._zlib = zlib.compressobj(level, zlib.DEFLATED, -SERVER_WINDOW_BITS)

    def compress(self, data: bytes) -> bytes:
        z = self._zlib
        out: bytes = z.compress(data) + z.flush(zlib.Z_FULL_FLUSH)
        if out[-4:] != _TAIL:  # never: a full flush ends with an empty stored block
            raise RuntimeError("deflate output does not end with a flush marker")
        return out[:-4]

    def frame(self, plain: str | bytes) -> DeflatedFrame:
        """The compressed frame of one unfragmented message."""
        if isinstance(plain, str):
            opcode, data = OP_TEXT, plain.encode()
        else:
            opcode, data = OP_BINARY, plain
        payload = self.compress(data)
        frame = DeflatedFrame(frame_header(opcode, len(payload), rsv1=True) + payload)
        frame.plain = plain
        return frame


class DeflateWebSocketWire(WebSocketWire):
    """The WebSocket wire for connections that negotiated pushsvc's permessage-deflate:
    events of ``min_bytes`` or more go as compressed frames, the rest as on
    ``WebSocketWire``."""

    __slots__ = ("_key", "deflater", "min_bytes")

    def __init__(self, level: int = 6, min_bytes: int = 256) -> None:
        self.deflater = Deflater(level)
        self.min_bytes = min_bytes
        self._key = f"wsz{level}:{min_bytes}"  # the event's cache, per configuration

    def event(self, event: Event, cursor: str | None) -> Frame:
        if cursor is None:
            cached: Frame | None = event.cache.get(self._key)
            if cached is None:
                cached = event.cache[self._key] = self._compressed(super().event(event, None))
            return cached
        return self._compressed(super().event(event, cursor))

    def _compressed(self, plain: Frame) -> Frame:
        if len(plain) < self.min_bytes:
            return plain
        return self.deflater.frame(plain)


_WIRES: dict[tuple[int, int], DeflateWebSocketWire] = {}


def deflate_wire(level: int, min_bytes: int) -> DeflateWebSocketWire:
    """The wire for a configuration, one per process: sessions share it (it holds the
    compressor), as they share the frames it makes."""
    wire = _WIRES.get((level, min_bytes))
    if wire is None:
        wire = _WIRES[(level, min_bytes)] = DeflateWebSocketWire(level, min_bytes)
    return wire
