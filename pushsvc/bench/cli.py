"""``pushsvc bench``: the load generator and its report.

The command only reads and checks its options (``_settings``); ``_measure`` starts or
reaches the server, runs the scenarios (``Bench.plan``) and stops what it started;
``_write_report`` leaves the files. The token secret for ``--url`` is read as ``pushsvc
serve`` reads it, from ``PUSHSVC_SECRETS`` (the first signs); ``PUSHSVC_SECRET``, which
the bench read before, still works this release, with a warning on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import shlex
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pushsvc.__version__ import __version__
from pushsvc.auth import Authenticator
from pushsvc.bench import proc, report
from pushsvc.bench.scenarios import SCENARIOS, TRANSPORTS, Bench, Options, Phase
from pushsvc.bench.server import ServerUnderTest, Spawner, attach, is_loopback

_SHORT = {"ws": "websocket", "poll": "long-polling", "longpoll": "long-polling"}
DEPRECATED_SECRET_ENV = "PUSHSVC_SECRET"  # read as a fallback until the next release


def _transports(values: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for raw in values:
        for part in raw.split(","):
            name = _SHORT.get(part.strip(), part.strip())
            if name not in TRANSPORTS:
                raise click.BadParameter(f"{part!r}: one of {', '.join(TRANSPORTS)}, ws, poll")
            if name not in out:
                out.append(name)
    return tuple(out) or TRANSPORTS


@click.command()
@click.argument("scenarios", nargs=-1, type=click.Choice([*SCENARIOS, "all"]))
@click.option("--url", help="A running server (loopback unless --allow-remote).")
@click.option(
    "--spawn",
    "spawn_backend",
    type=click.Choice(["memory", "redis"]),
    help="Start a server for the run (python -m pushsvc serve on a free loopback port).",
)
@click.option(
    "--redis-url",
    default="redis://127.0.0.1:6379/0",
    show_default=True,
    envvar="PUSHSVC_BENCH_REDIS_URL",
    help="Redis for --spawn redis; the run uses a key prefix of its own and deletes it.",
)
@click.option(
    "--secret",
    envvar="PUSHSVC_SECRETS",
    help="With --url: the token secret (PUSHSVC_SECRETS, as for serve: the first signs).",
)
@click.option("--api-key", envvar="PUSHSVC_API_KEY", help="With --url: a publish API key.")
@click.option("--token", envvar="PUSHSVC_TOKEN", help="With --url: a token instead of --secret.")
@click.option("--allow-remote", is_flag=True, help="Allow a --url that is not loopback.")
@click.option(
    "-t",
    "--transport",
    "transports",
    multiple=True,
    help="websocket (ws), sse, long-polling (poll); repeat or comma-separate. Default: all.",
)
@click.option("-n", "--subscribers", default=100, show_default=True, help="fanout, latency.")
@click.option("-k", "--events", default=100, show_default=True, help="fanout: events.")
@click.option("--rate", default=20.0, show_default=True, help="latency: events/s.")
@click.option("--duration", default=5.0, show_default=True, help="latency: seconds.")
@click.option("--latency-subscribers", type=int, help="latency: subscribers (default -n).")
@click.option(
    "-c", "--connections", default=500, show_default=True, help="connections, idle (all at once)."
)
@click.option(
    "--idle-seconds", default=6.0, show_default=True, help="connections, idle: idle window."
)
@click.option(
    "--presence",
    is_flag=True,
    help="connections, idle: subscribe with presence (WebSocket flag, SSE/long-poll "
    "presence=1), each subscriber one presence connection.",
)
@click.option(
    "--channel-size",
    type=click.IntRange(min=1),
    help="connections, idle: subscribers per channel (default: one channel per transport; "
    "100 with --presence).",
)
@click.option(
    "--token-per-connection/--shared-token",
    default=None,
    help="connections, idle: each subscriber its own token and subject (default with "
    "--presence), or one token for all (default without).",
)
@click.option("-m", "--missed", default=5000, show_default=True, help="resume: missed events.")
@click.option("--publishes", default=2000, show_default=True, help="publish: messages per mode.")
@click.option("--batch", default=100, show_default=True, help="publish, resume: batch size.")
@click.option("--publishers", default=4, show_default=True, help="Publishing connections.")
@click.option(
    "--handshakes",
    default=3000,
    show_default=True,
    type=click.IntRange(min=1),
    help="handshakes: connections opened (each its own token and a subscribe).",
)
@click.option(
    "--handshake-concurrency",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="handshakes: connections opening at once.",
)
@click.option(
    "--storm-clients",
    default=10000,
    show_default=True,
    type=click.IntRange(min=1),
    help="storm: clients per transport that drop and reconnect at once.",
)
@click.option(
    "--storm-channels",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="storm: channels the clients are spread over.",
)
@click.option(
    "--storm-rate",
    default=20.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="storm: events/s published (all channels together) throughout.",
)
@click.option(
    "--storm-concurrency",
    default=500,
    show_default=True,
    type=click.IntRange(min=1),
    help="storm: connections (and reconnections) opening at once.",
)
@click.option(
    "--storm-timeout",
    default=120.0,
    show_default=True,
    help="storm: seconds from the drop until every client must have caught up.",
)
@click.option("--payload-bytes", default=64, show_default=True, help="Event payload size.")
@click.option(
    "--phase-timeout", default=120.0, show_default=True, help="Seconds; bounds every phase."
)
@click.option(
    "--heartbeat",
    default=5.0,
    show_default=True,
    help="--spawn: the server's heartbeat interval (idle connections get heartbeats).",
)
@click.option("--no-pin", is_flag=True, help="--spawn: do not pin server and generator.")
@click.option(
    "--out",
    "out_dir",
    default="bench-results",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option("--no-progress", is_flag=True, help="No progress bar (default when not a TTY).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
def bench(scenarios: tuple[str, ...], **params: Any) -> None:
    """Measure a pushsvc server: SCENARIOS are fanout, latency, connections, idle (the
    transports' connections all at once), resume, publish, handshakes (connections opened
    per second, each with its token), storm (every client drops and reconnects at once
    with its cursor) (default: all).

    \b
      pushsvc bench --spawn memory fanout -n 1000 -k 300
      pushsvc bench --spawn redis latency -n 500 --rate 50 --duration 20
      pushsvc bench --url http://127.0.0.1:8000 --secret S --api-key K connections -c 2000
      pushsvc bench --spawn redis idle -c 10000
      pushsvc bench --spawn redis idle -c 10000 --presence
      pushsvc bench --spawn memory handshakes -t ws,sse --handshakes 3000
      pushsvc bench --spawn memory storm -t ws,sse --storm-clients 10000

    Writes bench.json, bench.md and PNG plots to --out. Completeness is checked: every
    subscriber must receive every event exactly once.
    """
    run = _settings(scenarios, params)
    run.out_dir.mkdir(parents=True, exist_ok=True)
    proc.raise_fd_limit()
    meta, phases = _measure(run)
    _write_report(run, meta, phases)
    if any(not p.complete for p in phases):
        sys.exit(1)


@dataclass(frozen=True)
class _Run:
    """One ``pushsvc bench`` invocation, checked."""

    scenarios: tuple[str, ...]
    options: Options
    url: str | None
    spawn_backend: str | None
    redis_url: str
    secret: str | None
    api_key: str | None
    token: str | None
    heartbeat: float
    pin: bool
    out_dir: Path
    progress: bool
    plots: bool


_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(Options) if f.name != "transports")


def _settings(scenarios: tuple[str, ...], params: dict[str, Any]) -> _Run:
    """The command line's values, checked: a usage error names what is wrong."""
    url, spawn_backend = params["url"], params["spawn_backend"]
    secret = _secret(params["secret"]) if url is not None else params["secret"]
    _check_target(url, spawn_backend, secret, params)
    if spawn_backend == "redis" and not params["allow_remote"]:
        _check_redis_loopback(params["redis_url"])
    options = Options(
        transports=_transports(params["transports"]),
        **{name: params[name] for name in _OPTION_NAMES if name in params},
    )
    return _Run(
        scenarios=_scenarios(scenarios),
        options=options,
        url=url,
        spawn_backend=spawn_backend,
        redis_url=params["redis_url"],
        secret=secret,
        api_key=params["api_key"],
        token=params["token"],
        heartbeat=params["heartbeat"],
        pin=not params["no_pin"],
        out_dir=params["out_dir"],
        progress=not params["no_progress"],
        plots=not params["no_plots"],
    )


