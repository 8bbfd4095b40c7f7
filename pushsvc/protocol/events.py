"""The event model.

``data`` holds the payload as stored in the log: compact JSON text (UTF-8) for JSON
payloads, raw bytes for binary ones. Keeping the JSON text lets every encoder splice the
payload into its frame without parsing or re-serializing it.

``Event.cache`` memoizes encoded frames, so that an event is serialized once per wire
format and the very same object is sent to every local subscriber.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from json import encoder as _json_encoder
from typing import Any

from pushsvc.protocol import cursor as cursor_codec
from pushsvc.protocol.ids import StreamId, format_id


@dataclass(slots=True, eq=False)
class Event:
    channel: str
    id: StreamId
    name: str
    data: bytes
    binary: bool = False
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def id_str(self) -> str:
        s: str | None = self.cache.get("id")
        if s is None:
            s = self.cache["id"] = format_id(self.id)
        return s

    @property
    def published_ms(self) -> int:
        """Milliseconds since the epoch at which the backend stored the event."""
        return self.id[0]

    @property
    def segment(self) -> str:
        """This event's cursor segment (its channel positioned at its ID)."""
        s: str | None = self.cache.get("seg")
        if s is None:
            s = self.cache["seg"] = cursor_codec.segment(
                cursor_codec.channel_hash(self.channel), self.id
            )
        return s

    def value(self) -> Any:
        """The payload as a Python value (``bytes`` for binary events)."""
        if self.binary:
            return self.data
        return json.loads(self.data)

    def same_as(self, other: Event) -> bool:
        return (self.channel, self.id, self.name, self.data, self.binary) == (
            other.channel,
            other.id,
            other.name,
            other.data,
            other.binary,
        )


@dataclass(frozen=True, slots=True)
class Gap:
    """Events of ``channel`` with ``after < id <= until`` were trimmed from the log."""

    channel: str
    after: StreamId
    until: StreamId


def compact_json(*, ensure_ascii: bool) -> Callable[[Any], str]:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=…)``, with the C encoder
    built once rather than on every call (``json.dumps`` with any non-default argument
    builds a ``JSONEncoder`` and its C encoder each time: two thirds of its cost on a
    small message, which a publish pays per message). The same output; no circular
    reference check (a value parsed from JSON or built by pushsvc has no cycle; a cycle
    ends in ``RecursionError`` rather than ``ValueError``)."""
    fallback = json.JSONEncoder(separators=(",", ":"), ensure_ascii=ensure_ascii)
    make = getattr(_json_encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (PyPy, or a build without _json)
        return fallback.encode
    strings = (
        _json_encoder.encode_basestring_ascii if ensure_ascii else _json_encoder.encode_basestring
    )
    encode = make(None, fallback.default, strings, None, ":", ",", False, False, True)

    def dumps(value: Any) -> str:
        return "".join(encode(value, 0))

    return dumps


_dumps = compact_json(ensure_ascii=False)


def dump_json(value: Any) -> bytes:
    """Compact JSON as UTF-8: ``json.dumps(value, separators=(",", ":"),
    ensure_ascii=False).encode()``."""
    return _dumps(value).encode()


def payload_json(event: Event) -> bytes:
    """The ``"data":…`` members of an envelope (base64 for binary)."""
    if event.binary:
        return b'"data":"' + base64.b64encode(event.data) + b'","encoding":"base64"'
    return b'"data":' + event.data
