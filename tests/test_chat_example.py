"""examples/chat.py (started as a script on a free port) and its page examples/chat.html, in
headless Chromium: two users in two browser contexts see each other in the member list
and each other's messages, a closed page leaves the other's list, and one user's two
tabs are one member with two connections."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page

from tests.fixtures_server import free_port

pytestmark = pytest.mark.timeout(90)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WAIT_MS = 15_000


@pytest.fixture
def chat_url() -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, str(EXAMPLES / "chat.py"), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--secret", "chat-example-secret-" + "x" * 20],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"chat.py exited with {proc.returncode}: {out}")
            try:
                if httpx.get(url + "/push/readyz", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chat.py did not start within 15 s")
            time.sleep(0.05)  # poll: until chat.py answers, against the deadline
        yield url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def open_chat(context: BrowserContext, url: str, user: str, name: str) -> Page:
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(f"{url}/?{urlencode({'user': user, 'name': name})}")
    await page.wait_for_function("() => window.chat !== undefined", timeout=WAIT_MS)
    assert not errors, errors
    return page


MEMBERS = """() => [...document.querySelectorAll('#members li')]
    .map((li) => `${li.dataset.subject}:${li.dataset.connections}`).join(' ')"""


async def wait_members(page: Page, expected: str) -> None:
    """Wait (with a deadline) until the page's member list reads ``expected``
    ("alice:1 bob:1": subject and tab count, in the list's order)."""
    try:
        await page.wait_for_function(f"() => ({MEMBERS})() === {expected!r}", timeout=WAIT_MS)
    except Exception as exc:
        got = await page.evaluate(MEMBERS)
        raise AssertionError(f"member list {got!r}, waited for {expected!r}") from exc


async def send(page: Page, text: str) -> None:
    await page.fill("#text", text)
    await page.press("#text", "Enter")


def test_token_endpoint_grants_chat_with_the_name_in_the_info(chat_url: str) -> None:
    token = httpx.get(chat_url + "/token", params={"user": "alice", "name": "Alice"}).text
    headers = {"Authorization": f"Bearer {token}"}
    r = httpx.get(chat_url + "/push/v1/channels/chat:lobby/presence", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["members"] == []
    r = httpx.get(chat_url + "/push/v1/channels/other/presence", headers=headers)
    assert r.status_code == 403
    assert httpx.get(chat_url + "/token").status_code == 400


async def test_two_users_see_each_other_and_their_messages_and_a_closed_page_leaves(
    chat_url: str, browser: Browser
) -> None:
    contexts = [await browser.new_context(), await browser.new_context()]
    try:
        alice = await open_chat(contexts[0], chat_url, "alice", "Alice")
        bob = await open_chat(contexts[1], chat_url, "bob", "Bob")
        await wait_members(alice, "alice:1 bob:1")
        await wait_members(bob, "alice:1 bob:1")
        names = await alice.eval_on_selector_all(
            "#members li", "els => els.map(e => e.textContent)"
        )
        assert names == ["Alice (you)", "Bob"]
        await alice.wait_for_function(
            "() => document.getElementById('state').textContent.startsWith('connected')"
        )

        await send(alice, "hello bob")
        await bob.get_by_text("Alice: hello bob").wait_for(timeout=WAIT_MS)
        await send(bob, "hi alice")
        await alice.get_by_text("Bob: hi alice").wait_for(timeout=WAIT_MS)
        # each message once, in the sender's page too
        for page in (alice, bob):
            texts = await page.eval_on_selector_all(
                "#messages li.message", "els => els.map(e => e.textContent)"
            )
            assert texts == ["Alice: hello bob", "Bob: hi alice"]

        await bob.close()
        await wait_members(alice, "alice:1")
        await alice.get_by_text("Bob left").wait_for(timeout=WAIT_MS)
        assert await alice.text_content("#counts") == "1 person, 1 tab"
    finally:
        for context in contexts:
            await context.close()


async def test_one_user_with_two_tabs_is_one_member_with_two_connections(
    chat_url: str, browser: Browser
) -> None:
    alice_context, bob_context = await browser.new_context(), await browser.new_context()
    try:
        bob = await open_chat(bob_context, chat_url, "bob", "Bob")
        await wait_members(bob, "bob:1")
        tabs = [await open_chat(alice_context, chat_url, "alice", "Alice")]
        await wait_members(bob, "alice:1 bob:1")
        tabs.append(await open_chat(alice_context, chat_url, "alice", "Alice"))
        for page in (*tabs, bob):
            await wait_members(page, "alice:2 bob:1")
        assert await bob.text_content("#counts") == "2 people, 3 tabs"
        entries = await bob.eval_on_selector_all(
            "#members li", "els => els.map(e => e.textContent)"
        )
        assert entries == ["Alice · 2 tabs", "Bob (you)"]
        assert await tabs[1].text_content("#members li") == "Alice (you) · 2 tabs"
        # the second tab is no new member
        assert await notices(bob) == ["Alice joined"]

        await tabs[0].close()
        await wait_members(bob, "alice:1 bob:1")
        await tabs[1].close()
        await wait_members(bob, "bob:1")
        assert await notices(bob) == ["Alice joined", "Alice left"]
    finally:
        await alice_context.close()
        await bob_context.close()


async def notices(page: Page) -> list[str]:
    texts: list[str] = await page.locator("#messages li.notice").all_text_contents()
    return texts