def _scenarios(given: tuple[str, ...]) -> tuple[str, ...]:
    if not given or "all" in given:
        return SCENARIOS
    return tuple(s for s in SCENARIOS if s in given)


def _secret(given: str | None) -> str | None:
    """The token secret for ``--url``: ``--secret`` or ``PUSHSVC_SECRETS`` (comma-separated,
    as ``pushsvc serve`` reads it: the first signs), else the deprecated ``PUSHSVC_SECRET``."""
    if given is None:
        old = os.environ.get(DEPRECATED_SECRET_ENV)
        if not old:
            return None
        click.echo(
            f"pushsvc bench: {DEPRECATED_SECRET_ENV} is deprecated and will be ignored in "
            "the next release: set PUSHSVC_SECRETS (as pushsvc serve reads it)",
            err=True,
        )
        return old
    signing = given.split(",")[0].strip()
    if not signing:
        raise click.BadParameter("empty secret", param_hint="--secret")
    return signing


def _check_target(
    url: str | None, spawn_backend: str | None, secret: str | None, params: dict[str, Any]
) -> None:
    if (url is None) == (spawn_backend is None):
        raise click.UsageError("give exactly one of --url and --spawn memory|redis")
    if url is None:
        return
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    if not params["allow_remote"] and not is_loopback(host):
        raise click.UsageError(
            f"{url} is not a loopback address: pass --allow-remote to load a remote server"
        )
    if not params["api_key"]:
        raise click.UsageError("--url needs --api-key (publishing) and --secret or --token")
    if not (secret or params["token"]):
        raise click.UsageError("--url needs --secret (to mint a token) or --token")


