"""RFC 6455 framing, sans-I/O: an encoder and an incremental decoder. No awaits, no socket.

``FrameDecoder.feed(data)`` takes whatever bytes arrived and answers the frames they
completed: the rest of a partial frame waits in the decoder for the next ``feed``. Data
messages come out whole (a fragmented message is reassembled, control frames sent in
between come out as they arrive); ``ping``, ``pong`` and ``close`` frames come out as
frames, and answering them is the caller's job. A frame that breaks the RFC stops the
decoder: ``error`` tells the close code and why, and later ``feed`` calls answer nothing
(the frames completed before the bad one are still answered).

Kept small and allocation-light because the load generator (``pushsvc.bench.wire``)
parses every delivery with it and must stay cheaper than the server it measures: frames
are located by offsets into one buffer, and each payload is one slice. The decoder
supports no extension (RSV bits must be 0; the encoder can set RSV1 for
``pushsvc.protocol.deflate``) and text is not checked for UTF-8 here: a caller that
needs ``str`` decodes it. ``frame_header`` is the same header a server writes before an
unmasked payload (``pushsvc.server``'s ``write_texts`` builds the same bytes).
"""

from __future__ import annotations

from pushsvc.protocol.codes import WS_1009_MESSAGE_TOO_BIG

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
DATA_OPCODES = frozenset((OP_TEXT, OP_BINARY))
CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

WS_1002_PROTOCOL_ERROR = 1002  # RFC 6455 7.4.1
WS_1005_NO_STATUS_RCVD = 1005  # a close frame without a code (never sent on the wire)
MAX_CONTROL_PAYLOAD = 125


# (opcode, payload): a control frame, or a whole data message (its fragments joined). A
# plain tuple: the load generator makes one per delivery, and a NamedTuple costs 10 times
# more to build.
Frame = tuple[int, bytes]


class FrameError(Exception):
    """The peer broke the framing rules; ``code`` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def frame_header(
    opcode: int, length: int, *, fin: bool = True, masked: bool = False, rsv1: bool = False
) -> bytes:
    """The header of a frame carrying ``length`` payload bytes (without the mask key).
    ``rsv1``: the payload is compressed (permessage-deflate, ``pushsvc.protocol.deflate``;
    set on the first frame of a message only)."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if length < 126:
        return bytes((b0, mask_bit | length))
    if length < 65536:
        return bytes((b0, mask_bit | 126)) + length.to_bytes(2, "big")
    return bytes((b0, mask_bit | 127)) + length.to_bytes(8, "big")


def encode_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bytes | None = None,
    rsv1: bool = False,
) -> bytes:
    """One frame. ``mask``: the 4-byte key a client must use (``os.urandom(4)``); a server
    sends its frames unmasked (``None``). ``rsv1``: ``payload`` is compressed."""
    if mask is None:
        return frame_header(opcode, len(payload), fin=fin, rsv1=rsv1) + payload
    if len(mask) != 4:
        raise ValueError("a mask key is 4 bytes")
    header = frame_header(opcode, len(payload), fin=fin, masked=True, rsv1=rsv1)
    return header + mask + apply_mask(payload, mask)


def apply_mask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the repeated 4-byte key (RFC 6455 5.3): masks and unmasks alike."""
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def encode_close(code: int, reason: str = "") -> bytes:
    """A close frame's payload: the code, then the UTF-8 reason."""
    return code.to_bytes(2, "big") + reason.encode()


def parse_close(payload: bytes) -> tuple[int, str]:
    """A close frame's (code, reason); an empty payload is 1005 (no code given)."""
    if not payload:
        return WS_1005_NO_STATUS_RCVD, ""
    if len(payload) == 1:
        raise FrameError(WS_1002_PROTOCOL_ERROR, "a close payload of one byte")
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")


