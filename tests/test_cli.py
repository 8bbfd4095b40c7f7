"""The ``pushsvc`` command: token, serve (generated credentials, env settings, prompt
SIGTERM with streams open, --workers), and publish -> subscribe on every transport."""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from pushsvc.auth import Authenticator
from pushsvc.cli import main
from pushsvc.exceptions import Unauthorized
from tests.fixtures_server import API_KEY, SECRET, Server, free_port

TRANSPORTS = ("websocket", "sse", "long-polling")
memory_only = pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
redis_only = pytest.mark.parametrize("backend_url", ["redis"], indirect=True)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env.update(extra)
    return env


@dataclass
class Served:
    proc: subprocess.Popen[str]
    url: str
    banner: list[str]

    def value(self, label: str) -> str:
        line = next(line for line in self.banner if line.strip().startswith(label))
        return line.split(":", 1)[1].strip()


def start_serve(*args: str, env: dict[str, str] | None = None) -> Served:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pushsvc", "serve", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env or clean_env(),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pushsvc serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=0.5).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)  # poll: until the server answers, against the deadline
    else:
        proc.kill()
        raise RuntimeError("pushsvc serve did not answer /healthz")
    banner: list[str] = []
    if not args and not (env and "PUSHSVC_SECRETS" in env):
        assert proc.stdout is not None
        while not any("api key:" in line for line in banner):
            banner.append(proc.stdout.readline())
    return Served(proc, url, banner)


def stop(served: Served) -> None:
    if served.proc.poll() is None:
        served.proc.kill()
        served.proc.wait()


@pytest.fixture
def served() -> Iterator[Served]:
    s = start_serve()
    yield s
    stop(s)


def test_token_output_verifies_with_the_secret() -> None:
    result = CliRunner().invoke(
        main,
        [
            *("token", "--secret", SECRET, "--user", "bob"),
            *("--subscribe", "chat:*", "--publish", "chat:1", "--ttl", "60"),
        ],
    )
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    principal = Authenticator((SECRET,), ()).verify(token)
    assert (principal.subject, principal.subscribe, principal.publish) == (
        "bob",
        ("chat:*",),
        ("chat:1",),
    )
    assert principal.expires_at is not None
    assert 50 < principal.expires_at - time.time() <= 61
    with pytest.raises(Unauthorized):
        Authenticator(("another-secret",), ()).verify(token)


def test_token_lifetime_defaults_to_the_servers_setting() -> None:
    result = CliRunner().invoke(
        main,
        ["token", "--secret", SECRET, "--user", "bob"],
        env={"PUSHSVC_TOKEN_TTL_DEFAULT": "120"},
    )
    assert result.exit_code == 0, result.output
    principal = Authenticator((SECRET,), ()).verify(result.output.strip().splitlines()[-1])
    assert principal.expires_at is not None
    assert 110 < principal.expires_at - time.time() <= 121


