"""A real Redis for the tests, and backends opened on it (never a mock or fakeredis).

``PUSHSVC_TEST_REDIS_URL`` points the tests at a running server; without it a throwaway
``redis-server`` (no persistence) is started on a free port for the session. Every test
gets its own key prefix, so tests never see each other's channels.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import redis

from pushsvc.backends import Backend, Retention, open_backend

MakeBackend = Callable[..., Awaitable[Backend]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_prefix(url: str, prefix: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "prefix"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("prefix", prefix)])))


def without_query(url: str) -> str:
    """The URL for a plain redis-py client (no ``prefix``)."""
    return urlunsplit(urlsplit(url)._replace(query=""))


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    url = os.environ.get("PUSHSVC_TEST_REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not on PATH: install it (e.g. apt-get install redis-server) "
            "or set PUSHSVC_TEST_REDIS_URL=redis://host:port/db",
            pytrace=False,
        )
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"redis-server exited with {proc.returncode}", pytrace=False)
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail("redis-server did not answer PING within 10 s", pytrace=False)
                time.sleep(0.02)  # poll: until redis-server answers, against the deadline
        client.close()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """The server's URL with a key prefix of this test's own."""
    return with_prefix(redis_server_url, f"test-{uuid.uuid4().hex}:")


CLUSTER_MASTERS = 3


@dataclass
class RedisCluster:
    """A throwaway cluster on 127.0.0.1, stopped by pid."""

    ports: list[int]
    url: str  # redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…/0
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)


def _cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free and valid too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 45000)
        if port in ports:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        ports.append(port)
    return ports


def _cluster_ok(ports: list[int]) -> bool:
    for port in ports:
        try:
            with redis.Redis(port=port, socket_connect_timeout=0.5) as client:
                info = client.cluster("INFO")  # parsed: {"cluster_state": "ok", …}
        except redis.RedisError:
            return False
        if info.get("cluster_state") != "ok":
            return False
    return True


@contextlib.contextmanager
def running_cluster(workdir: Path, nodes: int, replicas: int = 0) -> Iterator[RedisCluster]:
    """Start ``nodes`` times ``redis-server --cluster-enabled yes`` in ``workdir`` and join
    them with ``redis-cli --cluster create … --cluster-replicas replicas``; stopped by pid
    on exit. ``RedisCluster.procs`` holds the processes, by port (a test may kill one)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.fail(
            "redis-server and redis-cli must be on PATH for the Redis Cluster tests "
            "(e.g. apt-get install redis-server)",
            pytrace=False,
        )
    ports = _cluster_ports(nodes)
    procs = {
        port: subprocess.Popen(
            [
                server,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "2000",
                "--appendonly", "no",
                "--save", "",
            ],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        for port in ports
    }  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                if any(p.poll() is not None for p in procs.values()):
                    pytest.fail("a cluster redis-server exited at start", pytrace=False)
                try:
                    with redis.Redis(port=port, socket_connect_timeout=0.5) as client:
                        client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"redis-server :{port} did not answer PING", pytrace=False)
                    time.sleep(0.02)  # poll: until the node answers, against the deadline
        addresses = [f"127.0.0.1:{p}" for p in ports]
        options = ["--cluster-replicas", str(replicas), "--cluster-yes"]
        create = subprocess.run(
            [cli, "--cluster", "create", *addresses, *options],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if create.returncode != 0:
            pytest.fail(f"redis-cli --cluster create failed: {create.stdout}", pytrace=False)
        deadline = time.monotonic() + 30
        while not _cluster_ok(ports):
            if time.monotonic() > deadline:
                pytest.fail("the Redis Cluster did not reach cluster_state:ok", pytrace=False)
            time.sleep(0.05)  # poll: until every node says cluster_state:ok
        yield RedisCluster(ports, f"redis+cluster://{','.join(addresses)}/0", procs)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A cluster of ``CLUSTER_MASTERS`` masters without replicas, once per session."""
    with running_cluster(tmp_path_factory.mktemp("redis-cluster"), CLUSTER_MASTERS) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """The cluster's URL with a key prefix of this test's own."""
    return with_prefix(redis_cluster.url, f"test-{uuid.uuid4().hex}:")


def backend_url_for(request: pytest.FixtureRequest) -> str:
    """The URL for a ``backend_url`` parameter: memory, redis or redis-cluster."""
    if request.param == "memory":
        return "memory://"
    name = {"redis": "redis_url", "redis-cluster": "redis_cluster_url"}[request.param]
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture(params=["memory", "redis"])
def backend_url(request: pytest.FixtureRequest) -> str:
    """memory:// and a single Redis; a module adds Redis Cluster by overriding this
    fixture with ``params=[…, "redis-cluster"]`` and ``backend_url_for``."""
    return backend_url_for(request)


@pytest.fixture
async def make_backend(backend_url: str) -> AsyncIterator[MakeBackend]:
    """Open and start backends on the test's URL: ``await make_backend(Retention(...))``;
    closes them all at teardown. Keyword options go to ``RedisBackend`` (Redis only)."""
    opened: list[Backend] = []

    async def make(
        retention: Retention | None = None, url: str | None = None, **options: Any
    ) -> Backend:
        url = url or backend_url
        if options:
            from pushsvc.backends.redis import RedisBackend

            backend: Backend = RedisBackend(url, retention or Retention(), **options)
        else:
            backend = open_backend(url, retention)
        opened.append(backend)
        await backend.start()
        return backend

    yield make
    for backend in reversed(opened):
        await backend.close()


@pytest.fixture
async def backend(make_backend: MakeBackend, request: pytest.FixtureRequest) -> Backend:
    """A started backend; its ``Retention`` can come from an indirect parameter."""
    return await make_backend(getattr(request, "param", None))
