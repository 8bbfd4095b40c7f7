"""pushsvc: push messaging over WebSocket, SSE and long-polling, with lossless resume."""

from pushsvc.__version__ import __version__
from pushsvc.exceptions import (
    BackendError,
    BadCursor,
    BadRequest,
    ClientError,
    ConfigError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PushError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from pushsvc.settings import Settings

__all__ = [
    "BackendError",
    "BadCursor",
    "BadRequest",
    "ClientError",
    "ConfigError",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "PushError",
    "Settings",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "__version__",
]
