"""pushsvc and its peers side by side, with the same load generator, in one run.

    python benchmarks/peers/compare.py --out benchmarks/results/comparison

For each server in ``--servers`` (default: all, in the order of the table): start it on a
free loopback port pinned to CPU 0 (the generator pins itself to CPU 1), run the fan-out
and latency scenarios on WebSocket (and SSE where the server has it), then the connections
scenario (a fresh process per transport, as ``pushsvc bench`` does), then, when asked
(``--scenarios``), the handshakes (connections opened per second; only pushsvc checks a
token, one per connection) and the storm (every client drops and reconnects at once, a
fresh process per transport; pushsvc and Nchan resume from the client's last ID, the
others cannot and report their reconnect time), stop it (by the pid this script
started), and go on to the next. Writes ``comparison.json`` (every figure of
every phase), ``comparison.md`` (the comparison table, then the detail tables) and
``comparison.png`` to ``--out``. Exits 1 when a phase was incomplete or a server could not
be run.

The servers (their code is in this folder; ``install.sh`` installs what they need):

- ``pushsvc``: ``python -m pushsvc serve`` as ``pushsvc bench --spawn redis`` starts it
  (Redis backend with a key prefix of the run's own, deleted at the end; every feature
  on; heartbeats every ``--heartbeat`` s); ``--backend memory`` for the in-process log;
- ``nchan``: nginx + Nchan 1.3.6, one worker (``nchan_serve.py``, ``nchan.conf.template``);
- ``websockets``: bare ``websockets`` with ``broadcast()`` (``websockets_broadcast.py``;
  publishing on a second port);
- ``socketio-node``: Socket.IO 4.8 on node (``socketio_node/server.js``);
- ``starlette``: bare Starlette on uvicorn, encode once, loop over sockets
  (``starlette_broadcast.py``);
- ``python-socketio``: python-socketio 5 on uvicorn (``python_socketio_app.py``).

How the generator talks to each: ``pushsvc.bench.dialects``. Every loop is bounded by a
count and by ``--phase-timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import click

from pushsvc.auth import Authenticator
from pushsvc.bench import proc, report
from pushsvc.bench.dialects import NCHAN, PUSHSVC_AS_PEER, Dialect, socketio
from pushsvc.bench.scenarios import CONTENDED, SATURATED, Bench, Options, Phase
from pushsvc.bench.server import ServerUnderTest, Spawner, free_port, spawn_command

HERE = Path(__file__).resolve().parent
SCENARIOS = ("fanout", "latency", "connections", "handshakes", "storm")
NODE_MODULES = HERE / "node" / "node_modules"


@dataclass
class Peer:
    name: str
    label: str
    # (port, publish port) -> (command, environment, the port /healthz answers on)
    command: Callable[[int, int], tuple[list[str], dict[str, str], int]] | None
    dialect: Callable[[int, int], Dialect]
    versions: Callable[[], str] = lambda: ""


def _pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (out.stdout + out.stderr).strip()


def _socketio_node_version() -> str:
    try:
        pkg = json.loads((NODE_MODULES / "socket.io" / "package.json").read_text())
    except OSError:
        return "socket.io not installed (benchmarks/peers/install.sh)"
    return f"socket.io {pkg['version']}, node {_run(['node', '--version'])}"


def _py(script: str) -> Callable[[int, int], tuple[list[str], dict[str, str], int]]:
    def command(port: int, publish_port: int) -> tuple[list[str], dict[str, str], int]:
        cmd = [sys.executable, str(HERE / script), "--host", "127.0.0.1", "--port", str(port)]
        if script == "websockets_broadcast.py":
            cmd += ["--publish-port", str(publish_port)]
            return cmd, {}, publish_port
        return cmd, {}, port

    return command


def _node(port: int, publish_port: int) -> tuple[list[str], dict[str, str], int]:
    node = shutil.which("node") or "node"
    cmd = [node, str(HERE / "socketio_node" / "server.js"), "--host", "127.0.0.1"]
    return [*cmd, "--port", str(port)], {"NODE_PATH": str(NODE_MODULES)}, port


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            "pushsvc",
            "pushsvc (this commit)",
            None,
            lambda port, pub: PUSHSVC_AS_PEER,
            lambda: f"pushsvc {_pkg('pushsvc')}, uvicorn {_pkg('uvicorn')}",
        ),
        Peer(
            "nchan",
            "Nchan (nginx module, C), 1 worker",
            _py("nchan_serve.py"),
            lambda port, pub: NCHAN,
            lambda: (
                _run(["nginx", "-v"])
                + ", libnginx-mod-nchan "
                + _run(["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-nchan"])
            ),
        ),
        Peer(
            "websockets",
            "bare websockets server with broadcast()",
            _py("websockets_broadcast.py"),
            lambda port, pub: Dialect("websockets", sse_path=None, publish_port=pub),
            lambda: f"websockets {_pkg('websockets')}",
        ),
        Peer(
            "socketio-node",
            "Socket.IO on node",
            _node,
            lambda port, pub: socketio("socketio-node"),
            _socketio_node_version,
        ),
        Peer(
            "starlette",
            "bare Starlette on uvicorn (websockets-sansio), encode once, loop",
            _py("starlette_broadcast.py"),
            lambda port, pub: Dialect("starlette"),
            lambda: f"starlette {_pkg('starlette')}, uvicorn {_pkg('uvicorn')}",
        ),
        Peer(
            "python-socketio",
            "python-socketio on uvicorn",
            _py("python_socketio_app.py"),
            lambda port, pub: socketio("python-socketio"),
            lambda: (
                f"python-socketio {_pkg('python-socketio')}, "
                f"python-engineio {_pkg('python-engineio')}, uvicorn {_pkg('uvicorn')}"
            ),
        ),
    )
}


@dataclass
class Result:
    peer: Peer
    phases: list[Phase] = field(default_factory=list)
    error: str | None = None
    versions: str = ""
    transports: tuple[str, ...] = ()

    def phase(self, scenario: str, transport: str) -> Phase | None:
        return next(
            (p for p in self.phases if p.scenario == scenario and p.transport == transport), None
        )


class Runner:
    """Starts, measures and stops one server after the other."""

    def __init__(self, opts: dict[str, Any], options: Options, out: Path) -> None:
        self.opts = opts
        self.options = options
        self.out = out
        self.cores = sorted(proc.affinity() or set())
        self.pin_server: int | None = None
        self.pin_gen: int | None = None
        if not opts["no_pin"] and len(self.cores) >= 2:
            self.pin_server, self.pin_gen = self.cores[0], self.cores[1]
        self.started: list[ServerUnderTest] = []
        # pushsvc, as `pushsvc bench --spawn` starts it; a restart keeps its credentials
        self.pushsvc = Spawner(
            opts["backend"],
            redis_url=opts["redis_url"],
            cpu=self.pin_server,
            log_path=out / "logs" / "pushsvc.log",
            extra_env={
                "PUSHSVC_HEARTBEAT_INTERVAL": str(opts["heartbeat"]),
                "PUSHSVC_RETENTION_MAX_LEN": "10000",
            },
        )

    # --- servers ---------------------------------------------------------------------------

    def start(self, peer: Peer) -> tuple[ServerUnderTest, Dialect]:
        self.stop()
        log = self.out / "logs" / f"{peer.name}.log"
        log.parent.mkdir(exist_ok=True)
        if peer.command is None:
            return self.pushsvc.start(), PUSHSVC_AS_PEER
        port, pub = free_port(), free_port()
        cmd, env, ready_port = peer.command(port, pub)
        server = spawn_command(
            cmd,
            port,
            cpu=self.pin_server,
            ready_port=ready_port,
            log_path=log,
            env=env,
            name=peer.name,
        )
        self.started.append(server)
        return server, peer.dialect(port, pub)

    def stop(self) -> None:
        self.pushsvc.stop_servers()
        for server in self.started:
            server.stop()
        self.started = []

    # --- one server --------------------------------------------------------------------------

    async def measure(self, peer: Peer) -> Result:
        result = Result(peer, versions=peer.versions())
        try:
            server, dialect = self.start(peer)
        except (RuntimeError, OSError) as exc:
            result.error = f"could not start: {exc}"
            return result
        try:
            bench = self._bench(peer, server, dialect)
            result.transports = tuple(t for t in self.options.transports if t in dialect.transports)
            for scenario, transport, run in self._steps(bench, result.transports):
                phase = await _run_phase(scenario, transport, run)
                result.phases.append(phase)
                _log(f"{peer.name:>16} {scenario}/{transport}: {_brief(phase)}")
        finally:
            self.stop()
        return result

    def _bench(self, peer: Peer, server: ServerUnderTest, dialect: Dialect) -> Bench:
        """The generator for ``server``; it restarts the server (a fresh process for each
        connections phase) as ``start`` does, pushsvc with the same credentials."""
        if server.secret is not None:  # pushsvc
            authenticator = Authenticator((server.secret,), ())
            token = authenticator.issue(
                "pushsvc-compare", subscribe=["*"], publish=["*"], ttl=24 * 3600
            )

            def mint(subject: str) -> str:
                """A client's own token (handshakes, storm: each one is checked)."""
                return authenticator.issue(subject, subscribe=["*"], ttl=24 * 3600)

            return Bench(
                server,
                token,
                self.options,
                respawn=self.pushsvc.start,
                dialect=dialect,
                mint=mint,
            )
        bench: Bench

        def respawn() -> ServerUnderTest:
            fresh, bench.dialect = self.start(peer)  # new ports: a new dialect
            return fresh

        bench = Bench(server, "unused", self.options, respawn=respawn, dialect=dialect)
        return bench

    def _steps(
        self, bench: Bench, transports: tuple[str, ...]
    ) -> list[tuple[str, str, Callable[[str], Awaitable[Phase]]]]:
        steps: list[tuple[str, str, Callable[[str], Awaitable[Phase]]]] = []
        for scenario, run in (
            ("fanout", bench.fanout),
            ("latency", bench.latency),
            ("connections", bench.connections),
            ("handshakes", bench.handshakes),
            ("storm", bench.storm),
        ):
            if scenario in self.opts["scenarios"]:
                steps += [(scenario, t, run) for t in transports]
        return steps


