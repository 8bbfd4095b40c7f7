"""The ``pushsvc`` command: ``serve``, ``publish``, ``subscribe``, ``token``, ``check``, ``bench``.

Every ``serve`` flag is also a ``PUSHSVC_*`` environment variable named after the
``Settings`` field it sets (lists comma-separated); settings without a flag are read from
the environment by ``Settings.from_env``.

``serve`` runs uvicorn through ``pushsvc.server.run`` (its lean protocols, no
permessage-deflate, sessions closed as soon as the shutdown starts: see that module).
With ``--workers N`` uvicorn's own worker processes run ``pushsvc.app:app_from_env`` with
the settings passed in the environment; there the wait for open streams at shutdown is
bounded by ``--graceful-timeout`` instead.

``bench`` is imported only when invoked: it needs the ``[bench]`` extra (rich, httptools,
matplotlib), which serving does not.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pushsvc.__version__ import __version__
from pushsvc.exceptions import ConfigError
from pushsvc.settings import Settings

if TYPE_CHECKING:
    import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TRANSPORTS = ("websocket", "sse", "long-polling")


class CommaList(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """A ``multiple=True`` option whose environment variable is comma-separated."""

    name = "text"
    envvar_list_splitter = ","

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return str(value).strip()


# commands imported when invoked, with their one-line help: (import path, help, extra)
LAZY_COMMANDS = {
    "bench": (
        "pushsvc.bench.cli:bench",
        "Measure a pushsvc server under load (needs the bench extra).",
        "bench",
    ),
}
# what each extra installs: a command missing one of these asks for the extra
EXTRA_MODULES = {"bench": ("rich", "httptools", "matplotlib")}


class Commands(click.Group):
    """A group whose ``LAZY_COMMANDS`` are imported only when invoked, so that
    ``pushsvc serve`` does not load the bench; one whose extra is not installed answers
    a one-line error naming it."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in LAZY_COMMANDS:
            return super().get_command(ctx, cmd_name)
        target, _, extra = LAZY_COMMANDS[cmd_name]
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = (exc.name or "").partition(".")[0]
            if missing not in EXTRA_MODULES[extra]:
                raise
            raise click.ClickException(
                f"pushsvc {cmd_name} needs the {extra} extra ({missing} is not installed): "
                f"pip install 'pushsvc[{extra}]'"
            ) from None
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own, but a lazy command's help comes from LAZY_COMMANDS (no import)
        rows: list[tuple[str, str]] = []
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        for name in names:
            if name in LAZY_COMMANDS:
                rows.append((name, LAZY_COMMANDS[name][1]))
                continue
            command = super().get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pushsvc")
def main() -> None:
    """pushsvc: push messaging over WebSocket, SSE and long-polling."""