def _check_redis_loopback(redis_url: str) -> None:
    rhost = redis_url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    if not is_loopback(rhost.rsplit(":", 1)[0].strip("[]")):
        raise click.UsageError(f"--redis-url {redis_url} is not loopback (--allow-remote)")


def _measure(run: _Run) -> tuple[dict[str, Any], list[Phase]]:
    """Start (or reach) the server, run the scenarios, stop what was started: the run's
    metadata and its phases."""
    pin_server, pin_gen = _pinning(run)
    old_affinity = proc.affinity()
    spawner = _spawner(run, pin_server)
    if spawner is not None:
        server = spawner.start()
    else:
        assert run.url is not None and run.api_key is not None  # _check_target
        server = attach(run.url, run.api_key, run.secret)
    token, mint = _credentials(server, run.token)
    if pin_gen is not None:
        proc.pin(0, {pin_gen})
    meta = _meta(run, server, pin_server, pin_gen)
    phases: list[Phase] = []
    console = Console(stderr=True)
    try:
        with _progress_ui(run.progress and console.is_terminal, console) as progress:
            respawn = None if spawner is None else spawner.start
            runner = Bench(server, token, run.options, progress, respawn=respawn, mint=mint)
            _run(runner, run.scenarios, phases)
    finally:
        if spawner is not None:
            spawner.stop_servers()
        if old_affinity and pin_gen is not None:
            proc.pin(0, old_affinity)
        deleted = None if spawner is None else spawner.delete_redis_keys()
        if deleted is not None:
            meta["redis_keys_deleted"] = deleted
    meta["load_average_at_end"] = report.load_average()
    return meta, phases


def _pinning(run: _Run) -> tuple[int | None, int | None]:
    """A spawned server on one core, the generator on another (two cores at least)."""
    cores = sorted(proc.affinity() or set())
    if run.spawn_backend is not None and run.pin and len(cores) >= 2:
        return cores[0], cores[1]
    return None, None


def _spawner(run: _Run, cpu: int | None) -> Spawner | None:
    if run.spawn_backend is None:
        return None
    extra_env = {
        "PUSHSVC_HEARTBEAT_INTERVAL": str(run.heartbeat),
        "PUSHSVC_RETENTION_MAX_LEN": str(max(10_000, run.options.missed + 1_000)),
    }
    log_path = run.out_dir / "server.log"
    if log_path.exists():
        log_path.unlink()
    return Spawner(
        run.spawn_backend, redis_url=run.redis_url, cpu=cpu, log_path=log_path, extra_env=extra_env
    )


