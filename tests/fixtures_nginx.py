"""A real nginx (Debian's package) in front of a pushsvc server, in three proxy modes.

- ``good``: HTTP/1.1 upstream, ``Upgrade``/``Connection`` passed, no buffering, long read
  timeout -- every transport works.
- ``no-upgrade``: ``Upgrade``/``Connection`` stripped, so the WebSocket handshake reaches
  pushsvc as a plain GET (answered 404); SSE and long-poll still work.
- ``buffering``: as ``no-upgrade``, and responses are buffered (``proxy_buffering on``, the
  server's ``X-Accel-Buffering: no`` ignored, large buffers) and compressed, as a
  content-scanning proxy does, so an SSE stream delivers nothing, not even its headers;
  long-poll answers are complete responses and get through. Measured with nginx 1.22:
  ``proxy_buffering on`` alone does NOT stall a stream (nginx forwards what it has read
  when the client keeps up; buffering only shields the upstream from slow clients) --
  the gzip filter holding small writes until its buffer fills is what stalls it.

Each nginx gets its own prefix and config in a temp dir, its own free port and pid file,
and runs in the foreground (``-g 'daemon off;'``) as a subprocess stopped by its pid. A
missing nginx fails the test loudly: CI installs it (``.ci/run``), it is never skipped.

The proxy also serves ``tests/pages/`` at ``/__test/`` (and a copy of the browser client at
``/__test/pushsvc.js``, for pages that load while pushsvc is down), so a browser test page
shares its origin with the proxied API (same-origin WebSocket, no CORS).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures_server import free_port

MODES = ("good", "no-upgrade", "buffering")
# A proxy configured as people configure one from a copy-pasted snippet (not in MODES: the
# restart/silence/fallback matrix does not run through it): ``proxy_pass`` with ``Host
# $host`` and nginx's defaults (HTTP/1.0 upstream, so no WebSocket; buffering on unless
# the server says ``X-Accel-Buffering: no``, which pushsvc's streams do), and ``gzip`` on
# for JSON and event streams. Measured with nginx 1.22: SSE gets through, compressed
# write by write; the WebSocket upgrade is answered 404.
TYPICAL = "typical-gzip"
PAGES = Path(__file__).parent / "pages"
STATIC = Path(__file__).parent.parent / "pushsvc" / "static"

# What each mode lets through, best transport first (the tests assert the client ends there).
BEST_TRANSPORT = {"good": "websocket", "no-upgrade": "sse", "buffering": "long-polling"}

_COMMON = """
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 5s;
            proxy_send_timeout 3600s;
            proxy_read_timeout 3600s;
"""

_MODE_DIRECTIVES = {
    "good": """
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_buffering off;
""",
    # nginx never forwards hop-by-hop headers unless told to; say so explicitly anyway.
    "no-upgrade": """
            proxy_set_header Upgrade "";
            proxy_set_header Connection "";
            proxy_buffering off;
""",
    "buffering": """
            proxy_set_header Upgrade "";
            proxy_set_header Connection "";
            proxy_buffering on;
            proxy_ignore_headers X-Accel-Buffering;
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
            gzip on;
            gzip_proxied any;
            gzip_min_length 0;
            gzip_types text/event-stream application/json;
""",
}
_TYPICAL = """
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            gzip on;
            gzip_proxied any;
            gzip_types text/plain application/json application/javascript text/event-stream;
"""

_CONFIG = """
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    types {{
        text/html html;
        application/javascript js mjs;
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    server {{
        listen 127.0.0.1:{port};
        location /__test/ {{
            alias {pages}/;
            add_header Cache-Control no-store;
        }}
        location = /__test/pushsvc.js {{
            alias {static}/pushsvc.js;
            add_header Cache-Control no-store;
        }}
        location / {{
{common}{mode}
        }}
    }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.fail("nginx is not installed: `apt-get install nginx` (.ci/run does it)")
    return found


@dataclass
class Nginx:
    mode: str
    port: int
    upstream_port: int
    prefix: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def config(self) -> str:
        return _CONFIG.format(
            # as root, nginx's workers would drop to "nobody", which cannot read the temp dir
            user="user root root;" if os.geteuid() == 0 else "",
            prefix=self.prefix,
            port=self.port,
            pages=PAGES.resolve(),
            static=STATIC.resolve(),
            common=(_TYPICAL if self.mode == TYPICAL else _COMMON).format(
                upstream_port=self.upstream_port
            ),
            mode=_MODE_DIRECTIVES.get(self.mode, ""),
        )

    def start(self) -> Nginx:
        binary = nginx_binary()
        conf = self.prefix / "nginx.conf"
        conf.write_text(self.config())
        cmd = [binary, "-p", str(self.prefix), "-e", str(self.prefix / "error.log")]
        cmd += ["-c", str(conf), "-g", "daemon off;"]
        check = subprocess.run([*cmd, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx config rejected:\n{check.stderr}")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {err}")
            try:
                httpx.get(self.url + "/__test/", timeout=0.5)
                return self
            except httpx.TransportError:
                time.sleep(0.05)  # poll: until nginx answers, against the deadline
        raise RuntimeError("nginx did not start within 10 s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # fast shutdown of the master (by its pid)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text() if path.exists() else ""


def start_nginx(
    mode: str, upstream_port: int, prefix: Path | None = None, port: int | None = None
) -> Nginx:
    """Start nginx in ``mode`` in front of ``127.0.0.1:upstream_port`` (``port``: reuse one,
    e.g. to swap the proxy's mode under live clients)."""
    if mode not in (*MODES, TYPICAL):
        raise ValueError(f"unknown proxy mode {mode!r}: one of {(*MODES, TYPICAL)}")
    prefix = prefix or Path(tempfile.mkdtemp(prefix=f"pushsvc-nginx-{mode}-"))
    for sub in ("client_body", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    return Nginx(mode, port or free_port(), upstream_port, prefix).start()


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[Any]:
    """``nginx_factory(mode, upstream_port)`` starts an nginx; all are stopped at teardown."""
    started: list[Nginx] = []

    def factory(mode: str, upstream_port: int, port: int | None = None) -> Nginx:
        prefix = tmp_path / f"nginx-{mode}-{len(started)}"
        proxy = start_nginx(mode, upstream_port, prefix, port)
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        proxy.stop()
