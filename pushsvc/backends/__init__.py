"""Backends (the log), chosen by URL scheme and imported lazily.

``open_backend("memory://")`` or ``open_backend("redis://host:6379/0?prefix=app:")``; a Redis
Cluster is selected by its scheme, ``redis+cluster://host:port[,host:port…]/?prefix=app:``
(``rediss+cluster://`` with TLS): nothing is guessed from the server.
"""

from __future__ import annotations

import importlib

from pushsvc.backends.base import Backend, ListenerStatus, Message, ReadResult, Retention
from pushsvc.exceptions import ConfigError

BACKENDS: dict[str, str] = {
    "memory": "pushsvc.backends.memory:MemoryBackend",
    "redis": "pushsvc.backends.redis:RedisBackend",
    "rediss": "pushsvc.backends.redis:RedisBackend",
    "redis+cluster": "pushsvc.backends.redis:RedisBackend",
    "rediss+cluster": "pushsvc.backends.redis:RedisBackend",
}


def open_backend(url: str, retention: Retention | None = None) -> Backend:
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in BACKENDS:
        valid = ", ".join(f"{s}://" for s in BACKENDS)
        raise ConfigError(f"unknown backend URL {url!r}: valid schemes are {valid}")
    module_name, _, class_name = BACKENDS[scheme].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls(url, retention or Retention())
    return backend


__all__ = [
    "BACKENDS",
    "Backend",
    "ListenerStatus",
    "Message",
    "ReadResult",
    "Retention",
    "open_backend",
]
