"""The one exception tree of pushsvc.

Every error a client can cause knows its HTTP status, its WebSocket close code and its
problem type (``problem``, the last part of the type URI), so one module
(``pushsvc.problems``) renders it for every wire: an ``application/problem+json``
response, a refused WebSocket upgrade, an ``error`` frame or a WebSocket close::

    PushError
    ├── ConfigError                  (server misconfiguration; never sent to clients)
    ├── BackendError                 503 / 1011  the log is unreachable (Retry-After)
    └── ClientError                  400 / 4400
        ├── BadRequest               400 / 4400  malformed input (JSON, fields, names)
        │   └── BadCursor            400 / 4400  undecodable or tampered cursor
        ├── Unauthorized             401 / 4401  missing, invalid or expired credentials
        ├── Forbidden                403 / 4403  valid credentials, channel not granted
        ├── NotFound                 404 / 4404
        ├── PayloadTooLarge          413 / 1009  body or frame over the limit
        ├── TooManyRequests          429 / 4429  rate limit (Retry-After)
        └── Unavailable              503 / 1013  connection limit reached (Retry-After)

WebSocket close codes that are not errors of a request (slow consumer, token expired,
going away) are constants in ``pushsvc.protocol.codes``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pushsvc.protocol import codes


class PushError(Exception):
    status: ClassVar[int] = 500
    close_code: ClassVar[int] = codes.WS_1011_INTERNAL_ERROR
    problem: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra  # more members of the problem body (channels, retry_after, ...)
        self.headers: dict[str, str] = {}  # HTTP headers of the answer (Retry-After)
        # On a WebSocket: the request this error refuses ({"op", "id"}), when the frame was
        # understood and the connection goes on (an error frame), else None (a close).
        self.request: dict[str, Any] | None = None


class ConfigError(PushError):
    problem = "configuration"
    title = "Configuration error"


class BackendError(PushError):
    status = 503
    close_code = codes.WS_1011_INTERNAL_ERROR
    problem = "backend-unavailable"
    title = "Backend unavailable"

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail, **extra)
        # transient (Redis restarting, failing over): a publisher retries after a second
        self.headers["Retry-After"] = "1"


class ClientError(PushError):
    status = 400
    close_code = codes.WS_4400_BAD_REQUEST
    problem = "bad-request"
    title = "Bad request"


class BadRequest(ClientError):
    pass


class BadCursor(BadRequest):
    problem = "bad-cursor"
    title = "Bad cursor"


class Unauthorized(ClientError):
    status = 401
    close_code = codes.WS_4401_UNAUTHORIZED
    problem = "unauthorized"
    title = "Unauthorized"


class Forbidden(ClientError):
    status = 403
    close_code = codes.WS_4403_FORBIDDEN
    problem = "forbidden"
    title = "Forbidden"


class NotFound(ClientError):
    status = 404
    close_code = codes.WS_4404_NOT_FOUND
    problem = "not-found"
    title = "Not found"


class PayloadTooLarge(ClientError):
    status = 413
    close_code = codes.WS_1009_MESSAGE_TOO_BIG
    problem = "payload-too-large"
    title = "Payload too large"


class TooManyRequests(ClientError):
    status = 429
    close_code = codes.WS_4429_RATE_LIMITED
    problem = "rate-limited"
    title = "Too many requests"

    def __init__(self, detail: str = "", retry_after: float = 1.0, **extra: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))


class Unavailable(ClientError):
    status = 503
    close_code = codes.WS_1013_TRY_AGAIN_LATER
    problem = "unavailable"
    title = "Service unavailable"

    def __init__(self, detail: str = "", retry_after: float = 1.0, **extra: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