def test_serve_prints_generated_credentials_that_work(served: Served) -> None:
    secret, api_key = served.value("secret:"), served.value("api key:")
    assert httpx.get(served.url + "/healthz").json() == {"status": "ok"}
    token = Authenticator((secret,), ()).issue("alice", subscribe=["*"])
    r = httpx.get(
        served.url + "/v1/poll",
        params={"channel": "news", "timeout": 0},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200
    r = httpx.post(
        served.url + "/v1/publish",
        json={"channel": "news", "data": 1},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert r.status_code == 200


def test_serve_reads_every_setting_from_pushsvc_env_vars() -> None:
    env = clean_env(
        PUSHSVC_SECRETS="new-secret,old-secret",
        PUSHSVC_API_KEYS="key-1,key-2",
        PUSHSVC_HEARTBEAT_INTERVAL="7",
        PUSHSVC_MAX_CHANNELS_PER_SESSION="3",
    )
    served = start_serve(env=env)
    try:
        old = Authenticator(("old-secret",), ()).issue("bob")  # rotation: still verifies
        r = httpx.post(served.url + "/v1/negotiate", headers={"Authorization": f"Bearer {old}"})
        assert r.status_code == 200
        assert r.json()["heartbeat_interval"] == 7
        assert r.json()["limits"]["max_channels_per_session"] == 3
        r = httpx.post(
            served.url + "/v1/publish",
            json={"channel": "x", "data": 1},
            headers={"Authorization": "Bearer key-2"},
        )
        assert r.status_code == 200
    finally:
        stop(served)
    assert served.banner == []  # nothing generated, nothing printed


def test_serve_exits_promptly_on_sigterm_with_an_sse_stream_open(served: Served) -> None:
    token = Authenticator((served.value("secret:"),), ()).issue("alice", subscribe=["*"])
    with httpx.stream(
        "GET",
        served.url + "/v1/sse",
        params={"channel": "news"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(10),
    ) as response:
        chunks = response.iter_raw()
        assert next(chunks).startswith(b": pushsvc")
        started = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        rest = b"".join(chunks)  # the server ends the stream itself
        served.proc.wait(10)
        took = time.monotonic() - started
    assert b"event: close" in rest and b"1012" in rest  # a drain: resume elsewhere
    assert served.proc.returncode in (0, -signal.SIGTERM)
    assert took < 3, f"shutdown took {took:.1f} s"


def test_workers_with_the_memory_backend_is_refused_clearly() -> None:
    result = CliRunner().invoke(
        main, ["serve", "--workers", "2"], env={"PUSHSVC_BACKEND_URL": None}
    )
    assert result.exit_code == 2
    assert "memory://" in result.output and "redis://" in result.output


@redis_only
def test_workers_share_settings_and_the_redis_log(backend_url: str) -> None:
    served = start_serve(
        "--workers", "2", "--backend", backend_url, "--secret", SECRET, "--api-key", API_KEY
    )
    try:
        channel = f"w-{uuid.uuid4().hex[:8]}"
        headers = {"Authorization": f"Bearer {API_KEY}"}
        ids = []
        for i in range(6):  # new connections: spread over both workers
            with httpx.Client() as http:
                r = http.post(
                    served.url + "/v1/publish",
                    json={"channel": channel, "data": i},
                    headers=headers,
                )
            ids.append(r.json()["id"])
        with httpx.Client() as http:
            r = http.get(f"{served.url}/v1/channels/{channel}/history", headers=headers)
        assert [e["id"] for e in r.json()["events"]] == ids
    finally:
        served.proc.send_signal(signal.SIGTERM)
        served.proc.wait(15)


def cli(*args: str, stdin: bytes | None = None) -> str:
    result = CliRunner().invoke(main, list(args), input=stdin)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


@memory_only
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_publish_then_subscribe_round_trip(server: Server, transport: str) -> None:
    channel = f"cli-{uuid.uuid4().hex[:8]}"
    r = httpx.get(
        server.url + "/v1/poll",
        params={"channel": channel, "timeout": 0},
        headers=server.api_headers,
    )
    cursor = r.json()["cursor"]
    url, key = ["--url", server.url], ["--api-key", API_KEY]
    ids = [
        cli("publish", channel, '{"n": 1}', *url, *key).strip(),
        cli("publish", channel, "plain words", *url, *key, "--event", "note").strip(),
        cli("publish", channel, "-", "--binary", *url, *key, stdin=b"\x00\x01raw").strip(),
    ]
    again = cli("publish", channel, "9", *url, "--token", server.token(), "--idempotency-key", "k")
    assert cli("publish", channel, "9", *url, "--token", server.token(), "--idempotency-key", "k")
    ids.append(again.strip())
    out = cli(
        "subscribe",
        channel,
        *url,
        "--token",
        server.token(),
        "--transport",
        transport,
        "--cursor",
        cursor,
        "--count",
        "4",
        "--json",
    )
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["id"] for line in lines] == ids
    assert [line["data"] for line in lines[:2]] == [{"n": 1}, "plain words"]
    assert lines[1]["event"] == "note"
    assert base64.b64decode(lines[2]["data"]) == b"\x00\x01raw"
    assert lines[2]["encoding"] == "base64"
    assert all(line["cursor"].startswith("c1") for line in lines)


@memory_only
def test_subscribe_prints_one_plain_line_per_event_as_it_arrives(server: Server) -> None:
    channel = f"cli-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "pushsvc", "subscribe", channel, "--url", server.url),
            *("--token", server.token(), "--count", "2"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        while "connected" not in (line := proc.stderr.readline()):
            assert line, "subscribe exited before connecting"
        ids = [server.publish(channel, {"n": 1}), server.publish(channel, "two")]
        out, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert out.splitlines() == [
        f'{channel} message {ids[0]} {{"n": 1}}',
        f'{channel} message {ids[1]} "two"',
    ]
    assert proc.returncode == 0


@memory_only
def test_subscribe_prints_what_is_published_once_its_start_is_pinned(server: Server) -> None:
    """The start is pinned before any transport is tried: a publish made as soon as the
    CLI says so is printed, even when it lands before the stream is open."""
    channel = f"cli-{uuid.uuid4().hex[:8]}"
    before = server.publish(channel, "before")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "pushsvc", "subscribe", channel, "--url", server.url),
            *("--token", server.token(), "--count", "1", "--transport", "sse"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        while "start pinned" not in (line := proc.stderr.readline()):
            assert line, "subscribe exited before pinning its start"
            assert "connected" not in line, "connected before it said the start was pinned"
        after = server.publish(channel, "after")
        out, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert out.splitlines() == [f'{channel} message {after} "after"']
    assert before != after
    assert proc.returncode == 0


def test_publish_without_credentials_is_a_usage_error() -> None:
    result = CliRunner().invoke(
        main, ["publish", "x", "1"], env={"PUSHSVC_API_KEY": None, "PUSHSVC_TOKEN": None}
    )
    assert result.exit_code == 2
    assert "--api-key or --token" in result.output


def _presence_token(subject: str, info: dict[str, str]) -> str:
    return Authenticator((SECRET,), ()).issue(
        subject, subscribe=("*",), publish=("*",), presence=("*",), info=info, ttl=600
    )


class _Lines:
    """The lines of a subprocess pipe, read by a thread, taken with a deadline (a
    ``select`` on the pipe misses lines already in the reader's buffer)."""

    def __init__(self, stream: Any) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))

    def take(self, n: int, timeout: float = 15) -> list[str]:
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while len(lines) < n:
            try:
                lines.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"waited {timeout} s for {n} lines, got {lines}") from None
        return lines


