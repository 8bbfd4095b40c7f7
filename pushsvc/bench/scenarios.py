"""The benchmark scenarios. Each runs once per transport (publish: once) and answers a
``Phase``: its parameters, its figures, whether it was complete, and the generator's own
CPU use (a generator above 90% of a core may be what limited the figures).

Every loop is bounded by a count and by ``phase_timeout``; a phase that runs out of time
reports what it has, with ``complete: false`` and the missing events as lost.

``Bench(..., dialect=...)`` runs fanout, latency, connections, handshakes and storm
against a peer server (``benchmarks/peers/compare.py``): see :mod:`pushsvc.bench.dialects`.

Handshakes and storm run on the transports that hold a connection (WebSocket, SSE).
``handshakes`` times each connection from its TCP connect to its subscription, each
with its own token (minted before the clock starts). ``storm`` subscribes every client
before the first publish (so each one expects every event of its channel), lets a
``SteadyPublisher`` run (one connection per channel: its acknowledgements come in event
order, so the events acknowledged at a moment are exactly a prefix of the channel), drops
every connection at once with a reset and reconnects every client from the newest cursor
it received (``Dialect.resume``; a peer that cannot resume reconnects without one). The
clients' tallies carry over: an event received twice is a duplicate, one never received is
lost. "Caught up" is each tally reaching the count its channel had acknowledged when the
last client reconnected; the completeness check counts again once the publisher stopped.

Presence (``Options.presence``; idle and connections): every subscriber subscribes with
presence, each one a member of its own (its own token and subject, when the bench can
mint tokens) spread over channels of ``channel_size`` (100 by default: 10,000 members on
ONE channel would make every join a fan-out of 10,000 join frames, a fan-out benchmark,
not an idle one). The idle window starts once the joins have quietened down; it measures
the server's CPU and, on Redis, the commands Redis processed per second (``INFO``), with
and without presence alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
import uuid
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import Any

import httpx

from pushsvc.bench import proc
from pushsvc.bench.dialects import PUSHSVC, Dialect
from pushsvc.bench.server import RedisStats, ServerUnderTest, redis_stats
from pushsvc.bench.wire import SUBSCRIBERS, Publisher, Subscriber, Tally, Target

SATURATED = 0.9  # generator CPU, fraction of one core
CONTENDED = 0.15  # busy time on the server's core that is not the server's
PRESENCE_CHANNEL_SIZE = 100  # idle/connections with presence: members per channel
QUIET = 1.0  # presence: seconds without a presence frame before the idle window starts
SCENARIOS = ("fanout", "latency", "connections", "idle", "resume", "publish", "handshakes", "storm")
TRANSPORTS = ("websocket", "sse", "long-polling")
# handshakes, storm: transports that hold a connection (a long-poll resumes on every poll)
STREAM_TRANSPORTS = ("websocket", "sse")
STORM_RECONNECT_ATTEMPTS = 3  # a refused or timed-out reconnect is retried, as clients do
RSS_SAMPLE_S = 0.05  # storm: the server's RSS is sampled this often for its peak


@dataclass
class Options:
    transports: tuple[str, ...] = TRANSPORTS
    subscribers: int = 100
    events: int = 100
    rate: float = 20.0
    duration: float = 5.0
    latency_subscribers: int | None = None  # default: subscribers
    connections: int = 500
    idle_seconds: float = 6.0
    missed: int = 5_000
    publishes: int = 2_000
    batch: int = 100
    publishers: int = 4
    payload_bytes: int = 64
    phase_timeout: float = 120.0
    # idle, connections: subscribe with presence (each subscriber one presence connection)
    presence: bool = False
    # idle, connections: subscribers per channel; None: one channel per transport, or
    # PRESENCE_CHANNEL_SIZE with presence
    channel_size: int | None = None
    # each subscriber its own token and subject (None: with presence, when tokens can be
    # minted); else all share one token (and one verified Principal on the server)
    token_per_connection: bool | None = None
    # fanout: publishes in flight (each on its own connection). 1: each event is published
    # once the previous publish was answered. More keeps a server busy that answers a
    # publish only after its fan-out (the comparison's peers) instead of idle in between.
    fanout_inflight: int = 1
    connect_concurrency: int = 200
    settle: float = 0.3
    # handshakes: WebSocket/SSE connections opened, each with its own token and a
    # subscribe, ``handshake_concurrency`` at a time
    handshakes: int = 3_000
    handshake_concurrency: int = 100
    # storm: clients per transport on ``storm_channels`` channels, ``storm_rate`` events/s
    # published (all channels together) before, during and after the drop; the opening
    # and the reconnect ``storm_concurrency`` at a time; the storm (drop to caught up)
    # bounded by ``storm_timeout``
    storm_clients: int = 10_000
    storm_channels: int = 10
    storm_rate: float = 20.0
    storm_concurrency: int = 500
    storm_timeout: float = 120.0


@dataclass
class Phase:
    scenario: str
    transport: str
    params: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    complete: bool = True
    timed_out: bool = False
    generator_cpu: float | None = None  # fraction of one core during the measured part
    server_cpu: float | None = None  # fraction of one core during the measured part
    # the pinned server's core: busy fraction, whoever used it (other work competes there)
    server_core_busy: float | None = None
    notes: list[str] = field(default_factory=list)
    elapsed: float | None = None  # the whole phase, setup included
    latencies_ms: array[float] | None = None  # not serialized

    @property
    def saturated(self) -> bool:
        return self.generator_cpu is not None and self.generator_cpu > SATURATED

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "transport": self.transport,
            "params": self.params,
            "figures": self.figures,
            "complete": self.complete,
            "timed_out": self.timed_out,
            "generator_cpu": _round(self.generator_cpu),
            "generator_saturated": self.saturated,
            "server_cpu": _round(self.server_cpu),
            "server_core_busy": _round(self.server_core_busy),
            "notes": self.notes,
            "elapsed_s": _round(self.elapsed, 2),
        }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Audience:
    """fanout, latency: the subscribers on one channel and what they share: the
    publish->receive latencies and the event set once each one has every event."""

    channel: str
    subs: list[Subscriber]
    latencies: array[float]
    all_done: asyncio.Event
    firsts: dict[Any, float]  # each event's latency to its first subscriber


@dataclass
class Storm:
    """storm: the clients (replaced by their new connections once reconnected) and the
    moments of the storm (``time.perf_counter()``; ``deadline``: ``time.monotonic()``)."""

    subs: list[Subscriber]
    published_at_drop: int
    rss_before: int | None
    deadline: float = 0.0
    dropped_at: float = 0.0
    reconnected_at: float = 0.0
    caught_up_at: float | None = None
    cpu_at_drop: float | None = None
    cpu_at_reconnected: float | None = None
    targets: list[int] = field(default_factory=list)  # acked per channel at reconnected_at
    published_at_reconnected: int = 0
    times_ms: array[float] = field(default_factory=lambda: array("d"))  # drop -> subscribed
    failed: set[int] = field(default_factory=set)  # clients that could not reconnect
    attempts_failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    meter: Meter | None = None
    rss_peak: int | None = None


class Meter:
    """Wall time, the generator's CPU and the server's CPU over one measured part."""

    def __init__(self, server: ServerUnderTest) -> None:
        self.server = server
        self.wall = 0.0
        self.gen_cpu = 0.0
        self.server_cpu: float | None = None
        self.core_busy: float | None = None

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._g0 = time.process_time()
        self._s0 = self.server.cpu_seconds()
        self._c0 = None if self.server.cpu is None else proc.core_busy_seconds(self.server.cpu)

    def stop(self) -> None:
        s1 = self.server.cpu_seconds()
        if self.server.cpu is not None and self._c0 is not None:
            c1 = proc.core_busy_seconds(self.server.cpu)
            self.core_busy = None if c1 is None else c1 - self._c0
        self.gen_cpu = time.process_time() - self._g0
        self.wall = time.perf_counter() - self._t0
        if s1 is not None and self._s0 is not None:
            self.server_cpu = s1 - self._s0

    def server_us(self, count: int, digits: int = 3) -> float | None:
        """The server's CPU per unit of ``count`` units, in µs (None: not measured)."""
        if self.server_cpu is None or not count:
            return None
        return round(self.server_cpu / count * 1e6, digits)

    def generator_us(self, count: int, digits: int = 3) -> float | None:
        """The generator's CPU per unit, in µs."""
        return round(self.gen_cpu / count * 1e6, digits) if count else None

    def fill(self, phase: Phase) -> None:
        if self.wall > 0:
            phase.generator_cpu = self.gen_cpu / self.wall
            if self.server_cpu is not None:
                phase.server_cpu = self.server_cpu / self.wall
            if self.core_busy is not None:
                phase.server_core_busy = min(1.0, self.core_busy / self.wall)
                other = phase.server_core_busy - (phase.server_cpu or 0.0)
                if other > CONTENDED:
                    phase.notes.append(
                        f"the server's core was {phase.server_core_busy:.0%} busy, the server "
                        f"used {phase.server_cpu or 0:.0%}: other work (processes, "
                        "interrupts) competed with it"
                    )


