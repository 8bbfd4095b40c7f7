"""Prometheus metrics at ``GET /metrics``, one ``CollectorRegistry`` per app.

``create_app`` builds one ``Metrics`` (``app.state.metrics``) and hands it to the hub;
sessions and transports reach it as ``session.hub.metrics``. It reads a session through the
``Metered`` protocol below, so this module imports neither the session nor the hub.
Nothing goes to prometheus-client's global registry, so several apps can live in one
process.

The delivery path is measured against a bare Starlette broadcast, so it never touches a
prometheus-client object (a labelled ``inc()`` takes a lock and costs about as much as a
tenth of a delivery). Each transport's writer calls ``TransportStats.wrote(batch)`` once
per write with the frames of that write: it adds plain ints (events, frames, writes) and,
for the first event of the batch only, the publish->write latency into a plain bucket
list. A collector turns these into counters and a histogram when ``/metrics`` is scraped.
The latency of a batch of several events is therefore sampled at its oldest event, and
only one write in ``metrics_latency_every`` (default 16) per transport is sampled: the
count costs about 0.2 us per write, a latency sample about 0.4 us more (measured on this
project's 2-core test machine), against a delivery budget of about 16 us. The ID of a
frame is parsed once, however many subscribers the same frame object is written to.

Publish->write latency is ``time.time()`` after the write minus the event ID's
milliseconds (the backend's clock when it stored the event: Redis ``TIME`` or this
process's clock for ``memory://``), so it is quantized to 1 ms and assumes the clocks of
Redis and this host agree. Replayed history counts too (it lands in the upper buckets).

Everything else (connections opening and closing, resumes, errors, backend commands) is
counted per occurrence with pre-bound prometheus-client children. The backend is timed by
wrapping its public coroutine methods on the instance; the listener's state is read from
``Backend.listener_status()`` at scrape time, so a deaf listener shows as
``pushsvc_backend_listener_up 0`` at once.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from pushsvc.exceptions import Forbidden, PushError, Unauthorized
from pushsvc.protocol import codes

if TYPE_CHECKING:
    from pushsvc.auth import Principal
    from pushsvc.backends.base import Backend
    from pushsvc.protocol.events import Gap
    from pushsvc.protocol.wires import Wire
    from pushsvc.settings import Settings

TRANSPORTS = ("websocket", "sse", "long-polling")

# Upper bounds in milliseconds (exported in seconds).
LATENCY_BOUNDS_MS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 500, 1000, 2500, 10000)
BACKEND_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5)
GAP_BUCKETS = (0.001, 0.01, 0.1, 1, 10, 60, 600, 3600, 86400)

# Frames that carry an event start with these (see ``pushsvc.protocol.frames``); other
# frames are controls (subscribed, gap, heartbeat, ack, ...).
_EVENT_PREFIX = {
    "websocket": ('{"type":"event"', b'{"type":"event"'),
    "sse": ("\0never", b"event: message\n"),
    "long-polling": ("\0never", b'{"type":"event"'),
}
_ID_KEY = ('"id":"', b'"id":"')

BACKEND_COMMANDS = (
    "append_many",
    "read_after",
    "top",
    "listen",
    "unlisten",
    "ping",
    "presence_join",
    "presence_join_many",
    "presence_leave",
    "presence_refresh",
    "presence_snapshot",
    "presence_stats",
)

conn_log = logging.getLogger("pushsvc.connections")


class Metered(Protocol):
    """What the metrics read of a connection (``pushsvc.session.Session``)."""

    @property
    def id(self) -> int: ...
    @property
    def wire(self) -> Wire: ...
    @property
    def principal(self) -> Principal: ...
    @property
    def close_code(self) -> int | None: ...
    @property
    def close_reason(self) -> str: ...


class TransportStats:
    """Hot-path counters of one transport: plain ints, exported at scrape time."""

    __slots__ = (
        "_countdown",
        "_event_bytes",
        "_event_str",
        "_last_frame",
        "_last_ms",
        "closed",
        "events",
        "every",
        "frames",
        "latency_buckets",
        "latency_count",
        "latency_sum_ms",
        "name",
        "opened",
        "writes",
    )

    def __init__(self, name: str, every: int = 1) -> None:
        self.name = name
        self._event_str, self._event_bytes = _EVENT_PREFIX[name]
        self.every = max(1, every)
        self._countdown = 1
        self._last_frame: str | bytes | None = None
        self._last_ms = 0
        self.opened = 0
        self.closed = 0
        self.events = 0
        self.frames = 0
        self.writes = 0
        self.latency_buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        self.latency_sum_ms = 0.0
        self.latency_count = 0

    def wrote(self, batch: Sequence[str | bytes]) -> None:
        """Account for one write of ``batch`` (call it after the write)."""
        self.writes += 1
        n = len(batch)
        self.frames += n
        if n == 1:  # the common case: no backlog
            frame = batch[0]
            if not frame.startswith(
                self._event_str if type(frame) is str else self._event_bytes  # type: ignore[arg-type]
            ):
                return
            self.events += 1
            self._countdown -= 1
            if not self._countdown:
                self._countdown = self.every
                self.observe_frame(frame)
            return
        events = 0
        first: str | bytes | None = None
        s_prefix, b_prefix = self._event_str, self._event_bytes
        for frame in batch:
            if frame.startswith(s_prefix if type(frame) is str else b_prefix):  # type: ignore[arg-type]
                events += 1
                if first is None:
                    first = frame
        if first is None:
            return
        self.events += events
        self._countdown -= 1
        if not self._countdown:
            self._countdown = self.every
            self.observe_frame(first)

    def observe_frame(self, frame: str | bytes) -> None:
        if frame is self._last_frame:
            # the hub sends one frame object to every subscriber: parse its ID once
            published_ms = self._last_ms
        else:
            key = _ID_KEY[0] if type(frame) is str else _ID_KEY[1]
            start = frame.find(key)  # type: ignore[arg-type]
            if start < 0:
                return
            start += 6
            end = frame.find("-" if type(frame) is str else b"-", start)  # type: ignore[arg-type]
            try:
                published_ms = int(frame[start:end])
            except ValueError:
                return
            self._last_frame = frame
            self._last_ms = published_ms
        self.observe_ms(time.time() * 1000.0 - published_ms)

    def observe_ms(self, latency_ms: float) -> None:
        if latency_ms < 0:
            latency_ms = 0.0  # clocks of Redis and this host disagree
        self.latency_buckets[bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)] += 1
        self.latency_sum_ms += latency_ms
        self.latency_count += 1


class Metrics:
    """Every metric of one app (``app.state.metrics``)."""

    def __init__(self, backend: Backend | None = None, settings: Settings | None = None) -> None:
        every = settings.metrics_latency_every if settings is not None else 16
        self.log_json = settings.log_json if settings is not None else False
        self.registry = CollectorRegistry(auto_describe=True)
        self.transports = {name: TransportStats(name, every) for name in TRANSPORTS}
        self.websocket = self.transports["websocket"]
        self.sse = self.transports["sse"]
        self.poll = self.transports["long-polling"]
        self.backend: Backend | None = None
        self.presence_entries = 0  # this process's presence entries (the hub sets it)
        r = self.registry
        self._closed = Counter(
            "pushsvc_connections_closed",
            "Connections (WebSocket, SSE stream, long-poll request) closed, by close reason.",
            ["transport", "reason"],
            registry=r,
        )
        self._slow = Counter(
            "pushsvc_slow_consumer_cuts",
            "Connections closed because their outbound queue overflowed (4008).",
            ["transport"],
            registry=r,
        )
        self._slow_children = {t: self._slow.labels(t) for t in TRANSPORTS}
        self._closed_children: dict[tuple[str, str], Any] = {}
        self._resumes = Counter(
            "pushsvc_resumes",
            "Channels (re)subscribed from a cursor position: clean, or with a gap event.",
            ["transport", "outcome"],
            registry=r,
        )
        self._resume_children = {
            (t, o): self._resumes.labels(t, o) for t in TRANSPORTS for o in ("clean", "gap")
        }
        self._gap_seconds = Histogram(
            "pushsvc_resume_gap_seconds",
            "Width of the trimmed range of a gap, on the log's clock (until.ms - after.ms).",
            registry=r,
            buckets=GAP_BUCKETS,
        )
        self._auth_failures = Counter(
            "pushsvc_auth_failures",
            "Requests refused for credentials: missing, malformed, invalid, expired, "
            "not-granted, origin.",
            ["reason"],
            registry=r,
        )
        self._rejected = Counter(
            "pushsvc_rejected_requests",
            "Requests and frames refused with an error, by HTTP status and problem type "
            "(rate-limited, payload-too-large, unavailable = connection limit, ...).",
            ["status", "problem"],
            registry=r,
        )
        self._published = Counter(
            "pushsvc_events_published", "Messages appended to the log.", registry=r
        )
        self._recent_hits = Counter(
            "pushsvc_history_reads_from_memory",
            "Log reads (resume, long-poll) answered from the events this process saw live, "
            "without a backend round trip.",
            registry=r,
        )
        self._backend_seconds = Histogram(
            "pushsvc_backend_command_seconds",
            "Latency of backend (log) commands.",
            ["command"],
            registry=r,
            buckets=BACKEND_BUCKETS,
        )
        self._backend_errors = Counter(
            "pushsvc_backend_command_errors",
            "Backend (log) commands that raised.",
            ["command"],
            registry=r,
        )
        self._gapped: dict[int, set[str]] = {}
        self._opened_at: dict[int, float] = {}
        r.register(_HotCollector(self))
        if backend is not None:
            self.instrument_backend(backend)
        if self.log_json:
            _install_json_handler()

    # --- connections -------------------------------------------------------------------

    def opened(self, session: Metered) -> None:
        stats = self.transports.get(session.wire.name)
        if stats is not None:
            stats.opened += 1
        if self.log_json:
            self._opened_at[session.id] = time.monotonic()
            _log_line(
                event="open",
                transport=session.wire.name,
                session=session.id,
                subject=session.principal.subject,
            )

    def closed(self, session: Metered) -> None:
        name = session.wire.name
        stats = self.transports.get(name)
        if stats is not None:
            stats.closed += 1
        code = session.close_code or codes.WS_1000_NORMAL_CLOSURE
        reason = codes.CLOSE_CODES.get(code, ("other",))[0]
        child = self._closed_children.get((name, reason))
        if child is None:
            child = self._closed_children[(name, reason)] = self._closed.labels(name, reason)
        child.inc()
        if code == codes.WS_4008_SLOW_CONSUMER:
            self._slow_children[name].inc()
        self._gapped.pop(session.id, None)
        if self.log_json:
            started = self._opened_at.pop(session.id, None)
            duration = None if started is None else round(time.monotonic() - started, 6)
            _log_line(
                event="close",
                transport=name,
                session=session.id,
                subject=session.principal.subject,
                duration_s=duration,
                code=code,
                reason=reason,
                detail=session.close_reason,
            )

    # --- resume ------------------------------------------------------------------------

    def gap(self, session: Metered, gap: Gap) -> None:
        self._gapped.setdefault(session.id, set()).add(gap.channel)
        if gap.after[0] > 0:
            self._gap_seconds.observe(max(0, gap.until[0] - gap.after[0]) / 1000.0)

    def resumed(self, session: Metered, channel: str) -> None:
        """A channel subscribed from a cursor position finished replaying."""
        gapped = self._gapped.get(session.id)
        outcome = "clean"
        if gapped is not None and channel in gapped:
            outcome = "gap"
            gapped.discard(channel)
        self._resume_children[(session.wire.name, outcome)].inc()

    def recent_hit(self) -> None:
        self._recent_hits.inc()

    # --- errors ------------------------------------------------------------------------

    def rejected(self, status: int, problem: str) -> None:
        self._rejected.labels(str(status), problem).inc()

    def error(self, exc: PushError) -> None:
        """A request or frame refused with ``exc``."""
        self.rejected(exc.status, exc.problem)
        if isinstance(exc, Unauthorized):
            self._auth_failures.labels(_unauthorized_reason(exc)).inc()
        elif isinstance(exc, Forbidden):
            reason = "origin" if "origin" in exc.extra else "not-granted"
            self._auth_failures.labels(reason).inc()

    # --- backend -----------------------------------------------------------------------

    def instrument_backend(self, backend: Backend) -> None:
        """Time the backend's public coroutine methods (wrapped on the instance)."""
        self.backend = backend
        for name in BACKEND_COMMANDS:
            method = getattr(backend, name)
            setattr(
                backend,
                name,
                _timed(
                    method,
                    self._backend_seconds.labels(name),
                    self._backend_errors.labels(name),
                    self._published if name == "append_many" else None,
                ),
            )

    # --- exposition --------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _timed(
    method: Callable[..., Awaitable[Any]],
    seconds: Any,
    errors: Any,
    published: Counter | None,
) -> Callable[..., Awaitable[Any]]:
    perf_counter = time.perf_counter

    @functools.wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = perf_counter()
        try:
            result = await method(*args, **kwargs)
        except BaseException:
            errors.inc()
            raise
        finally:
            seconds.observe(perf_counter() - started)
        if published is not None:
            published.inc(len(result))
        return result

    return timed