# --- serve ---------------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, envvar="PUSHSVC_HOST")
@click.option("--port", default=8000, show_default=True, type=int, envvar="PUSHSVC_PORT")
@click.option(
    "--backend",
    "backend_url",
    default="memory://",
    show_default=True,
    envvar="PUSHSVC_BACKEND_URL",
    help="memory:// (one process) or redis://host:port/db",
)
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    type=CommaList(),
    envvar="PUSHSVC_SECRETS",
    help="Token signing secret; the first signs, all verify. None: an ephemeral one.",
)
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    type=CommaList(),
    envvar="PUSHSVC_API_KEYS",
    help="API key for backends publishing. None: an ephemeral one.",
)
@click.option(
    "--allowed-origin",
    "allowed_origins",
    multiple=True,
    type=CommaList(),
    envvar="PUSHSVC_ALLOWED_ORIGINS",
    help="Browser origin allowed to open a WebSocket ('*': any).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    type=CommaList(),
    envvar="PUSHSVC_CORS_ORIGINS",
    help="Origin allowed by CORS on the HTTP endpoints.",
)
@click.option("--workers", default=1, show_default=True, type=int, envvar="PUSHSVC_WORKERS")
@click.option(
    "--heartbeat-interval", type=float, envvar="PUSHSVC_HEARTBEAT_INTERVAL", help="Seconds."
)
@click.option(
    "--ws-compression/--no-ws-compression",
    default=None,
    envvar="PUSHSVC_WS_COMPRESSION",
    help="Offer WebSocket permessage-deflate; each event is compressed once.",
)
@click.option(
    "--graceful-timeout",
    default=5.0,
    show_default=True,
    type=float,
    envvar="PUSHSVC_GRACEFUL_TIMEOUT",
    help="Seconds to wait for open connections at shutdown before cancelling them.",
)
@click.option(
    "--access-log/--no-access-log",
    default=None,
    envvar="PUSHSVC_ACCESS_LOG",
    help="One log line per HTTP request (off: the proxy in front logs requests).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    envvar="PUSHSVC_LOG_LEVEL",
)
def serve(
    host: str,
    port: int,
    backend_url: str,
    secrets: tuple[str, ...],
    api_keys: tuple[str, ...],
    allowed_origins: tuple[str, ...],
    cors_origins: tuple[str, ...],
    workers: int,
    heartbeat_interval: float | None,
    ws_compression: bool | None,
    graceful_timeout: float,
    access_log: bool | None,
    log_level: str,
) -> None:
    """Run the server (uvicorn).

    Every flag is also an environment variable, PUSHSVC_ + the Settings field in upper
    case (PUSHSVC_BACKEND_URL, PUSHSVC_SECRETS and PUSHSVC_API_KEYS comma-separated,
    ...); other Settings fields are read from the environment too.
    """
    if workers < 1:
        raise click.BadParameter("must be at least 1", param_hint="--workers")
    if workers > 1 and backend_url.startswith("memory:"):
        raise click.UsageError(
            f"--workers {workers} needs a shared backend: memory:// keeps the log inside one "
            "process, so workers would not see each other's events. "
            "Use --backend redis://host:6379/0, or --workers 1."
        )
    try:
        settings = Settings.from_env(
            backend_url=backend_url,
            secrets=_nonempty(secrets),
            api_keys=_nonempty(api_keys),
            allowed_origins=_nonempty(allowed_origins),
            cors_origins=_nonempty(cors_origins),
            heartbeat_interval=heartbeat_interval,
            ws_compression=ws_compression,
            access_log=access_log,
        )
    except (ConfigError, TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    settings, generated = settings.with_generated_credentials()
    if generated:
        _print_generated(generated, settings, host, port)
    logging.basicConfig(
        level=log_level.upper(), format="%(levelname)-8s %(name)s: %(message)s", force=False
    )
    from pushsvc import server

    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "timeout_graceful_shutdown": graceful_timeout,
    }
    if workers > 1:
        import uvicorn

        os.environ.update(_settings_env(settings))
        uvicorn.run(
            "pushsvc.app:app_from_env",
            factory=True,
            workers=workers,
            **server.uvicorn_options(settings, **common),
        )
        return

    from pushsvc.app import create_app

    if not server.run(create_app(settings), settings, **common):
        sys.exit(3)


def _nonempty(values: tuple[str, ...]) -> tuple[str, ...] | None:
    cleaned = tuple(v for v in values if v)
    return cleaned or None


def _print_generated(generated: dict[str, str], settings: Settings, host: str, port: int) -> None:
    url = f"http://{host}:{port}"
    lines = ["pushsvc: no secret or API key configured; generated ephemeral ones"]
    lines.append("  (they die with this process: pass --secret/--api-key or set")
    lines.append("   PUSHSVC_SECRETS/PUSHSVC_API_KEYS to keep them)")
    if "secret" in generated:
        lines.append(f"  secret:  {generated['secret']}")
    if "api_key" in generated:
        lines.append(f"  api key: {generated['api_key']}")
    secret = settings.secrets[0]
    lines.append(
        f"  mint a token: pushsvc token --secret {secret} --user alice "
        "--subscribe '*' --publish '*'"
    )
    lines.append(
        f"  publish:      pushsvc publish --url {url} --api-key {settings.api_keys[0]} "
        'news \'{"hello": "world"}\''
    )
    click.echo("\n".join(lines))


def _settings_env(settings: Settings) -> dict[str, str]:
    """``Settings`` as ``PUSHSVC_*`` variables, for worker processes (``from_env``)."""
    env: dict[str, str] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, tuple):
            if any("," in v for v in value):
                raise click.UsageError(f"{f.name}: a value with a comma cannot go to workers")
            text = ",".join(value)
        elif isinstance(value, bool):
            text = "1" if value else "0"
        else:
            text = str(value)
        env["PUSHSVC_" + f.name.upper()] = text
    return env


# --- publish -------------------------------------------------------------------------------