class PeakRSS:
    """The server's peak RSS over a window, sampled every ``RSS_SAMPLE_S`` (the storm's:
    old sessions not yet freed beside the new ones)."""

    def __init__(self, server: ServerUnderTest) -> None:
        self.server = server
        self.peak: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sample()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample()

    def _sample(self) -> None:
        rss = self.server.rss_bytes()
        if rss is not None and (self.peak is None or rss > self.peak):
            self.peak = rss

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(RSS_SAMPLE_S)
            self._sample()


class SteadyPublisher:
    """storm: one publishing connection per channel, each publishing its channel's events
    in turn at ``rate / len(channels)`` events/s (a publish that is answered late is sent
    at once, and counted late), until ``stop()`` or ``deadline``. ``acked[j]``: events of
    channel ``j`` the server acknowledged, in order (one connection per channel: an
    unanswered publish is the newest); ``last_seq[j]``: the sequence number of the newest."""

    def __init__(
        self,
        bench: Bench,
        channels: list[str],
        rate: float,
        deadline: float,
    ) -> None:
        self.bench = bench
        self.channels = channels
        self.interval = len(channels) / rate
        self.deadline = deadline
        self.acked = [0] * len(channels)
        self.last_seq = [-1] * len(channels)
        self.late = 0
        self.errors: Counter[str] = Counter()
        self.times_ms: array[float] = array("d")
        self.pubs: list[Publisher] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def published(self) -> int:
        return sum(self.acked)

    @property
    def rejected(self) -> int:
        return sum(p.rejected for p in self.pubs)

    async def start(self) -> None:
        self.pubs = [await Publisher(self.bench.target).open() for _ in self.channels]
        t0 = time.perf_counter()
        self._tasks = [
            asyncio.create_task(self._channel(j, t0 + j * self.interval / len(self.channels)))
            for j in range(len(self.channels))
        ]

    async def published_since(self, acked: list[int], deadline: float) -> None:
        """Return once every channel has had an event acknowledged beyond ``acked``."""
        while time.monotonic() < deadline:
            if all(now > then for now, then in zip(self.acked, acked, strict=True)):
                return
            await asyncio.sleep(0.02)  # a poll: publishes are paced, ~interval apart

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for p in self.pubs:
            p.close()

    async def _channel(self, j: int, start: float) -> None:
        publisher, channel = self.pubs[j], self.channels[j]
        seq = 0
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            delay = start + seq * self.interval - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    return
            elif delay < -0.01:
                self.late += 1
            t0 = time.perf_counter()
            try:
                r = await publisher.publish(self.bench.body(channel, seq), channel)
            except ConnectionError as exc:
                self.errors[str(exc)] += 1
                seq += 1
                continue
            self.times_ms.append((time.perf_counter() - t0) * 1000)
            if r.status // 100 == 2:
                self.acked[j] += 1
                self.last_seq[j] = seq
            seq += 1