def _unauthorized_reason(exc: Unauthorized) -> str:
    detail = exc.detail
    if detail.startswith("missing"):
        return "missing"
    if detail.startswith("Authorization header"):
        return "malformed"
    if "expired" in detail:
        return "expired"
    return "invalid"


class _HotCollector(Collector):
    """The plain-int counters of ``TransportStats`` and the backend listener's state."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        stats = self.metrics.transports.values()
        open_ = GaugeMetricFamily(
            "pushsvc_connections_open", "Open connections by transport.", labels=["transport"]
        )
        opened = CounterMetricFamily(
            "pushsvc_connections_opened",
            "Connections opened (a long-poll request is one).",
            labels=["transport"],
        )
        delivered = CounterMetricFamily(
            "pushsvc_events_delivered",
            "Event frames written to clients (live and replayed).",
            labels=["transport"],
        )
        frames = CounterMetricFamily(
            "pushsvc_frames_sent",
            "Frames written to clients, events and controls (heartbeats, acks, ...).",
            labels=["transport"],
        )
        writes = CounterMetricFamily(
            "pushsvc_writes",
            "Batches written: one drain of a connection's queue (one send on SSE and "
            "long-poll, one frame per message on WebSocket); frames / writes is the "
            "coalescing factor.",
            labels=["transport"],
        )
        latency = HistogramMetricFamily(
            "pushsvc_delivery_latency_seconds",
            "Publish (event ID time) to write, sampled at the first event of each write.",
            labels=["transport"],
        )
        for s in stats:
            open_.add_metric([s.name], s.opened - s.closed)
            opened.add_metric([s.name], s.opened)
            delivered.add_metric([s.name], s.events)
            frames.add_metric([s.name], s.frames)
            writes.add_metric([s.name], s.writes)
            buckets: list[tuple[str, float]] = []
            total = 0
            for bound, count in zip(LATENCY_BOUNDS_MS, s.latency_buckets, strict=False):
                total += count
                buckets.append((repr(bound / 1000.0), total))
            buckets.append(("+Inf", s.latency_count))
            latency.add_metric([s.name], buckets, s.latency_sum_ms / 1000.0)
        yield from (open_, opened, delivered, frames, writes, latency)
        yield GaugeMetricFamily(
            "pushsvc_presence_entries",
            "Presence entries (connection x channel) this process keeps renewed; the "
            "duration of their batched renewal is pushsvc_backend_command_seconds"
            '{command="presence_refresh"}.',
            value=self.metrics.presence_entries,
        )
        backend = self.metrics.backend
        if backend is not None:
            status = backend.listener_status()
            yield GaugeMetricFamily(
                "pushsvc_backend_listener_up",
                "1 while the backend's live listener is connected and answering.",
                value=1 if status.connected else 0,
            )
            yield CounterMetricFamily(
                "pushsvc_backend_listener_reconnects",
                "Times the listener connection was replaced (lost or deaf).",
                value=status.reconnects,
            )
            yield GaugeMetricFamily(
                "pushsvc_backend_listener_channels",
                "Channels the listener is subscribed to.",
                value=status.channels,
            )


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


# --- JSON connection logs -------------------------------------------------------------------


def _install_json_handler() -> None:
    """One JSON object per line on stderr for ``pushsvc.connections`` (once per process)."""
    if any(getattr(h, "_pushsvc_json", False) for h in conn_log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._pushsvc_json = True  # type: ignore[attr-defined]
    conn_log.addHandler(handler)
    conn_log.setLevel(logging.INFO)
    conn_log.propagate = False


def _log_line(**fields: Any) -> None:
    fields = {"ts": round(time.time(), 6), **fields}
    conn_log.info(json.dumps(fields, separators=(",", ":")))
