"""Parsing and validation of client-to-server WebSocket frames. No I/O.

Client frames (JSON objects):

- ``{"type":"subscribe","channels":[…],"cursor":"…"?}``
- ``{"type":"unsubscribe","channels":[…]}``
- ``{"type":"publish","id":"client message id","channel","event"?,"data"|"data_b64"}``
  answered by ``{"type":"ack","id","event_id","cursor"?}``; the client message id is the
  idempotency key, so a resent publish is stored once and acked with the original ID.
- ``{"type":"ping","id"?}`` answered by ``{"type":"pong","id"?}``
- ``{"type":"refresh","token":"…"}`` replaces the connection's token.

A binary client frame is a publish: a JSON header (as above, without data), a newline,
then the raw payload.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from pushsvc.exceptions import BadRequest, PayloadTooLarge
from pushsvc.protocol.events import dump_json
from pushsvc.protocol.names import check_channel, check_channels, check_event_name
from pushsvc.protocol.presence import check_presence_id


@dataclass(frozen=True, slots=True)
class Limits:
    max_channels: int = 64
    max_channel_length: int = 128
    max_event_name_length: int = 64
    max_payload_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class Subscribe:
    channels: list[str]
    cursor: str | None
    presence: bool = False  # join the channels' presence and receive it
    presence_id: str | None = None  # the client's own name for its presence entry


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channels: list[str]


@dataclass(frozen=True, slots=True)
class Publish:
    id: str
    channel: str
    event: str
    data: bytes
    binary: bool


@dataclass(frozen=True, slots=True)
class Ping:
    id: Any


@dataclass(frozen=True, slots=True)
class Refresh:
    token: str


Frame = Subscribe | Unsubscribe | Publish | Ping | Refresh


def parse_text(text: str, limits: Limits) -> Frame:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadRequest("frame is not valid JSON") from exc
    return parse_object(obj, limits)


def parse_binary(raw: bytes, limits: Limits) -> Frame:
    head, sep, payload = raw.partition(b"\n")
    if not sep:
        raise BadRequest("binary frame needs a JSON header line, a newline, then the payload")
    try:
        obj = json.loads(head)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest("binary frame header is not valid JSON") from exc
    if not isinstance(obj, dict) or obj.get("type") != "publish":
        raise BadRequest("a binary frame must be a publish")
    if "data" in obj or "data_b64" in obj:
        raise BadRequest("a binary publish carries its payload after the header")
    return _publish(obj, payload, True, limits)


def parse_object(obj: Any, limits: Limits) -> Frame:
    if not isinstance(obj, dict):
        raise BadRequest("frame must be a JSON object")
    kind = obj.get("type")
    if kind == "subscribe":
        cursor = obj.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise BadRequest("cursor must be a string")
        presence = obj.get("presence", False)
        if not isinstance(presence, bool):
            raise BadRequest("presence must be true or false")
        presence_id = obj.get("presence_id")
        return Subscribe(
            check_channels(obj.get("channels"), limits.max_channels, limits.max_channel_length),
            cursor or None,
            presence,
            None if presence_id is None else check_presence_id(presence_id),
        )
    if kind == "unsubscribe":
        return Unsubscribe(
            check_channels(obj.get("channels"), limits.max_channels, limits.max_channel_length)
        )
    if kind == "publish":
        if "data_b64" in obj:
            return _publish(obj, decode_b64(obj["data_b64"]), True, limits)
        if "data" not in obj:
            raise BadRequest("publish needs data (any JSON value) or data_b64")
        return _publish(obj, dump_json(obj["data"]), False, limits)
    if kind == "ping":
        return Ping(obj.get("id"))
    if kind == "refresh":
        token = obj.get("token")
        if not isinstance(token, str) or not token:
            raise BadRequest("refresh needs a token")
        return Refresh(token)
    raise BadRequest(f"unknown frame type {str(kind)[:32]!r}")


def decode_b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise BadRequest("data_b64 must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("data_b64 is not valid base64") from exc


def _publish(obj: dict[str, Any], data: bytes, binary: bool, limits: Limits) -> Publish:
    msg_id = obj.get("id")
    if not isinstance(msg_id, str) or not 0 < len(msg_id) <= 128:
        raise BadRequest("publish needs an id (client message id, 1-128 characters)")
    if len(data) > limits.max_payload_bytes:
        raise PayloadTooLarge(f"payload over {limits.max_payload_bytes} bytes")
    return Publish(
        msg_id,
        check_channel(obj.get("channel"), limits.max_channel_length),
        check_event_name(obj.get("event"), limits.max_event_name_length),
        data,
        binary,
    )