def percentiles(values: array[float] | list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    ordered = sorted(values)
    n = len(ordered)

    def at(q: float) -> float:
        return round(ordered[min(n - 1, int(q * n))], 3)

    return {
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
    }


Progress = Callable[[str, int, Callable[[], float]], contextlib.AbstractAsyncContextManager[None]]


@contextlib.asynccontextmanager
async def _no_progress(
    description: str, total: int, current: Callable[[], float]
) -> AsyncIterator[None]:
    yield


class Bench:
    def __init__(
        self,
        server: ServerUnderTest,
        token: str,
        options: Options,
        progress: Progress | None = None,
        respawn: Callable[[], ServerUnderTest] | None = None,
        dialect: Dialect = PUSHSVC,
        mint: Callable[[str], str] | None = None,
    ) -> None:
        self.dialect = dialect
        self.mint = mint  # subject -> a token for it (with the presence grant)
        self.server = server
        self.token = token
        self.o = options
        self.progress: Progress = progress or _no_progress
        self.respawn = respawn
        self.run_id = uuid.uuid4().hex[:8]

    @property
    def target(self) -> Target:
        return Target(
            self.server.host, self.server.port, self.token, self.server.api_key, self.dialect
        )

    def channel(self, scenario: str, transport: str) -> str:
        return f"bench-{self.run_id}-{scenario}-{transport}"

    def body(self, channel: str, n: int) -> bytes:
        if not self.dialect.is_pushsvc:
            return self.dialect.payload(n, self.o.payload_bytes)
        if not self.dialect.ordered:  # pushsvc measured as a peer: the payload is the data
            data = self.dialect.payload(n, self.o.payload_bytes).decode()
            return json.dumps({"channel": channel, "event": "bench", "data": data}).encode()
        pad = "x" * max(0, self.o.payload_bytes - 20)
        return json.dumps(
            {"channel": channel, "event": "bench", "data": {"n": n, "pad": pad}}
        ).encode()

    def batch_body(self, channel: str, start: int, count: int) -> bytes:
        pad = "x" * max(0, self.o.payload_bytes - 20)
        messages = [
            {"channel": channel, "event": "bench", "data": {"n": n, "pad": pad}}
            for n in range(start, start + count)
        ]
        return json.dumps({"messages": messages}).encode()

    # --- helpers -------------------------------------------------------------------------

    async def open_subscribers(
        self,
        transport: str,
        n: int,
        channel: str,
        target_count: int,
        latencies: array[float] | None,
        on_target: Callable[[Tally], None] | None = None,
        *,
        channels: Callable[[int], str] | None = None,
        tokens: Callable[[int], str] | None = None,
        presence: bool = False,
        concurrency: int | None = None,
        times_ms: array[float] | None = None,
        keep_cursor: bool = False,
        firsts: dict[Any, float] | None = None,
    ) -> tuple[list[Subscriber], int]:
        """``n`` subscribers of ``transport``: the i-th on ``channels(i)`` (default
        ``channel``) with the token ``tokens(i)`` (default the bench's), ``concurrency``
        (default ``connect_concurrency``) opening at once; each one's connect-to-subscribed
        time appended to ``times_ms``."""
        cls = SUBSCRIBERS[transport]
        sem = asyncio.Semaphore(concurrency or self.o.connect_concurrency)
        opened: list[Subscriber] = []
        failed = 0
        shared = self.target

        async def one(i: int) -> None:
            nonlocal failed
            async with sem:
                tally = Tally(target_count, latencies, self.dialect.ordered, firsts)
                tally.on_target = on_target
                tally.keep_cursor = keep_cursor
                target = shared if tokens is None else dc_replace(shared, token=tokens(i))
                chan = channel if channels is None else channels(i)
                sub = cls(target, chan, tally, presence=presence)
                t0 = time.perf_counter()
                try:
                    async with asyncio.timeout(30):
                        await sub.start()
                except (OSError, TimeoutError):
                    failed += 1
                    sub.close()
                    return
                if times_ms is not None:
                    times_ms.append((time.perf_counter() - t0) * 1000)
                opened.append(sub)

        async with self.progress(f"{transport}: connect", n, lambda: len(opened) + failed):
            await asyncio.gather(*(one(i) for i in range(n)))
        return opened, failed

    @staticmethod
    async def close_all(subs: list[Subscriber]) -> None:
        for sub in subs:
            sub.close()
        await asyncio.sleep(0.2)

    async def wait_until(self, done: asyncio.Event, deadline: float) -> bool:
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await done.wait()
        except TimeoutError:
            return False
        return True

    def scrape(self) -> dict[str, float]:
        """Server-side counters from ``/metrics`` (pushsvc only; empty elsewhere)."""
        if not self.dialect.is_pushsvc:
            return {}
        try:
            r = httpx.get(self.server.url + "/metrics", timeout=5)
        except httpx.HTTPError:
            return {}
        if r.status_code != 200:
            return {}
        out: dict[str, float] = {}
        for line in r.text.splitlines():
            if line.startswith(
                (
                    "pushsvc_writes_total",
                    "pushsvc_events_delivered_total",
                    "pushsvc_backend_command_seconds_count",
                    "pushsvc_backend_command_seconds_sum",
                )
            ):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    @staticmethod
    def _server_per_write(
        before: dict[str, float], after: dict[str, float], transport: str
    ) -> float | None:
        key_w = f'pushsvc_writes_total{{transport="{transport}"}}'
        key_e = f'pushsvc_events_delivered_total{{transport="{transport}"}}'
        if key_w not in after or key_e not in after:
            return None
        writes = after[key_w] - before.get(key_w, 0.0)
        events = after[key_e] - before.get(key_e, 0.0)
        return round(events / writes, 3) if writes else None

    async def _audience(self, phase: Phase, transport: str, n: int, events: int) -> Audience:
        """fanout, latency: ``n`` subscribers of ``transport`` on the phase's channel, each
        waiting for ``events`` events, settled; a failed connection makes the phase
        incomplete."""
        channel = self.channel(phase.scenario, transport)
        latencies: array[float] = array("d")
        all_done = asyncio.Event()
        subs: list[Subscriber] = []
        finished = 0

        def reached(_: Tally) -> None:
            nonlocal finished
            finished += 1
            if finished >= len(subs):
                all_done.set()

        firsts: dict[Any, float] = {}
        opened, failed = await self.open_subscribers(
            transport, n, channel, events, latencies, reached, firsts=firsts
        )
        subs += opened
        if failed:
            phase.notes.append(f"{failed} of {n} subscribers failed to connect")
            phase.complete = False
        if not subs:
            all_done.set()  # nobody to wait for
        await asyncio.sleep(self.o.settle)
        return Audience(channel, subs, latencies, all_done, firsts)

    async def _audience_verdict(
        self, phase: Phase, audience: Audience, events: int, ok: bool, meter: Meter
    ) -> tuple[int, int]:
        """Close the subscribers; the events they lost and got twice (answered), the
        phase's CPU figures and whether it was complete."""
        subs = audience.subs
        await self.close_all(subs)
        phase.notes += subscriber_notes(subs)
        lost = sum(max(0, events - s.tally.count) for s in subs)
        dups = sum(s.tally.dups for s in subs)
        meter.fill(phase)
        phase.timed_out = not ok
        phase.complete = phase.complete and ok and lost == 0 and dups == 0
        return lost, dups

    # --- fanout ----------------------------------------------------------------------------

    async def fanout(self, transport: str) -> Phase:
        o = self.o
        n, k = o.subscribers, o.events
        phase = Phase("fanout", transport, {"subscribers": n, "events": k})
        if o.fanout_inflight > 1:
            phase.params["publishes_in_flight"] = o.fanout_inflight
        audience = await self._audience(phase, transport, n, k)
        channel, subs, latencies = audience.channel, audience.subs, audience.latencies
        pubs = [await Publisher(self.target).open() for _ in range(max(1, o.fanout_inflight))]
        before = self.scrape()
        meter = Meter(self.server)
        deadline = time.monotonic() + o.phase_timeout
        meter.start()
        received = lambda: float(sum(s.tally.count for s in subs))  # noqa: E731
        next_event = 0

        async def publish_in_turn(publisher: Publisher) -> None:
            nonlocal next_event
            while next_event < k and time.monotonic() <= deadline:
                i = next_event
                next_event += 1
                await publisher.publish(self.body(channel, i), channel)

        async with self.progress(f"{transport}: fanout deliveries", len(subs) * k, received):
            await asyncio.gather(*(publish_in_turn(p) for p in pubs))
            ok = await self.wait_until(audience.all_done, deadline)
            meter.stop()
        after = self.scrape()
        for p in pubs:
            p.close()
        lost, dups = await self._audience_verdict(phase, audience, k, ok, meter)
        delivered = sum(s.tally.count for s in subs)
        rejected = sum(p.rejected for p in pubs)
        if rejected:
            phase.notes.append(f"{rejected} publishes were refused")
        phase.figures = {
            "subscribers_connected": len(subs),
            "deliveries": delivered,
            "lost": lost,
            "duplicated": dups,
            "seconds": round(meter.wall, 4),
            "deliveries_per_s": round(delivered / meter.wall, 1) if meter.wall else None,
            "server_cpu_us_per_delivery": meter.server_us(delivered),
            "generator_cpu_us_per_delivery": meter.generator_us(delivered),
            "server_events_per_write": self._server_per_write(before, after, transport),
            **percentiles(latencies),
        }
        phase.latencies_ms = latencies
        return phase

    # --- latency ---------------------------------------------------------------------------

    async def latency(self, transport: str) -> Phase:
        o = self.o
        n = o.latency_subscribers or o.subscribers
        total = max(1, int(o.rate * o.duration))
        phase = Phase(
            "latency",
            transport,
            {"subscribers": n, "rate_per_s": o.rate, "duration_s": o.duration, "events": total},
        )
        audience = await self._audience(phase, transport, n, total)
        channel, subs, latencies = audience.channel, audience.subs, audience.latencies
        pool = [await Publisher(self.target).open() for _ in range(max(1, o.publishers))]
        free: asyncio.Queue[Publisher] = asyncio.Queue()
        for p in pool:
            free.put_nowait(p)
        tasks: set[asyncio.Task[None]] = set()
        late = 0

        async def publish_one(i: int) -> None:
            p = await free.get()
            try:
                await p.publish(self.body(channel, i), channel)
            finally:
                free.put_nowait(p)

        meter = Meter(self.server)
        deadline = time.monotonic() + o.duration + o.phase_timeout
        meter.start()
        started = time.perf_counter()
        async with self.progress(f"{transport}: latency events", total, lambda: float(len(tasks))):
            for i in range(total):
                delay = started + i / o.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.01:
                    late += 1
                task = asyncio.create_task(publish_one(i))
                tasks.add(task)
            await asyncio.gather(*tasks, return_exceptions=True)
            ok = await self.wait_until(audience.all_done, deadline)
            meter.stop()
        for p in pool:
            p.close()
        lost, dups = await self._audience_verdict(phase, audience, total, ok, meter)
        if late:
            phase.notes.append(f"{late} publishes left more than 10 ms behind schedule")
        phase.figures = {
            "subscribers_connected": len(subs),
            "deliveries": len(latencies),
            "lost": lost,
            "duplicated": dups,
            "publishes_late": late,
            **percentiles(latencies),
        }
        first = percentiles(list(audience.firsts.values()))
        phase.figures["first_p50_ms"] = first["p50_ms"]
        phase.figures["first_p99_ms"] = first["p99_ms"]
        phase.latencies_ms = latencies
        return phase

    # --- connections -----------------------------------------------------------------------

    async def connections(self, transport: str) -> Phase:
        o = self.o
        phase = Phase(
            "connections", transport, {"connections": o.connections, "idle_s": o.idle_seconds}
        )
        self._presence_params(phase)
        return await self._hold_idle(phase, [transport])

    async def idle(self) -> Phase:
        """``--connections`` idle connections at once on one server, split evenly across
        the selected transports (the 10,000 mixed idle connections of a busy instance)."""
        o = self.o
        transports = [t for t in o.transports if t in self.dialect.transports]
        phase = Phase(
            "idle",
            "mixed",
            {
                "connections": o.connections,
                "transports": ",".join(transports),
                "idle_s": o.idle_seconds,
            },
        )
        self._presence_params(phase)
        return await self._hold_idle(phase, transports)

    @property
    def presence(self) -> bool:
        return self.o.presence and self.dialect.is_pushsvc

    @property
    def channel_size(self) -> int | None:
        """Subscribers per channel in idle/connections; ``None``: one per transport."""
        size = self.o.channel_size
        if size is None and self.presence:
            size = PRESENCE_CHANNEL_SIZE
        return size if size and size > 0 else None

    @property
    def token_per_connection(self) -> bool:
        wanted = self.o.token_per_connection
        if wanted is None:
            wanted = self.presence
        return wanted and self.mint is not None

    def _presence_params(self, phase: Phase) -> None:
        phase.params["presence"] = self.presence
        phase.params["channel_size"] = self.channel_size or "all of a transport"
        phase.params["tokens"] = "one per connection" if self.token_per_connection else "shared"
        if self.o.token_per_connection and self.mint is None:
            phase.notes.append("one shared token: the bench cannot mint tokens (--token)")

    async def _hold_idle(self, phase: Phase, transports: list[str]) -> Phase:
        """Open the connections, hold them idle, and measure RSS per connection and the
        server's CPU while idle (heartbeats only)."""
        o = self.o
        if self.respawn is not None:
            self.server = self.respawn()  # fresh process: RSS deltas are this phase's
        channel = self.channel(phase.scenario, phase.transport)
        deadline = time.monotonic() + o.phase_timeout
        await self._warm_up(channel, transports)
        rss0 = self.server.rss_bytes()
        subs = await self._open_idle(phase, channel, transports)
        await asyncio.sleep(max(o.settle, min(1.0, o.connections / 1000)))
        if self.presence:
            await self._presence_quiet(subs, phase, deadline)
        rss1 = self.server.rss_bytes()
        frames0 = sum(s.tally.presence_frames for s in subs)
        before = self.scrape()
        redis0 = self._redis_stats()
        meter = Meter(self.server)
        meter.start()
        async with self.progress(
            f"{phase.transport}: idle",
            int(o.idle_seconds * 10),
            lambda: (time.perf_counter() - meter._t0) * 10,
        ):
            await asyncio.sleep(o.idle_seconds)
        meter.stop()
        redis1 = self._redis_stats()
        after = self.scrape()
        frames1 = sum(s.tally.presence_frames for s in subs)
        alive = sum(1 for s in subs if _alive(s))
        await self.close_all(subs)
        phase.notes += subscriber_notes(subs)
        meter.fill(phase)
        if alive < len(subs):
            phase.notes.append(f"{len(subs) - alive} connections were closed while idle")
            phase.complete = False
        phase.figures |= _idle_figures(phase, subs, alive, rss0, rss1)
        if self.presence:
            _presence_figures(phase, subs, frames1 - frames0)
        phase.figures |= self._backend_figures(before, after, meter.wall)
        if redis0 is not None and redis1 is not None:
            _redis_figures(phase, redis1.since(redis0))
        return phase

    async def _warm_up(self, channel: str, transports: list[str]) -> None:
        """A few connections per transport, closed: the first ones import and allocate
        what every later one shares, which is not a connection's cost."""
        for transport in transports:
            warm, _ = await self.open_subscribers(
                transport, 20, f"{channel}-{transport}-warm", 0, None, presence=self.presence
            )
            await self.close_all(warm)
        await asyncio.sleep(self.o.settle)

    async def _open_idle(
        self, phase: Phase, channel: str, transports: list[str]
    ) -> list[Subscriber]:
        """``--connections`` subscribers split evenly over ``transports``, on channels of
        ``channel_size``, with their own tokens when ``token_per_connection``."""
        c = self.o.connections
        size = self.channel_size
        subs: list[Subscriber] = []
        failed = 0
        names: set[str] = set()
        for i, transport in enumerate(transports):
            n = c // len(transports) + (1 if i < c % len(transports) else 0)
            base = f"{channel}-{transport}"
            chans = None if size is None else self._spread(base, size)
            tokens = self._tokens(base) if self.token_per_connection else None
            opened, f = await self.open_subscribers(
                transport, n, base, 0, None, channels=chans, tokens=tokens, presence=self.presence
            )
            subs += opened
            failed += f
            names.update(s.channel for s in opened)
        phase.figures["channels"] = len(names)
        if failed:
            phase.notes.append(f"{failed} of {c} connections failed")
            phase.complete = False
        return subs

    @staticmethod
    def _spread(base: str, size: int) -> Callable[[int], str]:
        """The i-th subscriber's channel: ``size`` subscribers per channel."""
        return lambda i: f"{base}-{i // size}"

    def _tokens(self, base: str) -> Callable[[int], str]:
        """The i-th subscriber's own token: subject ``<base>-<i>``, a name as its info."""
        assert self.mint is not None
        mint = self.mint
        return lambda i: mint(f"{base}-{i}")

    async def _presence_quiet(self, subs: list[Subscriber], phase: Phase, deadline: float) -> None:
        """Wait until no presence frame arrived for ``QUIET`` s: the joins (and the
        long-polls they answered) are over, the idle window may start."""
        last = -1
        quiet_since = time.monotonic()
        started = quiet_since
        while True:
            now = time.monotonic()
            frames = sum(s.tally.presence_frames for s in subs)
            if frames != last:
                last, quiet_since = frames, now
            elif now - quiet_since >= QUIET:
                break
            if now > deadline:
                phase.notes.append("presence frames were still arriving at --phase-timeout")
                phase.complete = False
                break
            await asyncio.sleep(0.25)
        phase.figures["presence_settle_s"] = round(time.monotonic() - started, 2)

    def _redis_stats(self) -> RedisStats | None:
        if self.server.redis_url is None:
            return None
        return redis_stats(self.server.redis_url, self.server.pids)

    @staticmethod
    def _backend_figures(
        before: dict[str, float], after: dict[str, float], wall: float
    ) -> dict[str, Any]:
        """The server's own backend calls over the window (its ``/metrics``): calls/s by
        command, and the presence refreshes (count, mean round trip)."""
        prefix = 'pushsvc_backend_command_seconds_count{command="'
        calls: dict[str, float] = {}
        for key, value in after.items():
            if key.startswith(prefix) and wall > 0:
                n = value - before.get(key, 0.0)
                if n > 0:
                    calls[key[len(prefix) : -2]] = round(n / wall, 2)
        if not after:
            return {}
        out: dict[str, Any] = {"backend_calls_per_s": calls}
        count_key = 'pushsvc_backend_command_seconds_count{command="presence_refresh"}'
        sum_key = 'pushsvc_backend_command_seconds_sum{command="presence_refresh"}'
        count = after.get(count_key, 0.0) - before.get(count_key, 0.0)
        if count > 0:
            seconds = after.get(sum_key, 0.0) - before.get(sum_key, 0.0)
            out["presence_refreshes"] = int(count)
            out["presence_refresh_ms_mean"] = round(seconds / count * 1000, 3)
        return out

    # --- resume ----------------------------------------------------------------------------

    async def resume(self, transport: str) -> Phase:
        o = self.o
        m = o.missed
        phase = Phase("resume", transport, {"missed": m})
        channel = self.channel("resume", transport)
        cls = SUBSCRIBERS[transport]
        first = cls(self.target, channel, Tally())
        await first.start()
        cursor = first.tally.cursor
        first.close()
        await asyncio.sleep(o.settle)
        publisher = await Publisher(self.target).open()
        sent = 0
        deadline = time.monotonic() + o.phase_timeout
        async with self.progress(f"{transport}: publish missed", m, lambda: float(sent)):
            while sent < m and time.monotonic() < deadline:
                count = min(o.batch, m - sent)
                await publisher.publish(self.batch_body(channel, sent, count))
                sent += count
        publisher.close()
        tally = Tally(m)
        second = cls(self.target, channel, tally)
        meter = Meter(self.server)
        meter.start()
        async with self.progress(f"{transport}: replay", m, lambda: float(tally.count)):
            await second.start(cursor)
            ok = await self.wait_until(tally.done, deadline)
            meter.stop()
        second.close()
        meter.fill(phase)
        lost = max(0, m - tally.count)
        phase.timed_out = not ok
        phase.complete = ok and lost == 0 and tally.dups == 0 and tally.gaps == 0 and sent == m
        phase.figures = {
            "replayed": tally.count,
            "lost": lost,
            "duplicated": tally.dups,
            "gaps": tally.gaps,
            "time_to_caught_up_s": round(meter.wall, 4),
            "replay_events_per_s": round(tally.count / meter.wall, 1) if meter.wall else None,
            "server_cpu_us_per_event": meter.server_us(tally.count),
        }
        if isinstance(second, SUBSCRIBERS["long-polling"]):
            phase.figures["polls"] = getattr(second, "polls", None)
        return phase

    # --- handshakes ------------------------------------------------------------------------

    async def handshakes(self, transport: str) -> Phase:
        """``--handshakes`` connections opened, ``--handshake-concurrency`` at a time, each
        with its own token (pushsvc verifies every one) and a subscribe, until subscribed
        (WebSocket: the ``subscribed`` frame; SSE: the ``subscribed`` event, a peer's
        response headers); then closed."""
        o = self.o
        n = max(1, o.handshakes)
        phase = Phase(
            "handshakes",
            transport,
            {"connections": n, "concurrency": o.handshake_concurrency, "token": self._token_kind()},
        )
        channel = self.channel("handshakes", transport)
        await self._warm_up(channel, [transport])
        own = None
        if self.dialect.is_pushsvc and self.mint is not None:
            minted = [self.mint(f"{channel}-{i}") for i in range(n)]  # before the clock
            own = minted.__getitem__
        times: array[float] = array("d")
        meter = Meter(self.server)
        meter.start()
        subs, failed = await self.open_subscribers(
            transport,
            n,
            channel,
            0,
            None,
            tokens=own,
            concurrency=o.handshake_concurrency,
            times_ms=times,
        )
        meter.stop()
        await self.close_all(subs)
        phase.notes += subscriber_notes(subs)
        meter.fill(phase)
        if failed:
            phase.notes.append(f"{failed} of {n} handshakes failed")
            phase.complete = False
        done = len(subs)
        lat = percentiles(times)
        phase.figures = {
            "handshakes": done,
            "failed": failed,
            "seconds": round(meter.wall, 4),
            "handshakes_per_s": round(done / meter.wall, 1) if meter.wall else None,
            "handshake_p50_ms": lat["p50_ms"],
            "handshake_p90_ms": lat["p90_ms"],
            "handshake_p99_ms": lat["p99_ms"],
            "handshake_max_ms": lat["max_ms"],
            "server_cpu_us_per_handshake": meter.server_us(done, 2),
            "generator_cpu_us_per_handshake": meter.generator_us(done, 2),
        }
        return phase

    def _token_kind(self) -> str:
        if not self.dialect.is_pushsvc:
            return "none (the peer checks no token)"
        if self.mint is None:
            return "one shared token (verified once, then from the server's cache)"
        return "one per connection, each checked"

    # --- storm -----------------------------------------------------------------------------

    async def storm(self, transport: str) -> Phase:
        """``--storm-clients`` subscribers on ``--storm-channels`` channels receive live
        events from a steady publisher, then all drop their connections at once and
        reconnect at once, from their cursors where the server can resume them; the
        publisher keeps publishing throughout.

        Figures: the time from the drop until every client is subscribed again and until
        every client has every event published up to that moment; what was lost and
        duplicated over the whole phase; the server's CPU over the storm and its peak RSS.
        Every subscriber subscribes before the first publish, so it expects every event
        of its channel."""
        o = self.o
        n = max(1, o.storm_clients)
        resumable = transport in self.dialect.resume
        if self.respawn is not None:
            self.server = self.respawn()  # fresh process: the storm's RSS is its own
        chans = [
            f"{self.channel('storm', transport)}-{j}"
            for j in range(max(1, min(o.storm_channels, n)))
        ]
        phase = Phase(
            "storm",
            transport,
            {
                "clients": n,
                "channels": len(chans),
                "rate_per_s": o.storm_rate,
                "concurrency": o.storm_concurrency,
                "token": self._token_kind(),
                "resume": resumable,
            },
        )
        deadline = time.monotonic() + o.phase_timeout
        subs = await self._storm_open(phase, transport, n, chans)
        publisher = SteadyPublisher(
            self, chans, o.storm_rate, deadline + o.storm_timeout + o.phase_timeout
        )
        await publisher.start()
        try:
            await self._storm_live(phase, subs, deadline)
            storm = await self._storm_drop_and_reconnect(phase, transport, subs, publisher)
        finally:
            await publisher.stop()
        await self._storm_verdict(phase, storm, publisher)
        await self.close_all(storm.subs)
        phase.notes += subscriber_notes(storm.subs)
        return phase

    async def _storm_open(
        self, phase: Phase, transport: str, n: int, chans: list[str]
    ) -> list[Subscriber]:
        """The storm's clients, subscribed, each keeping its newest cursor; its own token
        where the bench mints them."""
        base = self.channel("storm", transport)
        tokens = self._tokens(base) if self.dialect.is_pushsvc and self.mint else None
        subs, failed = await self.open_subscribers(
            transport,
            n,
            chans[0],
            1,  # the live window waits for one event each
            None,
            channels=lambda i: chans[i % len(chans)],
            tokens=tokens,
            concurrency=self.o.storm_concurrency,
            keep_cursor=True,
        )
        if failed:
            phase.notes.append(f"{failed} of {n} clients failed to connect")
            phase.complete = False
        return subs

    async def _storm_live(self, phase: Phase, subs: list[Subscriber], deadline: float) -> None:
        """Wait until every client received a live event (its cursor is an event's), for
        one second at least; then the tallies are re-armed for the storm."""
        started = time.perf_counter()
        async with self.progress(
            f"{phase.transport}: live",
            len(subs),
            lambda: float(sum(s.tally.count > 0 for s in subs)),
        ):
            while time.monotonic() < deadline:
                waiting = sum(1 for s in subs if s.tally.count == 0)
                if not waiting and time.perf_counter() - started >= 1.0:
                    break
                await asyncio.sleep(0.05)
        silent = sum(1 for s in subs if s.tally.count == 0)
        if silent:
            phase.notes.append(f"{silent} clients received no event before the drop")
            phase.complete = False
        for s in subs:
            _rearm(s.tally, 0)

    async def _storm_drop_and_reconnect(
        self, phase: Phase, transport: str, subs: list[Subscriber], publisher: SteadyPublisher
    ) -> Storm:
        """Drop every connection at once, reconnect every client at once (bounded in
        ``storm_concurrency``), then wait until every one has caught up (resumable)."""
        o = self.o
        storm = Storm(subs, publisher.published, self.server.rss_bytes())
        storm.cpu_at_drop = self.server.cpu_seconds()
        rss = PeakRSS(self.server)
        meter = Meter(self.server)
        storm.deadline = time.monotonic() + o.storm_timeout
        rss.start()
        meter.start()
        storm.dropped_at = time.perf_counter()
        for s in subs:
            s.abort()
        await self._storm_reconnect(phase, transport, storm)
        storm.reconnected_at = time.perf_counter()
        storm.cpu_at_reconnected = self.server.cpu_seconds()
        storm.targets = list(publisher.acked)
        storm.published_at_reconnected = publisher.published
        if transport in self.dialect.resume:
            await self._storm_catch_up(phase, storm)
        meter.stop()
        # every channel's newest event is then one published after the last reconnect:
        # a client that cannot resume must receive it (it is live again)
        await publisher.published_since(storm.targets, storm.deadline)
        await rss.stop()
        meter.fill(phase)
        storm.meter, storm.rss_peak = meter, rss.peak
        return storm

    async def _storm_reconnect(self, phase: Phase, transport: str, storm: Storm) -> None:
        """Each client's new connection (its cursor, when resumable), retried up to
        ``STORM_RECONNECT_ATTEMPTS`` times; ``storm.subs`` becomes the new subscribers."""
        cls = SUBSCRIBERS[transport]
        sem = asyncio.Semaphore(self.o.storm_concurrency)
        resumable = transport in self.dialect.resume
        fresh: list[Subscriber] = list(storm.subs)
        done = 0

        async def one(i: int) -> None:
            nonlocal done
            old = storm.subs[i]
            async with sem:
                for attempt in range(STORM_RECONNECT_ATTEMPTS):
                    sub = cls(old.target, old.channel, old.tally)
                    old.tally.subscribed.clear()
                    cursor = old.tally.cursor if resumable else None
                    try:
                        left = storm.deadline - time.monotonic()
                        async with asyncio.timeout(max(0.1, min(30.0, left))):
                            await sub.start(cursor)
                    except (OSError, TimeoutError) as exc:
                        sub.close()
                        storm.attempts_failed += 1
                        why = str(exc) or "not subscribed within the attempt's timeout"
                        storm.errors[f"{type(exc).__name__}: {why}"[:120]] += 1
                        if time.monotonic() >= storm.deadline:
                            break
                        await asyncio.sleep(0.1 * (attempt + 1))
                        continue
                    storm.times_ms.append((time.perf_counter() - storm.dropped_at) * 1000)
                    fresh[i] = sub
                    done += 1
                    return
                storm.failed.add(i)

        async with self.progress(
            f"{transport}: reconnect", len(storm.subs), lambda: float(done + len(storm.failed))
        ):
            await asyncio.gather(*(one(i) for i in range(len(storm.subs))))
        storm.subs = fresh
        if storm.failed:
            phase.notes.append(f"{len(storm.failed)} clients could not reconnect")
            phase.complete = False

    async def _storm_catch_up(self, phase: Phase, storm: Storm) -> None:
        """Wait until every reconnected client has every event its channel had when the
        last client reconnected (``storm.targets``); each one's time is its tally's."""
        index = {c: j for j, c in enumerate(self._storm_channels(storm))}
        waiting = 0
        all_done = asyncio.Event()

        def reached(_: Tally) -> None:
            nonlocal waiting
            waiting -= 1
            if waiting <= 0:
                all_done.set()

        for i, s in enumerate(storm.subs):
            if i in storm.failed:
                continue
            tally = s.tally
            _rearm(tally, storm.targets[index[s.channel]])
            if tally.count >= tally.target:
                tally.reached_at = storm.reconnected_at
            else:
                tally.on_target = reached
                waiting += 1
        if waiting == 0:
            all_done.set()
        total = waiting
        async with self.progress(
            f"{phase.transport}: catch up", total, lambda: float(total - waiting)
        ):
            ok = await self.wait_until(all_done, storm.deadline)
        if not ok:
            phase.timed_out = True
            phase.complete = False
            phase.notes.append(f"{waiting} clients had not caught up at --storm-timeout")
            return
        storm.caught_up_at = max(
            (s.tally.reached_at for s in storm.subs if s.tally.reached_at is not None),
            default=storm.reconnected_at,
        )

    def _storm_channels(self, storm: Storm) -> list[str]:
        return sorted({s.channel for s in storm.subs}, key=lambda c: int(c.rsplit("-", 1)[1]))

    async def _storm_verdict(self, phase: Phase, storm: Storm, publisher: SteadyPublisher) -> None:
        """Once the publisher stopped: every resumed client must have every event of its
        channel exactly once (else lost/duplicated); a client that cannot resume must at
        least receive the newest (it is live again). The figures."""
        chans = self._storm_channels(storm)
        index = {c: j for j, c in enumerate(chans)}
        finals = publisher.acked
        resumable = bool(phase.params["resume"])
        grace = min(storm.deadline, time.monotonic() + 10.0)
        lost: int | None = None
        dups: int | None = None
        gaps: int | None = None
        if resumable:
            lost, dups, gaps = await self._storm_complete(storm, finals, index, grace)
            if lost or dups or gaps:
                phase.complete = False
        else:
            behind = await self._storm_live_again(storm, publisher.last_seq, index, grace)
            if behind:
                phase.notes.append(f"{behind} clients did not receive the newest event")
                phase.complete = False
        if publisher.rejected or publisher.errors:
            phase.complete = False
            phase.notes.append(
                f"{publisher.rejected} publishes refused, {sum(publisher.errors.values())} failed"
            )
        for error, count in storm.errors.most_common(2):
            phase.notes.append(f"{count} reconnect attempts failed: {error}")
        missed = None
        if not resumable:
            missed = sum(max(0, finals[index[s.channel]] - s.tally.count) for s in storm.subs)
        phase.figures = _storm_figures(storm, publisher, resumable)
        phase.figures |= {"lost": lost, "duplicated": dups, "gaps": gaps}
        phase.figures["missed_without_resume"] = missed

    async def _storm_complete(
        self, storm: Storm, finals: list[int], index: dict[str, int], until: float
    ) -> tuple[int, int, int]:
        """Lost, duplicated, gaps once every client had time to receive every event."""
        all_done = asyncio.Event()
        waiting = 0

        def reached(_: Tally) -> None:
            nonlocal waiting
            waiting -= 1
            if waiting <= 0:
                all_done.set()

        for i, s in enumerate(storm.subs):
            tally = s.tally
            _rearm(tally, finals[index[s.channel]])
            if tally.count < tally.target and i not in storm.failed:
                tally.on_target = reached
                waiting += 1
        if waiting == 0:
            all_done.set()
        await self.wait_until(all_done, until)
        subs = storm.subs
        lost = sum(max(0, finals[index[s.channel]] - s.tally.count) for s in subs)
        return lost, sum(s.tally.dups for s in subs), sum(s.tally.gaps for s in subs)

    async def _storm_live_again(
        self, storm: Storm, last_seq: list[int], index: dict[str, int], until: float
    ) -> int:
        """Clients without resume: how many have not received their channel's newest
        event by ``until`` (polled)."""

        def behind() -> int:
            return sum(
                1
                for s in storm.subs
                if s.tally.seen is not None and last_seq[index[s.channel]] not in s.tally.seen
            )

        while time.monotonic() < until:
            if not behind():
                return 0
            await asyncio.sleep(0.05)  # a poll: no event says when a seq arrived
        return behind()

    # --- publish ---------------------------------------------------------------------------

    async def publish(self, mode: str) -> Phase:
        o = self.o
        batch = 1 if mode == "single" else max(1, o.batch)
        requests = max(1, o.publishes // batch)
        phase = Phase(
            "publish",
            mode,
            {"messages": requests * batch, "batch": batch, "connections": o.publishers},
        )
        channel = self.channel("publish", mode)
        pubs = [await Publisher(self.target).open() for _ in range(max(1, o.publishers))]
        times: list[float] = []
        next_index = 0
        deadline = time.monotonic() + o.phase_timeout

        async def worker(p: Publisher) -> None:
            nonlocal next_index
            while next_index < requests and time.monotonic() < deadline:
                i = next_index
                next_index += 1
                body = (
                    self.body(channel, i)
                    if batch == 1
                    else self.batch_body(channel, i * batch, batch)
                )
                t0 = time.perf_counter()
                await p.publish(body)
                times.append((time.perf_counter() - t0) * 1000)

        meter = Meter(self.server)
        meter.start()
        async with self.progress(f"publish ({mode})", requests, lambda: float(len(times))):
            await asyncio.gather(*(worker(p) for p in pubs))
        meter.stop()
        for p in pubs:
            p.close()
        meter.fill(phase)
        rejected = sum(p.rejected for p in pubs)
        done = len(times)
        phase.timed_out = done < requests
        phase.complete = not phase.timed_out and rejected == 0
        if rejected:
            phase.notes.append(f"{rejected} requests were refused (non-200)")
        lat = percentiles(times)
        phase.figures = {
            "requests": done,
            "messages": done * batch,
            "rejected": rejected,
            "requests_per_s": round(done / meter.wall, 1) if meter.wall else None,
            "messages_per_s": round(done * batch / meter.wall, 1) if meter.wall else None,
            "request_p50_ms": lat["p50_ms"],
            "request_p99_ms": lat["p99_ms"],
            "server_cpu_us_per_message": meter.server_us(done * batch),
        }
        return phase

    # --- all -------------------------------------------------------------------------------

    def plan(
        self, scenarios: tuple[str, ...]
    ) -> list[tuple[str, str, Callable[[], Awaitable[Phase]]]]:
        steps: list[tuple[str, str, Callable[[], Awaitable[Phase]]]] = []
        runners: dict[str, Callable[[str], Awaitable[Phase]]] = {
            "fanout": self.fanout,
            "latency": self.latency,
            "connections": self.connections,
            "resume": self.resume,
            "handshakes": self.handshakes,
            "storm": self.storm,
        }
        for scenario in scenarios:
            if scenario == "idle":
                steps.append((scenario, "mixed", self.idle))
                continue
            if scenario == "publish":
                for mode in ("single", "batch"):
                    steps.append((scenario, mode, lambda mode=mode: self.publish(mode)))  # type: ignore[misc]
                continue
            for transport in self.o.transports:
                if transport not in self.dialect.transports:
                    continue
                if scenario in ("handshakes", "storm") and transport not in STREAM_TRANSPORTS:
                    continue
                run = runners[scenario]
                steps.append((scenario, transport, lambda run=run, t=transport: run(t)))  # type: ignore[misc]
        return steps


def _rearm(tally: Tally, target: int) -> None:
    """A tally that counts on towards a new ``target`` (not reached yet, no callback)."""
    tally.target = target
    tally.reached_at = None
    tally.done.clear()
    tally.on_target = None


def _storm_figures(storm: Storm, publisher: SteadyPublisher, resumable: bool) -> dict[str, Any]:
    """The storm's times (from the drop), the server's CPU and RSS, the publisher's pace."""
    reconnected = len(storm.times_ms)
    times = percentiles(storm.times_ms)
    cpu = None
    if storm.cpu_at_drop is not None and storm.cpu_at_reconnected is not None and reconnected:
        cpu = (storm.cpu_at_reconnected - storm.cpu_at_drop) / reconnected
    caught = None
    if resumable and storm.caught_up_at is not None:
        caught = round(storm.caught_up_at - storm.dropped_at, 3)
    meter = storm.meter
    return {
        "clients": len(storm.subs),
        "reconnected": reconnected,
        "time_to_reconnected_s": (
            round(storm.reconnected_at - storm.dropped_at, 3) if reconnected else None
        ),
        "reconnect_p50_ms": times["p50_ms"],
        "reconnect_p99_ms": times["p99_ms"],
        "time_to_caught_up_s": caught,
        "resumed": resumable,
        "events_published": publisher.published,
        "events_during_storm": storm.published_at_reconnected - storm.published_at_drop,
        "server_cpu_s": (
            None if meter is None or meter.server_cpu is None else round(meter.server_cpu, 3)
        ),
        "server_cpu_us_per_reconnect": None if cpu is None else round(cpu * 1e6, 1),
        "server_rss_before_mib": _mib(storm.rss_before),
        "server_rss_peak_mib": _mib(storm.rss_peak),
        "publishes_late": publisher.late,
        "publish_p99_ms": percentiles(publisher.times_ms)["p99_ms"],
        "reconnect_attempts_failed": storm.attempts_failed,
    }


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def _idle_figures(
    phase: Phase, subs: list[Subscriber], alive: int, rss0: int | None, rss1: int | None
) -> dict[str, Any]:
    """The idle window's connections, the server's RSS growth per connection and its CPU."""
    per_conn = None
    if rss0 is not None and rss1 is not None and subs:
        per_conn = round((rss1 - rss0) / len(subs) / 1024, 2)
    return {
        "connections_open": len(subs),
        "still_open_after_idle": alive,
        "server_rss_before_mib": None if rss0 is None else round(rss0 / 2**20, 2),
        "server_rss_after_mib": None if rss1 is None else round(rss1 / 2**20, 2),
        "server_rss_kib_per_connection": per_conn,
        "server_idle_cpu_percent": (
            None if phase.server_cpu is None else round(phase.server_cpu * 100, 3)
        ),
    }


def _presence_figures(phase: Phase, subs: list[Subscriber], while_idle: int) -> None:
    """Presence frames received; a subscriber without its snapshot makes it incomplete."""
    phase.figures |= {
        "presence_snapshots": sum(s.tally.presence for s in subs),
        "presence_joins": sum(s.tally.joins for s in subs),
        "presence_leaves": sum(s.tally.leaves for s in subs),
        "presence_frames_while_idle": while_idle,
    }
    without = sum(1 for s in subs if not s.tally.presence)
    if without:
        phase.notes.append(f"{without} subscribers received no presence snapshot")
        phase.complete = False


def _redis_figures(phase: Phase, rates: dict[str, Any]) -> None:
    """What Redis processed over the idle window (``RedisStats.since``)."""
    phase.figures |= {
        "redis_commands_per_s": rates["commands_per_s"],
        "redis_script_calls_per_s": rates["script_calls_per_s"],
        "redis_cpu_percent": rates["cpu_percent"],
        "redis_calls_per_s": rates["calls_per_s"],
        "redis_usec_per_s": rates["usec_per_s"],
        "redis_other_clients": rates["other_clients"],
    }
    if rates["other_clients_active"]:
        phase.notes.append(
            f"{rates['other_clients_active']} other Redis clients sent commands "
            "during the idle window: the Redis figures count theirs too"
        )


def subscriber_notes(subs: list[Subscriber]) -> list[str]:
    """Why subscribers stopped early, and requests the server refused (then retried)."""
    notes: list[str] = []
    errors = Counter(s.error for s in subs if s.error)
    for error, count in errors.most_common(3):
        notes.append(f"{count} subscribers stopped: {error}")
    refused: Counter[str] = Counter()
    for s in subs:
        refused.update(getattr(s, "refused", {}))
    for detail, count in refused.most_common(3):
        notes.append(f"{count} polls refused and retried: {detail}")
    return notes


def _alive(sub: Subscriber) -> bool:
    client = getattr(sub, "client", None)
    transport = getattr(client, "transport", None)
    return transport is not None and not transport.is_closing()
