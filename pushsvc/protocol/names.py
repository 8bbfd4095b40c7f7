"""Validation of channel and event names.

Channel names are restricted to a safe alphabet so that they can be embedded in Redis keys
(no ``{``/``}`` that would break hash tags, no whitespace or control characters) and in
URLs without escaping surprises.
"""

from __future__ import annotations

import re

from pushsvc.exceptions import BadRequest

_CHANNEL_RE = re.compile(r"[A-Za-z0-9_\-:.@=+/]+")
_EVENT_RE = re.compile(r"[A-Za-z0-9_\-:.]+")


def check_channel(name: object, max_length: int = 128) -> str:
    if not isinstance(name, str) or not name:
        raise BadRequest("channel must be a non-empty string")
    if len(name) > max_length:
        raise BadRequest(f"channel name longer than {max_length} characters")
    if not _CHANNEL_RE.fullmatch(name):
        raise BadRequest(
            f"invalid channel name {name[:64]!r}: allowed are A-Z a-z 0-9 _ - : . @ = + /"
        )
    return name


def check_event_name(name: object, max_length: int = 64) -> str:
    if name is None:
        return "message"
    if not isinstance(name, str) or not name or len(name) > max_length:
        raise BadRequest(f"event must be a string of 1 to {max_length} characters")
    if not _EVENT_RE.fullmatch(name):
        raise BadRequest(f"invalid event name {name[:64]!r}: allowed A-Z a-z 0-9 _ - : .")
    return name


def check_channels(names: object, max_channels: int, max_length: int = 128) -> list[str]:
    if not isinstance(names, list) or not names:
        raise BadRequest("channels must be a non-empty list of channel names")
    if len(names) > max_channels:
        raise BadRequest(f"at most {max_channels} channels per session")
    out = [check_channel(n, max_length) for n in names]
    return list(dict.fromkeys(out))
