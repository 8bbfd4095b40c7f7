"""Client exceptions::

    PushClientError
     ├── OutboxFull        publish() while the outbox already holds outbox_limit messages
     ├── PublishRejected   the server refused one message for good (status, detail)
     ├── ClientClosed      the client closed before a queued message was acked
     └── ServerRejected    the server refused the session itself (bad token, channel not
                           granted, bad cursor; a close whose policy is ``stop`` in
                           pushsvc.protocol.codes): the client stops and the iterator raises

Connection failures are not errors for the application: the client reconnects.
"""

from __future__ import annotations


class PushClientError(Exception):
    """Root of the client's exceptions."""


class OutboxFull(PushClientError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"outbox full: {limit} messages wait for the server already")
        self.limit = limit


class PublishRejected(PushClientError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"publish rejected ({status}): {detail}")
        self.status = status
        self.detail = detail


class ClientClosed(PushClientError):
    def __init__(self) -> None:
        super().__init__("client closed before the message was acked")


class ServerRejected(PushClientError):
    """``status`` is the HTTP status, or the WebSocket close code."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"server rejected the session ({status}): {detail}")
        self.status = status
        self.detail = detail


# Internal: how a connection attempt failed.
class Blocked(Exception):
    """This transport cannot work on this network path (a proxy refused the upgrade,
    buffers the stream, ...): try the next one, re-probe it later."""


class Transient(Exception):
    """The server or network failed: reconnect with backoff. ``silent``: the connection
    went quiet (pooled connections are likely dead too); ``reauth``: the credentials
    should be checked again (negotiate); ``at_once``: reconnect without a backoff delay
    (the instance drains: another one is up); ``code``: the server's close code."""

    def __init__(
        self,
        message: str,
        *,
        silent: bool = False,
        reauth: bool = False,
        at_once: bool = False,
        code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.silent = silent
        self.reauth = reauth
        self.at_once = at_once
        self.code = code
