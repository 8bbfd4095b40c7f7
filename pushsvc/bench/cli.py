"""``pushsvc bench``: the load generator and its report."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pushsvc.__version__ import __version__
from pushsvc.auth import Authenticator
from pushsvc.bench import proc, report
from pushsvc.bench.scenarios import SCENARIOS, TRANSPORTS, Bench, Options, Phase
from pushsvc.bench.server import (
    ServerUnderTest,
    attach,
    delete_redis_prefix,
    is_loopback,
    spawn,
)

_SHORT = {"ws": "websocket", "poll": "long-polling", "longpoll": "long-polling"}


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
@click.option("--secret", envvar="PUSHSVC_SECRET", help="With --url: the token secret.")
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
def bench(
    scenarios: tuple[str, ...],
    url: str | None,
    spawn_backend: str | None,
    redis_url: str,
    secret: str | None,
    api_key: str | None,
    token: str | None,
    allow_remote: bool,
    transports: tuple[str, ...],
    subscribers: int,
    events: int,
    rate: float,
    duration: float,
    latency_subscribers: int | None,
    connections: int,
    idle_seconds: float,
    presence: bool,
    channel_size: int | None,
    token_per_connection: bool | None,
    missed: int,
    publishes: int,
    batch: int,
    publishers: int,
    payload_bytes: int,
    phase_timeout: float,
    heartbeat: float,
    no_pin: bool,
    out_dir: Path,
    no_progress: bool,
    no_plots: bool,
) -> None:
    """Measure a pushsvc server: SCENARIOS are fanout, latency, connections, idle (the
    transports' connections all at once), resume, publish (default: all).

    \b
      pushsvc bench --spawn memory fanout -n 1000 -k 300
      pushsvc bench --spawn redis latency -n 500 --rate 50 --duration 20
      pushsvc bench --url http://127.0.0.1:8000 --secret S --api-key K connections -c 2000
      pushsvc bench --spawn redis idle -c 10000
      pushsvc bench --spawn redis idle -c 10000 --presence

    Writes bench.json, bench.md and PNG plots to --out. Completeness is checked: every
    subscriber must receive every event exactly once.
    """
    chosen = (
        tuple(s for s in SCENARIOS if s in scenarios)
        if scenarios and "all" not in scenarios
        else SCENARIOS
    )
    if (url is None) == (spawn_backend is None):
        raise click.UsageError("give exactly one of --url and --spawn memory|redis")
    if url is not None:
        host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        if not allow_remote and not is_loopback(host):
            raise click.UsageError(
                f"{url} is not a loopback address: pass --allow-remote to load a remote server"
            )
        if not api_key:
            raise click.UsageError("--url needs --api-key (publishing) and --secret or --token")
        if not (secret or token):
            raise click.UsageError("--url needs --secret (to mint a token) or --token")
    if spawn_backend == "redis" and not allow_remote:
        rhost = redis_url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
        if not is_loopback(rhost.rsplit(":", 1)[0].strip("[]")):
            raise click.UsageError(f"--redis-url {redis_url} is not loopback (--allow-remote)")
    options = Options(
        transports=_transports(transports),
        subscribers=subscribers,
        events=events,
        rate=rate,
        duration=duration,
        latency_subscribers=latency_subscribers,
        connections=connections,
        idle_seconds=idle_seconds,
        presence=presence,
        channel_size=channel_size,
        token_per_connection=token_per_connection,
        missed=missed,
        publishes=publishes,
        batch=batch,
        publishers=publishers,
        payload_bytes=payload_bytes,
        phase_timeout=phase_timeout,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    show_progress = not no_progress and console.is_terminal
    _raise_fd_limit()

    # Pinning: the server on one core, the generator on another.
    cores = sorted(proc.affinity() or set())
    pin_server = pin_gen = None
    if spawn_backend is not None and not no_pin and len(cores) >= 2:
        pin_server, pin_gen = cores[0], cores[1]
    old_affinity = proc.affinity()
    extra_env = {"PUSHSVC_HEARTBEAT_INTERVAL": str(heartbeat)}
    if spawn_backend is not None:
        extra_env["PUSHSVC_RETENTION_MAX_LEN"] = str(max(10_000, missed + 1_000))
    log_path = out_dir / "server.log"
    spawned: list[ServerUnderTest] = []
    redis_prefix: list[str] = []

    def start_server() -> ServerUnderTest:
        assert spawn_backend is not None
        for old in spawned:
            old.stop()
        server = spawn(
            spawn_backend,
            redis_url=redis_url,
            cpu=pin_server,
            log_path=log_path,
            extra_env=extra_env,
            redis_prefix=redis_prefix[0] if redis_prefix else None,
            secret=spawned[0].secret if spawned else None,  # tokens stay valid
            api_key=spawned[0].api_key if spawned else None,
        )
        if server.redis_prefix and not redis_prefix:
            redis_prefix.append(server.redis_prefix)
        spawned.append(server)
        return server

    if spawn_backend is not None:
        if log_path.exists():
            log_path.unlink()
        server = start_server()
    else:
        assert url is not None and api_key is not None
        server = attach(url, api_key, secret)
    mint = None
    if server.secret is not None:
        authenticator = Authenticator((server.secret,), ())

        def mint(subject: str) -> str:
            """A subscriber's own token: its subject, presence on every channel."""
            return authenticator.issue(
                subject,
                subscribe=["*"],
                presence=("*",),
                info={"name": subject},
                ttl=24 * 3600,
            )

        if token is None:
            token = authenticator.issue(
                "pushsvc-bench", subscribe=["*"], publish=["*"], presence=("*",), ttl=24 * 3600
            )
    assert token is not None
    if pin_gen is not None:
        proc.pin(0, {pin_gen})

    meta: dict[str, Any] = {
        "command": "pushsvc bench " + shlex.join(_redacted_argv(_bench_args())),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "server": "spawned: python -m pushsvc serve" if spawn_backend else server.url,
        "backend": spawn_backend or "unknown (--url)",
        "pinning": (
            f"server on CPU {pin_server}, generator on CPU {pin_gen}"
            if pin_gen is not None
            else "none"
        ),
        "server_local": server.local,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_at_start": _loadavg(),
        "python": platform.python_version(),
        "pushsvc": __version__,
        "git": _git_describe(),
        "options": vars(options) | {"transports": list(options.transports)},
    }
    phases: list[Phase] = []
    try:
        with _progress_ui(show_progress, console) as progress:
            runner = Bench(
                server,
                token,
                options,
                progress=progress,
                respawn=start_server if spawn_backend is not None else None,
                mint=mint,
            )
            _run(runner, chosen, phases, console)
    finally:
        for s in spawned:
            s.stop()
        if old_affinity and pin_gen is not None:
            proc.pin(0, old_affinity)
        if redis_prefix:
            meta["redis_keys_deleted"] = delete_redis_prefix(redis_url, redis_prefix[0])

    meta["load_average_at_end"] = _loadavg()
    if log_path.exists() and log_path.stat().st_size == 0:
        log_path.unlink()  # the server logged nothing (warnings and errors go there)
    plots: list[str] = []
    if not no_plots:
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
    if any(not p.complete for p in phases):
        sys.exit(1)


def _run(runner: Bench, scenarios: tuple[str, ...], phases: list[Phase], console: Console) -> None:
    async def main() -> None:
        for _scenario, _transport, step in runner.plan(scenarios):
            started = time.perf_counter()
            phase = await step()
            phase.elapsed = time.perf_counter() - started
            phases.append(phase)

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as r:
        r.run(main())


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


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard)
            )


def _git_describe() -> str | None:
    """The commit of the pushsvc source tree the server runs from (dirty: local edits)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _loadavg() -> str | None:
    """The machine's 1/5/15-minute load averages: other work skews the figures."""
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    return None


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
