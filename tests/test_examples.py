"""The scripts under examples/ (included in the docs as snippets) run against a real
server and print what the docs say they print."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.fixtures_server import API_KEY, Server, free_port

pytestmark = pytest.mark.parametrize("backend_url", ["memory"], indirect=True)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example_env(server: Server, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("PUSHSVC_")]:
        del env[key]
    env.update(
        PUSHSVC_URL=server.url,
        PUSHSVC_API_KEY=API_KEY,
        PUSHSVC_TOKEN=server.token(subscribe=("chat:*",), publish=("chat:*",)),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_example(name: str, *args: str, env: dict[str, str], timeout: float = 20) -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()


def lines_of(output: list[str], kind: str) -> list[list[str]]:
    return [line.split(" ", 4)[1:] for line in output if line.split(" ", 1)[0] == kind]


def last_cursor(output: list[str]) -> str:
    assert output[-1].startswith("cursor c1"), output
    return output[-1].split()[1]


def start_cursor(server: Server, channels: list[str]) -> str:
    r = httpx.get(
        server.url + "/v1/poll",
        params={"channel": channels, "timeout": 0},
        headers=server.api_headers,
    )
    return str(r.json()["cursor"])


def history_ids(server: Server, channel: str) -> list[str]:
    r = httpx.get(server.url + f"/v1/channels/{channel}/history", headers=server.api_headers)
    return [e["id"] for e in r.json()["events"]]


def test_publish_example_stores_single_batch_and_a_retried_publish_once(server: Server) -> None:
    out = run_example("publish.py", "chat:lobby", env=example_env(server))

    (single,) = lines_of(out, "published")
    batch = lines_of(out, "batch")
    ((first, again, verdict),) = lines_of(out, "idempotent")
    assert single[0] == "chat:lobby"
    assert [b[0] for b in batch] == ["chat:lobby", "chat:lobby", "chat:lobby.audit"]
    assert (first, verdict) == (again, "same")
    # the retried publish was stored once
    assert history_ids(server, "chat:lobby") == [single[1], batch[0][1], batch[1][1], first]
    assert history_ids(server, "chat:lobby.audit") == [batch[2][1]]


def test_sse_example_prints_events_and_resumes_from_its_last_id(server: Server) -> None:
    env = example_env(server)
    start = start_cursor(server, ["chat:lobby"])
    ids = [server.publish("chat:lobby", {"n": n}) for n in range(4)]

    out = run_example("subscribe_sse.py", "--last-event-id", start, "--count", "2", env=env)
    assert [m[2] for m in lines_of(out, "message")] == ids[:2]
    out = run_example(
        "subscribe_sse.py", "--last-event-id", last_cursor(out), "--count", "2", env=env
    )
    messages = lines_of(out, "message")
    assert [m[2] for m in messages] == ids[2:]
    assert messages[-1] == ["chat:lobby", "message", ids[3], '{"n": 3}']


@pytest.fixture
def live_sse(server: Server) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "subscribe_sse.py"), "chat:a", "chat:b", "--count", "2"],
        env=example_env(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_sse_example_receives_live_events_on_two_channels(
    server: Server, live_sse: subprocess.Popen[str]
) -> None:
    assert live_sse.stdout is not None
    assert live_sse.stdout.readline().strip() == "subscribed chat:a,chat:b"
    a = server.publish("chat:a", "to a")
    b = server.publish("chat:b", "to b")
    out, _ = live_sse.communicate(timeout=15)
    lines = out.splitlines()
    assert lines_of(lines, "message") == [
        ["chat:a", "message", a, '"to a"'],
        ["chat:b", "message", b, '"to b"'],
    ]
    # one cursor for both channels: resuming from it over long-poll finds nothing old
    server.publish("chat:b", "later")
    out2 = run_example(
        "long_poll.py", "chat:a", "chat:b", "--cursor", last_cursor(lines), "--count", "1",
        env=example_env(server),
    )  # fmt: skip
    assert [e[3] for e in lines_of(out2, "event")] == ['"later"']


def test_websocket_example_publishes_with_acks_and_replays_from_a_cursor(server: Server) -> None:
    env = example_env(server)
    start = start_cursor(server, ["chat:room"])
    args = ["chat:room", "--publish", "hello", "--publish", "world", "--count", "2"]
    out = run_example("subscribe_ws.py", *args, "--cursor", start, env=env)

    assert "subscribed chat:room" in out
    acked = [a[1] for a in lines_of(out, "ack")]
    events = lines_of(out, "event")
    assert [e[3] for e in events] == ['"hello"', '"world"']
    assert sorted(acked) == sorted(e[2] for e in events)
    assert history_ids(server, "chat:room") == [e[2] for e in events]  # each stored once

    # the same cursor replays the same events on a new connection, without publishing
    again = run_example("subscribe_ws.py", "chat:room", "--cursor", start, "--count", "2", env=env)
    assert lines_of(again, "event") == events
    # and the WebSocket's cursor is good on long-poll: nothing is delivered twice
    later = server.publish("chat:room", "third")
    args = ["chat:room", "--cursor", last_cursor(again), "--count", "1"]
    out = run_example("long_poll.py", *args, env=env)
    assert lines_of(out, "event") == [["chat:room", "message", later, '"third"']]


def test_long_poll_example_follows_the_cursor(server: Server) -> None:
    env = example_env(server)
    start = start_cursor(server, ["chat:lobby", "chat:quiet"])
    ids = [server.publish("chat:lobby", n) for n in range(3)]
    args = ["chat:lobby", "chat:quiet", "--cursor", start, "--count", "3", "--timeout", "1"]
    out = run_example("long_poll.py", *args, env=env)
    assert [e[2] for e in lines_of(out, "event")] == ids
    # a quiet channel still has a place in the cursor: nothing is replayed from it
    more = server.publish("chat:quiet", "q")
    args = ["chat:lobby", "chat:quiet", "--cursor", last_cursor(out), "--count", "1"]
    out = run_example("long_poll.py", *args, env=env)
    assert lines_of(out, "event") == [["chat:quiet", "message", more, '"q"']]


def test_mount_example_serves_pushsvc_under_a_prefix(server: Server) -> None:
    out = run_example("mount_in_starlette.py", env=example_env(server))
    assert out[0] == "home my application"
    assert out[1] == "readyz 200 ok"
    ((published,),) = [line.split()[1:] for line in out if line.startswith("published")]
    assert f"polled news {published} mounted" in out
    # shutdown ends the open SSE stream with a close event instead of waiting on it
    assert 'sse closed {"code":1012,"reason":"service restart"}' in out
    assert out[-1] == "stopped in under a second"


@pytest.fixture
def pages_origin() -> Iterator[str]:
    """examples/ over HTTP, as a site of its own origin that embeds the browser page."""
    handler = functools.partial(_QuietHandler, directory=str(EXAMPLES))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_browser_page_shows_events_from_a_cursor_with_eventsource(
    server_factory: Any, pages_origin: str
) -> None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        pytest.fail("chromium is not installed: `apt-get install chromium` (.ci/run does it)")
    server = server_factory(cors_origins=pages_origin)
    start = start_cursor(server, ["chat:lobby"])
    ids = [server.publish("chat:lobby", {"n": n}) for n in range(3)]
    query = urlencode(
        {
            "server": server.url,
            "token": server.token(subscribe=("chat:*",)),
            "channel": "chat:lobby",
            "cursor": start,
            "count": "3",
        }
    )
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--virtual-time-budget=10000",
            "--dump-dom",
            f"{pages_origin}/browser.html?{query}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    dom = proc.stdout
    assert '<span id="state">done</span>' in dom, dom[-2000:]
    for n, event_id in enumerate(ids):
        assert f'<li>chat:lobby message {event_id} {{"n":{n}}}</li>' in dom


def test_binary_example_round_trips_bytes_on_websocket_and_long_poll(server: Server) -> None:
    out = run_example("binary.py", "chat:files", env=example_env(server))
    ((_, http_id, size, _),) = lines_of(out, "http")
    assert size == "10"
    ws = lines_of(out, "ws")
    assert [line[0] for line in ws] == ["binary", "binary"]
    ws_id = ws[1][1]
    expected = [[http_id, "blob", "0001020304050607fffe"], [ws_id, "blob", b"\0raw bytes\1".hex()]]
    assert [line[1:] for line in ws] == expected  # binary frames on the WebSocket
    assert lines_of(out, "poll") == expected  # base64 on long-poll, decoded


NGINX_MAIN = """
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    include {prefix}/pushsvc.conf;
}}
"""


@pytest.fixture
def nginx_in_front(server: Server, tmp_path: Path) -> Iterator[str]:
    """examples/nginx.conf, unchanged but for its two ports, in front of ``server``."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK):
        pytest.fail("nginx is not installed: `apt-get install nginx` (.ci/run does it)")
    port = free_port()
    conf = (EXAMPLES / "nginx.conf").read_text()
    conf = conf.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{server.port};")
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    (tmp_path / "pushsvc.conf").write_text(conf)
    user = "user root root;" if os.geteuid() == 0 else ""
    (tmp_path / "nginx.conf").write_text(NGINX_MAIN.format(user=user, prefix=tmp_path))
    cmd = [nginx, "-p", str(tmp_path), "-e", str(tmp_path / "error.log")]
    cmd += ["-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(url + "/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)  # poll: until the server answers (200 tries at most)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_nginx_example_config_passes_every_transport(server: Server, nginx_in_front: str) -> None:
    proxied = Server(nginx_in_front, 0, server.backend_url, server.env)
    env = example_env(server, PUSHSVC_URL=nginx_in_front)
    start = start_cursor(proxied, ["chat:lobby"])
    ids = [server.publish("chat:lobby", n) for n in range(3)]
    for script, flag in [
        ("subscribe_ws.py", "--cursor"),
        ("subscribe_sse.py", "--last-event-id"),
        ("long_poll.py", "--cursor"),
    ]:
        out = run_example(script, "chat:lobby", flag, start, "--count", "3", env=env)
        assert [e[2] for e in lines_of(out, "event") + lines_of(out, "message")] == ids, script


