"""``pushsvc check --backend URL``: verify a backend before a server is pointed at it.

The probe is what a serving process does with the backend, once, on a scratch channel of
its own (``pushsvc-check.<random>``): connect, listen, append one event, read it back,
and receive its live notification. Each step is timed and printed; the first that fails
ends the check with a ``CheckFailed`` naming the step and the reason (the CLI turns it
into one line and a non-zero exit, never a traceback). The retention printed is the one
a server started with the same environment would apply (``Settings.from_env``). On Redis
the server's version and mode come from ``INFO server`` and the scratch stream is
deleted afterwards, both through the backend's own client and key naming (its private
``_redis`` and ``_stream_key``, read with ``getattr``), so that nothing in the backend's
public API exists only for the check.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pushsvc.backends import Backend, Message, Retention, open_backend
from pushsvc.protocol.events import Event
from pushsvc.protocol.ids import format_id
from pushsvc.settings import Settings

PROBE_DATA = b'{"probe":"pushsvc check"}'
T = TypeVar("T")


class CheckFailed(Exception):
    """A step of the check failed: ``step`` and the reason, for one line of output."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step} failed: {reason}")
        self.step = step


@dataclass(frozen=True, slots=True)
class Report:
    kind: str  # "Redis 7.0.15 (standalone)", "memory (in this process only)"
    retention: Retention
    timings: dict[str, float]  # step -> seconds


def retention_from(settings: Settings) -> Retention:
    """The retention a server with these settings applies (as ``create_app`` builds it)."""
    return Retention(
        max_len=settings.retention_max_len,
        max_age=settings.retention_max_age,
        approximate=settings.retention_approximate,
        idempotency_ttl=settings.idempotency_ttl,
        presence_ttl=settings.presence_ttl,
    )


def describe_retention(r: Retention) -> str:
    approx = "at least" if r.approximate else "exactly"
    return (
        f"{approx} the newest {r.max_len} events per channel, none older than "
        f"{r.max_age:g} s; idempotency keys kept {r.idempotency_ttl:g} s"
    )


async def run(url: str, timeout: float, say: Callable[[str], None]) -> Report:
    """Probe the backend at ``url``; ``say`` gets one line per step as it completes."""
    try:
        settings = Settings.from_env(backend_url=url)
        retention = retention_from(settings)
        backend = open_backend(url, retention)
    except Exception as exc:  # a bad URL or environment: a configuration error
        raise CheckFailed("configuration", str(exc)) from None
    timings: dict[str, float] = {}
    channel = "pushsvc-check." + secrets.token_hex(6)
    # the live event and when it arrived (the notification's latency counts from the append)
    received: asyncio.Future[tuple[Event, float]] = asyncio.get_running_loop().create_future()

    def sink(event: Event) -> None:
        if event.channel == channel and not received.done():
            received.set_result((event, time.perf_counter()))

    async def step(name: str, what: Awaitable[T]) -> T:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                result = await what
        except TimeoutError:
            raise CheckFailed(name, f"no answer within {timeout:g} s") from None
        except CheckFailed:
            raise
        except Exception as exc:
            raise CheckFailed(name, str(exc) or type(exc).__name__) from None
        timings[name] = time.perf_counter() - start
        return result

    backend.set_sink(sink)
    started = False
    try:
        await step("connect", backend.start())
        started = True
        kind = await step("server info", _kind(url, backend))
        say(f"backend     {kind}")
        say(f"connect     {_ms(timings['connect'])}")
        await step("listen", backend.listen(channel))
        say(f"listen      {_ms(timings['listen'])}  on scratch channel {channel}")
        appended_at = time.perf_counter()
        event = await step("append", backend.append(Message(channel, "check", PROBE_DATA)))
        say(f"append      {_ms(timings['append'])}  id {event.id_str}")
        result = await step("read back", backend.read_after(channel, (0, 0), 10))
        events = result.events
        if [(e.id, e.data) for e in events] != [(event.id, PROBE_DATA)]:
            got = ", ".join(format_id(e.id) for e in events) or "nothing"
            raise CheckFailed("read back", f"expected the probe {event.id_str}, read {got}")
        say(f"read back   {_ms(timings['read back'])}  the probe, intact")
        live, arrived = await step("notification", received)
        if live.id != event.id:
            raise CheckFailed("notification", f"got {live.id_str}, expected {event.id_str}")
        timings["notification"] = arrived - appended_at
        say(f"notify      {_ms(timings['notification'])}  after the append")
        say(f"retention   {describe_retention(retention)}")
        await step("cleanup", _cleanup(backend, channel))
        return Report(kind, retention, timings)
    finally:
        if not received.done():
            received.cancel()
        try:
            if started:
                await backend.unlisten(channel)
        except Exception:  # the check's verdict is already decided
            pass
        await backend.close()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f} ms"


async def _kind(url: str, backend: Backend) -> str:
    client = getattr(backend, "_redis", None)
    if client is None:
        return "memory (in this process only: the check proves the code path, not a fleet)"
    info: dict[str, Any] = await client.info("server")
    if "redis_version" not in info and info:  # a cluster client answers per node
        info = next(iter(info.values()))
    mode = info.get("redis_mode", "unknown")
    where = getattr(backend, "_where", url.partition("?")[0])
    return f"Redis {info.get('redis_version', '?')} ({mode}) at {where}"


async def _cleanup(backend: Backend, channel: str) -> None:
    client = getattr(backend, "_redis", None)
    stream_key = getattr(backend, "_stream_key", None)
    if client is not None and stream_key is not None:
        await client.delete(stream_key(channel))
