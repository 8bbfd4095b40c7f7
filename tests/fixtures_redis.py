"""A real Redis for the tests, and backends opened on it (never a mock or fakeredis).

``PUSHSVC_TEST_REDIS_URL`` points the tests at a running server; without it a throwaway
``redis-server`` (no persistence) is started on a free port for the session. Every test
gets its own key prefix, so tests never see each other's channels.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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


@pytest.fixture(params=["memory", "redis"])
def backend_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue("redis_url")
    return url


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