async def _run_phase(
    scenario: str, transport: str, run: Callable[[str], Awaitable[Phase]]
) -> Phase:
    """One phase; a server that failed under it gives an incomplete phase saying how."""
    started = time.perf_counter()
    try:
        phase = await run(transport)
    except (OSError, RuntimeError) as exc:
        phase = Phase(scenario, transport, {}, complete=False)
        phase.notes.append(f"failed: {exc!r}")
    phase.elapsed = time.perf_counter() - started
    return phase


# --- report ------------------------------------------------------------------------------------


def _brief(p: Phase) -> str:
    f = p.figures
    parts = []
    for key in (
        "server_cpu_us_per_delivery",
        "deliveries_per_s",
        "p99_ms",
        "server_rss_kib_per_connection",
        "handshakes_per_s",
        "server_cpu_us_per_handshake",
        "time_to_reconnected_s",
        "time_to_caught_up_s",
        "server_cpu_us_per_reconnect",
        "lost",
        "duplicated",
        "missed_without_resume",
    ):
        if f.get(key) is not None:
            parts.append(f"{key}={f[key]}")
    gen = "-" if p.generator_cpu is None else f"{p.generator_cpu:.0%}"
    srv = "-" if p.server_cpu is None else f"{p.server_cpu:.0%}"
    ok = "ok" if p.complete else "INCOMPLETE " + "; ".join(p.notes[:2])
    return f"{', '.join(parts)} server CPU {srv}, generator CPU {gen}, {ok}"