@main.command()
@click.argument("channel")
@click.argument("data")
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="PUSHSVC_URL")
@click.option("--api-key", envvar="PUSHSVC_API_KEY", help="A backend API key.")
@click.option("--token", envvar="PUSHSVC_TOKEN", help="A user token granting publish.")
@click.option("--event", default="message", show_default=True, help="Event name.")
@click.option("--idempotency-key", help="A retried publish with the same key is stored once.")
@click.option("--binary", is_flag=True, help="DATA is a file path (or - for stdin), sent as bytes.")
def publish(
    channel: str,
    data: str,
    url: str,
    api_key: str | None,
    token: str | None,
    event: str,
    idempotency_key: str | None,
    binary: bool,
) -> None:
    """Publish DATA on CHANNEL; prints the event ID.

    DATA is sent as JSON when it parses as JSON, else as a JSON string.
    """
    credential = _one_credential(api_key, token)
    body: dict[str, Any] = {"channel": channel, "event": event}
    if binary:
        raw = sys.stdin.buffer.read() if data == "-" else Path(data).read_bytes()
        body["data_b64"] = base64.b64encode(raw).decode()
    else:
        try:
            body["data"] = json.loads(data)
        except ValueError:
            body["data"] = data
    if idempotency_key:
        body["idempotency_key"] = idempotency_key
    import httpx  # here: httpx loads rich for its own CLI when rich is installed

    try:
        r = httpx.post(
            url.rstrip("/") + "/v1/publish",
            json=body,
            headers={"Authorization": f"Bearer {credential}"},
            timeout=10,
        )
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from exc
    if r.status_code != 200:
        raise click.ClickException(f"HTTP {r.status_code}: {_problem(r)}")
    click.echo(r.json()["id"])


def _one_credential(api_key: str | None, token: str | None) -> str:
    if api_key and token:
        raise click.UsageError("give --api-key or --token, not both")
    credential = api_key or token
    if not credential:
        raise click.UsageError("give --api-key or --token (or PUSHSVC_API_KEY/PUSHSVC_TOKEN)")
    return credential


def _problem(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)
    return str(body)


# --- token ---------------------------------------------------------------------------------


@main.command()
@click.option(
    "--secret",
    required=True,
    envvar="PUSHSVC_SECRETS",
    help="The server's signing secret (the first of PUSHSVC_SECRETS).",
)
@click.option("--user", required=True, help="The token's subject.")
@click.option("--subscribe", multiple=True, help="Channel pattern granted for subscribe.")
@click.option("--publish", "publish_", multiple=True, help="Channel pattern granted for publish.")
@click.option("--presence", multiple=True, help="Channel pattern granted for presence.")
@click.option(
    "--info",
    "info_json",
    default=None,
    help="Presence info shown for the token's connections: a JSON object, "
    'e.g. \'{"name":"Alice"}\'.',
)
@click.option(
    "--max-info-bytes",
    default=Settings().max_presence_info_bytes,
    show_default=True,
    type=click.IntRange(min=2),
    envvar="PUSHSVC_MAX_PRESENCE_INFO_BYTES",
    help="Largest --info (compact JSON), as the server's max_presence_info_bytes.",
)
@click.option(
    "--ttl",
    default=3600.0,
    show_default=True,
    type=float,
    envvar="PUSHSVC_TOKEN_TTL_DEFAULT",
    help="Seconds (default: PUSHSVC_TOKEN_TTL_DEFAULT, as the server's token_ttl_default).",
)
def token(
    secret: str,
    user: str,
    subscribe: tuple[str, ...],
    publish_: tuple[str, ...],
    presence: tuple[str, ...],
    info_json: str | None,
    max_info_bytes: int,
    ttl: float,
) -> None:
    """Mint a client token (printed on the last line)."""
    from pushsvc.auth import Authenticator

    signing = secret.split(",")[0].strip()
    if not signing:
        raise click.BadParameter("empty secret", param_hint="--secret")
    info = None
    if info_json is not None:
        try:
            info = json.loads(info_json)
        except ValueError:
            raise click.BadParameter("not valid JSON", param_hint="--info") from None
    auth = Authenticator((signing,), (), max_info_bytes=max_info_bytes)
    try:
        token = auth.issue(
            user, subscribe=subscribe, publish=publish_, presence=presence, ttl=ttl, info=info
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--info") from None
    click.echo(token)


# --- check ---------------------------------------------------------------------------------


@main.command()
@click.option(
    "--backend",
    "backend_url",
    required=True,
    envvar="PUSHSVC_BACKEND_URL",
    help="The backend to verify: memory:// or redis://host:port/db",
)
@click.option(
    "--timeout", default=5.0, show_default=True, type=float, help="Seconds allowed per step."
)
def check(backend_url: str, timeout: float) -> None:
    """Verify a backend before serving with it.

    On a scratch channel: connect, listen, append a probe event, read it back and receive
    its live notification, printing each step's latency, the Redis version and mode, and
    the retention a server with this environment would apply. Exits 1 with the failed
    step and its reason.
    """
    from pushsvc.check import CheckFailed, run

    try:
        asyncio.run(run(backend_url, timeout, click.echo))
    except CheckFailed as exc:
        raise click.ClickException(f"backend check {exc}") from None
    click.echo("ok          the backend is ready for pushsvc")


# --- subscribe -----------------------------------------------------------------------------


@main.command()
@click.argument("channels", nargs=-1, required=True)
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="PUSHSVC_URL")
@click.option("--token", required=True, envvar="PUSHSVC_TOKEN", help="Token or API key.")
@click.option(
    "--transport",
    "transports",
    multiple=True,
    type=click.Choice(TRANSPORTS),
    help="Transport to use (repeat for a preference order). Default: all, best first.",
)
@click.option("--cursor", help="Resume after this cursor (from an earlier --json line).")
@click.option("--count", type=int, help="Exit after this many events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--quiet", is_flag=True, help="No connection-state lines on stderr.")
@click.option(
    "--presence",
    is_flag=True,
    help="Also print members joining and leaving CHANNELS (the token needs the presence grant).",
)
def subscribe(
    channels: tuple[str, ...],
    url: str,
    token: str,
    transports: tuple[str, ...],
    cursor: str | None,
    count: int | None,
    as_json: bool,
    quiet: bool,
    presence: bool,
) -> None:
    """Print the events of CHANNELS as they arrive, one line each (with --presence, a line
    per member joining or leaving too)."""
    try:
        asyncio.run(
            _subscribe(
                url,
                token,
                list(channels),
                transports or TRANSPORTS,
                cursor,
                count,
                as_json,
                quiet,
                presence,
            )
        )
    except KeyboardInterrupt:
        sys.exit(130)


