"""The docs site builds with ``mkdocs build --strict`` (broken links, anchors and snippet
includes fail it), and the reference pages keep up with the code they describe."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import httpx
import pytest

from pushsvc import cli
from pushsvc.app import create_app
from pushsvc.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"


def page(rel: str) -> str:
    return (DOCS / rel).read_text()


def test_site_builds_strictly(tmp_path: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    built = list(tmp_path.rglob("*.html"))
    assert len(built) > 20
    for html in built:  # every snippet was expanded, no marker leaked into a page
        assert "--8&lt;--" not in html.read_text(), html


def test_every_example_is_included_in_the_docs_and_run_by_the_tests() -> None:
    included = "\n".join(p.read_text() for p in DOCS.rglob("*.md"))
    # the examples' tests: test_examples.py, and those of an example of its own (the chat)
    tested = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*example*.py"))
    for example in sorted(EXAMPLES.iterdir()):
        if example.name.startswith((".", "_")) or example.is_dir():
            continue
        assert f'--8<-- "examples/{example.name}' in included, example.name
        assert example.name in tested, example.name


def test_http_reference_lists_every_route() -> None:
    text = page("reference/http-api.md")
    app = create_app(Settings(secrets=("s",), api_keys=("k",)))
    for route in app.routes:
        path = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", route.path)  # type: ignore[attr-defined]
        assert f"`{path}`" in text or f"`{path}," in text, path


def test_cli_reference_lists_every_command_and_option() -> None:
    text = page("reference/cli.md")
    ctx = click.Context(cli.main)
    for name in cli.main.list_commands(ctx):  # with `bench`, which is imported lazily
        command = cli.main.get_command(ctx, name)
        assert command is not None, name
        assert f"## `pushsvc {name}`" in text, name
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                flag = max(param.opts, key=len)
                assert f"`{flag}`" in text, f"pushsvc {name} {flag}"


def _source(*parts: str) -> str:
    return (ROOT / "pushsvc" / Path(*parts)).read_text()


def test_websocket_reference_has_every_frame_type() -> None:
    text = page("reference/websocket.md")
    client = set(re.findall(r'kind == "([\w-]+)"', _source("protocol", "client_frames.py")))
    server = {"event", "gap", "subscribed"}
    for module in (("transports", "websocket.py"), ("hub.py",), ("protocol", "wires.py")):
        server |= set(re.findall(r'(?:ws_control|control)\(\s*"([\w-]+)"', _source(*module)))
    assert client >= {"subscribe", "unsubscribe", "publish", "ping", "refresh"}
    for kind in sorted(client | server):
        assert f'"type": "{kind}"' in text or f"`{kind}`" in text, kind


@pytest.mark.parametrize(
    "kind", ["message", "gap", "subscribed", "heartbeat", "token-expired", "close"]
)
def test_sse_reference_has_every_event_type(kind: str) -> None:
    text = page("reference/sse.md")
    assert f"event: {kind}" in text
    frames = _source("protocol", "frames.py") + _source("transports", "sse.py") + _source("hub.py")
    assert kind in frames  # the list above is the server's, not an invention of the docs


async def test_http_reference_lists_every_metric() -> None:
    text = page("reference/http-api.md")
    app = create_app(Settings(secrets=("s",), api_keys=("k",)))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            scraped = (await client.get("/metrics")).text
    families = set(re.findall(r"^# TYPE (pushsvc_\w+) ", scraped, re.MULTILINE))
    families = {f for f in families if not f.endswith("_created")}
    assert families
    for family in sorted(families):
        assert f"`{family}`" in text, family
