"""The OpenAPI 3.1 contract of every HTTP endpoint: ``GET /v1/openapi.json``.

Built from the app's settings, so that the limits a deployment configured (channel name
length, channels per request, batch size, long-poll timeout, history page) appear as schema
constraints: the document a server answers describes that server. It is written by hand
here, next to the validation code it mirrors (``pushsvc.api``, ``pushsvc.transports``,
``pushsvc.protocol.names``), rather than derived from the handlers, which take plain
requests; ``tests/test_openapi.py`` keeps it honest: every route of ``create_app`` is in it
and every path in it is a route, it validates as OpenAPI 3.1, and a bounded property-based
run (schemathesis) against a live server finds no 500 and no response it does not describe.

The WebSocket endpoint (``/v1/ws``) is not an HTTP operation OpenAPI can describe: the info
description names it and points to the frames reference.

Problem types come from the exception tree (``pushsvc.exceptions``), their one home.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from pushsvc.__version__ import __version__
from pushsvc.exceptions import (
    BackendError,
    BadCursor,
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    PushError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from pushsvc.protocol.cursor import MAX_CURSOR_CHARS
from pushsvc.settings import Settings

PATH = "/v1/openapi.json"
PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://pushsvc.dev/problems/"

# The alphabets of pushsvc.protocol.names and pushsvc.protocol.presence, anchored.
CHANNEL_PATTERN = r"^[A-Za-z0-9_\-:.@=+/]+$"
EVENT_PATTERN = r"^[A-Za-z0-9_\-:.]+$"
PRESENCE_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
# "<ms>-<seq>" or "<ms>". The server also refuses (400) the digits strings over 2^48 - 1
# (ms) or 2^64 - 1 (seq), which a pattern cannot say; these bounds in digits keep every
# string the pattern matches valid.
EVENT_ID_PATTERN = r"^([0-9]{1,14}(-[0-9]{1,19})?)?$"  # empty: as if absent
ANSWERED_ID_PATTERN = r"^[0-9]+-[0-9]+$"
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

# The problems an HTTP endpoint answers (ConfigError is never sent; no endpoint raises
# NotFound: an unknown path answers Starlette's 404, type about:blank).
_PROBLEMS: tuple[type[PushError], ...] = (
    BadRequest,
    BadCursor,
    Unauthorized,
    Forbidden,
    PayloadTooLarge,
    TooManyRequests,
    Unavailable,
    BackendError,
)

_SUBSCRIBE_ERRORS = ("400", "401", "403", "503")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _problem(status: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/Problem{status}"}


def _errors(*statuses: str) -> dict[str, Any]:
    return {status: _problem(status) for status in statuses}


def _problem_types(status: int) -> list[str]:
    return [PROBLEM_BASE + e.problem for e in _PROBLEMS if e.status == status]


def openapi_document(settings: Settings, root_path: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of an app with these settings, served under ``root_path``."""
    s = settings
    channel = {
        "type": "string",
        "minLength": 1,
        "maxLength": s.max_channel_length,
        "pattern": CHANNEL_PATTERN,
        "description": "A channel name: A-Z a-z 0-9 _ - : . @ = + /",
        "examples": ["chat:lobby"],
    }
    cursor = {
        "type": "string",
        "description": "An opaque cursor from an earlier answer: `c1` and 20 characters per "
        "channel, each segment with a checksum. A cursor that does not decode (tampered, "
        f"truncated, over {MAX_CURSOR_CHARS} characters) answers 400 `bad-cursor` where it is "
        "used (with channels).",
    }
    channels_query = {
        "name": "channel",
        "in": "query",
        "required": True,
        "style": "form",
        "explode": True,
        "description": "A channel to subscribe to; repeated for several.",
        "schema": {
            "type": "array",
            "items": _ref("Channel"),
            "minItems": 1,
            "maxItems": s.max_channels_per_session,
        },
    }
    channel_path = {
        "name": "channel",
        "in": "path",
        "required": True,
        "description": "The channel; its `/` characters need no escaping.",
        "schema": _ref("Channel"),
    }
    presence_flag = {
        "name": "presence",
        "in": "query",
        "description": "`1`: be in the channels' presence and receive it (the presence grant "
        "on each channel).",
        "schema": {"type": "string", "enum": ["0", "1", "false", "true", ""]},
    }
    presence_id = {
        "name": "presence_id",
        "in": "query",
        "description": "The client's presence entry, chosen once and sent with each request: "
        f"with `presence=1`, it must match `{PRESENCE_ID_PATTERN}` (else 400); without, it "
        "is ignored.",
        "schema": {"type": "string"},
    }
    cursor_query = {
        "name": "cursor",
        "in": "query",
        "description": "Where to go on; without one, each channel starts at its current end.",
        "schema": _ref("Cursor"),
    }

    schemas: dict[str, Any] = {
        "Channel": channel,
        "Cursor": cursor,
        "EventId": {
            "type": "string",
            "pattern": ANSWERED_ID_PATTERN,
            "description": "`<milliseconds>-<sequence>`, increasing per channel.",
            "examples": ["1795647018568-0"],
        },
        "Problem": {
            "type": "object",
            "description": "An RFC 9457 problem. Members beyond the standard ones say more: "
            "`channels` or `channel` (403), `retry_after` (429, 503), `reason` (401, "
            "`expired`), `origin` (403).",
            "required": ["type", "title", "status"],
            "properties": {
                "type": {
                    "type": "string",
                    "format": "uri",
                    "description": "`about:blank` for an unknown path or method, else one of "
                    + ", ".join(f"`{PROBLEM_BASE}{e.problem}`" for e in _PROBLEMS),
                },
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string"},
                "channels": {"type": "array", "items": {"type": "string"}},
                "channel": {"type": "string"},
                "retry_after": {"type": "number", "minimum": 0},
                "reason": {"type": "string"},
                "origin": {"type": "string"},
            },
        },
        "Message": {
            "type": "object",
            "description": "One message: `data` (any JSON) or `data_b64` (bytes, standard "
            f"base64; it wins over `data`). The payload is at most {s.max_publish_bytes} bytes "
            "(as compact JSON, or decoded), else 413. An object with `messages` is a batch.",
            "required": ["channel"],
            "anyOf": [{"required": ["data"]}, {"required": ["data_b64"]}],
            "not": {"required": ["messages"]},
            "properties": {
                "channel": _ref("Channel"),
                "event": {
                    "type": ["string", "null"],
                    "minLength": 1,
                    "maxLength": s.max_event_name_length,
                    "pattern": EVENT_PATTERN,
                    "description": "The event name; `message` when absent or null.",
                },
                "data": {"description": "The payload, any JSON value, delivered as sent."},
                "data_b64": {"type": "string", "pattern": BASE64_PATTERN},
                "idempotency_key": {
                    "type": ["string", "null"],
                    "minLength": 1,
                    "maxLength": 128,
                    "description": "A repeat within `idempotency_ttl` "
                    f"({s.idempotency_ttl:g} s) on the same channel stores nothing and answers "
                    "the original ID.",
                },
            },
        },
        "Batch": {
            "type": "object",
            "required": ["messages"],
            "description": "Several messages, validated and authorized together, stored in order.",
            "properties": {
                "messages": {
                    "type": "array",
                    "items": _ref("Message"),
                    "minItems": 1,
                    "maxItems": s.max_batch_messages,
                }
            },
        },
        "Published": {
            "type": "object",
            "required": ["channel", "id"],
            "properties": {"channel": _ref("Channel"), "id": _ref("EventId")},
        },
        "BatchPublished": {
            "type": "object",
            "required": ["results"],
            "properties": {"results": {"type": "array", "items": _ref("Published")}},
        },
        "NegotiateRequest": {
            "type": "object",
            "properties": {
                "channels": {
                    "type": "array",
                    "items": _ref("Channel"),
                    "maxItems": s.max_channels_per_session,
                },
                "cursor": {
                    # what the server reads as no cursor: JSON's false values
                    "anyOf": [
                        _ref("Cursor"),
                        {"enum": [None, False, 0]},
                        {"const": {}},
                        {"const": []},
                    ],
                    "description": "Positions on `channels` (needs them). `null` (or another "
                    'JSON false value: `false`, `0`, `{}`, `[]`, `""`) is no cursor.',
                },
            },
        },
        "Negotiation": {
            "type": "object",
            "required": [
                "session_id",
                "subject",
                "transports",
                "endpoints",
                "heartbeat_interval",
                "token_expires_at",
                "limits",
            ],
            "properties": {
                "session_id": {"type": "string"},
                "subject": {"type": "string"},
                "transports": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["websocket", "sse", "long-polling"]},
                },
                "endpoints": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                },
                "heartbeat_interval": {"type": "number"},
                "token_expires_at": {"type": ["number", "null"]},
                "limits": {
                    "type": "object",
                    "additionalProperties": {"type": "number"},
                },
                "channels": {"type": "array", "items": _ref("Channel")},
                "cursor": _ref("Cursor"),
            },
        },
        "SSEEvent": {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {
                    "type": "string",
                    "description": "The SSE type; with `named_events=1`, a published "
                    "event's name instead of `message` (except the names listed here, and "
                    "`open` and `error`).",
                    "anyOf": [
                        {
                            "enum": [
                                "message",
                                "subscribed",
                                "gap",
                                "presence",
                                "join",
                                "leave",
                                "heartbeat",
                                "token-expired",
                                "close",
                            ]
                        },
                        {"pattern": EVENT_PATTERN},
                    ],
                },
                "data": {"type": "string", "description": "A JSON object."},
                "id": {"type": "string", "description": "The cursor after this event."},
                "retry": {"type": "integer", "minimum": 0},
            },
        },
        "PollItem": {
            "type": "object",
            "required": ["type", "channel"],
            "description": "`event`, `gap`, and with `presence=1` `presence`, `join`, `leave`.",
            "properties": {
                "type": {
                    "type": "string",
                    "enum": ["event", "gap", "presence", "join", "leave"],
                },
                "channel": {"type": "string"},
                "event": {"type": "string"},
                "id": _ref("EventId"),
                "data": {},
                "encoding": {"type": "string", "enum": ["base64"]},
                "after": _ref("EventId"),
                "until": _ref("EventId"),
                "subject": {"type": "string"},
                "info": {"type": "object"},
                "connections": {"type": "integer", "minimum": 0},
                "members": {"type": "array", "items": _ref("Member")},
                "member_count": {"type": "integer", "minimum": 0},
                "connection_count": {"type": "integer", "minimum": 0},
                "truncated": {"type": "boolean"},
            },
        },
        "PollAnswer": {
            "type": "object",
            "required": ["events", "cursor"],
            "properties": {
                "events": {"type": "array", "items": _ref("PollItem")},
                "cursor": _ref("Cursor"),
                "presence_version": {"type": "string"},
            },
        },
        "History": {
            "type": "object",
            "required": ["channel", "events", "top", "next_after", "cursor"],
            "properties": {
                "channel": _ref("Channel"),
                "events": {"type": "array", "items": _ref("PollItem")},
                "top": _ref("EventId"),
                "next_after": _ref("EventId"),
                "cursor": _ref("Cursor"),
            },
        },
        "Member": {
            "type": "object",
            "required": ["subject", "info", "connections"],
            "properties": {
                "subject": {"type": "string"},
                "info": {"type": "object"},
                "connections": {"type": "integer", "minimum": 1},
            },
        },
        "Presence": {
            "type": "object",
            "required": ["channel", "members", "member_count", "connection_count", "truncated"],
            "properties": {
                "channel": _ref("Channel"),
                "members": {"type": "array", "items": _ref("Member")},
                "member_count": {"type": "integer", "minimum": 0},
                "connection_count": {"type": "integer", "minimum": 0},
                "truncated": {"type": "boolean"},
            },
        },
        "PresenceStats": {
            "type": "object",
            "required": ["channel", "member_count", "connection_count"],
            "properties": {
                "channel": _ref("Channel"),
                "member_count": {"type": "integer", "minimum": 0},
                "connection_count": {"type": "integer", "minimum": 0},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Readiness": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "backend": {"const": "down"},
                "detail": {"type": "string"},
                "backend_rtt_ms": {"type": "number", "minimum": 0},
                "listener": {
                    "type": "object",
                    "required": ["connected", "reconnects", "channels"],
                    "properties": {
                        "connected": {"type": "boolean"},
                        "reconnects": {"type": "integer", "minimum": 0},
                        "channels": {"type": "integer", "minimum": 0},
                    },
                },
                "connections": {"type": "integer", "minimum": 0},
            },
        },
    }

    retry_after = {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer", "minimum": 1},
        }
    }
    problem_content = {PROBLEM_MEDIA_TYPE: {"schema": _ref("Problem")}}
    problem_text = {
        "400": "Malformed input: JSON, a member, a channel or event name, an event ID, a query "
        "parameter; `bad-cursor` for a cursor that does not decode.",
        "401": "Missing, invalid or expired credential (`reason: expired`).",
        "403": "The token does not grant the channel(s), named in `channels` or `channel`.",
        "404": "No route matches the path: a channel that cannot stand in it (a line break, "
        "a `.` or `..` segment).",
        "413": f"A body, message or batch over its limit (max_publish_bytes "
        f"{s.max_publish_bytes}, max_batch_messages {s.max_batch_messages}).",
        "429": "Over the publish rate of the token's subject or the API key (`Retry-After`).",
        "503": f"`unavailable`: max_connections ({s.max_connections}) reached on this instance "
        "(`Retry-After`); `backend-unavailable`: the backend cannot be reached.",
    }
    responses: dict[str, Any] = {}
    for status, text in problem_text.items():
        types = _problem_types(int(status)) or ["about:blank"]
        response: dict[str, Any] = {
            "description": text + " Problem types: " + ", ".join(f"`{t}`" for t in types) + ".",
            "content": problem_content,
        }
        if status in ("429", "503"):
            response["headers"] = retry_after
        responses["Problem" + status] = response

    security_all: list[dict[str, list[str]]] = [{"apiKey": []}, {"token": []}, {"tokenQuery": []}]
    subscribe_security = security_all

    def op(
        op_id: str, summary: str, description: str, ok: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        return {
            "operationId": op_id,
            "summary": summary,
            "description": description,
            "responses": ok,
            **extra,
        }

    channel_ops_errors = _errors("400", "401", "403", "503")
    channel_path_errors = _errors("400", "401", "403", "404", "503")
    paths: dict[str, Any] = {
        "/v1/publish": {
            "post": op(
                "publish",
                "Publish a message or a batch",
                'Store one message, or a batch (`{"messages": […]}`), and answer the event '
                "ID(s). A token needs the publish grant on each channel; an API key may "
                "publish anywhere. A batch costs one unit of the publish rate per message.",
                {
                    "200": _json(
                        {"oneOf": [_ref("Published"), _ref("BatchPublished")]},
                        "The event ID of the message, or `results` for a batch, in order.",
                    ),
                    **_errors("400", "401", "403", "413", "429", "503"),
                },
                security=security_all,
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"oneOf": [_ref("Message"), _ref("Batch")]},
                        }
                    },
                },
            )
        },
        "/v1/negotiate": {
            "post": op(
                "negotiate",
                "Transports, limits, and a start cursor",
                "The client's first contact. With channels (in the optional JSON body, or "
                "`channel`/`cursor` query parameters when there is no body) the answer's "
                "`cursor` pins where the client starts on each of them: its position in the "
                "given cursor, else the channel's current top.",
                {
                    "200": _json(_ref("Negotiation"), "What the client needs."),
                    **channel_ops_errors,
                },
                security=security_all,
                parameters=[
                    {**channels_query, "required": False},
                    {**cursor_query, "description": "Positions on the channels (needs them)."},
                ],
                requestBody={
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {"anyOf": [_ref("NegotiateRequest"), {"type": "null"}]}
                        }
                    },
                },
            )
        },
        "/v1/sse": {
            "get": op(
                "sse",
                "Server-Sent Events stream",
                "An endless `text/event-stream`: `event: message` frames whose `id:` is the "
                "cursor (a native EventSource resumes with `Last-Event-ID`), `gap`, "
                "`heartbeat`, `subscribed`, presence and `close` events. See the SSE "
                "reference. Errors are answered before the stream starts.",
                {
                    "200": {
                        "description": "The stream (it does not end by itself). The schema "
                        "describes each event of the stream, by its SSE fields.",
                        "content": {"text/event-stream": {"schema": _ref("SSEEvent")}},
                    },
                    **_errors(*_SUBSCRIBE_ERRORS),
                },
                security=subscribe_security,
                parameters=[
                    channels_query,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "description": "The cursor, as EventSource sends it on reconnect.",
                        "schema": _ref("Cursor"),
                    },
                    {
                        "name": "last_event_id",
                        "in": "query",
                        "description": "The cursor, for clients that cannot set headers.",
                        "schema": _ref("Cursor"),
                    },
                    {**cursor_query, "description": "Same as `last_event_id`."},
                    presence_flag,
                    presence_id,
                    {
                        "name": "named_events",
                        "in": "query",
                        "description": "`1`: each published event's name is its SSE type, "
                        "for `addEventListener(name, ...)`; `0` or absent: every event is "
                        "`message`.",
                        "schema": {"type": "string", "enum": ["0", "1", "false", "true", ""]},
                    },
                ],
            )
        },
        "/v1/poll": {
            "get": op(
                "poll",
                "One long-poll",
                "Answers at once when events are pending after the cursor, else when the next "
                "one arrives, else with no events at `timeout`. Stateless: any instance "
                "answers any poll. With `presence=1`, `presence_id` is required (400 without).",
                {
                    "200": _json(
                        _ref("PollAnswer"),
                        "Pending items and the cursor for the next poll.",
                        headers={
                            "Cache-Control": {"schema": {"type": "string", "const": "no-store"}}
                        },
                    ),
                    **_errors(*_SUBSCRIBE_ERRORS),
                },
                security=subscribe_security,
                parameters=[
                    channels_query,
                    cursor_query,
                    {
                        "name": "timeout",
                        "in": "query",
                        "description": "Seconds to wait when nothing is pending (absent or "
                        f"empty: {s.poll_timeout_default:g}).",
                        "schema": {
                            "anyOf": [
                                {"type": "number", "minimum": 0, "maximum": s.poll_timeout_max},
                                {"const": ""},
                            ]
                        },
                    },
                    presence_flag,
                    presence_id,
                    {
                        "name": "presence_version",
                        "in": "query",
                        "description": "The previous answer's `presence_version`.",
                        "schema": {"type": "string"},
                    },
                ],
            )
        },
        "/v1/channels/{channel}/history": {
            "get": op(
                "history",
                "Read a channel's log",
                "Events after `after`, a page of at most `limit`; a `gap` item first when "
                "events after `after` were trimmed. The answer's `cursor` positions the channel "
                "at `next_after` (and keeps the other channels of the `cursor` given).",
                {
                    "200": _json(_ref("History"), "One page of the log."),
                    **channel_path_errors,
                },
                security=subscribe_security,
                parameters=[
                    channel_path,
                    {
                        "name": "after",
                        "in": "query",
                        "description": "An event ID: answer the events after it (default: "
                        "from the beginning).",
                        "schema": {"type": "string", "pattern": EVENT_ID_PATTERN},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "Events per page (without it, 100, or "
                        "history_limit_max when that is lower).",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": s.history_limit_max,
                            "default": min(100, s.history_limit_max),
                        },
                    },
                    {
                        **cursor_query,
                        "description": "A cursor whose other channels the answer keeps.",
                    },
                ],
            )
        },
        "/v1/channels/{channel}/presence": {
            "get": op(
                "presence",
                "A channel's members",
                "Members sorted by subject; above presence_snapshot_max "
                f"({s.presence_snapshot_max}) members, none listed and `truncated: true`.",
                {
                    "200": _json(_ref("Presence"), "The channel's presence."),
                    **channel_path_errors,
                },
                security=security_all,
                parameters=[channel_path],
            )
        },
        "/v1/channels/{channel}/presence/stats": {
            "get": op(
                "presenceStats",
                "A channel's member and connection counts",
                "The counts only: the cost does not grow with the members.",
                {
                    "200": _json(_ref("PresenceStats"), "The counts."),
                    **channel_path_errors,
                },
                security=security_all,
                parameters=[channel_path],
            )
        },
        "/healthz": {
            "get": op(
                "healthz",
                "Liveness",
                "200 as long as the process serves requests.",
                {"200": _json(_ref("Health"), "Alive.")},
                security=[],
            )
        },
        "/readyz": {
            "get": op(
                "readyz",
                "Readiness",
                "A round trip to the backend and the state of the process's listener.",
                {
                    "200": _json(_ref("Readiness"), "Ready."),
                    "503": _json(
                        _ref("Readiness"),
                        "The backend or its listener is down, or the instance is draining.",
                    ),
                },
                security=[],
            )
        },
        "/metrics": {
            "get": op(
                "metrics",
                "Prometheus metrics of this process",
                "The text exposition format. Expose it to your monitoring only.",
                {
                    "200": {
                        "description": "The metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                security=[],
            )
        },
        PATH: {
            "get": op(
                "openapi",
                "This document",
                "The OpenAPI 3.1 document of this server, with its configured limits.",
                {"200": _json({"type": "object"}, "The document.")},
                security=[],
            )
        },
    }
    for name, media_type, what in (
        ("pushsvc.js", "application/javascript", "The browser client (an ES module)."),
        ("pushsvc.d.ts", "application/typescript", "The browser client's TypeScript types."),
    ):
        paths["/" + name] = {
            "get": op(
                "static_" + name.replace(".", "_"),
                what,
                "Served with an `ETag` and `Cache-Control: no-cache`.",
                {
                    "200": {
                        "description": what,
                        "headers": {"ETag": {"schema": {"type": "string"}}},
                        "content": {media_type: {"schema": {"type": "string"}}},
                    },
                    "304": {"description": "`If-None-Match` matched the current `ETag`."},
                },
                security=[],
                parameters=[
                    {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}}
                ],
            )
        }

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pushsvc",
            "version": __version__,
            "summary": "Push messaging over WebSocket, SSE and long-polling.",
            "description": "Every HTTP endpoint of a pushsvc server, with this server's "
            "limits as schema constraints. Errors are RFC 9457 problems "
            f"(`{PROBLEM_MEDIA_TYPE}`).\n\n"
            "The WebSocket endpoint, `GET /v1/ws` (an HTTP upgrade: the credential in "
            "`Authorization: Bearer` or the `token` query parameter), carries JSON frames "
            "that OpenAPI cannot describe: see the WebSocket reference "
            "(docs/reference/websocket.md) and the close codes "
            "(docs/reference/close-codes.md).",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": root_path or "/"}],
        "security": security_all,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A backend API key (`api_keys`): may publish on, and read, "
                    "any channel.",
                },
                "token": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "pushsvc token",
                    "description": "A client token (`pushsvc token`): a subject, an expiry, and "
                    "subscribe / publish / presence grants as channel patterns.",
                },
                "tokenQuery": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "The client token in the query string, where EventSource "
                    "or WebSocket cannot set headers (redacted from the server's logs).",
                },
            },
        },
    }


@functools.lru_cache(maxsize=16)
def _encoded(settings: Settings, root_path: str) -> bytes:
    return json.dumps(openapi_document(settings, root_path), separators=(",", ":")).encode()


async def openapi_endpoint(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    body = _encoded(settings, request.scope.get("root_path", ""))
    return Response(body, media_type="application/json")
