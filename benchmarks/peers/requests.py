"""The request path, measured with wrk: HTTP publish and HTTP long-poll, pushsvc beside a
raw-ASGI floor, a bare Starlette route and Nchan, in one run; server CPU per request.

    python benchmarks/peers/requests.py --out benchmarks/results/requests
    python benchmarks/peers/requests.py --servers floor,pushsvc-memory \\
        --pushsvc-python /work/before/.venv/bin/python --out /tmp/before

Every server runs on a free loopback port **pinned to CPU 0** (Redis too, for
``pushsvc-redis``); this script and wrk (Debian's, ``-t1``) are pinned to **CPU 1**. All
servers are started first and stay up; then, scenario by scenario and ``--repeat`` times
over, each server in turn gets a check request (the exact request wrk will send: its
status and answer are checked), ``--warmup`` seconds of wrk, then the measured
``--duration`` seconds of wrk. Server CPU is read from ``/proc/<pid>/task/*/schedstat``
(``pushsvc.bench.proc``) for the server process and its descendants (nginx's master and
worker), plus redis-server's for ``pushsvc-redis``, right before wrk starts and right
after it exits; divided by the requests wrk completed: CPU µs per request. The "times the
floor" column is that over the floor's, same scenario, same run (medians when
``--repeat`` > 1).

Scenarios (``--scenarios``):

- ``publish``: one ~100-byte JSON message per POST, ``--connections`` (16), no subscriber;
- ``batch``: 100 of those messages per POST (``{"messages": [...]}``); CPU per message too
  (Nchan has no batch publish: not run there);
- ``poll``: a long-poll answered at once with one stored event (pushsvc: a cursor just
  before the channel's last event; Nchan: ``nchan_subscriber_first_message oldest``);
- ``poll-idle``: a long-poll that times out with nothing to answer after
  ``--idle-timeout`` s, ``--idle-connections`` (64) at once (pushsvc and Nchan only).

Servers (``--servers``): ``floor`` (``floor_asgi.py``), ``starlette``
(``starlette_route.py``), ``nchan`` (nginx + Nchan, ``nchan_requests.conf.template``, one
worker), ``pushsvc-memory`` and ``pushsvc-redis`` (``python -m pushsvc serve`` with an API
key and a secret, the API-key publish rate limit off as ``pushsvc bench`` has it, its log
level left at its default; Redis: a throwaway ``redis-server`` on a free port). pushsvc
runs under ``--pushsvc-python`` with its working directory at ``--pushsvc-root``, so that
another checkout can be measured beside this one's floor. ``--baseline-root DIR`` (and
``--baseline-python``, default ``--pushsvc-python``) adds a twin of each, ``NAME@base``,
run from ``DIR`` (cwd and ``PYTHONPATH``; it must import ``DIR/pushsvc``), with its own
Redis, measured in turn with the others (a server and its twin swap places every other
repeat): the tables get an "after/before" column, pushsvc's CPU per request over its
twin's, and the JSON both checkouts' commits. Only same-run ratios count on a noisy machine.

Writes ``requests.json`` (every run's figures, wrk's exact commands, versions, the
machine) and ``requests.md`` (a table per scenario) to ``--out`` and prints the tables.
Exits 1 when a run was incomplete (a non-2xx answer, a wrk socket error, a failed check)
or a server could not start.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click
import httpx

from pushsvc.bench import proc, report
from pushsvc.bench.scenarios import CONTENDED, SATURATED
from pushsvc.bench.server import ServerUnderTest, free_port, spawn_command

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WRK_SCRIPTS = HERE / "wrk"
NCHAN_MODULES = (
    "/usr/lib/nginx/modules/ngx_nchan_module.so",
    "/usr/share/nginx/modules/ngx_nchan_module.so",
)

SCENARIOS = ("publish", "batch", "poll", "poll-idle")
SERVERS = ("floor", "starlette", "nchan", "pushsvc-memory", "pushsvc-redis")
BATCH = 100
CHANNEL = "bench"
POLL_CHANNEL = "bench-poll"
IDLE_CHANNEL = "bench-idle"
# the message of every publish: 100 bytes of JSON
MESSAGE = json.dumps(
    {
        "channel": CHANNEL,
        "data": {"user": "alice", "text": "hello, world: a short message from the backend."},
    },
    separators=(",", ":"),
)
BASE = "@base"  # the suffix of a pushsvc server's twin run from --baseline-root
NCHAN_IDLE_STATUSES = (408,)  # a long-poll that timed out, as Nchan answers it
HIDDEN = ("WRK_AUTHORIZATION",)  # not written to the outputs (the run's own credentials)
TIMES = "\u00d7"  # the multiplication sign of the "times the floor" column


@dataclass
class Options:
    duration: int
    warmup: int
    repeat: int
    connections: int
    idle_connections: int
    idle_timeout: float
    pushsvc_python: str
    pushsvc_root: Path
    wrk: str
    pin_server: int | None
    pin_gen: int | None
    out: Path
    baseline_python: str | None = None  # the @base twins' (None: no baseline)
    baseline_root: Path | None = None


# --- what wrk sends ----------------------------------------------------------------------------

# A check of the answer to the check request: a problem, or None when the answer is right.
Check = Callable[[httpx.Response], str | None]


@dataclass
class Load:
    """One scenario's requests for one server, as wrk sends them."""

    script: str  # in wrk/
    url: str
    connections: int
    timeout: float  # wrk --timeout, seconds
    messages: int  # per request
    check: Check
    env: dict[str, str] = field(default_factory=dict)
    ok: tuple[int, ...] = ()  # statuses beside 2xx that are this server's right answer
    period: float = 0.0  # a poll that times out: its timeout, seconds (see round_marks)

    def request(self) -> tuple[str, str, dict[str, str], str | None]:
        """The check request: method, URL, headers, body."""
        headers = {}
        if self.env.get("WRK_AUTHORIZATION"):
            headers["Authorization"] = self.env["WRK_AUTHORIZATION"]
        if self.script == "poll.lua":
            return "GET", self.url, headers, None
        headers["Content-Type"] = "application/json"
        body = self.env["WRK_BODY"]
        if self.script == "batch.lua":
            body = '{"messages":[' + ",".join([body] * BATCH) + "]}"
        return "POST", self.url, headers, body


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return None


def expect_status(*statuses: int) -> Check:
    def check(r: httpx.Response) -> str | None:
        if r.status_code not in statuses:
            return f"answered {r.status_code}: {r.text[:200]!r}"
        return None

    return check


