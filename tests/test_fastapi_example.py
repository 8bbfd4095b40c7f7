"""examples/fastapi_app.py: pushsvc mounted in FastAPI, published to from a route.

The app runs under uvicorn in its own process on a free port (its lifespan, pushsvc's,
starts the hub); the Python client subscribes through the mounted path ``/push``; an
order created with ``POST /orders`` arrives once, and so does an event published with
``Publisher`` through ``/push/v1/publish``. The example's own self-check runs too."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pushsvc import Publisher
from pushsvc.auth import Authenticator
from pushsvc.client import Client, Event
from tests.fixtures_server import free_port
from tests.waiting import until_sync

ROOT = Path(__file__).resolve().parent.parent
SECRET = "fastapi-example-secret-" + "x" * 16
API_KEY = "fastapi-example-key"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env.update(extra, PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def example_url() -> Iterator[str]:
    port = free_port()
    env = clean_env(PUSHSVC_SECRETS=SECRET, PUSHSVC_API_KEYS=API_KEY)
    cmd = [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--log-level", "warning"], env=env, cwd=ROOT
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, f"the example exited with {proc.returncode}"
        try:
            return httpx.get(url + "/push/healthz", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        until_sync(healthy, 20, "the FastAPI example to serve /push/healthz", interval=0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_an_order_created_in_the_app_reaches_a_subscriber_once(example_url: str) -> None:
    token = Authenticator((SECRET,), (API_KEY,)).issue("shop", subscribe=("orders",))
    async with (
        Client(example_url + "/push", token, ["orders"]) as client,
        httpx.AsyncClient(base_url=example_url, timeout=10) as http,
        Publisher(example_url + "/push", API_KEY) as publisher,
    ):
        await client.ready(timeout=10)
        created = await http.post("/orders", json={"item": "book", "quantity": 2})
        assert created.status_code == 200, created.text
        order = created.json()
        # a second event after it: the order is delivered once if it is alone before it
        shipped = await publisher.publish("orders", {"order": order["order"]}, event="shipped")
        events: list[Event] = []
        async for item in client:
            if isinstance(item, Event):
                events.append(item)
                if item.id == shipped:
                    break
    assert [(e.event, e.id) for e in events] == [
        ("order.created", order["event_id"]),
        ("shipped", shipped),
    ]
    assert events[0].data == {"order": order["order"], "item": "book", "quantity": 2}


async def test_a_bad_order_is_refused_by_fastapi_and_nothing_is_published(
    example_url: str,
) -> None:
    async with httpx.AsyncClient(base_url=example_url, timeout=10) as http:
        refused = await http.post("/orders", json={"quantity": 2})
        assert refused.status_code == 422
        history = await http.get(
            "/push/v1/channels/orders/history", headers={"Authorization": f"Bearer {API_KEY}"}
        )
    assert history.json()["events"] == []


def test_the_example_checks_itself() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "fastapi_app.py")],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    kinds = [line.split(" ", 1)[0] for line in lines]
    assert kinds == ["ready", "created", "shipped", "event", "event", "stopped"], lines
    created_id = lines[1].split()[2]
    shipped_id = lines[2].split()[1]
    assert lines[3].startswith(f"event orders order.created {created_id} ")
    assert lines[4].startswith(f"event orders order.shipped {shipped_id} ")
