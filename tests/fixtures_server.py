"""A real pushsvc server (uvicorn in a subprocess, on a free port) for end-to-end tests.

Endless SSE and long-poll streams cannot be tested through ASGI test transports (they
buffer whole bodies), so these tests talk HTTP and WebSocket to a real server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from pushsvc.auth import Authenticator

SECRET = "test-secret-" + "x" * 20
API_KEY = "test-api-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    port: int
    backend_url: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_level: str = "warning"
    log_path: str | None = None
    auth: Authenticator = field(default_factory=lambda: Authenticator((SECRET,), (API_KEY,)))

    @property
    def compression(self) -> bool:
        """Whether the server was given ws_compression (PUSHSVC_WS_COMPRESSION)."""
        value = self.env.get("PUSHSVC_WS_COMPRESSION", "").strip().lower()
        return value in {"1", "true", "yes", "on"}

    @property
    def ws_url(self) -> str:
        return "ws://" + self.url.removeprefix("http://")

    @property
    def api_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def token(
        self,
        subject: str = "alice",
        subscribe: tuple[str, ...] = ("*",),
        publish: tuple[str, ...] = ("*",),
        ttl: float = 600,
    ) -> str:
        return self.auth.issue(subject, subscribe=subscribe, publish=publish, ttl=ttl)

    def publish(self, channel: str, data: Any, **extra: Any) -> str:
        r = httpx.post(
            self.url + "/v1/publish",
            json={"channel": channel, "data": data, **extra},
            headers=self.api_headers,
            timeout=10,
        )
        r.raise_for_status()
        return str(r.json()["id"])

    def start(self) -> Server:
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "pushsvc.app:app_from_env",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ws",
            "pushsvc.server:LeanWebSocketProtocol",
            "--http",
            "pushsvc.server:LeanHttpToolsProtocol",
            # as `pushsvc serve` does (pushsvc.server.uvicorn_options): permessage-deflate
            # only with ws_compression (uvicorn's own default would negotiate it always)
            "--ws-per-message-deflate",
            "true" if self.compression else "false",
            "--log-level",
            self.log_level,
        ]
        if self.log_path is None:
            self.proc = subprocess.Popen(cmd, env=self.env)
        else:
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)  # poll: until the server answers, against the deadline
        raise RuntimeError("server did not start within 15 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_server(backend_url: str, port: int | None = None, **settings: Any) -> Server:
    port = port or free_port()
    env = dict(os.environ)
    env.update(
        {
            "PUSHSVC_BACKEND_URL": backend_url,
            "PUSHSVC_SECRETS": SECRET,
            "PUSHSVC_API_KEYS": API_KEY,
            "PUSHSVC_RETENTION_APPROXIMATE": "0",
        }
    )
    for key, value in settings.items():
        env["PUSHSVC_" + key.upper()] = str(value)
    return Server(f"http://127.0.0.1:{port}", port, backend_url, env)


@pytest.fixture
def server_factory(backend_url: str) -> Iterator[Any]:
    """Start servers on the test's backend: ``server_factory(heartbeat_interval=1)``."""
    started: list[Server] = []

    def factory(**settings: Any) -> Server:
        srv = make_server(backend_url, **settings).start()
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        srv.stop()


@pytest.fixture
def server(server_factory: Any) -> Server:
    srv: Server = server_factory()
    return srv
