"""A fleet under failure: two pushsvc instances on one Redis, behind the shipped nginx file
(``deploy/nginx/pushsvc.conf``: plain round-robin, no affinity), 20 Python clients per
transport on two channels, and a backend ``pushsvc.Publisher`` publishing at a steady
rate through the same nginx with idempotency keys.

- ``kill -9`` one instance mid-stream, then start it again on its port;
- stop Redis mid-stream (it persists with AOF, ``appendfsync always``), then start it again.

Either way every client ends with every acknowledged event of both channels exactly once,
in order, the log holds every message once, and no publish is answered 500. Each
scenario prints its figures (``-s``): events lost and duplicated, the time for every client
to catch up after the kill, the time for the listeners to heal after Redis is back.
docs/how-to/scale-out.md quotes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from pushsvc import Publisher
from tests.fixtures_clients import PythonClient, assert_exactly_once_in_order, delivered
from tests.fixtures_nginx import nginx_binary
from tests.fixtures_server import API_KEY, Server, free_port, make_server
from tests.waiting import until, until_sync

DEPLOY_CONF = Path(__file__).parent.parent / "deploy" / "nginx" / "pushsvc.conf"
CHANNELS = ["fleet:a", "fleet:b"]
TRANSPORTS = ("websocket", "sse", "long-polling")
CLIENTS_PER_TRANSPORT = 20
EVENTS_PER_CHANNEL = 80
RATE = 10.0  # publishes per second per channel
FAULT_AT = 25  # the fault is injected once this many events of the first channel are stored

# Each scenario, from the first server start to the last assertion, stays under a minute.
pytestmark = pytest.mark.timeout(60)


# --- a Redis that persists, and can be stopped and started again -----------------------


@dataclass
class PersistentRedis:
    """A throwaway ``redis-server`` with the persistence the docs ask for (AOF,
    ``appendfsync always``, in its own directory), restartable on the same port."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH: apt-get install redis-server", pytrace=False)
        cmd = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
        ]
        cmd += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:

            def answers() -> bool:
                assert self.proc is not None and self.proc.poll() is None, "redis-server exited"
                try:
                    return bool(client.ping())
                except redis.ConnectionError:
                    return False

            until_sync(answers, 10, "redis-server answering PING", interval=0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM (by its pid): redis-server fsyncs its AOF and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[PersistentRedis]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PersistentRedis(directory)
    server.start()
    yield server
    server.stop()


# --- the shipped nginx file, in front of two instances ---------------------------------

NGINX_MAIN = """
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    include {prefix}/pushsvc.conf;
}}
"""


def render_deploy_conf(upstream_ports: list[int], port: int) -> str:
    """deploy/nginx/pushsvc.conf with its upstream ports and listen address changed, and
    nothing else."""
    conf = DEPLOY_CONF.read_text()
    servers = re.findall(r"^\s*server 127\.0\.0\.1:\d+ ", conf, re.MULTILINE)
    assert len(servers) == len(upstream_ports), "the upstream block lists two servers"
    for line, upstream in zip(servers, upstream_ports, strict=True):
        conf = conf.replace(line, re.sub(r":\d+ ", f":{upstream} ", line), 1)
    assert conf.count("listen 8080;") == 1
    return conf.replace("listen 8080;", f"listen 127.0.0.1:{port};")


@pytest.fixture
def fleet_nginx(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(upstream_ports: list[int]) -> str:
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        port = free_port()
        (prefix / "pushsvc.conf").write_text(render_deploy_conf(upstream_ports, port))
        user = "user root root;" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(NGINX_MAIN.format(user=user, prefix=prefix))
        cmd = [nginx_binary(), "-p", str(prefix), "-e", str(prefix / "error.log")]
        cmd += ["-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
        check = subprocess.run([*cmd, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, f"nginx rejects deploy/nginx/pushsvc.conf:\n{check.stderr}"
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                return httpx.get(url + "/healthz", timeout=0.5).status_code == 200
            except httpx.TransportError:
                return False

        until_sync(answers, 10, "nginx answering /healthz", interval=0.05)
        return url

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)  # by its pid
        proc.wait(10)


@dataclass
class Fleet:
    """Two pushsvc instances (subprocesses this test started) on one backend URL."""

    backend_url: str
    logs: Path
    servers: list[Server] = field(default_factory=list)

    def start(self, count: int = 2) -> None:
        for _ in range(count):
            self.servers.append(self._start(free_port()))

    def _start(self, port: int) -> Server:
        # short heartbeats: a client notices a silent connection within seconds
        server = make_server(self.backend_url, port, heartbeat_interval=2)
        server.log_path = str(self.logs / f"pushsvc-{port}-{time.monotonic_ns()}.log")
        return server.start()

    def kill(self, index: int) -> None:
        proc = self.servers[index].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)  # kill -9, by the pid of the process we started
        proc.wait()

    def restart(self, index: int) -> None:
        self.servers[index] = self._start(self.servers[index].port)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def fleet(persistent_redis: PersistentRedis, tmp_path: Path) -> Iterator[Fleet]:
    prefix = f"chaos-{uuid.uuid4().hex[:8]}:"
    result = Fleet(f"{persistent_redis.url}?prefix={prefix}", tmp_path)
    yield result
    result.stop()


# --- the publisher, the clients, the checks -------------------------------------------


class RecordingTransport(httpx.AsyncBaseTransport):
    """httpx's transport, recording every answer's status and ``Retry-After``."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.answers: list[tuple[float, int, str | None, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = ""
        if response.status_code >= 400:
            body = (await response.aread()).decode(errors="replace")[:300]
        self.answers.append(
            (time.time(), response.status_code, response.headers.get("retry-after"), body)
        )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def statuses(self, since: float = 0.0) -> list[int]:
        return [status for at, status, _, _ in self.answers if at >= since]


@dataclass
class Stream:
    """What the backend published: per channel, the acknowledged IDs in order, and when
    each publish began and was acknowledged (time.time())."""

    ids: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CHANNELS})
    begun: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CHANNELS})
    data: dict[str, list[int]] = field(default_factory=lambda: {c: [] for c in CHANNELS})

    async def run(self, publisher: Publisher, channel: str) -> None:
        for n in range(EVENTS_PER_CHANNEL):
            begun = time.time()
            event_id = await publisher.publish(channel, {"n": n})
            self.ids[channel].append(event_id)
            self.begun[channel].append(begun)
            self.data[channel].append(n)
            await asyncio.sleep(1 / RATE)  # pace: a steady stream of publishes

    def first_begun_after(self, moment: float) -> dict[str, str]:
        """Per channel, the first event whose publish began after ``moment``."""
        return {
            c: next(i for i, b in zip(self.ids[c], self.begun[c], strict=True) if b > moment)
            for c in CHANNELS
        }


@contextlib.asynccontextmanager
async def publishing(
    stream: Stream, publisher: Publisher
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Both channels' publish loops, cancelled if the test fails before they end."""
    tasks = [asyncio.create_task(stream.run(publisher, c)) for c in CHANNELS]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def received_at(client: PythonClient, channel: str, event_id: str) -> float | None:
    """When ``client`` yielded the event (time.time()), or None."""
    for event in client.events:
        if event["channel"] == channel and event["id"] == event_id:
            return float(event["at"]) / 1000
    return None


@pytest.fixture
async def clients() -> AsyncIterator[list[PythonClient]]:
    made: list[PythonClient] = []
    yield made
    await asyncio.gather(*(c.close() for c in made))


async def start_clients(made: list[PythonClient], url: str, token: str) -> None:
    for transport in TRANSPORTS:
        for _ in range(CLIENTS_PER_TRANSPORT):
            client = PythonClient()
            made.append(client)
            await client.start(
                url,
                token,
                CHANNELS,
                transports=[transport],
                backoff_base=0.1,
                backoff_cap=1.0,
            )
    # every channel's start is pinned: from here on each client gets every event
    await asyncio.gather(*(c.ready(20) for c in made))
    await until(
        lambda: all(c.client.transport is not None for c in made), 20, "every client connected"
    )


async def wait_all_delivered(made: list[PythonClient], stream: Stream) -> float:
    """Wait until every client has as many events as were stored on each channel; answer
    when that happened (time.time())."""

    def behind() -> int:
        return sum(
            any(len(delivered(c, ch)) < len(stream.ids[ch]) for ch in CHANNELS) for c in made
        )

    await until(behind, 30, "every client holding every event", check=lambda n: n == 0)
    return time.time()


def assert_every_client_exactly_once(made: list[PythonClient], stream: Stream) -> None:
    for client in made:
        for channel in CHANNELS:
            assert_exactly_once_in_order(client, channel, stream.ids[channel])


async def assert_log_holds_each_message_once(url: str, stream: Stream) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        for channel in CHANNELS:
            r = await http.get(
                f"{url}/v1/channels/{channel}/history", params={"after": "0-0", "limit": 1000}
            )
            assert r.status_code == 200, r.text
            events = r.json()["events"]
            assert [e["id"] for e in events] == stream.ids[channel]
            assert [e["data"]["n"] for e in events] == list(range(EVENTS_PER_CHANNEL))


def reconnects(made: list[PythonClient]) -> dict[str, int]:
    """Per transport, connections opened after each client's first."""
    out = dict.fromkeys(TRANSPORTS, 0)
    for client in made:
        opened = [e for e in client.logs if e["kind"] == "state" and e["transport"]]
        out[client.client.transports[0]] += max(0, len(opened) - 1)
    return out


def report(title: str, figures: dict[str, Any]) -> None:
    print(f"\n[{title}]")
    for name, value in figures.items():
        print(f"  {name}: {value}")


def lost_and_duplicated(made: list[PythonClient], stream: Stream) -> tuple[int, int]:
    lost = dup = 0
    for client in made:
        for channel in CHANNELS:
            got = delivered(client, channel)
            lost += len(set(stream.ids[channel]) - set(got))
            dup += len(got) - len(set(got))
    return lost, dup


# --- the scenarios ---------------------------------------------------------------------


async def test_kill_9_one_instance_mid_stream_loses_and_duplicates_nothing(
    fleet: Fleet, fleet_nginx: Any, clients: list[PythonClient]
) -> None:
    fleet.start(2)
    url = fleet_nginx([s.port for s in fleet.servers])
    await start_clients(clients, url, fleet.servers[0].token())
    recording = RecordingTransport()
    stream = Stream()
    publisher = Publisher(
        url, API_KEY, transport=recording, max_attempts=1000, backoff_base=0.05, backoff_cap=0.5
    )
    began = time.time()
    async with publisher, publishing(stream, publisher) as tasks:
        await until(lambda: len(stream.ids[CHANNELS[0]]), 20, check=lambda n: n >= FAULT_AT)
        killed_at = time.time()
        fleet.kill(1)
        await asyncio.to_thread(fleet.restart, 1)
        restarted_in = time.time() - killed_at
        await asyncio.gather(*tasks)
        published_in = time.time() - began

    done_at = await wait_all_delivered(clients, stream)
    assert_every_client_exactly_once(clients, stream)
    await assert_log_holds_each_message_once(url, stream)
    assert 500 not in recording.statuses(), recording.answers
    # round-robin spread the streaming clients over both instances: the kill hit some
    moved = reconnects(clients)
    assert moved["websocket"] > 0 and moved["sse"] > 0, moved

    # catch-up: from the kill until every client held the first event published after it
    first_after = stream.first_begun_after(killed_at)
    arrivals = [received_at(c, ch, first_after[ch]) for c in clients for ch in CHANNELS]
    assert None not in arrivals
    catch_up = max(a for a in arrivals if a is not None) - killed_at
    lost, dup = lost_and_duplicated(clients, stream)
    report(
        "kill -9 one of two instances",
        {
            "clients": f"{len(clients)} ({CLIENTS_PER_TRANSPORT} per transport), 2 channels",
            "events per channel": EVENTS_PER_CHANNEL,
            "events lost / duplicated": f"{lost} / {dup}",
            "events dropped by the client's dedup": sum(c.client.duplicates for c in clients),
            "instance back (restart to /healthz)": f"{restarted_in:.2f} s",
            "catch-up after the kill (worst client)": f"{catch_up:.2f} s",
            "all complete after the last publish": f"{done_at - began - published_in:.2f} s",
            "reconnections per transport": moved,
            "publish answers (status: count)": _count(recording.statuses()),
        },
    )


async def test_redis_restart_mid_stream_heals_without_loss(
    fleet: Fleet,
    fleet_nginx: Any,
    clients: list[PythonClient],
    persistent_redis: PersistentRedis,
) -> None:
    fleet.start(2)
    url = fleet_nginx([s.port for s in fleet.servers])
    await start_clients(clients, url, fleet.servers[0].token())
    recording = RecordingTransport()
    stream = Stream()
    publisher = Publisher(
        url, API_KEY, transport=recording, max_attempts=1000, backoff_base=0.05, backoff_cap=0.5
    )

    async def readyz(server: Server) -> httpx.Response:
        async with httpx.AsyncClient(timeout=2) as http:
            return await http.get(server.url + "/readyz")

    async def all_ready(expected: int) -> bool:
        answers = await asyncio.gather(*(readyz(s) for s in fleet.servers))
        return all(r.status_code == expected for r in answers)

    async with publisher, publishing(stream, publisher) as tasks:
        await until(lambda: len(stream.ids[CHANNELS[0]]), 20, check=lambda n: n >= FAULT_AT)
        stopped_at = time.time()
        await asyncio.to_thread(persistent_redis.stop)
        # while Redis is away: both instances answer /readyz 503, and a publish is
        # answered 503 (the publisher keeps retrying it)
        await until(lambda: all_ready(503), 10, "/readyz 503 on both instances")
        # Redis stays away until publishes were refused 4 times (each retried after its
        # Retry-After: 1), about two seconds
        await until(
            lambda: recording.statuses(stopped_at),
            10,
            "publishes answered 503 while Redis is away",
            check=lambda statuses: statuses.count(503) >= 4,
        )
        restarted_at = time.time()
        await asyncio.to_thread(persistent_redis.start)
        back_at = time.time()
        await until(lambda: all_ready(200), 20, "/readyz 200 again on both instances")
        healed_at = time.time()
        # each listener lost Redis and healed by itself
        for answer in await asyncio.gather(*(readyz(s) for s in fleet.servers)):
            assert answer.json()["listener"]["reconnects"] >= 1, answer.json()
        await asyncio.gather(*tasks)

    await wait_all_delivered(clients, stream)
    assert_every_client_exactly_once(clients, stream)
    await assert_log_holds_each_message_once(url, stream)

    # answers while Redis was away: 503 with Retry-After (a publish sent just before the
    # stop may still be answered 200), never a 500
    during = [a for a in recording.answers if stopped_at <= a[0] <= back_at]
    assert {status for _, status, _, _ in during} <= {200, 503}, during
    assert all(retry is not None for _, status, retry, _ in during if status == 503), during
    assert 500 not in recording.statuses(), recording.answers

    first_after = stream.first_begun_after(back_at)
    arrivals = [received_at(c, ch, first_after[ch]) for c in clients for ch in CHANNELS]
    assert None not in arrivals
    flowing = max(a for a in arrivals if a is not None) - back_at
    lost, dup = lost_and_duplicated(clients, stream)
    report(
        "Redis stopped (SIGTERM) and started again, AOF appendfsync always",
        {
            "clients": f"{len(clients)} ({CLIENTS_PER_TRANSPORT} per transport), 2 channels",
            "events per channel": EVENTS_PER_CHANNEL,
            "events lost / duplicated": f"{lost} / {dup}",
            "events dropped by the client's dedup": sum(c.client.duplicates for c in clients),
            "Redis away": f"{back_at - stopped_at:.2f} s (start {back_at - restarted_at:.2f} s)",
            "listeners healed (Redis back to /readyz 200)": f"{healed_at - back_at:.2f} s",
            "events flowing to every client again": f"{flowing:.2f} s",
            "reconnections per transport": reconnects(clients),
            "publish answers while Redis was away": _count([s for _, s, _, _ in during]),
        },
    )


def _count(statuses: list[int]) -> dict[int, int]:
    return {s: statuses.count(s) for s in sorted(set(statuses))}
