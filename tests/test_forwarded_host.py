"""Same-origin WebSockets behind the proxy people actually configure: a real nginx with
``proxy_set_header Host $host`` (which drops the port) on a port of its own, and a
browser-like ``Origin: http://127.0.0.1:<nginx port>``.

- nginx also sends ``X-Forwarded-Host $http_host`` and the server trusts it (its peer is
  127.0.0.1, in ``FORWARDED_ALLOW_IPS``' default): the WebSocket is accepted.
- nginx sends only ``Host $host``: refused (403), and the server logs one warning naming
  the mismatch and the fix, once per process however many are refused.
- nginx sends ``X-Forwarded-Host`` but ``FORWARDED_ALLOW_IPS`` does not name it: refused,
  and the warning says which peer was not trusted.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from pushsvc.transports.admission import forwarded_host, peer_trusted
from tests.fixtures_nginx import _CONFIG, PAGES, STATIC, Nginx
from tests.fixtures_server import Server, free_port, make_server
from tests.waiting import until_sync as until

# the snippet from the nginx docs' WebSocket page, with the Host line people copy
_HOST_DOLLAR_HOST = """
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
"""
_FORWARD_HOST = """
            proxy_set_header X-Forwarded-Host $http_host;
"""
WARNING = "WebSocket refused for Origin"


class HostProxy(Nginx):
    """nginx with ``Host $host``, and ``X-Forwarded-Host`` when ``forward_host``."""

    forward_host = False

    def config(self) -> str:
        return _CONFIG.format(
            user="user root root;" if os.geteuid() == 0 else "",
            prefix=self.prefix,
            port=self.port,
            pages=PAGES.resolve(),
            static=STATIC.resolve(),
            common=_HOST_DOLLAR_HOST.format(upstream_port=self.upstream_port),
            mode=_FORWARD_HOST if self.forward_host else "",
        )


Proxied = Callable[..., tuple[Server, Nginx, Path]]


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[Proxied]:
    """``proxied(forward_host, **server_env)``: a server (its log in a file) behind a
    HostProxy; both stopped at teardown."""
    started: list[Server | Nginx] = []

    def make(forward_host: bool, **env: str) -> tuple[Server, Nginx, Path]:
        log = tmp_path / f"server-{len(started)}.log"
        server = make_server("memory://")
        server.env.update(env)
        server.log_path = str(log)
        started.append(server.start())
        prefix = Path(tempfile.mkdtemp(prefix="pushsvc-nginx-host-", dir=tmp_path))
        for sub in ("client_body", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"):
            (prefix / sub).mkdir()
        proxy = HostProxy("host-dollar-host", free_port(), server.port, prefix)
        proxy.forward_host = forward_host
        started.append(proxy.start())
        return server, proxy, log

    yield make
    for item in reversed(started):
        item.stop()


def open_ws(server: Server, proxy: Nginx) -> str:
    """Open a WebSocket through the proxy as a page served by the proxy would; answer
    the first frame's type, or raise InvalidStatus."""
    url = f"{proxy.ws_url}/v1/ws?token={server.token()}"
    with connect(url, origin=Origin(proxy.url), open_timeout=5) as ws:
        ws.send(json.dumps({"type": "subscribe", "channels": ["lobby"]}))
        return str(json.loads(ws.recv(timeout=5))["type"])


def test_websocket_is_accepted_with_the_forwarded_host_of_a_trusted_proxy(proxied: Proxied) -> None:
    server, proxy, log = proxied(forward_host=True)
    assert open_ws(server, proxy) == "subscribed"
    assert WARNING not in log.read_text()


def test_host_without_port_is_refused_with_one_warning_naming_the_fix(proxied: Proxied) -> None:
    server, proxy, log = proxied(forward_host=False)
    for _ in range(3):
        with pytest.raises(InvalidStatus) as refused:
            open_ws(server, proxy)
        assert refused.value.response.status_code == 403
    until(lambda: WARNING in log.read_text(), what="the warning in the server's log")
    text = log.read_text()
    assert text.count(WARNING) == 1, text  # once per process, not per request
    assert f"Origin {proxy.url}" in text
    assert "'127.0.0.1'" in text and f"'127.0.0.1:{proxy.port}'" in text
    assert "proxy_set_header Host $http_host;" in text
    assert "X-Forwarded-Host" in text


def test_forwarded_host_from_an_untrusted_peer_is_ignored(proxied: Proxied) -> None:
    server, proxy, log = proxied(forward_host=True, FORWARDED_ALLOW_IPS="10.255.255.1")
    with pytest.raises(InvalidStatus) as refused:
        open_ws(server, proxy)
    assert refused.value.response.status_code == 403
    until(lambda: WARNING in log.read_text(), what="the warning in the server's log")
    text = log.read_text()
    assert "came from 127.0.0.1, which FORWARDED_ALLOW_IPS does not trust" in text
    assert "'10.255.255.1'" in text


# --- the trust decision and the header parsing, without a server ---------------------------


def _scope(client: tuple[str, int] | None, **headers: str) -> dict[str, object]:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {"type": "websocket", "client": client, "headers": raw}


def test_forwarded_host_prefers_rfc7239_and_takes_the_first_element() -> None:
    assert forwarded_host(_scope(None)) is None
    assert forwarded_host(_scope(None, x_forwarded_host="a.example:8080, b")) == "a.example:8080"
    both = _scope(None, x_forwarded_host="x.example", forwarded='for=1.2.3.4;host="a.example:81"')
    assert forwarded_host(both) == "a.example:81"
    assert forwarded_host(_scope(None, forwarded="for=1.2.3.4, host=b.example")) is None


def test_peer_trusted_follows_forwarded_allow_ips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    assert peer_trusted(_scope(("127.0.0.1", 50000)))  # uvicorn's default: loopback
    assert peer_trusted(_scope(("::1", 50000)))
    assert not peer_trusted(_scope(("10.1.2.3", 50000)))
    assert not peer_trusted(_scope(None))
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8, 192.0.2.7")
    assert peer_trusted(_scope(("10.1.2.3", 50000)))
    assert peer_trusted(_scope(("192.0.2.7", 50000)))
    assert not peer_trusted(_scope(("127.0.0.1", 50000)))
    # uvicorn replaced a trusted peer's address by X-Forwarded-For's, which has no port
    assert peer_trusted(_scope(("203.0.113.9", 0), x_forwarded_for="203.0.113.9"))
    # an untrusted peer keeps its own address and port, whatever it claims
    assert not peer_trusted(_scope(("203.0.113.9", 40000), x_forwarded_for="10.1.2.3"))
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    assert peer_trusted(_scope(("203.0.113.9", 40000)))