def expect_ids(count: int) -> Check:
    """A publish answer: one ``{"channel", "id"}``, or ``{"results": [...]}`` of ``count``."""

    def check(r: httpx.Response) -> str | None:
        body = _json(r)
        if r.status_code != 200:
            return f"answered {r.status_code}: {r.text[:200]!r}"
        items = body.get("results") if isinstance(body, dict) and count > 1 else [body]
        if not isinstance(items, list) or len(items) != count:
            return f"expected {count} id(s), got {r.text[:200]!r}"
        if not all(
            isinstance(i, dict) and i.get("channel") == CHANNEL and i.get("id") for i in items
        ):
            return f"not channel/id pairs: {r.text[:200]!r}"
        return None

    return check


def expect_events(count: int) -> Check:
    """A long-poll answer with ``count`` events (pushsvc's shape)."""

    def check(r: httpx.Response) -> str | None:
        body = _json(r)
        if r.status_code != 200 or not isinstance(body, dict):
            return f"answered {r.status_code}: {r.text[:200]!r}"
        events = body.get("events")
        if not isinstance(events, list) or len(events) != count:
            return f"expected {count} event(s), got {r.text[:300]!r}"
        if any(e.get("type") != "event" for e in events):
            return f"not events: {r.text[:300]!r}"
        return None

    return check


def expect_body(status: int, body: str) -> Check:
    def check(r: httpx.Response) -> str | None:
        if r.status_code != status or r.text != body:
            return f"expected {status} {body[:60]!r}, got {r.status_code} {r.text[:200]!r}"
        return None

    return check


# --- the servers ---------------------------------------------------------------------------------