def _credentials(
    server: ServerUnderTest, token: str | None
) -> tuple[str, Callable[[str], str] | None]:
    """The bench's token (given, or minted with the server's secret) and, when the secret
    is known, a minter of subscribers' own tokens."""
    if server.secret is None:
        assert token is not None  # _check_target: --url needs --secret or --token
        return token, None
    authenticator = Authenticator((server.secret,), ())

    def mint(subject: str) -> str:
        """A subscriber's own token: its subject, presence on every channel."""
        return authenticator.issue(
            subject, subscribe=["*"], presence=("*",), info={"name": subject}, ttl=24 * 3600
        )

    if token is None:
        token = authenticator.issue(
            "pushsvc-bench", subscribe=["*"], publish=["*"], presence=("*",), ttl=24 * 3600
        )
    return token, mint


def _meta(
    run: _Run, server: ServerUnderTest, pin_server: int | None, pin_gen: int | None
) -> dict[str, Any]:
    options = run.options
    return {
        "command": "pushsvc bench " + shlex.join(_redacted_argv(_bench_args())),
        "started": report.utc_now(),
        "server": "spawned: python -m pushsvc serve" if run.spawn_backend else server.url,
        "backend": run.spawn_backend or "unknown (--url)",
        "pinning": report.pinning(pin_server, pin_gen),
        "server_local": server.local,
        "machine": report.machine(),
        "load_average_at_start": report.load_average(),
        "python": platform.python_version(),
        "pushsvc": __version__,
        "git": report.git_describe(),
        "options": vars(options) | {"transports": list(options.transports)},
    }


def _run(runner: Bench, scenarios: tuple[str, ...], phases: list[Phase]) -> None:
    """Run the scenarios' steps one after the other on the generator's event loop."""

    async def main() -> None:
        for _scenario, _transport, step in runner.plan(scenarios):
            started = time.perf_counter()
            phase = await step()
            phase.elapsed = time.perf_counter() - started
            phases.append(phase)

    with asyncio.Runner(loop_factory=proc.loop_factory()) as r:
        r.run(main())


def _write_report(run: _Run, meta: dict[str, Any], phases: list[Phase]) -> None:
    """bench.json, bench.md, the plots; the tables on stdout."""
    out_dir = run.out_dir
    log_path = out_dir / "server.log"
    if log_path.exists() and log_path.stat().st_size == 0:
        log_path.unlink()  # the server logged nothing (warnings and errors go there)
    plots: list[str] = []
    if run.plots:
        try:
            plots = report.plot(out_dir, phases)
        except ImportError as exc:
            meta["plots_skipped"] = (
                f"matplotlib is not installed ({exc}); pip install 'pushsvc[bench]'"
            )
    report.write_json(out_dir / "bench.json", meta, phases)
    (out_dir / "bench.md").write_text(report.markdown(meta, phases, plots))
    out_console = Console()
    if not out_console.is_terminal:
        out_console = Console(width=200)  # a log or a pipe: do not squeeze the tables
    report.print_table(phases, out_console)
    click.echo(
        f"wrote {out_dir / 'bench.json'}, {out_dir / 'bench.md'}"
        + "".join(f", {out_dir / p}" for p in plots)
    )


@contextlib.contextmanager
def _progress_ui(enabled: bool, console: Console) -> Any:
    if not enabled:
        yield None
        return
    progress = Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=4,
    )

    @contextlib.asynccontextmanager
    async def track(
        description: str, total: int, current: Callable[[], float]
    ) -> AsyncIterator[None]:
        task = progress.add_task(description, total=max(total, 1))

        async def tick() -> None:
            while True:
                progress.update(task, completed=current())
                await asyncio.sleep(0.25)

        ticker = asyncio.create_task(tick())
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            progress.update(task, completed=current())

    with progress:
        yield track


def _bench_args() -> list[str]:
    args = sys.argv[1:]
    return args[1:] if args[:1] == ["bench"] else args


def _redacted_argv(argv: list[str]) -> list[str]:
    out: list[str] = []
    hide = False
    for arg in argv:
        if hide:
            out.append("***")
            hide = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--secret", "--api-key", "--token"):
            if "=" in arg:
                out.append(name + "=***")
            else:
                out.append(arg)
                hide = True
            continue
        out.append(arg)
    return out
