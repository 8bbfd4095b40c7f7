"""Parsing and validation of what clients send: WebSocket frames, and the publish that
``POST /v1/publish`` and the WebSocket share (``parse_publish``: the same checks, limits,
messages and error types on both). No I/O.

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

An HTTP publish is the same object without ``type``, with an optional
``idempotency_key`` in place of the WebSocket's required ``id``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Protocol

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


class LimitSettings(Protocol):
    """The settings the limits come from (``pushsvc.settings.Settings``)."""

    @property
    def max_channels_per_session(self) -> int: ...
    @property
    def max_channel_length(self) -> int: ...
    @property
    def max_event_name_length(self) -> int: ...
    @property
    def max_publish_bytes(self) -> int: ...


# settings object's id -> (that object, its limits): looked up per publish, so by identity
# (hashing a frozen dataclass hashes all of its fields, on every call)
_LIMITS: dict[int, tuple[LimitSettings, Limits]] = {}


def limits_from(settings: LimitSettings) -> Limits:
    cached = _LIMITS.get(id(settings))
    if cached is not None and cached[0] is settings:
        return cached[1]
    limits = Limits(
        max_channels=settings.max_channels_per_session,
        max_channel_length=settings.max_channel_length,
        max_event_name_length=settings.max_event_name_length,
        max_payload_bytes=settings.max_publish_bytes,
    )
    if len(_LIMITS) >= 16:
        _LIMITS.clear()
    _LIMITS[id(settings)] = (settings, limits)
    return limits


@dataclass(frozen=True, slots=True)
class Subscribe:
    channels: list[str]
    cursor: str | None
    presence: bool = False  # join the channels' presence and receive it
    presence_id: str | None = None  # the client's own name for its presence entry


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channels: list[str]


@dataclass(slots=True)  # not frozen: built per published message (backends.base.Message)
class Publish:
    id: str | None  # WebSocket: the client message id; HTTP: the idempotency_key, if any
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
    return _ws_publish(obj, limits, payload)


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
        return _ws_publish(obj, limits)
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


# the member that names a publish: the WebSocket's required client message id, HTTP's
# optional idempotency key (both are the idempotency key)
_KEYS = {"id": ("id (the client message id)", True), "idempotency_key": ("idempotency_key", False)}


def _ws_publish(obj: dict[str, Any], limits: Limits, payload: bytes | None = None) -> Publish:
    try:
        return parse_publish(obj, limits, key="id", payload=payload)
    except PayloadTooLarge as exc:
        # Understood, but over max_publish_bytes: the request fails, as a 413 over HTTP,
        # and the connection goes on (an error frame naming it; the id was checked first).
        exc.request = {"op": "publish", "id": obj["id"]}
        raise


def parse_publish(
    obj: Any, limits: Limits, *, key: str = "idempotency_key", payload: bytes | None = None
) -> Publish:
    """One publish, for ``POST /v1/publish`` (``key="idempotency_key"``, optional) and the
    WebSocket (``key="id"``, required; ``payload``: a binary frame's bytes after its
    header). Checks, in order: the object, its id, channel, event name, data, and the
    data's size against ``max_payload_bytes`` (``BadRequest``, then ``PayloadTooLarge``)."""
    label, required = _KEYS[key]
    if not isinstance(obj, dict):
        raise BadRequest("a message must be a JSON object")
    msg_id = obj.get(key)
    if (msg_id is not None or required) and (
        not isinstance(msg_id, str) or not 0 < len(msg_id) <= 128
    ):
        raise BadRequest(f"{label} must be a string of 1 to 128 characters")
    channel = check_channel(obj.get("channel"), limits.max_channel_length)
    event = check_event_name(obj.get("event"), limits.max_event_name_length)
    if payload is not None:
        if "data" in obj or "data_b64" in obj:
            raise BadRequest("a binary publish carries its payload after the header")
        data, binary = payload, True
    elif "data_b64" in obj:
        data, binary = decode_b64(obj["data_b64"]), True
    elif "data" in obj:
        data, binary = dump_json(obj["data"]), False
    else:
        raise BadRequest("a message needs data (any JSON value) or data_b64 (base64)")
    if len(data) > limits.max_payload_bytes:
        raise PayloadTooLarge(f"message data over {limits.max_payload_bytes} bytes")
    return Publish(msg_id, channel, event, data, binary)