class Server:
    """One server under test: started once, measured scenario by scenario."""

    name = ""
    label = ""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.sut: ServerUnderTest | None = None
        self.command: list[str] = []
        self.error: str | None = None
        self.versions = ""
        self.log = opts.out / "logs" / f"{self.name}.log"
        self.client = httpx.Client(timeout=30)

    @property
    def base(self) -> str:
        assert self.sut is not None
        return self.sut.url

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.sut is not None:
            self.sut.stop()
            self.sut = None
        self.client.close()

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: ``app`` (the server's process tree) and, for pushsvc on
        Redis, ``redis``."""
        assert self.sut is not None
        app = proc.cpu_seconds(self.sut.pids)
        if app is None:
            raise RuntimeError(f"{self.name}: its CPU time cannot be read from /proc")
        return {"app": app}

    def skip(self, scenario: str) -> str | None:
        """Why this server does not run ``scenario`` (None: it does)."""
        return None

    def load(self, scenario: str) -> Load:
        """The scenario's requests, after whatever they need stored first."""
        raise NotImplementedError

    def _spawn(self, cmd: list[str], port: int, **kwargs: Any) -> None:
        self.command = cmd
        self.sut = spawn_command(
            cmd, port, cpu=self.opts.pin_server, log_path=self.log, name=self.name, **kwargs
        )


def _publish_load(url: str, connections: int, auth: str | None, scenario: str) -> Load:
    env = {"WRK_BODY": MESSAGE}
    if auth:
        env["WRK_AUTHORIZATION"] = auth
    if scenario == "batch":
        env["WRK_BATCH"] = str(BATCH)
        return Load("batch.lua", url, connections, 10, BATCH, expect_ids(BATCH), env)
    return Load("publish.lua", url, connections, 10, 1, expect_ids(1), env)


class PythonPeer(Server):
    """``floor_asgi.py`` or ``starlette_route.py`` under this interpreter."""

    script = ""

    def start(self) -> None:
        port = free_port()
        cmd = [sys.executable, str(HERE / self.script), "--host", "127.0.0.1"]
        self._spawn([*cmd, "--port", str(port)], port)
        self.versions = (
            ", ".join(f"{p} {_pkg(p)}" for p in ("uvicorn", "httptools", "uvloop", "starlette"))
            + f", Python {platform.python_version()}"
        )

    def skip(self, scenario: str) -> str | None:
        return (
            "not run: it has no waiting poll, it answers every poll at once"
            if scenario == "poll-idle"
            else None
        )

    def load(self, scenario: str) -> Load:
        if scenario in ("publish", "batch"):
            return _publish_load(self.base + "/publish", self.opts.connections, None, scenario)
        url = self.base + "/poll?" + urlencode({"channel": POLL_CHANNEL})
        return Load("poll.lua", url, self.opts.connections, 10, 1, expect_events(1))


class Floor(PythonPeer):
    name = "floor"
    label = "raw ASGI app on uvicorn + httptools (the floor)"
    script = "floor_asgi.py"


class StarletteRoute(PythonPeer):
    name = "starlette"
    label = "bare Starlette route (Request.json, JSONResponse)"
    script = "starlette_route.py"


class Nchan(Server):
    name = "nchan"
    label = "Nchan (nginx module, C), 1 worker"

    def __init__(self, opts: Options) -> None:
        super().__init__(opts)
        self.prefix: Path | None = None

    def start(self) -> None:
        module = next((m for m in NCHAN_MODULES if os.path.exists(m)), None)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if module is None or not os.path.exists(nginx):
            raise RuntimeError("nginx or ngx_nchan_module.so missing: benchmarks/peers/install.sh")
        self.prefix = Path(tempfile.mkdtemp(prefix="pushsvc-reqbench-nchan-"))
        os.chmod(self.prefix, 0o755)  # the worker runs as nginx's user when started as root
        port = free_port()
        conf = render_nchan(self.prefix, port, module, self.opts.idle_timeout)
        self._spawn([nginx, "-p", str(self.prefix), "-c", str(conf)], port)
        self.versions = (
            _run([nginx, "-v"])
            + ", libnginx-mod-nchan "
            + _run(["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-nchan"])
        )

    def stop(self) -> None:
        super().stop()  # SIGTERM to nginx's master: its fast shutdown
        if self.prefix is not None:
            shutil.rmtree(self.prefix, ignore_errors=True)
            self.prefix = None

    def skip(self, scenario: str) -> str | None:
        return "Nchan has no batch publish" if scenario == "batch" else None

    def load(self, scenario: str) -> Load:
        c = self.opts.connections
        if scenario == "publish":
            url = self.base + "/publish?" + urlencode({"channel": CHANNEL})
            # no subscriber: 202 Accepted, the channel's counts as text
            return Load(
                "publish.lua", url, c, 10, 1, expect_status(201, 202), {"WRK_BODY": MESSAGE}
            )
        if scenario == "poll":
            stored = self.client.post(
                self.base + "/publish?" + urlencode({"channel": POLL_CHANNEL}), content=MESSAGE
            )
            if stored.status_code not in (201, 202):
                raise RuntimeError(f"storing the poll's message answered {stored.status_code}")
            url = self.base + "/poll?" + urlencode({"channel": POLL_CHANNEL})
            return Load("poll.lua", url, c, 10, 1, expect_body(200, MESSAGE))
        # nothing is ever published on the idle channel: each poll waits out the timeout
        url = self.base + "/poll-idle?" + urlencode({"channel": IDLE_CHANNEL})
        period = nchan_idle_seconds(self.opts.idle_timeout)
        check = expect_status(*NCHAN_IDLE_STATUSES)
        c = self.opts.idle_connections
        return Load("poll.lua", url, c, period + 5, 1, check, ok=NCHAN_IDLE_STATUSES, period=period)


def nchan_idle_seconds(timeout: float) -> int:
    """``nchan_subscriber_timeout`` takes whole seconds."""
    return max(1, round(timeout))


def render_nchan(prefix: Path, port: int, module: str, idle_timeout: float) -> Path:
    """``nchan_requests.conf.template`` with its placeholders filled, in ``prefix``."""
    text = (HERE / "nchan_requests.conf.template").read_text()
    for name, value in (
        ("PREFIX", str(prefix)),
        ("HOST", "127.0.0.1"),
        ("PORT", str(port)),
        ("MODULE", module),
        ("IDLE_TIMEOUT", f"{nchan_idle_seconds(idle_timeout)}s"),
    ):
        text = text.replace(f"@{name}@", value)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


class Redis:
    """A throwaway ``redis-server`` on a free port (no persistence), pinned like the
    server; stopped by its pid."""

    def __init__(self, cpu: int | None, log: Path) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pushsvc-reqbench-redis-"))
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.command = [exe, "--bind", "127.0.0.1", "--port", str(self.port)]
        self.command += ["--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        preexec = None
        if cpu is not None:
            pinned = {cpu}

            def preexec() -> None:
                os.sched_setaffinity(0, pinned)

        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec
            )
        deadline = time.monotonic() + 10
        while not self._ping():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start (log: {log})")
            time.sleep(0.05)  # poll
        self.version = _run([exe, "--version"])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        import socket

        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
        ):
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    def cpu(self) -> float:
        value = proc.cpu_seconds([self.popen.pid])
        if value is None:
            raise RuntimeError("redis-server's CPU time cannot be read from /proc")
        return value

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Pushsvc(Server):
    """``python -m pushsvc serve`` under ``--pushsvc-python``, cwd ``--pushsvc-root``; a
    baseline twin under ``--baseline-python``, cwd and ``PYTHONPATH`` ``--baseline-root``."""

    backend = "memory"
    baseline = False

    def __init__(self, opts: Options) -> None:
        super().__init__(opts)
        if self.baseline:
            assert opts.baseline_root is not None
            self.python = opts.baseline_python or opts.pushsvc_python
            self.root = opts.baseline_root
            # `-m` puts the cwd first on sys.path; PYTHONPATH too, for the token helper's `-c`
            path = os.environ.get("PYTHONPATH")
            self.path_env = {"PYTHONPATH": os.pathsep.join([str(self.root), *filter(None, [path])])}
        else:
            self.python, self.root = opts.pushsvc_python, opts.pushsvc_root
            self.path_env = {}
        self.redis: Redis | None = None
        self.secret = secrets.token_urlsafe(24)
        self.api_key = secrets.token_urlsafe(18)
        self.token = ""
        self.env: dict[str, str] = {}
        self.redis_command: list[str] | None = None

    def start(self) -> None:
        backend_url = "memory://"
        if self.backend == "redis":
            log = self.log.with_name(f"redis-server{BASE if self.baseline else ''}.log")
            self.redis = Redis(self.opts.pin_server, log)
            self.redis_command = self.redis.command
            backend_url = self.redis.url
        # pushsvc bench's environment (pushsvc/bench/server.py), its log level left alone
        self.env = {
            "PUSHSVC_BACKEND_URL": backend_url,
            "PUSHSVC_SECRETS": self.secret,
            "PUSHSVC_API_KEYS": self.api_key,
            "PUSHSVC_API_KEY_PUBLISH_RATE": "0",
            "PUSHSVC_MAX_CONNECTIONS": "60000",
        } | self.path_env
        port = free_port()
        py = self.python
        cmd = [py, "-m", "pushsvc", "serve", "--host", "127.0.0.1", "--port", str(port)]
        with contextlib.chdir(self.root):  # `-m` imports from the cwd first
            # that checkout's versions and a client token, minted meanwhile
            helper = subprocess.Popen(
                [py, "-c", _HELPER],
                env=os.environ | self.path_env | {"REQBENCH_SECRET": self.secret},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                self._spawn(cmd, port, ready_path="/readyz", env=self.env)
                out, err = helper.communicate(timeout=60)
            finally:
                if helper.poll() is None:
                    helper.kill()
                    helper.wait()
        lines = out.strip().splitlines()
        if helper.returncode != 0 or len(lines) != 3:
            raise RuntimeError(f"{py} could not mint a token: {err[-500:]}")
        self.versions, imported, self.token = lines
        # the checkout's own package, not an installed one (before/after would be the same)
        expected = self.root / "pushsvc" / "__init__.py"
        if expected.exists() and Path(imported).resolve() != expected.resolve():
            raise RuntimeError(f"{py} in {self.root} imports {imported}, not {expected}")
        self.versions += f", git {_git(self.root)}"
        if self.redis is not None:
            self.versions += f"; {self.redis.version}"

    def stop(self) -> None:
        super().stop()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def cpu(self) -> dict[str, float]:
        out = super().cpu()
        if self.redis is not None:
            out["redis"] = self.redis.cpu()
        return out

    def skip(self, scenario: str) -> str | None:
        return None

    def load(self, scenario: str) -> Load:
        api_key = f"Bearer {self.api_key}"
        if scenario in ("publish", "batch"):
            url = self.base + "/v1/publish"
            return _publish_load(url, self.opts.connections, api_key, scenario)
        token = {"WRK_AUTHORIZATION": f"Bearer {self.token}"}
        if scenario == "poll":
            # stored events, a cursor at the end, one more: each poll answers that one
            batch = [{"channel": POLL_CHANNEL, "data": {"n": i}} for i in range(10)]
            self._publish({"messages": batch})
            cursor = self._cursor(POLL_CHANNEL)
            self._publish({"channel": POLL_CHANNEL, "data": {"user": "alice", "text": "hi"}})
            query = {"channel": POLL_CHANNEL, "cursor": cursor, "timeout": "20"}
            url = self.base + "/v1/poll?" + urlencode(query)
            return Load("poll.lua", url, self.opts.connections, 10, 1, expect_events(1), token)
        # a cursor at the end of a channel nothing is published on: each poll times out
        query = {
            "channel": IDLE_CHANNEL,
            "cursor": self._cursor(IDLE_CHANNEL),
            "timeout": f"{self.opts.idle_timeout:g}",
        }
        url = self.base + "/v1/poll?" + urlencode(query)
        period, c = self.opts.idle_timeout, self.opts.idle_connections
        check = expect_events(0)
        return Load("poll.lua", url, c, period + 5, 1, check, token, period=period)

    def _publish(self, body: dict[str, Any]) -> None:
        r = self.client.post(
            self.base + "/v1/publish",
            json=body,
            headers={"Authorization": f"Bearer {self.api_key}"},
        )
        if r.status_code != 200:
            raise RuntimeError(f"publish answered {r.status_code}: {r.text[:200]}")

    def _cursor(self, channel: str) -> str:
        r = self.client.get(
            self.base + "/v1/poll",
            params={"channel": channel, "timeout": "0"},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        if r.status_code != 200:
            raise RuntimeError(f"poll answered {r.status_code}: {r.text[:200]}")
        return str(r.json()["cursor"])


class PushsvcMemory(Pushsvc):
    name = "pushsvc-memory"
    label = "pushsvc, memory backend"
    backend = "memory"


class PushsvcRedis(Pushsvc):
    name = "pushsvc-redis"
    label = "pushsvc, Redis backend (Redis's CPU counted)"
    backend = "redis"


class PushsvcMemoryBase(PushsvcMemory):
    name = PushsvcMemory.name + BASE
    label = PushsvcMemory.label + ", the baseline checkout (--baseline-root)"
    baseline = True


class PushsvcRedisBase(PushsvcRedis):
    name = PushsvcRedis.name + BASE
    label = PushsvcRedis.label + ", the baseline checkout (--baseline-root), its own Redis"
    baseline = True


SERVER_CLASSES: dict[str, type[Server]] = {
    cls.name: cls
    for cls in (
        Floor,
        StarletteRoute,
        Nchan,
        PushsvcMemory,
        PushsvcRedis,
        PushsvcMemoryBase,
        PushsvcRedisBase,
    )
}

# Run by pushsvc's interpreter in its checkout: which pushsvc it imports (and versions),
# then a client token with the subscribe grant (the documented way to mint one in code).
_HELPER = """
import os, platform, pushsvc
from importlib.metadata import version
from pushsvc.auth import Authenticator
print(f"pushsvc {getattr(pushsvc, '__version__', '?')} from {pushsvc.__file__}, "
      f"uvicorn {version('uvicorn')}, starlette {version('starlette')}, "
      f"Python {platform.python_version()}")
print(pushsvc.__file__)
auth = Authenticator((os.environ["REQBENCH_SECRET"],), ())
print(auth.issue("reqbench", subscribe=["bench*"], ttl=86400))
"""


def _pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (out.stdout + out.stderr).strip()


def _git(root: Path) -> str:
    if not (root / ".git").exists():
        return "not a git checkout"
    return _run(["git", "-C", str(root), "describe", "--always", "--dirty"])


def checkout(python: str, root: Path) -> dict[str, Any]:
    """A pushsvc checkout as the JSON records it: its commit and whether tracked files
    differ from it (untracked ones do not count, as with ``git describe --dirty``)."""
    out: dict[str, Any] = {"python": python, "root": str(root), "commit": None, "dirty": None}
    git = ["git", "-C", str(root)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        out["commit"] = head.stdout.strip()
        status = [*git, "status", "--porcelain", "--untracked-files=no"]
        changed = subprocess.run(status, capture_output=True, text=True)
        out["dirty"] = bool(changed.stdout.strip()) if changed.returncode == 0 else None
    return out


# --- one wrk run ---------------------------------------------------------------------------------


@dataclass
class Run:
    server: str
    scenario: str
    repeat: int
    figures: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    notes: list[str] = field(default_factory=list)
    complete: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "scenario": self.scenario,
            "repeat": self.repeat,
            "complete": self.complete,
            "command": self.command,
            "figures": self.figures,
            "notes": self.notes,
        }


def wrk_command(opts: Options, load: Load, seconds: int) -> tuple[list[str], dict[str, str]]:
    cmd = [opts.wrk, "-t1", f"-c{load.connections}", f"-d{seconds}s"]
    cmd += [
        "--timeout",
        f"{math.ceil(load.timeout)}s",
        "-s",
        str(WRK_SCRIPTS / load.script),
        load.url,
    ]
    return cmd, load.env | {"WRK_COUNT_STATUS": "1"}


def shown(opts: Options, cmd: list[str], env: dict[str, str]) -> str:
    """The command as a shell line, pinned as it ran, without the run's credentials."""
    assigns = [
        f"{k}={shlex.quote('<' + k.lower() + '>' if k in HIDDEN else v)}"
        for k, v in sorted(env.items())
    ]
    pin = ["taskset", "-c", str(opts.pin_gen)] if opts.pin_gen is not None else []
    return " ".join([*assigns, shlex.join([*pin, *cmd])])


def run_wrk(opts: Options, load: Load, seconds: int, server: Server) -> dict[str, Any]:
    """wrk for ``seconds``; its summary with the server's (and wrk's own) CPU meanwhile."""
    cmd, env = wrk_command(opts, load, seconds)
    preexec = None
    if opts.pin_gen is not None:
        pinned = {opts.pin_gen}

        def preexec() -> None:
            os.sched_setaffinity(0, pinned)

    core = opts.pin_server
    marks = round_marks(load, seconds)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = proc.core_busy_seconds(core) if core is not None else None
    before = server.cpu()
    started = time.perf_counter()
    wrk = subprocess.Popen(
        cmd,
        env=os.environ | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
    )
    readings = []
    try:
        for mark in marks:
            time.sleep(max(0.0, started + mark - time.perf_counter()))  # pace
            readings.append((time.perf_counter() - started, server.cpu()))
        stdout, stderr = wrk.communicate(timeout=seconds + load.timeout + 60)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    wall = time.perf_counter() - started
    after = server.cpu()
    busy_after = proc.core_busy_seconds(core) if core is not None else None
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary: dict[str, Any] | None = next(
        (json.loads(line[12:]) for line in stdout.splitlines() if line.startswith("WRK_SUMMARY ")),
        None,
    )
    if wrk.returncode != 0 or summary is None:
        raise RuntimeError(f"wrk exited {wrk.returncode}: {(stderr or stdout)[-500:]}")
    summary["command"] = shown(opts, cmd, env)
    summary["wall_s"] = wall
    summary["cpu_s"] = {k: after[k] - before[k] for k in after}
    summary["wrk_cpu_s"] = (done.ru_utime - children.ru_utime) + (done.ru_stime - children.ru_stime)
    if busy is not None and busy_after is not None:
        summary["core_busy_s"] = busy_after - busy
    if len(readings) == 2 and load.period:
        (t0, cpu0), (t1, cpu1) = readings
        summary["rounds"] = {
            "rounds": round((t1 - t0) / load.period),
            "at_s": [round(t0, 4), round(t1, 4)],
            "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu1},
        }
    return summary


ROUND_MARGIN = 0.05  # seconds: wrk's start (exec, Lua, connecting) before its first polls


def round_marks(load: Load, seconds: int) -> list[float]:
    """For a poll that times out (``load.period``): two instants halfway through a round,
    whole rounds apart, within the run. wrk's connections start together and every poll
    waits the same time out, so they go in step: halfway through a round every poll is
    waiting and the server idle, and between two such instants each connection completed
    exactly as many polls as there were rounds. CPU read there has no run's edge in it (a
    poll started but not answered when wrk stops)."""
    if not load.period:
        return []
    rounds = int(seconds / load.period - 1)
    if rounds < 1:
        return []
    return [0.5 * load.period, (rounds + 0.5) * load.period]


def figures(summary: dict[str, Any], load: Load) -> tuple[dict[str, Any], list[str], bool]:
    """A wrk run's figures, its notes and whether it was complete."""
    requests = int(summary["requests"])
    seconds = summary["duration_us"] / 1e6
    cpu = summary["cpu_s"]
    total = sum(cpu.values())
    errors = summary["errors"]
    statuses = {int(k): int(v) for k, v in summary.get("statuses", {}).items()}
    wrong = sum(n for s, n in statuses.items() if not (200 <= s < 300 or s in load.ok))
    if not statuses:
        wrong = int(errors["status"])
    f: dict[str, Any] = {
        "requests": requests,
        "seconds": round(seconds, 3),
        "requests_per_s": round(requests / seconds, 1) if seconds else None,
        "messages_per_request": load.messages,
        "connections": load.connections,
        "statuses": statuses,
        "non_2xx": wrong,
        "socket_errors": {k: int(v) for k, v in errors.items() if k != "status"},
        "server_cpu_s": round(total, 6),
        "server_cpu": round(total / seconds, 4) if seconds else None,
        "wrk_cpu": round(summary["wrk_cpu_s"] / seconds, 4) if seconds else None,
        "latency_ms": {k: round(float(v) / 1000, 3) for k, v in summary["latency_us"].items()},
    }
    for part, value in cpu.items():
        f[f"{part}_cpu_s"] = round(value, 6)
    counted, per_request = requests, cpu
    notes = []
    if "rounds" in summary:
        # the polls between two mid-round instants (see round_marks)
        rounds = summary["rounds"]
        counted, per_request = load.connections * rounds["rounds"], rounds["cpu_s"]
        f["rounds"] = rounds | {"requests": counted}
        if requests:
            f["cpu_us_per_request_whole_run"] = round(total / requests * 1e6, 2)
        # a connection's polls drift by their lateness, round after round (the mean), and
        # spread by its worst: the last reading must still fall between two rounds
        late = f["latency_ms"]["mean"] / 1000 - load.period
        worst = f["latency_ms"]["max"] / 1000 - load.period
        drift = (rounds["rounds"] + 1) * max(0.0, late) + max(0.0, worst) + ROUND_MARGIN
        f["rounds"]["drift_s"] = round(drift, 4)
        if drift > load.period / 2:
            notes.append(
                f"polls answered {late * 1000:.0f} ms late on average (at worst "
                f"{worst * 1000:.0f} ms): they may have left their rounds, CPU per request is "
                "approximate"
            )
    elif load.period:
        notes.append("too short for whole rounds: CPU over the whole run's requests")
    if counted:
        part_total = sum(per_request.values())
        f["cpu_us_per_request"] = round(part_total / counted * 1e6, 2)
        f["cpu_us_per_message"] = round(part_total / counted / load.messages * 1e6, 3)
        for part, value in per_request.items():
            f[f"{part}_cpu_us_per_request"] = round(value / counted * 1e6, 2)
    if "core_busy_s" in summary and seconds:
        f["server_core_busy"] = round(summary["core_busy_s"] / seconds, 4)
    complete = requests > 0
    if not requests:
        notes.append("no request completed")
    if wrong:
        complete = False
        notes.append(f"{wrong} answers were not 2xx: {statuses or errors}")
    broken = {k: v for k, v in f["socket_errors"].items() if v}
    if broken:
        complete = False
        notes.append(f"wrk socket errors: {broken}")
    # busy time of the server's core that was not the server's (nor Redis's)
    if "server_core_busy" in f:
        f["other_work_on_core"] = round(max(0.0, f["server_core_busy"] - f["server_cpu"]), 4)
    return f, notes, complete


# --- the run -----------------------------------------------------------------------------------


class Bench:
    def __init__(self, opts: Options, names: list[str], scenarios: list[str]) -> None:
        self.opts = opts
        self.scenarios = scenarios
        self.servers = [SERVER_CLASSES[n](opts) for n in names]
        self.runs: list[Run] = []
        self.warmups: list[dict[str, Any]] = []
        self.skipped: dict[str, dict[str, str]] = {}

    def start_all(self) -> None:
        for server in self.servers:
            _log(f"starting {server.name}")
            try:
                server.start()
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                server.error = f"could not start: {exc}"
                _log(f"{server.name}: {server.error}")
                server.stop()

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()

    def order(self, rep: int) -> list[Server]:
        """The servers in turn; every other round a pushsvc server and its baseline twin
        swap places, so neither always runs first."""
        servers = list(self.servers)
        if rep % 2:
            for i in range(len(servers) - 1):
                if servers[i + 1].name == servers[i].name + BASE:
                    servers[i], servers[i + 1] = servers[i + 1], servers[i]
        return servers

    def measure(self) -> None:
        """Scenario by scenario, ``--repeat`` rounds of every server in turn."""
        for scenario in self.scenarios:
            for rep in range(self.opts.repeat):
                for server in self.order(rep):
                    if server.error is not None:
                        continue
                    why = server.skip(scenario)
                    if why is not None:
                        self.skipped.setdefault(scenario, {})[server.name] = why
                        continue
                    run = self.measure_one(server, scenario, rep)
                    self.runs.append(run)
                    _log(f"{scenario:>9} {server.name:>20} #{rep + 1}: {_brief(run)}")

    def measure_one(self, server: Server, scenario: str, rep: int) -> Run:
        run = Run(server.name, scenario, rep + 1)
        try:
            load = server.load(scenario)
            method, url, headers, body = load.request()
            answer = server.client.request(method, url, headers=headers, content=body)
            problem = load.check(answer)
            if problem is not None:
                run.complete = False
                run.notes.append(f"check request failed: {problem}")
                return run
            if self.opts.warmup > 0:
                warm = run_wrk(self.opts, load, self.opts.warmup, server)
                self.warmups.append(
                    {"server": server.name, "scenario": scenario, "repeat": rep + 1}
                    | {k: warm[k] for k in ("requests", "errors", "statuses") if k in warm}
                )
            summary = run_wrk(self.opts, load, self.opts.duration, server)
        except (RuntimeError, OSError, httpx.HTTPError, subprocess.SubprocessError) as exc:
            run.complete = False
            run.notes.append(f"failed: {exc}")
            return run
        run.command = summary["command"]
        run.figures, notes, run.complete = figures(summary, load)
        run.notes += notes
        return run


def _brief(run: Run) -> str:
    f = run.figures
    if not f:
        return "; ".join(run.notes)
    text = (
        f"{f.get('requests_per_s', 0):,.0f} req/s, {f.get('cpu_us_per_request', 0):.1f} µs/request"
    )
    if f.get("redis_cpu_us_per_request") is not None:
        text += (
            f" (app {f['app_cpu_us_per_request']:.1f} + redis {f['redis_cpu_us_per_request']:.1f})"
        )
    text += f", server CPU {f['server_cpu']:.0%}, wrk CPU {f['wrk_cpu']:.0%}"
    if f.get("other_work_on_core"):
        text += f", other work on the server's core {f['other_work_on_core']:.0%}"
    return text + ("" if run.complete else " INCOMPLETE " + "; ".join(run.notes))


# --- the report ---------------------------------------------------------------------------------

MEDIAN_KEYS = (
    "requests_per_s",
    "cpu_us_per_request",
    "cpu_us_per_message",
    "app_cpu_us_per_request",
    "redis_cpu_us_per_request",
    "server_cpu",
    "wrk_cpu",
)


def summarize(bench: Bench) -> dict[str, dict[str, dict[str, Any]]]:
    """scenario -> server -> the medians over the repeats, times the floor, completeness, notes."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario in bench.scenarios:
        rows: dict[str, dict[str, Any]] = {}
        for server in bench.servers:
            runs = [r for r in bench.runs if r.server == server.name and r.scenario == scenario]
            if not runs:
                continue
            row: dict[str, Any] = {"runs": len(runs), "complete": all(r.complete for r in runs)}
            for key in MEDIAN_KEYS:
                values = [r.figures[key] for r in runs if r.figures.get(key) is not None]
                row[key] = round(statistics.median(values), 3) if values else None
            p50 = [r.figures["latency_ms"]["p50"] for r in runs if r.figures]
            p99 = [r.figures["latency_ms"]["p99"] for r in runs if r.figures]
            row["latency_p50_ms"] = statistics.median(p50) if p50 else None
            row["latency_p99_ms"] = statistics.median(p99) if p99 else None
            row["notes"] = sorted({n for r in runs for n in r.notes})
            wrk_cpu = max((r.figures.get("wrk_cpu") or 0 for r in runs), default=0)
            if wrk_cpu > SATURATED:
                row["notes"].append(f"wrk saturated ({wrk_cpu:.0%} of a core)")
            other = max((r.figures.get("other_work_on_core") or 0 for r in runs), default=0)
            if other > CONTENDED:
                row["notes"].append(
                    f"other work kept the server's core busy {min(other, 1.0):.0%} of the time"
                )
            rows[server.name] = row
        floor = rows.get("floor", {}).get("cpu_us_per_request")
        for row in rows.values():
            cpu = row.get("cpu_us_per_request")
            row["x_floor"] = round(cpu / floor, 2) if cpu and floor else None
        for name, row in rows.items():
            if name + BASE in rows:
                row.update(after_before(bench.runs, scenario, name, row, rows[name + BASE]))
        if scenario == "poll-idle":
            answered = out.get("poll", {})
            for name, row in rows.items():
                base = answered.get(name, {}).get("cpu_us_per_request")
                cpu = row.get("cpu_us_per_request")
                row["x_answered_poll"] = round(cpu / base, 2) if cpu and base else None
        out[scenario] = rows
    return out


def after_before(
    runs: list[Run], scenario: str, name: str, row: dict[str, Any], twin: dict[str, Any]
) -> dict[str, Any]:
    """pushsvc over its baseline twin: CPU per request (the medians') and requests/s, and
    CPU per request repeat by repeat (the two ran next to each other)."""

    def ratio(a: Any, b: Any, digits: int = 3) -> float | None:
        return round(a / b, digits) if a and b else None

    cpu: dict[tuple[str, int], float] = {
        (r.server, r.repeat): r.figures["cpu_us_per_request"]
        for r in runs
        if r.scenario == scenario and r.figures.get("cpu_us_per_request")
    }
    paired = [
        ratio(value, cpu.get((name + BASE, repeat)))
        for (server, repeat), value in sorted(cpu.items(), key=lambda kv: kv[0][1])
        if server == name
    ]
    return {
        "after_before": ratio(row.get("cpu_us_per_request"), twin.get("cpu_us_per_request")),
        "after_before_runs": [p for p in paired if p is not None],
        "after_before_requests_per_s": ratio(row.get("requests_per_s"), twin.get("requests_per_s")),
    }


TITLES = {
    "publish": "Single publishes: one {size}-byte JSON message per POST, no subscriber",
    "batch": "Batches: {batch} messages per POST",
    "poll": "Long-poll answered at once with one stored event",
    "poll-idle": "Idle long-poll: times out after {idle:g} s with no event",
}


def markdown(meta: dict[str, Any], bench: Bench, summary: dict[str, Any]) -> str:
    o = bench.opts
    out = ["# Request path: pushsvc beside the floor, Starlette and Nchan (wrk)", ""]
    out += [f"- command: `{meta['command']}`"]
    keys = ("started", "finished", "pinning", "machine", "python", "git", "wrk")
    out += report.meta_lines(meta, keys)
    out += [f"- pushsvc: {meta['pushsvc']}, {_commit(meta['pushsvc_checkout'])}"]
    if meta.get("baseline"):
        b = meta["baseline"]
        out += [f"- baseline (`{BASE}` rows): {b['python']} in {b['root']}, {_commit(b)}"]
    out += [
        f"- load average at start / end: {meta['load_average_at_start']} / "
        f"{meta['load_average_at_end']}",
        "",
    ]
    out += [
        f"wrk -t1, keep-alive, {o.duration} s measured after {o.warmup} s of warm-up"
        + (f", median of {o.repeat} interleaved runs" if o.repeat > 1 else "")
        + f"; {o.connections} connections ({o.idle_connections} for the idle poll). "
        "*CPU µs/request*: CPU time of the server's processes (Redis's included for "
        f"pushsvc-redis) during the wrk run over the requests wrk completed; *{TIMES} floor*: that "
        "over the floor's in the same scenario of this run."
        + (
            f" *after/before*: a pushsvc server's CPU µs/request over its `{BASE}` twin's (the "
            "same server run from the baseline checkout, measured in turn with the others in "
            "this run); below 1 the change saves CPU."
            if o.baseline_root is not None
            else ""
        ),
        "",
    ]
    for scenario in bench.scenarios:
        rows = summary.get(scenario, {})
        title = TITLES[scenario].format(size=len(MESSAGE), batch=BATCH, idle=o.idle_timeout)
        out += [f"## {scenario}: {title}", ""]
        head = ["server", "requests/s", "CPU µs/request"]
        if scenario == "batch":
            head.append("CPU µs/message")
        head.append(f"{TIMES} floor")
        if o.baseline_root is not None:
            head.append("after/before")
        head.append("notes")
        body = []
        for server in bench.servers:
            if server.error is not None:
                body.append([server.name, "—", "—"] + ["—"] * (len(head) - 4) + [server.error])
                continue
            row = rows.get(server.name)
            if row is None:
                why = bench.skipped.get(scenario, {}).get(server.name, "not run")
                body.append([server.name, "—", "—"] + ["—"] * (len(head) - 4) + [why])
                continue
            body.append(_row(server.name, row, scenario, o.baseline_root is not None))
        out += [*report.markdown_table(head, body), ""]
    out += _footer(bench)
    return "\n".join(out) + "\n"


def _num(value: Any, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _commit(checkout: dict[str, Any]) -> str:
    if not checkout.get("commit"):
        return "not a git checkout"
    return f"git {checkout['commit']}" + (" (dirty)" if checkout.get("dirty") else "")


def _row(name: str, row: dict[str, Any], scenario: str, baseline: bool) -> list[str]:
    notes = []
    if len(row.get("after_before_runs") or ()) > 1:
        paired = row["after_before_runs"]
        notes.append(f"after/before by repeat {min(paired):.2f} to {max(paired):.2f}")
    if row.get("redis_cpu_us_per_request") is not None:
        notes.append(
            f"app {_num(row['app_cpu_us_per_request'])} + Redis "
            f"{_num(row['redis_cpu_us_per_request'])} µs"
        )
    if row.get("x_answered_poll") is not None:
        notes.append(f"{row['x_answered_poll']:.2f}{TIMES} its answered poll")
    if row.get("latency_p50_ms") is not None:
        notes.append(f"p50 {row['latency_p50_ms']:.2f} ms, p99 {row['latency_p99_ms']:.2f} ms")
    if not row["complete"]:
        notes.insert(0, "**incomplete**")
    notes += row["notes"]
    cells = [name, _num(row["requests_per_s"], 0), _num(row["cpu_us_per_request"])]
    if scenario == "batch":
        cells.append(_num(row["cpu_us_per_message"], 2))
    cells.append("—" if row["x_floor"] is None else f"{row['x_floor']:.2f}")
    if baseline:
        ratio = row.get("after_before")
        cells.append("—" if ratio is None else f"**{ratio:.2f}**")
    cells.append("; ".join(notes))
    return cells


def _footer(bench: Bench) -> list[str]:
    out = ["Servers:", ""]
    for server in bench.servers:
        out.append(f"- {server.name}: {server.label}; {server.versions or server.error or ''}")
    incomplete = [f"{r.server} {r.scenario} #{r.repeat}" for r in bench.runs if not r.complete]
    out.append("")
    if incomplete:
        out.append("**Incomplete runs**: " + ", ".join(incomplete) + ".")
    else:
        out.append(
            "Every run was complete: every request answered 2xx (Nchan's idle poll: "
            "its timeout answer), no wrk socket error."
        )
    return out


def _log(message: str) -> None:
    click.echo(message, err=True)


# --- CLI -----------------------------------------------------------------------------------------


def _names(raw: str, allowed: tuple[str, ...], hint: str) -> list[str]:
    names = [s.strip() for s in raw.split(",") if s.strip()]
    unknown = [s for s in names if s not in allowed]
    if unknown or not names:
        raise click.BadParameter(f"choose from {', '.join(allowed)}", param_hint=hint)
    return [n for n in allowed if n in names]  # the table's order


def _default_root(python: str) -> Path:
    """The checkout a venv's interpreter belongs to (``<root>/.venv/bin/python``), when it
    holds pushsvc; else this one."""
    venv_root = Path(python).absolute().parent.parent.parent
    if (venv_root / "pushsvc" / "__init__.py").exists():
        return venv_root
    return REPO


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--servers", default=",".join(SERVERS), show_default=True, help="Comma-separated.")
@click.option(
    "--scenarios", default=",".join(SCENARIOS), show_default=True, help="Comma-separated."
)
@click.option(
    "-d",
    "--duration",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Seconds measured (whole seconds: wrk's -d).",
)
@click.option(
    "--warmup",
    default=1,
    show_default=True,
    type=click.IntRange(0),
    help="Seconds of wrk before each measured run (0: none).",
)
@click.option(
    "--repeat",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Measured runs per server and scenario, interleaved; the median is reported.",
)
@click.option("-c", "--connections", default=16, show_default=True, type=click.IntRange(1))
@click.option("--idle-connections", default=64, show_default=True, type=click.IntRange(1))
@click.option(
    "--idle-timeout",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.05, 25),
    help="poll-idle: the poll's timeout, seconds.",
)
@click.option(
    "--pushsvc-python",
    default=sys.executable,
    show_default="this interpreter",
    help="The interpreter that runs `-m pushsvc serve`.",
)
@click.option(
    "--pushsvc-root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="pushsvc's working directory (the checkout it imports). Default: the "
    "--pushsvc-python venv's checkout, else this one.",
)
@click.option(
    "--baseline-root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Another checkout (before the change): pushsvc-memory and pushsvc-redis each get a "
    f"twin run from it, NAME{BASE}, measured in turn with the others, and an after/before "
    "column.",
)
@click.option(
    "--baseline-python",
    show_default="--pushsvc-python",
    help="The interpreter that runs the baseline's `-m pushsvc serve` (its cwd and "
    "PYTHONPATH are --baseline-root).",
)
@click.option(
    "--wrk", default=lambda: shutil.which("wrk") or "/usr/bin/wrk", show_default="wrk on PATH"
)
@click.option("--no-pin", is_flag=True, help="Do not pin servers and wrk to cores.")
@click.option(
    "--out",
    "out_dir",
    default="bench-results/requests",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
def main(**params: Any) -> None:
    """The request path: wrk against pushsvc, the floor, Starlette and Nchan, one table."""
    names = _names(params["servers"], SERVERS, "--servers")
    scenarios = _names(params["scenarios"], SCENARIOS, "--scenarios")
    baseline_root: Path | None = params["baseline_root"]
    if baseline_root is not None:
        baseline_root = baseline_root.absolute()
        if not (baseline_root / "pushsvc" / "__init__.py").exists():
            raise click.BadParameter("not a pushsvc checkout", param_hint="--baseline-root")
        if not any(n.startswith("pushsvc-") for n in names):
            raise click.BadParameter(
                "a baseline needs pushsvc-memory or pushsvc-redis", param_hint="--servers"
            )
        # each pushsvc server's twin right after it
        names = [m for n in names for m in ([n, n + BASE] if n.startswith("pushsvc-") else [n])]
    elif params["baseline_python"]:
        raise click.BadParameter("needs --baseline-root", param_hint="--baseline-python")
    if not os.access(params["wrk"], os.X_OK):
        raise click.UsageError(f"wrk not found ({params['wrk']}): apt-get install wrk")
    out_dir: Path = params["out_dir"].absolute()
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    for old in (out_dir / "logs").glob("*.log"):
        old.unlink()
    cores = sorted(proc.affinity() or set())
    pin = not params["no_pin"] and len(cores) >= 2
    python = params["pushsvc_python"]
    opts = Options(
        duration=params["duration"],
        warmup=params["warmup"],
        repeat=params["repeat"],
        connections=params["connections"],
        idle_connections=params["idle_connections"],
        idle_timeout=params["idle_timeout"],
        pushsvc_python=python,
        pushsvc_root=(params["pushsvc_root"] or _default_root(python)).absolute(),
        wrk=params["wrk"],
        pin_server=cores[0] if pin else None,
        pin_gen=cores[1] if pin else None,
        out=out_dir,
        baseline_python=(params["baseline_python"] or python) if baseline_root else None,
        baseline_root=baseline_root,
    )
    if "poll-idle" in scenarios:
        period = max(opts.idle_timeout, nchan_idle_seconds(opts.idle_timeout) * ("nchan" in names))
        if opts.duration < 2 * period:
            raise click.BadParameter(
                f"at least twice the idle poll's timeout ({period:g} s) for poll-idle",
                param_hint="--duration",
            )
    proc.raise_fd_limit()
    meta = _meta(opts)
    bench = Bench(opts, names, scenarios)
    old_affinity = proc.affinity()
    if opts.pin_gen is not None:
        proc.pin(0, {opts.pin_gen})  # this script beside wrk, off the servers' core
    try:
        bench.start_all()
        bench.measure()
    finally:
        bench.stop_all()
        if old_affinity and opts.pin_gen is not None:
            proc.pin(0, old_affinity)
    meta["finished"] = report.utc_now()
    meta["load_average_at_end"] = report.load_average()
    meta["logs"] = _trim_logs(out_dir / "logs")
    summary = summarize(bench)
    write_outputs(out_dir, meta, bench, summary)
    if any(s.error for s in bench.servers) or any(not r.complete for r in bench.runs):
        sys.exit(1)


def _meta(opts: Options) -> dict[str, Any]:
    return {
        "command": "python benchmarks/peers/requests.py " + shlex.join(sys.argv[1:]),
        "started": report.utc_now(),
        "pinning": report.pinning(opts.pin_server, opts.pin_gen),
        "machine": report.machine(),
        "cpu_model": _cpu_model(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "git": report.git_describe(),
        "wrk": _run([opts.wrk, "--version"]).splitlines()[0],
        "pushsvc": f"{opts.pushsvc_python} in {opts.pushsvc_root}",
        "pushsvc_checkout": checkout(opts.pushsvc_python, opts.pushsvc_root),
        "baseline": (
            checkout(opts.baseline_python or opts.pushsvc_python, opts.baseline_root)
            if opts.baseline_root is not None
            else None
        ),
        "load_average_at_start": report.load_average(),
        "message_bytes": len(MESSAGE),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
    }


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return None


def _trim_logs(logs: Path, keep: int = 100) -> dict[str, dict[str, int]]:
    """Each server's log: its size and line count (pushsvc logs every request at its
    default level), then only its last ``keep`` lines are kept."""
    sizes: dict[str, dict[str, int]] = {}
    for log in sorted(logs.glob("*.log")):
        size = log.stat().st_size
        if size == 0:
            log.unlink()
            continue
        with log.open("rb") as f:
            lines = f.read().splitlines()
        sizes[log.name] = {"bytes": size, "lines": len(lines)}
        if len(lines) > keep:
            cut = f"[{len(lines) - keep} earlier lines cut by requests.py]".encode()
            log.write_bytes(b"\n".join([cut, *lines[-keep:]]) + b"\n")
    with contextlib.suppress(OSError):
        logs.rmdir()
    return sizes


def write_outputs(
    out_dir: Path, meta: dict[str, Any], bench: Bench, summary: dict[str, Any]
) -> None:
    doc = {
        "meta": meta,
        "summary": summary,
        "servers": [
            {
                "server": s.name,
                "label": s.label,
                "versions": s.versions,
                "error": s.error,
                "command": s.command,
                "environment": {
                    k: ("<hidden>" if k in ("PUSHSVC_SECRETS", "PUSHSVC_API_KEYS") else v)
                    for k, v in getattr(s, "env", {}).items()
                },
                "redis_command": s.redis_command if isinstance(s, Pushsvc) else None,
            }
            for s in bench.servers
        ],
        "skipped": bench.skipped,
        "runs": [r.as_dict() for r in bench.runs],
        "warmups": bench.warmups,
    }
    (out_dir / "requests.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    text = markdown(meta, bench, summary)
    (out_dir / "requests.md").write_text(text)
    click.echo(text)
    click.echo(f"wrote {out_dir / 'requests.json'}, {out_dir / 'requests.md'}")


if __name__ == "__main__":
    main()