def _cell(p: Phase | None, key: str, unit: str, digits: int = 1) -> str:
    if p is None:
        return "—"
    value = p.figures.get(key)
    if value is None:
        return "failed" if not p.complete else "—"
    text = f"{value:,.{digits}f} {unit}"
    if not p.complete:
        text += " (incomplete)"
    if p.saturated:
        text += " (generator saturated)"
    return text


COLUMNS = [
    ("fanout", "websocket", "server_cpu_us_per_delivery", "µs", "WS fan-out: server CPU/event"),
    ("fanout", "sse", "server_cpu_us_per_delivery", "µs", "SSE fan-out: server CPU/event"),
    ("latency", "websocket", "first_p50_ms", "ms", "WS first subscriber p50"),
    ("latency", "websocket", "p99_ms", "ms", "WS p99 publish→receive"),
    ("latency", "sse", "first_p50_ms", "ms", "SSE first subscriber p50"),
    ("latency", "sse", "p99_ms", "ms", "SSE p99 publish→receive"),
    ("connections", "websocket", "server_rss_kib_per_connection", "KiB", "idle RSS per WS"),
    ("connections", "sse", "server_rss_kib_per_connection", "KiB", "idle RSS per SSE"),
]


# handshakes, storm: in the summary when they ran
SUMMARY_KEYS = (
    ("handshakes", "handshakes_per_s"),
    ("handshakes", "handshake_p99_ms"),
    ("handshakes", "server_cpu_us_per_handshake"),
    ("storm", "resumed"),
    ("storm", "time_to_reconnected_s"),
    ("storm", "time_to_caught_up_s"),
    ("storm", "lost"),
    ("storm", "duplicated"),
    ("storm", "missed_without_resume"),
    ("storm", "server_cpu_us_per_reconnect"),
    ("storm", "server_rss_peak_mib"),
)