async def _subscribe(
    url: str,
    token: str,
    channels: list[str],
    transports: tuple[str, ...],
    cursor: str | None,
    count: int | None,
    as_json: bool,
    quiet: bool,
    presence: bool = False,
) -> None:
    from pushsvc.client import Client, Event, PresenceChange, PushClientError

    def on_state(state: str, transport: str | None) -> None:
        if not quiet and state != "gap":
            click.echo(f"pushsvc: {state}" + (f" ({transport})" if transport else ""), err=True)

    def on_presence(change: PresenceChange) -> None:
        click.echo(_format_presence(change, as_json))

    try:
        client = Client(
            url,
            token,
            channels,
            transports=transports,
            cursor=cursor,
            on_state=on_state,
            presence=presence,
            on_presence=on_presence if presence else None,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    seen = 0
    if count is not None and count <= 0:
        return

    async def say_pinned() -> None:
        # the start is pinned at the first contact: every event stored from here on is
        # printed, whichever transport the client settles on
        cursor = await client.ready()
        if not quiet:
            click.echo(f"pushsvc: start pinned (cursor {cursor})", err=True)

    try:
        async with client:
            pinned = asyncio.create_task(say_pinned())
            pinned.add_done_callback(_ignore_outcome)
            async for item in client:
                click.echo(_format(item, as_json))
                if isinstance(item, Event):
                    seen += 1
                    if count is not None and seen >= count:
                        break
    except PushClientError as exc:
        raise click.ClickException(str(exc)) from exc


def _ignore_outcome(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # a client that failed says so through its iterator


def _format_presence(change: Any, as_json: bool) -> str:
    """A member that appeared or disappeared (a fresh snapshot prints only the members it
    adds or removes, so the first one prints a join for each member present)."""
    member = change.member
    if as_json:
        return json.dumps(
            {
                "type": change.kind,
                "channel": change.channel,
                "subject": member.subject,
                "info": member.info,
                "connections": member.connections,
            },
            ensure_ascii=False,
        )
    n = member.connections
    info = json.dumps(member.info, ensure_ascii=False)
    return (
        f"{change.channel} {change.kind} {member.subject} {info} "
        f"({n} connection{'' if n == 1 else 's'})"
    )


def _format(item: Any, as_json: bool) -> str:
    from pushsvc.client import Event

    if isinstance(item, Event):
        data = item.data
        if as_json:
            obj: dict[str, Any] = {
                "type": "event",
                "channel": item.channel,
                "event": item.event,
                "id": item.id,
            }
            if isinstance(data, bytes):
                obj["data"] = base64.b64encode(data).decode()
                obj["encoding"] = "base64"
            else:
                obj["data"] = data
            obj["cursor"] = item.cursor
            return json.dumps(obj, ensure_ascii=False)
        shown = (
            "base64:" + base64.b64encode(data).decode()
            if isinstance(data, bytes)
            else json.dumps(data, ensure_ascii=False)
        )
        return f"{item.channel} {item.event} {item.id} {shown}"
    if as_json:
        return json.dumps(
            {
                "type": "gap",
                "channel": item.channel,
                "after": item.after,
                "until": item.until,
                "cursor": item.cursor,
            }
        )
    return f"{item.channel} gap {item.after}..{item.until} (trimmed before this client read them)"
