"""Presence over HTTP (``GET /v1/channels/{channel}/presence`` and ``…/presence/stats``),
the token's presence grant and ``info``, and the presence settings."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from starlette.applications import Starlette

from pushsvc.auth import MAX_INFO_BYTES, Authenticator
from pushsvc.backends.base import PresenceEntry
from pushsvc.cli import main
from pushsvc.exceptions import ConfigError, Unauthorized
from pushsvc.hub import Hub
from pushsvc.settings import Settings

SECRET = "presence-secret"
API_KEY = "presence-key"


@pytest.fixture
async def app(backend_url: str) -> AsyncIterator[Starlette]:
    from pushsvc.app import create_app

    app = create_app(Settings(backend_url=backend_url, secrets=(SECRET,), api_keys=(API_KEY,)))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def token(**grants: Any) -> str:
    return Authenticator((SECRET,), ()).issue("reader", **grants)


async def track(app: Starlette, channel: str, *members: tuple[str, dict[str, Any]]) -> None:
    hub: Hub = app.state.hub
    for subject, info in members:
        entry = PresenceEntry(channel, hub.new_conn_id(), subject, json.dumps(info).encode())
        await hub.presence_track(entry)


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["type"] and body["detail"]
    return body


async def test_presence_lists_members_to_a_token_with_the_presence_grant(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    await track(app, "chat:lobby", ("bob", {}), ("alice", {"name": "Alice"}), ("alice", {}))
    r = await client.get(
        "/v1/channels/chat:lobby/presence", headers=bearer(token(presence=["chat:*"]))
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "channel": "chat:lobby",
        "members": [
            {"subject": "alice", "info": {}, "connections": 2},
            {"subject": "bob", "info": {}, "connections": 1},
        ],
        "member_count": 2,
        "connection_count": 3,
        "truncated": False,
    }
    r = await client.get(
        "/v1/channels/chat:lobby/presence/stats", headers=bearer(token(presence=["chat:*"]))
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"channel": "chat:lobby", "member_count": 2, "connection_count": 3}


async def test_presence_shows_each_members_info(app: Starlette, client: httpx.AsyncClient) -> None:
    await track(app, "a/b", ("alice", {"name": "Ålice", "tags": [1, 2]}))
    r = await client.get("/v1/channels/a/b/presence", headers=bearer(API_KEY))
    assert r.status_code == 200, r.text
    assert r.json()["members"] == [
        {"subject": "alice", "info": {"name": "Ålice", "tags": [1, 2]}, "connections": 1}
    ]


@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
@pytest.mark.parametrize("path", ["presence", "presence/stats"])
async def test_an_api_key_reads_presence_of_any_channel(
    app: Starlette, client: httpx.AsyncClient, path: str
) -> None:
    await track(app, "orders", ("svc", {}))
    r = await client.get(f"/v1/channels/orders/{path}", headers=bearer(API_KEY))
    assert r.status_code == 200, r.text
    assert r.json()["member_count"] == 1


@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
@pytest.mark.parametrize("path", ["presence", "presence/stats"])
async def test_presence_without_the_grant_is_a_403_problem_with_no_data(
    app: Starlette, client: httpx.AsyncClient, path: str
) -> None:
    await track(app, "chat:lobby", ("alice", {"name": "Alice"}))
    # subscribe and publish grants do not grant presence
    credential = token(subscribe=["*"], publish=["*"], presence=["other:*"])
    r = await client.get(f"/v1/channels/chat:lobby/{path}", headers=bearer(credential))
    body = assert_problem(r, 403)
    assert body["channel"] == "chat:lobby"
    assert "alice" not in r.text and "member_count" not in body


@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
@pytest.mark.parametrize("path", ["presence", "presence/stats"])
async def test_presence_without_credentials_is_a_401_problem(
    client: httpx.AsyncClient, path: str
) -> None:
    assert_problem(await client.get(f"/v1/channels/room/{path}"), 401)
    r = await client.get(f"/v1/channels/room/{path}", headers=bearer("not-a-token"))
    assert_problem(r, 401)


@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
@pytest.mark.parametrize("path", ["presence", "presence/stats"])
@pytest.mark.parametrize("channel", ["has%20space", "a%7Bb%7D", "x" * 200])
async def test_a_bad_channel_name_is_a_400_problem(
    client: httpx.AsyncClient, path: str, channel: str
) -> None:
    r = await client.get(f"/v1/channels/{channel}/{path}", headers=bearer(API_KEY))
    assert assert_problem(r, 400)["type"].endswith("bad-request")


@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
async def test_presence_above_the_snapshot_limit_answers_counts_only(
    backend_url: str,
) -> None:
    from pushsvc.app import create_app

    app = create_app(
        Settings(
            backend_url=backend_url, secrets=(SECRET,), api_keys=(API_KEY,), presence_snapshot_max=2
        )
    )
    async with app.router.lifespan_context(app):
        await track(app, "room", ("a", {}), ("b", {}), ("c", {}), ("c", {}))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.get("/v1/channels/room/presence", headers=bearer(API_KEY))
    assert r.json() == {
        "channel": "room",
        "members": [],
        "member_count": 3,
        "connection_count": 4,
        "truncated": True,
    }


# --- tokens: presence grant and info --------------------------------------------------------


def test_token_info_from_the_cli_reaches_the_principal() -> None:
    result = CliRunner().invoke(
        main,
        [
            *("token", "--secret", SECRET, "--user", "alice", "--presence", "chat:*"),
            *("--info", '{"name": "Alice", "avatar": "a.png"}'),
        ],
    )
    assert result.exit_code == 0, result.output
    principal = Authenticator((SECRET,), ()).verify(result.output.strip().splitlines()[-1])
    assert principal.info == {"name": "Alice", "avatar": "a.png"}
    assert principal.presence_info() == b'{"name":"Alice","avatar":"a.png"}'
    assert principal.can_presence("chat:1") and not principal.can_presence("news")
    assert not principal.can_subscribe("chat:1")


@pytest.mark.parametrize(
    ("info", "error"),
    [
        ('{"name": "' + "x" * MAX_INFO_BYTES + '"}', "over max_presence_info_bytes (1024)"),
        ('["not", "an", "object"]', "must be a JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_token_info_that_is_too_big_or_not_an_object_is_refused(info: str, error: str) -> None:
    result = CliRunner().invoke(
        main, ["token", "--secret", SECRET, "--user", "alice", "--info", info]
    )
    assert result.exit_code == 2
    assert error in result.output and "--info" in result.output


def test_token_info_limit_follows_the_server_setting() -> None:
    info = '{"name": "' + "x" * 100 + '"}'
    args = ["token", "--secret", SECRET, "--user", "alice", "--info", info]
    refused = CliRunner().invoke(main, args, env={"PUSHSVC_MAX_PRESENCE_INFO_BYTES": "64"})
    assert refused.exit_code == 2 and "over max_presence_info_bytes (64)" in refused.output
    assert Settings().max_presence_info_bytes == MAX_INFO_BYTES


def test_a_token_with_info_over_the_servers_limit_is_refused() -> None:
    issued = Authenticator((SECRET,), ()).issue("alice", info={"name": "x" * 200})
    with pytest.raises(Unauthorized, match="max_presence_info_bytes"):
        Authenticator((SECRET,), (), max_info_bytes=100).verify(issued)
    assert Authenticator((SECRET,), ()).verify(issued).info == {"name": "x" * 200}
    assert Authenticator((SECRET,), ()).verify(token()).info == {}


# --- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(("ttl", "interval"), [(10.0, 5.0), (1.0, 1.0), (5.0, 0.0)])
def test_presence_ttl_must_exceed_twice_the_refresh_interval(ttl: float, interval: float) -> None:
    with pytest.raises(ConfigError, match="presence"):
        Settings(presence_ttl=ttl, presence_refresh_interval=interval)
    env = {"PUSHSVC_PRESENCE_TTL": str(ttl), "PUSHSVC_PRESENCE_REFRESH_INTERVAL": str(interval)}
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_presence_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "PUSHSVC_PRESENCE_TTL": "0.6",
            "PUSHSVC_PRESENCE_REFRESH_INTERVAL": "0.2",
            "PUSHSVC_PRESENCE_SNAPSHOT_MAX": "10",
            "PUSHSVC_MAX_PRESENCE_INFO_BYTES": "256",
        }
    )
    assert (
        settings.presence_ttl,
        settings.presence_refresh_interval,
        settings.presence_snapshot_max,
        settings.max_presence_info_bytes,
    ) == (0.6, 0.2, 10, 256)