def summary(results: list[Result]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        row: dict[str, Any] = {"server": r.peer.name, "label": r.peer.label, "error": r.error}
        for scenario, transport, key, _unit, _title in COLUMNS:
            p = r.phase(scenario, transport)
            row[f"{scenario}_{transport}_{key}"] = None if p is None else p.figures.get(key)
            row[f"{scenario}_{transport}_complete"] = None if p is None else p.complete
        for transport in ("websocket", "sse"):
            for scenario, key in SUMMARY_KEYS:
                p = r.phase(scenario, transport)
                if p is not None:
                    row[f"{scenario}_{transport}_{key}"] = p.figures.get(key)
                    row[f"{scenario}_{transport}_complete"] = p.complete
            p = r.phase("fanout", transport)
            row[f"fanout_{transport}_deliveries_per_s"] = (
                None if p is None else p.figures.get("deliveries_per_s")
            )
            row[f"fanout_{transport}_generator_cpu"] = None if p is None else p.generator_cpu
            row[f"fanout_{transport}_generator_cpu_us_per_delivery"] = (
                None if p is None else p.figures.get("generator_cpu_us_per_delivery")
            )
        rows.append(row)
    return rows


_META_KEYS = (
    "started",
    "finished",
    "pinning",
    "machine",
    "python",
    "git",
    "pushsvc_backend",
    "load_average_at_start",
    "load_average_at_end",
)

_GLOSSARY = (
    "*lost*: events a subscriber had not received when its phase ended; *dup*: "
    "events received twice; *server CPU* and *generator CPU*: fraction of one core "
    "over the measured part. Latency runs, for every server pushsvc included, from the "
    "generator's clock right before it sent the publish request (written into the "
    "payload, `@<ms>-<seq>@`) to the receive wall clock; completeness counts distinct "
    "sequence numbers per subscriber."
)


def markdown(meta: dict[str, Any], results: list[Result], plot: str | None) -> str:
    """``comparison.md``: the run, the comparison table, the detail tables per scenario,
    the generator's load and the completeness."""
    out = ["# pushsvc and its peers, side by side", "", f"- command: `{meta['command']}`"]
    out += report.meta_lines(meta, _META_KEYS)
    ran = {p.scenario for r in results for p in r.phases}
    out += ["", _method(meta["options"], ran), ""]
    out += _comparison_table(results, ran)
    out += _connection_tables(results, ran)
    out += ["", "Versions:", ""]
    out += [f"- {r.peer.name}: {r.versions}" for r in results]
    out.append("")
    if plot:
        out += [f"![comparison]({plot})", ""]
    out += [_GLOSSARY, ""]
    for scenario in ("fanout", "latency", "connections", "handshakes", "storm"):
        out += _details(results, scenario)
    out += _generator_and_completeness(results)
    return "\n".join(out) + "\n"


def _method(o: dict[str, Any], ran: set[str]) -> str:
    parts = []
    if ran & set(CLASSIC) or not ran:
        parts.append(
            f"Fan-out: {o['subscribers']:,} subscribers x {o['events']:,} events on one "
            f"channel, published over {o['fanout_inflight']} connection(s), each sending its "
            "next event as soon as its previous publish was answered; "
            "server CPU per delivered event. Latency: "
            f"{o['latency_subscribers']:,} subscribers, {o['rate']:g} events/s for "
            f"{o['duration']:g} s, p99 of publish → receive. Idle connections: "
            f"{o['connections']:,} per transport on a fresh server process, server RSS growth "
            "per connection."
        )
    if "handshakes" in ran:
        parts.append(
            f"Handshakes: {o['handshakes']:,} connections per transport, "
            f"{o['handshake_concurrency']} opening at once, each until subscribed (pushsvc: "
            "its own token, checked, and a subscribe frame or the SSE `subscribed` event; "
            "the peers check no token: the upgrade or the response headers subscribe)."
        )
    if "storm" in ran:
        parts.append(
            f"Storm: {o['storm_clients']:,} clients per transport on {o['storm_channels']} "
            f"channels, {o['storm_rate']:g} events/s published throughout; every client "
            "drops its connection at once (a reset) and reconnects at once "
            f"({o['storm_concurrency']} opening at a time) from its last ID where the server "
            "can resume (pushsvc: its cursor; Nchan: its message ID, `Last-Event-ID` on SSE, "
            "`last_event_id` with `ws+meta.nchan` on WebSocket); fresh server process."
        )
    parts.append(
        "Same load generator (`pushsvc.bench`, raw asyncio clients) for "
        "every server; '—': the server has no such transport."
    )
    return " ".join(parts)


CLASSIC = ("fanout", "latency", "connections")


def _comparison_table(results: list[Result], ran: set[str]) -> list[str]:
    """Fan-out, latency, idle connections: the columns of the scenarios that ran."""
    columns = [c for c in COLUMNS if c[0] in ran]
    if not columns and ran:
        return []
    if not ran:
        columns = COLUMNS
    fan = "fanout" in ran or not ran
    head = ["server", *[c[4] for c in columns]]
    if fan:
        head += ["WS fan-out deliveries/s", "generator CPU (WS fan-out)"]
    body = []
    for r in results:
        if r.error:
            body.append([r.peer.label, r.error] + [""] * (len(head) - 2))
            continue
        cells = [_cell(r.phase(s, t), k, u) for s, t, k, u, _ in columns]
        extra = _fanout_cells(r.phase("fanout", "websocket")) if fan else []
        body.append([r.peer.label, *cells, *extra])
    return report.markdown_table(head, body)


def _connection_tables(results: list[Result], ran: set[str]) -> list[str]:
    """Handshakes (one row per server) and storms (one per server and transport)."""
    out: list[str] = []
    if "handshakes" in ran:
        head = ["server", "token checked"]
        for t in ("WS", "SSE"):
            head += [f"{t} handshakes/s", f"{t} p50 / p99 ms", f"{t} server CPU/handshake"]
        body = []
        for r in results:
            if r.error:
                continue
            row = [r.peer.label, "yes, one per connection" if r.peer.name == "pushsvc" else "no"]
            for t in ("websocket", "sse"):
                row += _handshake_cells(r.phase("handshakes", t))
            body.append(row)
        out += ["", "### Handshakes", "", *report.markdown_table(head, body)]
    if "storm" in ran:
        head = [
            "server, transport",
            "resume",
            "all reconnected",
            "all caught up",
            "lost / dup",
            "server CPU/reconnect",
            "server peak RSS",
            "generator CPU",
        ]
        body = [
            [f"{r.peer.name} {p.transport}", *_storm_cells(p)]
            for r in results
            for p in r.phases
            if p.scenario == "storm"
        ]
        out += ["", "### Connection storm", "", *report.markdown_table(head, body)]
    return out


def _handshake_cells(p: Phase | None) -> list[str]:
    if p is None:
        return ["—", "—", "—"]
    f = p.figures
    rate = _cell(p, "handshakes_per_s", "/s", 0)
    lat = "—"
    if f.get("handshake_p50_ms") is not None:
        lat = f"{f['handshake_p50_ms']:.0f} / {f['handshake_p99_ms']:.0f}"
    return [rate, lat, _cell(p, "server_cpu_us_per_handshake", "µs", 0)]


def _storm_cells(p: Phase) -> list[str]:
    f = p.figures
    resumed = bool(f.get("resumed"))
    if resumed:
        lost = f"{f.get('lost')} / {f.get('duplicated')}" if f.get("lost") is not None else "—"
        caught = _cell(p, "time_to_caught_up_s", "s", 2)
    else:
        missed = f.get("missed_without_resume")
        lost = "no resume" + (f" ({missed:,} missed)" if missed is not None else "")
        caught = "no resume"
    gen = "—" if p.generator_cpu is None else f"{p.generator_cpu:.0%}"
    return [
        "yes" if resumed else "no",
        _cell(p, "time_to_reconnected_s", "s", 2),
        caught,
        lost,
        _cell(p, "server_cpu_us_per_reconnect", "µs", 0),
        _cell(p, "server_rss_peak_mib", "MiB", 0),
        gen,
    ]


def _fanout_cells(fan: Phase | None) -> list[str]:
    """The WebSocket fan-out's deliveries/s and the generator's CPU for it."""
    if fan is None:
        return ["—", "—"]
    rate = _fmt_num(fan.figures.get("deliveries_per_s"))
    gen = "—"
    if fan.generator_cpu is not None:
        per = fan.figures.get("generator_cpu_us_per_delivery")
        gen = f"{fan.generator_cpu:.0%} of a core" + (f", {per:.1f} µs/event" if per else "")
    return [rate, gen]


def _details(results: list[Result], scenario: str) -> list[str]:
    """A scenario's detail table, one row per server and transport, and its notes."""
    named = [
        dataclasses.replace(p, transport=f"{r.peer.name} {p.transport}")
        for r in results
        for p in r.phases
        if p.scenario == scenario
    ]
    if not named:
        return []
    head, body = report.rows(named, scenario)
    head[0] = "server, transport"
    out = [f"## {scenario}", "", *report.markdown_table(head, body)]
    notes = [f"{p.transport}: {n}" for p in named for n in p.notes]
    if notes:
        out.append("")
        out.extend(f"- {n}" for n in notes)
    out.append("")
    return out


def _generator_and_completeness(results: list[Result]) -> list[str]:
    phases = [(r.peer.name, p) for r in results for p in r.phases]
    saturated = [f"{name} {p.scenario}/{p.transport}" for name, p in phases if p.saturated]
    incomplete = [f"{name} {p.scenario}/{p.transport}" for name, p in phases if not p.complete]
    out = ["## Load generator and completeness", ""]
    if saturated:
        out.append(report.saturated_sentence(saturated))
    else:
        out.append(f"The generator stayed below {SATURATED:.0%} of a core in every phase.")
    out += ["", _contention(phases), ""]
    if incomplete:
        out.append("**Incomplete phases**: " + ", ".join(incomplete) + " (see the notes above).")
    else:
        out.append("Every phase was complete: no event lost or duplicated.")
    failed = [f"{r.peer.name}: {r.error}" for r in results if r.error]
    if failed:
        out += ["", "**Not run**: " + "; ".join(failed)]
    return out


def _contention(phases: list[tuple[str, Phase]]) -> str:
    """Which phases shared the server's core with other work (RSS does not depend on it:
    connections phases are left out)."""
    contended = [
        f"{name} {p.scenario}/{p.transport} ({p.server_core_busy:.0%} busy, "
        f"server {p.server_cpu or 0:.0%})"
        for name, p in phases
        if p.scenario != "connections"
        and p.server_core_busy is not None
        and p.server_core_busy - (p.server_cpu or 0.0) > CONTENDED
    ]
    if contended:
        return (
            "**Other work competed with the server on its core** (busy time that was not the "
            "server's above " + f"{CONTENDED:.0%}) in: " + ", ".join(contended) + ". Latency "
            "and rates there are pessimistic; rerun on a quiet machine."
        )
    return (
        "No phase saw other work on the server's core above "
        f"{CONTENDED:.0%} of it (column *server core busy* in comparison.json)."
    )


def _fmt_num(value: Any) -> str:
    return "—" if value is None else f"{value:,.0f}"


PANELS = [
    ("fanout", "server_cpu_us_per_delivery", "fan-out: server CPU µs per delivered event"),
    ("latency", "p99_ms", "p99 publish → receive, ms"),
    ("connections", "server_rss_kib_per_connection", "idle server RSS KiB per connection"),
    ("handshakes", "server_cpu_us_per_handshake", "server CPU µs per handshake"),
    ("storm", "time_to_reconnected_s", "storm: s from the drop until all reconnected"),
]


def plot(out: Path, results: list[Result]) -> str | None:
    """``comparison.png``: a panel per scenario that ran (None: none has a panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = {p.scenario for r in results for p in r.phases}
    panels = [panel for panel in PANELS if panel[0] in ran]
    if not panels:
        return None
    names = [r.peer.name for r in results]
    fig, grid = plt.subplots(
        1, len(panels), figsize=(5 * len(panels), 0.55 * len(names) + 2.2), squeeze=False
    )
    axes = grid[0]
    height = 0.38
    for ax, (scenario, key, title) in zip(axes, panels, strict=True):
        for j, (transport, color) in enumerate((("websocket", "#4477aa"), ("sse", "#cc6677"))):
            ys = [i + (j - 0.5) * height for i in range(len(names))]
            values = []
            for r in results:
                p = r.phase(scenario, transport)
                value = None if p is None else p.figures.get(key)
                values.append(float(value) if value else (1e-3 if scenario == "latency" else 0.0))
            bars = ax.barh(ys, values, height=height, color=color, label=transport)
            for bar, v, r in zip(bars, values, results, strict=True):
                p = r.phase(scenario, transport)
                if p is None:
                    continue
                text = f"{v:.3g}" + ("" if p.complete else " (incomplete)")
                ax.annotate(
                    text,
                    (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    xytext=(3, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=8,
                )
        if scenario == "latency":
            ax.set_xscale("log")  # tens of ms to seconds
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        ax.margins(x=0.25)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("pushsvc and its peers (server pinned to one core; lower is better)")
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=110)
    plt.close(fig)
    return "comparison.png"


def _log(message: str) -> None:
    click.echo(message, err=True)


# --- CLI -----------------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--servers",
    default=",".join(PEERS),
    show_default=True,
    help="Comma-separated: " + ", ".join(PEERS) + ".",
)
@click.option(
    "--scenarios",
    default="fanout,latency,connections",
    show_default=True,
    help="Comma-separated subset of " + ", ".join(SCENARIOS) + ".",
)
@click.option("-t", "--transports", default="websocket,sse", show_default=True)
@click.option("-n", "--subscribers", default=1000, show_default=True, help="fanout subscribers.")
@click.option("-k", "--events", default=300, show_default=True, help="fanout events.")
@click.option("--latency-subscribers", default=500, show_default=True)
@click.option("--rate", default=50.0, show_default=True, help="latency: events/s.")
@click.option("--duration", default=20.0, show_default=True, help="latency: seconds.")
@click.option("-c", "--connections", default=2000, show_default=True, help="idle connections.")
@click.option("--idle-seconds", default=6.0, show_default=True)
@click.option("--handshakes", default=3000, show_default=True, help="handshakes: connections.")
@click.option(
    "--handshake-concurrency", default=100, show_default=True, help="handshakes: at once."
)
@click.option("--storm-clients", default=10000, show_default=True, help="storm: clients.")
@click.option("--storm-channels", default=10, show_default=True, help="storm: channels.")
@click.option("--storm-rate", default=20.0, show_default=True, help="storm: events/s.")
@click.option(
    "--storm-concurrency", default=500, show_default=True, help="storm: (re)connecting at once."
)
@click.option(
    "--storm-timeout", default=120.0, show_default=True, help="storm: seconds to catch up."
)
@click.option("--payload-bytes", default=64, show_default=True)
@click.option(
    "--fanout-inflight",
    default=4,
    show_default=True,
    help="fanout: publishes in flight (a peer answers a publish after its fan-out).",
)
@click.option("--publishers", default=4, show_default=True, help="latency: publishing connections.")
@click.option(
    "--phase-timeout", default=120.0, show_default=True, help="Seconds; bounds each phase."
)
@click.option(
    "--backend",
    type=click.Choice(["redis", "memory"]),
    default="redis",
    show_default=True,
    help="pushsvc's backend (as pushsvc bench --spawn).",
)
@click.option(
    "--redis-url",
    default="redis://127.0.0.1:6379/0",
    show_default=True,
    envvar="PUSHSVC_BENCH_REDIS_URL",
)
@click.option("--heartbeat", default=5.0, show_default=True, help="pushsvc's heartbeat interval.")
@click.option("--no-pin", is_flag=True, help="Do not pin server and generator to cores.")
@click.option("--no-plots", is_flag=True)
@click.option(
    "--out",
    "out_dir",
    default="bench-results/comparison",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
def main(**params: Any) -> None:
    """pushsvc and its peers side by side: one run, one table (JSON, Markdown, PNG)."""
    chosen, options, opts = _settings(params)
    out_dir: Path = params["out_dir"]
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = out_dir / "logs"
    if logs.exists():
        for old in logs.glob("*.log"):
            old.unlink()
    proc.raise_fd_limit()  # the spawned servers inherit it
    runner = Runner(opts, options, out_dir)
    meta = _meta(runner, options)
    results = _measure_all(runner, chosen, meta)
    meta["finished"] = report.utc_now()
    meta["load_average_at_end"] = report.load_average()
    for log in logs.glob("*.log"):
        if log.stat().st_size == 0:
            log.unlink()
    with contextlib.suppress(OSError):
        logs.rmdir()  # nothing was logged
    _write_outputs(out_dir, meta, results, plots=not params["no_plots"])
    if any(r.error for r in results) or any(not p.complete for r in results for p in r.phases):
        sys.exit(1)


def _settings(params: dict[str, Any]) -> tuple[list[str], Options, dict[str, Any]]:
    """The servers to run, the generator's options and the runner's, checked."""
    chosen = [s.strip() for s in params["servers"].split(",") if s.strip()]
    unknown = [s for s in chosen if s not in PEERS]
    if unknown:
        raise click.BadParameter(f"unknown: {', '.join(unknown)}", param_hint="--servers")
    scen = tuple(s.strip() for s in params["scenarios"].split(",") if s.strip())
    if not set(scen) <= set(SCENARIOS):
        raise click.BadParameter(", ".join(SCENARIOS), param_hint="--scenarios")
    trans = tuple(
        {"ws": "websocket"}.get(t.strip(), t.strip()) for t in params["transports"].split(",")
    )
    if not set(trans) <= {"websocket", "sse"}:
        raise click.BadParameter("websocket, sse", param_hint="--transports")
    names = (
        *("subscribers", "events", "latency_subscribers", "rate", "duration"),
        *("connections", "idle_seconds", "payload_bytes", "publishers", "phase_timeout"),
        *("handshakes", "handshake_concurrency", "storm_clients", "storm_channels"),
        *("storm_rate", "storm_concurrency", "storm_timeout"),
    )
    options = Options(
        transports=trans,
        fanout_inflight=params["fanout_inflight"],
        **{name: params[name] for name in names},
    )
    runner_keys = ("backend", "redis_url", "heartbeat", "no_pin")
    return chosen, options, {k: params[k] for k in runner_keys} | {"scenarios": scen}


def _meta(runner: Runner, options: Options) -> dict[str, Any]:
    return {
        "command": "python benchmarks/peers/compare.py " + shlex.join(sys.argv[1:]),
        "started": report.utc_now(),
        "pinning": report.pinning(runner.pin_server, runner.pin_gen),
        "machine": report.machine(),
        "python": platform.python_version(),
        "git": report.git_describe(),
        "pushsvc_backend": runner.opts["backend"],
        "scenarios": list(runner.opts["scenarios"]),
        "load_average_at_start": report.load_average(),
        "options": vars(options) | {"transports": list(options.transports)},
    }


def _measure_all(runner: Runner, chosen: list[str], meta: dict[str, Any]) -> list[Result]:
    """Each server in turn, the generator pinned to its core; everything started is
    stopped and the run's Redis keys deleted, whatever happens."""
    results: list[Result] = []

    async def run_all() -> None:
        for name in chosen:
            _log(f"--- {name}")
            results.append(await runner.measure(PEERS[name]))

    old_affinity = proc.affinity()
    if runner.pin_gen is not None:
        proc.pin(0, {runner.pin_gen})
    try:
        with asyncio.Runner(loop_factory=proc.loop_factory()) as r:
            r.run(run_all())
    finally:
        runner.stop()
        if old_affinity and runner.pin_gen is not None:
            proc.pin(0, old_affinity)
        deleted = runner.pushsvc.delete_redis_keys()
        if deleted is not None:
            meta["redis_keys_deleted"] = deleted
    return results


def _write_outputs(out_dir: Path, meta: dict[str, Any], results: list[Result], plots: bool) -> None:
    """comparison.json, comparison.md, comparison.png; the table on stdout."""
    plot_name = None
    if plots:
        try:
            plot_name = plot(out_dir, results)
        except ImportError as exc:
            meta["plots_skipped"] = f"matplotlib is not installed ({exc})"
    doc = {
        "meta": meta,
        "summary": summary(results),
        "servers": [
            {
                "server": r.peer.name,
                "label": r.peer.label,
                "versions": r.versions,
                "error": r.error,
                "transports": list(r.transports),
                "phases": [p.as_dict() for p in r.phases],
            }
            for r in results
        ],
    }
    (out_dir / "comparison.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    text = markdown(meta, results, plot_name)
    (out_dir / "comparison.md").write_text(text)
    click.echo(text.split("\nVersions:")[0])
    click.echo(
        f"wrote {out_dir / 'comparison.json'}, {out_dir / 'comparison.md'}"
        + (f", {out_dir / plot_name}" if plot_name else "")
    )


if __name__ == "__main__":
    main()