@memory_only
def test_subscribe_presence_prints_joins_and_leaves(server: Server) -> None:
    channel = f"cli-{uuid.uuid4().hex[:8]}"
    base = [sys.executable, "-m", "pushsvc", "subscribe", channel, "--url", server.url]
    alice_token = _presence_token("alice", {"name": "Alice"})
    alice = subprocess.Popen(
        [*base, "--token", alice_token, "--presence", "--count", "1", "--quiet"],
        stdout=subprocess.PIPE,
        text=True,
    )
    bob = None
    try:
        alice_lines = _Lines(alice.stdout)
        assert alice_lines.take(1) == [f'{channel} join alice {{"name": "Alice"}} (1 connection)']
        bob_token = _presence_token("bob", {})
        bob = subprocess.Popen(
            [*base, "--token", bob_token, "--presence", "--json", "--quiet"],
            stdout=subprocess.PIPE,
            text=True,
        )
        # bob's first snapshot: a join for each member present, alice's included
        assert [json.loads(line) for line in _Lines(bob.stdout).take(2)] == [
            {
                "type": "join",
                "channel": channel,
                "subject": subject,
                "info": info,
                "connections": 1,
            }
            for subject, info in (("alice", {"name": "Alice"}), ("bob", {}))
        ]
        assert alice_lines.take(1) == [f"{channel} join bob {{}} (1 connection)"]
        bob.kill()
        bob.wait()
        assert alice_lines.take(1) == [f"{channel} leave bob {{}} (0 connections)"]
        event_id = server.publish(channel, "bye")
        out = alice_lines.take(1)
        alice.wait(15)
    finally:
        for proc in (alice, bob):
            if proc is not None:
                proc.kill()
                proc.wait()
    assert out == [f'{channel} message {event_id} "bye"']
    assert alice.returncode == 0


@pytest.mark.parametrize("missing", ["rich", "httptools"])
def test_bench_without_its_extra_answers_one_line_naming_it(missing: str) -> None:
    # the extra's module made unimportable, as in an install without pushsvc[bench]
    code = (
        f"import sys; sys.modules[{missing!r}] = None\n"
        "from pushsvc.cli import main\n"
        "main(['bench', '--spawn', 'memory', 'fanout'], prog_name='pushsvc')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"Error: pushsvc bench needs the bench extra ({missing} is not installed): "
        "pip install 'pushsvc[bench]'"
    ]
    assert proc.stdout == ""
