"""Event IDs are Redis stream entry IDs, ``"<ms>-<seq>"``: per channel, total and monotonic.

Internally an ID is a ``(ms, seq)`` tuple, so that comparison is tuple comparison.
"""

from __future__ import annotations

from pushsvc.exceptions import BadRequest

StreamId = tuple[int, int]

ZERO: StreamId = (0, 0)
MAX_MS = (1 << 48) - 1
MAX_SEQ = (1 << 64) - 1


def format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


def parse_id(text: str) -> StreamId:
    """Parse ``"ms-seq"`` (or bare ``"ms"``, meaning ``ms-0``); raise ``BadRequest``."""
    ms_part, sep, seq_part = text.partition("-")
    if not sep:
        seq_part = "0"
    if not (ms_part.isascii() and ms_part.isdigit() and seq_part.isascii() and seq_part.isdigit()):
        raise BadRequest(f"invalid event id {text[:64]!r}: expected '<ms>-<seq>'")
    if len(ms_part) > 15 or len(seq_part) > 20:
        raise BadRequest(f"invalid event id {text[:64]!r}: out of range")
    ms, seq = int(ms_part), int(seq_part)
    if ms > MAX_MS or seq > MAX_SEQ:
        raise BadRequest(f"invalid event id {text[:64]!r}: out of range")
    return (ms, seq)