def test_load_then_subscribe_example_misses_nothing_published_between_load_and_subscribe(
    server: Server,
) -> None:
    loaded = [*(server.publish("chat:a", n) for n in range(3)), server.publish("chat:b", "b")]
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "load_then_subscribe.py"), "chat:a", "chat:b", "-n2"],
        env=example_env(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        while (line := proc.stdout.readline().strip()) != "loaded-all":
            assert line, f"exited before loading: {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line)
        # published after the load, before the client subscribed: must come live
        live = [server.publish("chat:b", "new b"), server.publish("chat:a", "new a")]
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert [ln.split()[2] for ln in lines] == loaded
    got = [ln.split()[1:3] for ln in out.splitlines() if ln.startswith("live")]
    # order is per channel: one event on each
    assert sorted(got) == sorted([["chat:b", live[0]], ["chat:a", live[1]]])


def test_python_client_example_publishes_through_its_outbox_and_receives(server: Server) -> None:
    env = example_env(server)
    start = start_cursor(server, ["chat:py"])
    args = ["chat:py", "--publish", "a", "--publish", "b", "--count", "2", "--cursor", start]
    out = run_example("python_client.py", *args, env=env)

    assert "state connected websocket" in out
    events = lines_of(out, "event")
    assert [e[3] for e in events] == ["{'text': 'a'}", "{'text': 'b'}"]
    assert [p[0] for p in lines_of(out, "published")] == [e[2] for e in events]
    assert history_ids(server, "chat:py") == [e[2] for e in events]  # each stored once
    # its cursor resumes right after the last event, on another transport
    later = server.publish("chat:py", "c")
    args = ["chat:py", "--cursor", last_cursor([ln for ln in out if ln.startswith("cursor")])]
    out = run_example("long_poll.py", *args, "--count", "1", env=env)
    assert lines_of(out, "event") == [["chat:py", "message", later, '"c"']]
