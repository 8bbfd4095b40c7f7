"""pushsvc: push messaging over WebSocket, SSE and long-polling, with lossless resume."""

import typing

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

if typing.TYPE_CHECKING:
    from pushsvc.publisher import Publisher, SyncPublisher
    from pushsvc.service import PushService

# Imported on first use: `import pushsvc` stays light (no Starlette app, no httpx).
_LAZY = {
    "Publisher": "pushsvc.publisher",
    "PushService": "pushsvc.service",
    "SyncPublisher": "pushsvc.publisher",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pushsvc' has no attribute {name!r}")


__all__ = [
    "BackendError",
    "BadCursor",
    "BadRequest",
    "ClientError",
    "ConfigError",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "Publisher",
    "PushError",
    "PushService",
    "Settings",
    "SyncPublisher",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "__version__",
]
