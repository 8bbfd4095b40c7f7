"""The server under test: one the benchmark spawns (``--spawn memory|redis``) or one that
already runs (``--url``).

A spawned server is ``python -m pushsvc serve`` on a free loopback port with a generated
secret and API key passed in its environment (``PUSHSVC_SECRETS``, ``PUSHSVC_API_KEYS``),
the per-key publish rate limit off (the publish scenario measures the server, not the
limiter) and, for Redis, a key prefix of its own that is deleted afterwards. On a
multi-core machine it is pinned to one core and the generator to another, so that neither
steals the other's CPU and the server's CPU time per delivery is its own.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from pushsvc.bench import proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos
    )


def with_prefix(url: str, prefix: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "prefix"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("prefix", prefix)])))


@dataclass
class ServerUnderTest:
    url: str
    secret: str | None
    api_key: str
    backend: str  # "memory", "redis" or "unknown" (--url)
    proc: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)
    cpu: int | None = None  # the core it is pinned to
    redis_url: str | None = None
    redis_prefix: str | None = None
    log_path: Path | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def local(self) -> bool:
        return bool(self.pids)

    def cpu_seconds(self) -> float | None:
        return proc.cpu_seconds(self.pids) if self.pids else None

    def rss_bytes(self) -> int | None:
        return proc.rss_bytes(self.pids) if self.pids else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def spawn(
    backend: str,
    *,
    redis_url: str = "redis://127.0.0.1:6379/0",
    cpu: int | None = None,
    log_path: Path | None = None,
    extra_env: dict[str, str] | None = None,
    redis_prefix: str | None = None,
    secret: str | None = None,
    api_key: str | None = None,
) -> ServerUnderTest:
    port = free_port()
    secret = secret or secrets.token_urlsafe(24)
    api_key = api_key or secrets.token_urlsafe(18)
    prefix = None
    if backend == "memory":
        backend_url = "memory://"
    elif backend == "redis":
        prefix = redis_prefix or f"pushsvc-bench-{uuid.uuid4().hex[:12]}:"
        backend_url = with_prefix(redis_url, prefix)
    else:
        raise ValueError(f"unknown backend {backend!r}: memory or redis")
    env = dict(os.environ)
    env.update(
        {
            "PUSHSVC_BACKEND_URL": backend_url,
            "PUSHSVC_SECRETS": secret,
            "PUSHSVC_API_KEYS": api_key,
            "PUSHSVC_API_KEY_PUBLISH_RATE": "0",
            "PUSHSVC_MAX_CONNECTIONS": "60000",
        }
    )
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "pushsvc", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--log-level", "warning"]
    popen = _popen(cmd, env, log_path)
    server = ServerUnderTest(
        f"http://127.0.0.1:{port}",
        secret,
        api_key,
        backend,
        proc=popen,
        pids=[popen.pid],
        redis_url=redis_url if backend == "redis" else None,
        redis_prefix=prefix,
        log_path=log_path,
    )
    if cpu is not None and proc.pin(popen.pid, {cpu}):
        server.cpu = cpu
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(
                f"the server exited with {popen.returncode}"
                + (f" (log: {log_path})" if log_path else "")
            )
        try:
            if httpx.get(server.url + "/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError("the server did not become ready within 20 s")


class Spawner:
    """``spawn`` for a whole run: each ``start`` stops the server started before and
    starts a fresh one (the idle scenarios want a fresh process) with the first one's
    secret, API key and Redis key prefix, so that tokens stay valid and ``stop`` deletes
    one prefix at the end."""

    def __init__(
        self,
        backend: str,
        *,
        redis_url: str,
        cpu: int | None,
        log_path: Path | None,
        extra_env: dict[str, str],
        redis_prefix: str | None = None,
    ) -> None:
        self.backend = backend
        self.redis_url = redis_url
        self.cpu = cpu
        self.log_path = log_path
        self.extra_env = extra_env
        self.redis_prefix = redis_prefix
        self.first: ServerUnderTest | None = None
        self.started: list[ServerUnderTest] = []

    def start(self) -> ServerUnderTest:
        self.stop_servers()
        first = self.first
        server = spawn(
            self.backend,
            redis_url=self.redis_url,
            cpu=self.cpu,
            log_path=self.log_path,
            extra_env=self.extra_env,
            redis_prefix=self.redis_prefix,
            secret=None if first is None else first.secret,  # tokens stay valid
            api_key=None if first is None else first.api_key,
        )
        if server.redis_prefix and not self.redis_prefix:
            self.redis_prefix = server.redis_prefix
        if first is None:
            self.first = server
        self.started.append(server)
        return server

    def stop_servers(self) -> None:
        for server in self.started:
            server.stop()
        self.started = []

    def delete_redis_keys(self) -> int | None:
        """Delete the run's Redis keys (their count); None when the run used none."""
        if not self.redis_prefix:
            return None
        return delete_redis_prefix(self.redis_url, self.redis_prefix)


