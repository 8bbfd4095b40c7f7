"""The cursor: one opaque, versioned, URL-safe string positioning a client on ALL channels.

Layout: ``"c1"`` followed by one 20-character segment per channel. A segment is the
base64url encoding of 15 bytes::

    hash (5 bytes)   blake2b-40 of the channel name
    ms   (6 bytes)   big-endian milliseconds of the last delivered event ID
    seq  (3 bytes)   big-endian sequence of that ID
    crc  (1 byte)    CRC-8 of the 14 bytes above

15 bytes is a multiple of 3, so each segment encodes to base64 on its own and a cursor is
the plain concatenation of its segments: an event's segment is computed once and reused
by every subscriber (encode once), and 10 channels take 202 characters.

Channels are hashed, not named: a cursor never subscribes anything by itself. The channel
list comes from the request (and is authorized against the token); a cursor only says
where to start on each of those channels. Segments for channels not in the request are
ignored. Any single changed character fails the CRC-8, so a tampered or truncated cursor
is rejected (``BadCursor``) rather than silently repositioned.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping

from pushsvc.exceptions import BadCursor
from pushsvc.protocol.ids import StreamId

VERSION = "c1"
SEGMENT_CHARS = 20
MAX_CURSOR_CHARS = 2 + SEGMENT_CHARS * 1024
_SEQ_LIMIT = 1 << 24
_MS_LIMIT = 1 << 48


def _crc8_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return table


_CRC8 = _crc8_table()


def _crc8(data: bytes) -> int:
    crc = 0xFF  # non-zero init: an all-zero segment is not valid
    for b in data:
        crc = _CRC8[crc ^ b]
    return crc


def channel_hash(channel: str) -> bytes:
    return hashlib.blake2b(channel.encode(), digest_size=5).digest()


def segment(channel_key: bytes, sid: StreamId) -> str:
    """The 20-character segment for one channel (``channel_key`` from ``channel_hash``)."""
    ms, seq = sid
    if ms >= _MS_LIMIT or seq >= _SEQ_LIMIT:
        # Not reachable with server-assigned IDs (seq resets every millisecond).
        raise ValueError(f"event id {ms}-{seq} does not fit a cursor segment")
    raw = channel_key + ms.to_bytes(6, "big") + seq.to_bytes(3, "big")
    return base64.urlsafe_b64encode(raw + bytes((_crc8(raw),))).decode("ascii")


def encode(positions: Mapping[str, StreamId]) -> str:
    return VERSION + "".join(segment(channel_hash(c), sid) for c, sid in positions.items())


def decode(cursor: str) -> dict[bytes, StreamId]:
    """Decode to ``{channel_hash: position}``; raise ``BadCursor`` when malformed."""
    if not isinstance(cursor, str) or not cursor.startswith(VERSION):
        raise BadCursor("cursor has an unknown version or format")
    body = cursor[len(VERSION) :]
    if len(cursor) > MAX_CURSOR_CHARS or len(body) % SEGMENT_CHARS:
        raise BadCursor("cursor has an invalid length")
    try:
        raw = base64.urlsafe_b64decode(body.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise BadCursor("cursor is not valid base64url") from exc
    if len(raw) != len(body) // 4 * 3 or "=" in body:
        raise BadCursor("cursor is not valid base64url")
    out: dict[bytes, StreamId] = {}
    for i in range(0, len(raw), 15):
        seg = raw[i : i + 15]
        if _crc8(seg[:14]) != seg[14]:
            raise BadCursor("cursor failed its integrity check (tampered or truncated)")
        out[seg[:5]] = (int.from_bytes(seg[5:11], "big"), int.from_bytes(seg[11:14], "big"))
    return out


def positions_for(cursor: str | None, channels: Iterable[str]) -> dict[str, StreamId | None]:
    """Map each requested channel to its position in ``cursor`` (``None``: not in it)."""
    decoded = decode(cursor) if cursor else {}
    return {c: decoded.get(channel_hash(c)) for c in channels}
