"""``PushService``: pushsvc inside a Python application, with an in-process API.

    push = PushService(settings)
    app = FastAPI(lifespan=push.lifespan)        # or: async with push: ... in your lifespan
    app.mount("/push", push.app)
    event_id = await push.publish("orders", {"id": 42}, event="created")

The calls go straight to the log (no HTTP hop) through the code paths of the HTTP API:
the same validation and limits (``pushsvc.api.publish_messages``, ``history_range``), the
same errors (the ``PushError`` subclasses), the same idempotency keys (an in-process
publish shares the API keys' namespace, so a retry over HTTP with the same key is stored
once), the same metrics (``pushsvc_events_published``, and refusals in
``pushsvc_rejected_requests``). The host application is trusted: no credential, no
grant check and no publish rate limit (those guard what comes over the network).

Starlette and FastAPI do not run a mounted application's lifespan, so the hub (backend
listener, timers) is started by ``push.lifespan`` or ``async with push``; the calls
raise ``ConfigError`` until then, rather than storing events that this process's
subscribers would never receive.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from starlette.applications import Starlette

from pushsvc import api
from pushsvc.app import create_app
from pushsvc.exceptions import BadRequest, ConfigError, PushError
from pushsvc.hub import Hub
from pushsvc.metrics import Metrics
from pushsvc.protocol.events import Event, Gap
from pushsvc.protocol.ids import format_id
from pushsvc.protocol.names import check_channel
from pushsvc.publisher import OutgoingMessage
from pushsvc.settings import Settings


@dataclass(frozen=True, slots=True)
class History:
    """A page of a channel's log: ``events`` in order, a ``Gap`` first when the page
    starts before what is retained; read the next page with ``after=next_after``."""

    channel: str
    events: list[Event | Gap]
    top: str
    next_after: str


@dataclass(frozen=True, slots=True)
class Member:
    subject: str
    info: Any
    connections: int


@dataclass(frozen=True, slots=True)
class Presence:
    """The channel's members (empty, ``truncated``, above ``presence_snapshot_max``)."""

    channel: str
    members: list[Member]
    member_count: int
    connection_count: int
    truncated: bool


@dataclass(frozen=True, slots=True)
class PresenceStats:
    channel: str
    member_count: int
    connection_count: int


class PushService:
    """pushsvc for an application that mounts it: ``.app`` to mount, ``.lifespan`` (or
    ``async with``) to run, and the in-process calls."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.app: Starlette = create_app(settings)
        self._running = False
        self._stack = contextlib.AsyncExitStack()

    @property
    def settings(self) -> Settings:
        """The settings in effect (with the generated credentials, if none were given)."""
        settings: Settings = self.app.state.settings
        return settings

    @property
    def hub(self) -> Hub:
        """For ``pushsvc.server.GracefulServer(config, push.hub)`` and ``run(..., hub=)``."""
        hub: Hub = self.app.state.hub
        return hub

    # --- lifespan ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """pushsvc's lifespan (hub, backend listener, timers), to pass as the host's
        ``lifespan=`` or to enter from the host's own lifespan. ``app`` is ignored."""
        if self._running:
            raise ConfigError("this PushService is running already")
        async with self.app.router.lifespan_context(self.app):
            self._running = True
            try:
                yield
            finally:
                self._running = False

    async def __aenter__(self) -> PushService:
        self._stack = contextlib.AsyncExitStack()
        await self._stack.enter_async_context(self.lifespan())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    # --- publish -----------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Append one message; its event ID. ``data`` is any JSON value, or ``bytes`` for
        a binary event. The same ``idempotency_key`` again (within ``idempotency_ttl``)
        stores nothing and answers the first ID."""
        body = _wire({"channel": channel, "data": data}, event, idempotency_key)
        return (await self._append(body))[0]

    async def publish_many(self, messages: Iterable[OutgoingMessage]) -> list[str]:
        """Append up to ``max_batch_messages`` messages in one backend call, all or none
        (one invalid message refuses the batch); their event IDs, in order."""
        raw = [_wire(dict(m)) for m in messages]
        return await self._append({"messages": raw})

    async def _append(self, body: Any) -> list[str]:
        self._check_running()
        with self._counted():
            try:
                messages, _ = api.publish_messages(body, self.settings)
            except (TypeError, ValueError) as exc:  # from json.dumps: HTTP bodies are JSON
                raise BadRequest(f"data is not JSON-serializable: {exc}") from exc
            events = await self.hub.backend.append_many(messages)
        return [e.id_str for e in events]

    # --- reads -------------------------------------------------------------------------

    async def history(
        self, channel: str, after: str | None = None, limit: int | None = None
    ) -> History:
        """Up to ``limit`` events (default: 100, at most ``history_limit_max``) of
        ``channel`` after the event ID ``after`` (from the oldest retained event without
        it)."""
        self._check_running()
        with self._counted():
            channel = check_channel(channel, self.settings.max_channel_length)
            if limit is None:
                limit = min(100, self.settings.history_limit_max)
            if isinstance(limit, bool) or not isinstance(limit, int):
                raise BadRequest("limit must be an integer")
            position, count = api.history_range(self.settings, after, str(limit))
            result = await self.hub.backend.read_after(channel, position, count)
        events: list[Event | Gap] = [result.gap] if result.gap is not None else []
        events += result.events
        return History(
            channel,
            events,
            format_id(result.top),
            format_id(api.history_next_after(position, result)),
        )

    async def presence(self, channel: str) -> Presence:
        self._check_running()
        with self._counted():
            channel = check_channel(channel, self.settings.max_channel_length)
            snap = await self.hub.backend.presence_snapshot(
                channel, self.settings.presence_snapshot_max
            )
        return Presence(
            channel,
            [Member(s, api.member_info(info), n) for s, info, n in snap.members],
            snap.member_count,
            snap.connection_count,
            snap.truncated,
        )

    async def presence_stats(self, channel: str) -> PresenceStats:
        self._check_running()
        with self._counted():
            channel = check_channel(channel, self.settings.max_channel_length)
            members, connections = await self.hub.backend.presence_stats(channel)
        return PresenceStats(channel, members, connections)

    # --- helpers -----------------------------------------------------------------------

    @property
    def _metrics(self) -> Metrics:
        metrics: Metrics = self.app.state.metrics
        return metrics

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        """Refusals counted in ``pushsvc_rejected_requests``, as the HTTP API's are."""
        try:
            yield
        except PushError as exc:
            self._metrics.error(exc)
            raise

    def _check_running(self) -> None:
        if not self._running:
            raise ConfigError(
                "PushService is not running: pass push.lifespan to your application "
                "(FastAPI(lifespan=push.lifespan)) or enter `async with push:` in its lifespan"
            )


def _wire(
    message: Mapping[str, Any], event: str | None = None, idempotency_key: str | None = None
) -> dict[str, Any]:
    """A message as ``POST /v1/publish`` receives it (bytes as ``data_b64``), so that it
    goes through the one validation."""
    body = dict(message)
    if event is not None:
        body["event"] = event
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    data = body.get("data")
    if isinstance(data, bytes | bytearray | memoryview):
        del body["data"]
        body["data_b64"] = base64.b64encode(data).decode()
    return body


__all__ = [
    "History",
    "Member",
    "OutgoingMessage",
    "Presence",
    "PresenceStats",
    "PushService",
]