def spawn_command(
    cmd: list[str],
    port: int,
    *,
    cpu: int | None = None,
    ready_path: str = "/healthz",
    ready_port: int | None = None,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    name: str = "server",
    timeout: float = 20.0,
) -> ServerUnderTest:
    """Start any server (a benchmark peer) listening on 127.0.0.1:``port``.

    It is pinned to ``cpu`` before it runs (so every thread and child process it starts
    inherits the pinning), ready when ``GET ready_path`` (on ``ready_port``, default
    ``port``) answers 200, and measured as itself plus its descendants (nginx's master and
    worker below a wrapper, say), found once it is ready. ``stop()`` terminates the
    process it started (by pid); a wrapper stops its own children."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    preexec = None
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        pinned = {cpu}

        def preexec() -> None:
            os.sched_setaffinity(0, pinned)

    popen = _popen(cmd, full_env, log_path, preexec)
    server = ServerUnderTest(
        f"http://127.0.0.1:{port}",
        None,
        "",
        name,
        proc=popen,
        pids=[popen.pid],
        cpu=cpu if preexec is not None else None,
        log_path=log_path,
    )
    ready_url = f"http://127.0.0.1:{ready_port or port}{ready_path}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            where = f" (log: {log_path})" if log_path else ""
            raise RuntimeError(f"{name} exited with {popen.returncode}{where}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                server.pids = [popen.pid, *proc.descendants(popen.pid)]
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{name} did not become ready within {timeout:g} s")


def attach(url: str, api_key: str, secret: str | None) -> ServerUnderTest:
    """A running server; local when its listening socket is found in ``/proc``."""
    server = ServerUnderTest(url.rstrip("/"), secret, api_key, "unknown")
    if is_loopback(server.host) and proc.available():
        server.pids = proc.listening_pids(server.port)
    return server


@dataclass
class RedisStats:
    """One reading of a Redis server's counters (``INFO stats``, ``commandstats``, ``cpu``).

    They count every client of that Redis, not only the server under test: ``others``
    lists the other clients (``CLIENT LIST``: not the server's sockets nor this probe) with
    the seconds since each last sent a command, so a reading can say whether anyone else
    was busy meanwhile. Commands run inside a Lua script count too (Redis counts them)."""

    at: float
    commands: int  # total_commands_processed
    calls: dict[str, int]  # commandstats: command -> calls
    usec: dict[str, int]  # commandstats: command -> microseconds
    cpu: float  # used_cpu_sys + used_cpu_user, seconds
    others: list[float]  # other clients: idle seconds of each

    def since(self, before: RedisStats) -> dict[str, Any]:
        """Rates over ``before`` -> ``self``, without the probe's own INFO and CLIENT."""
        wall = max(1e-9, self.at - before.at)
        own = {"info", "client|list", "client|info", "hello"}  # the probe's connection
        calls = {
            cmd: n - before.calls.get(cmd, 0)
            for cmd, n in self.calls.items()
            if cmd not in own and n > before.calls.get(cmd, 0)
        }
        probe = sum(
            self.calls.get(cmd, 0) - before.calls.get(cmd, 0) for cmd in own if cmd in self.calls
        )
        scripts = sum(n for cmd, n in calls.items() if cmd in ("evalsha", "eval", "fcall"))
        busy = [idle for idle in self.others if idle < wall]
        return {
            "seconds": round(wall, 3),
            "commands_per_s": round((self.commands - before.commands - probe) / wall, 2),
            "script_calls_per_s": round(scripts / wall, 2),
            "cpu_percent": round((self.cpu - before.cpu) / wall * 100, 3),
            "calls_per_s": {
                cmd: round(n / wall, 2) for cmd, n in sorted(calls.items(), key=lambda x: -x[1])
            },
            "usec_per_s": {
                cmd: round((self.usec.get(cmd, 0) - before.usec.get(cmd, 0)) / wall, 1)
                for cmd in calls
            },
            "other_clients": len(self.others),
            "other_clients_active": len(busy),
        }


def redis_stats(redis_url: str, server_pids: list[int]) -> RedisStats | None:
    """Read the counters of the Redis at ``redis_url``; ``None`` when it cannot be read."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        mine = int(str(client.client_info()["addr"]).rpartition(":")[2])
        ports = proc.local_ports(server_pids) | {mine}
        others = [
            float(c.get("idle", 0))
            for c in client.client_list()
            if int(str(c.get("addr", ":0")).rpartition(":")[2] or 0) not in ports
        ]
        info = client.info("all")
    except (redis.RedisError, OSError, ValueError):
        return None
    finally:
        client.close()
    calls: dict[str, int] = {}
    usec: dict[str, int] = {}
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            calls[key[8:]] = int(value.get("calls", 0))
            usec[key[8:]] = int(value.get("usec", 0))
    return RedisStats(
        time.monotonic(),
        int(info.get("total_commands_processed", 0)),
        calls,
        usec,
        float(info.get("used_cpu_sys", 0.0)) + float(info.get("used_cpu_user", 0.0)),
        others,
    )


def delete_redis_prefix(redis_url: str, prefix: str) -> int:
    """Delete every key under the run's own prefix (never anything else)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.delete(*batch))
                batch = []
        if batch:
            deleted += int(client.delete(*batch))
        return deleted
    finally:
        client.close()


def _popen(
    cmd: list[str],
    env: dict[str, str],
    log_path: Path | None,
    preexec: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with its output appended to ``log_path`` (or discarded)."""
    out = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec
        )
    finally:
        if log_path is not None:
            out.close()  # type: ignore[union-attr]
