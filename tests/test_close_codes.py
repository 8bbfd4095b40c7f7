"""One close-code policy: the table in ``pushsvc.protocol.codes`` is what the docs, the
Python client, ``pushsvc.js``, ``pushsvc.d.ts`` and the examples say and do."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pushsvc import _docs, exceptions
from pushsvc.client import ServerRejected
from pushsvc.client._errors import Transient
from pushsvc.client._transports import classify_close
from pushsvc.protocol import codes
from pushsvc.protocol.codes import CLOSE_CODES, Policy, close_policy
from tests.fixtures_browser import BrowserClient
from tests.fixtures_server import Server
from tests.waiting import until

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "pushsvc" / "static"
TABLE = {code: (entry.name, str(entry.policy)) for code, entry in CLOSE_CODES.items()}
# RFC 6455: no status code received (1005), connection dropped without a close frame (1006)
NO_CODE = (1005, 1006)


def embedded_policy(text: str, pattern: str) -> dict[int, tuple[str, str]]:
    block = _docs.embedded(text)
    assert block is not None, "the generated close-code block is missing"
    return {int(c): (n, p) for c, n, p in re.findall(pattern, block)}


def test_the_table_covers_every_code_the_server_sends() -> None:
    constants = {v for k, v in vars(codes).items() if k.startswith("WS_")}
    assert constants == set(CLOSE_CODES)
    assert all(isinstance(entry.policy, Policy) and entry.sent for entry in CLOSE_CODES.values())

    def subclasses(cls: type) -> list[type]:
        return [cls] + [s for c in cls.__subclasses__() for s in subclasses(c)]

    for cls in subclasses(exceptions.PushError):
        assert cls.close_code in CLOSE_CODES, cls


def test_policy_decisions() -> None:
    stop = {c for c, e in CLOSE_CODES.items() if e.policy is Policy.STOP}
    reauth = {c for c, e in CLOSE_CODES.items() if e.policy is Policy.REAUTH}
    assert stop == {4400, 4403, 4404}
    assert reauth == {4401, 4402}
    for code in NO_CODE:
        assert code not in CLOSE_CODES and close_policy(code) is Policy.RESUME


def test_docs_table_is_generated_from_the_table() -> None:
    text = (ROOT / "docs" / "reference" / "close-codes.md").read_text()
    assert text.endswith(_docs.BEGIN + codes.close_codes_markdown()), "python -m pushsvc._docs"
    rows = re.findall(r"^\| (\d+) \| ([\w-]+) \| .* \| `(\w+)` \|", text, re.M)
    assert {int(c): (n, p) for c, n, p in rows} == TABLE


@pytest.mark.parametrize("name", ["pushsvc.js", "pushsvc.d.ts"])
def test_static_clients_embed_the_table(name: str) -> None:
    text = (STATIC / name).read_text()
    assert _docs.embedded(text) == _docs.generated_static()[name], "python -m pushsvc._docs"
    if name == "pushsvc.js":
        pattern = r'(\d+): Object\.freeze\(\{ name: "([\w-]+)", policy: "(\w+)" \}\)'
    else:
        pattern = r'readonly (\d+): \{ readonly name: "([\w-]+)"; readonly policy: "(\w+)" \}'
    assert embedded_policy(text, pattern) == TABLE


def test_browser_client_module_exports_the_table(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    module = tmp_path / "pushsvc.mjs"  # .mjs: node loads it as the ES module it is
    module.write_text((STATIC / "pushsvc.js").read_text())
    show = "(m) => console.log(JSON.stringify(m.CLOSE_CODES))"
    script = f"import({json.dumps(module.as_uri())}).then({show})"
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    exported = {int(c): (v["name"], v["policy"]) for c, v in json.loads(out.stdout).items()}
    assert exported == TABLE


def test_browser_client_decides_by_the_table() -> None:
    source = (STATIC / "pushsvc.js").read_text()
    # outside the generated block no close code is named (but its own 1000, and 1000 ms):
    # the client reads CLOSE_CODES
    outside = source.replace(_docs.embedded(source) or "", "")
    assert not re.findall(r"\b(?:1001|1009|1011|1013|4\d{3})\b", outside)
    assert 'CLOSE_CODES[code]?.policy ?? "resume"' in outside  # 1005/1006 resume


@pytest.mark.parametrize("code", [*sorted(CLOSE_CODES), *NO_CODE])
def test_python_client_follows_the_table(code: int) -> None:
    outcome = classify_close(code, "why")
    policy = close_policy(code)
    if policy is Policy.STOP:
        assert isinstance(outcome, ServerRejected) and outcome.status == code
    else:
        assert isinstance(outcome, Transient)
        assert outcome.reauth == (policy is Policy.REAUTH)


@pytest.mark.parametrize(
    "path",
    ["pushsvc/client/_transports.py", "pushsvc/client/_client.py", "examples/subscribe_ws.py"],
)
def test_no_close_code_list_of_its_own(path: str) -> None:
    source = (ROOT / path).read_text()
    code = r"\b(?:1008|1001|1009|1011|1013|4000|4008|44\d\d)\b"
    lists = re.findall(r"[{\[(][^{}\[\]()]*" + code + r"[^{}\[\]()]*[}\])]", source)
    assert not lists, f"{path} keeps its own close codes: {lists}"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
async def test_browser_client_stops_after_a_stop_code_and_resumes_after_a_drop(
    server_factory: Any, nginx_factory: Any, browser_client: BrowserClient
) -> None:
    server: Server = server_factory(heartbeat_interval=1)
    proxy = nginx_factory("good", server.port)  # the test page's origin
    fast = {"connect_timeout": 3.0, "backoff_base": 0.2, "backoff_cap": 1.0}
    await browser_client.start(proxy.url, server.token(), ["feed"], **fast)
    assert await browser_client.wait_connected() == "websocket"
    # a close without a code (the page drops its socket: 1005/1006): reconnect and resume
    await browser_client._eval("() => window.client._active.ws.close()")
    await until(lambda: browser_client.log_kinds("lost"), 10, "the client to notice the drop")
    assert await browser_client.wait_connected() == "websocket"
    assert await browser_client.state() == "connected"
    # a frame the server cannot understand: 4400, whose policy is stop
    await browser_client._eval("() => window.client._active.ws.send('not json')")
    await until(browser_client.state, 10, "the client to close", check=lambda s: s == "closed")
    fatal = browser_client.log_kinds("fatal")
    assert fatal and "4400" in fatal[0]["detail"]