class FrameDecoder:
    """Incremental decoder: ``feed(data)`` answers the frames completed so far.

    ``masked``: whether frames must be masked (True on a server, reading a client; False
    on a client, reading a server). ``max_size``: the largest data message, fragments
    summed (None: no limit); a bigger one is a 1009 error as soon as its header says so.
    """

    __slots__ = (
        "_buf",
        "_fragments",
        "_fragments_size",
        "_message_opcode",
        "error",
        "masked",
        "max_size",
    )

    def __init__(self, *, masked: bool = False, max_size: int | None = None) -> None:
        self.masked = masked
        self.max_size = max_size
        self.error: FrameError | None = None
        self._buf = b""
        self._message_opcode: int | None = None  # a fragmented message is in progress
        self._fragments: list[bytes] = []
        self._fragments_size = 0

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not complete yet (and fragments of a message)."""
        return len(self._buf) + self._fragments_size

    def feed(self, data: bytes) -> list[Frame]:
        if self.error is not None:
            return []
        buf = self._buf + data if self._buf else data
        frames: list[Frame] = []
        pos = 0
        size = len(buf)
        mask_bit = 0x80 if self.masked else 0
        limit = self.max_size
        try:
            # One loop, offsets into ``buf``: the usual frame (a whole unfragmented data
            # message) costs a header read and one slice; anything else goes through
            # ``_check`` and ``_deliver``.
            while size - pos >= 2:
                b0 = buf[pos]
                b1 = buf[pos + 1]
                length = b1 & 0x7F
                start = pos + 2
                if length == 126:
                    start = pos + 4
                    if size < start:
                        break
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                elif length == 127:
                    start = pos + 10
                    if size < start:
                        break
                    if buf[pos + 2] & 0x80:
                        raise FrameError(
                            WS_1002_PROTOCOL_ERROR, "a 64-bit length with its top bit set"
                        )
                    length = int.from_bytes(buf[pos + 2 : start], "big")
                if (
                    (b0 == 0x81 or b0 == 0x82)
                    and b1 & 0x80 == mask_bit == 0
                    and self._message_opcode is None
                    and (limit is None or length <= limit)
                ):
                    end = start + length
                    if end > size:
                        break
                    frames.append((b0 & 0x0F, buf[start:end]))
                    pos = end
                    continue
                end = self._other_frame(buf, pos, start, length, size, frames)
                if end < 0:
                    break
                pos = end
        except FrameError as exc:
            self.error = exc
            self._buf = b""
            self._fragments = []
            return frames
        self._buf = buf[pos:] if pos < size else b""
        return frames

    def _other_frame(
        self, buf: bytes, pos: int, start: int, length: int, size: int, frames: list[Frame]
    ) -> int:
        """Any frame but an unmasked whole data message: masked, control, fragment, or
        one to refuse. ``start``: after the length; answers where it ends (-1: partial)."""
        b0 = buf[pos]
        masked = bool(buf[pos + 1] & 0x80)
        if masked:
            start += 4
        self._check(b0, length, masked)
        end = start + length
        if end > size:
            return -1
        payload = buf[start:end]
        if masked:
            payload = apply_mask(payload, buf[start - 4 : start])
        self._deliver(b0 & 0x0F, bool(b0 & 0x80), payload, frames)
        return end

    def _check(self, b0: int, length: int, masked: bool) -> None:
        opcode = b0 & 0x0F
        if b0 & 0x70:
            raise FrameError(WS_1002_PROTOCOL_ERROR, "reserved bits set (no extension)")
        if masked != self.masked:
            raise FrameError(
                WS_1002_PROTOCOL_ERROR, "a masked frame" if masked else "an unmasked frame"
            )
        if opcode in CONTROL_OPCODES:
            if not b0 & 0x80:
                raise FrameError(WS_1002_PROTOCOL_ERROR, "a fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise FrameError(WS_1002_PROTOCOL_ERROR, "a control frame over 125 bytes")
            return
        if opcode not in DATA_OPCODES and opcode != OP_CONTINUATION:
            raise FrameError(WS_1002_PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        if self.max_size is not None and self._fragments_size + length > self.max_size:
            raise FrameError(WS_1009_MESSAGE_TOO_BIG, f"a message over {self.max_size} bytes")

    def _deliver(self, opcode: int, fin: bool, payload: bytes, frames: list[Frame]) -> None:
        if opcode in CONTROL_OPCODES:
            frames.append((opcode, payload))
            return
        if opcode == OP_CONTINUATION:
            if self._message_opcode is None:
                raise FrameError(WS_1002_PROTOCOL_ERROR, "a continuation without a message")
        elif self._message_opcode is not None:
            raise FrameError(WS_1002_PROTOCOL_ERROR, "a new message inside a fragmented one")
        elif fin:  # the usual case: one frame, one message
            frames.append((opcode, payload))
            return
        else:
            self._message_opcode = opcode
        self._fragments.append(payload)
        self._fragments_size += len(payload)
        if fin:
            frames.append((self._message_opcode, b"".join(self._fragments)))
            self._message_opcode = None
            self._fragments = []
            self._fragments_size = 0
