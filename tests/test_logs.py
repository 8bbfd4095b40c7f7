"""Logging: the access-log setting, the redaction's fast path, and the queue that keeps log
writes off the event loop (``pushsvc.logs``)."""

from __future__ import annotations

import io
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pushsvc import logs
from tests.fixtures_server import API_KEY, SECRET, free_port
from tests.waiting import until_sync

SECRETS = [
    ("GET /v1/sse?channel=a&token=abc.def-1 HTTP/1.1", "token=abc.def-1"),
    ("GET /v1/ws?Token=xyz HTTP/1.1", "Token=xyz"),
    ("GET /v1/poll?ACCESS_TOKEN=qq&channel=a HTTP/1.1", "ACCESS_TOKEN=qq"),
    ("POST /v1/publish?api_key=k1 HTTP/1.1", "api_key=k1"),
]


@pytest.mark.parametrize(("line", "secret"), SECRETS)
def test_redact_replaces_every_credential_parameter(line: str, secret: str) -> None:
    redacted = logs.redact(line)
    assert secret not in redacted
    assert secret.split("=")[0] + "=REDACTED" in redacted


def test_redact_returns_a_line_without_credentials_unchanged() -> None:
    line = "GET /v1/poll?channel=news&cursor=v1.abc&timeout=20 HTTP/1.1"
    assert logs.redact(line) is line  # no copy: the regular expression did not run


class Blocking(logging.Handler):
    """A handler whose writes wait until released (a full pipe, a stuck terminal)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.lines: list[str] = []
        self.threads: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.gate.wait(10)
        self.threads.add(threading.current_thread().name)
        self.lines.append(self.format(record))


@pytest.fixture
def handed_off() -> Iterator[tuple[logging.Logger, Blocking]]:
    name = f"pushsvc-test-{time.monotonic_ns()}"
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = Blocking()
    logger.addHandler(handler)
    logs.hand_off(name)
    yield logger, handler
    handler.gate.set()
    logs.stop_hand_off()
    logger.handlers.clear()


def test_a_log_call_does_not_wait_for_a_blocked_handler(
    handed_off: tuple[logging.Logger, Blocking],
) -> None:
    logger, handler = handed_off
    started = time.monotonic()
    for i in range(100):
        logger.info("GET /v1/sse?token=secret-%d HTTP/1.1", i)
    # the writes are blocked: had a call waited for one, this would take 10 s per line
    assert time.monotonic() - started < 5
    assert handler.lines == []
    handler.gate.set()
    until_sync(lambda: len(handler.lines) == 100, what="the queued lines written")
    assert handler.threads == {"pushsvc-log"}
    assert not any("secret-" in line for line in handler.lines)
    assert handler.lines[0].endswith("token=REDACTED HTTP/1.1")


def test_records_propagated_from_a_child_logger_are_redacted(
    handed_off: tuple[logging.Logger, Blocking],
) -> None:
    logger, handler = handed_off
    handler.gate.set()
    logger.getChild("connections").warning("refused ?api_key=%s", "k-123")
    until_sync(lambda: handler.lines, what="the child's line")
    assert handler.lines == ["refused ?api_key=REDACTED"]


def test_stop_writes_what_is_queued(handed_off: tuple[logging.Logger, Blocking]) -> None:
    logger, handler = handed_off
    for i in range(10):
        logger.info("line %d", i)
    handler.gate.set()
    logs.stop_hand_off()
    assert handler.lines == [f"line {i}" for i in range(10)]


def test_hand_off_is_idempotent() -> None:
    name = f"pushsvc-test-{time.monotonic_ns()}"
    logger = logging.getLogger(name)
    stream = io.StringIO()
    logger.addHandler(logging.StreamHandler(stream))
    try:
        logs.hand_off(name)
        logs.hand_off(name)
        assert len(logger.handlers) == 1
        logger.warning("once")
        logs.stop_hand_off()
        assert stream.getvalue() == "once\n"
    finally:
        logger.handlers.clear()


def _serve(tmp_path: Any, *args: str) -> tuple[subprocess.Popen[bytes], str, Any]:
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "PUSHSVC_SECRETS": SECRET,
        "PUSHSVC_API_KEYS": API_KEY,
    }
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pushsvc", "serve", "--port", str(port), *args],
            stdout=out,
            stderr=out,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log_path.read_text()
        try:
            return httpx.get(url + "/healthz", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    until_sync(ready, timeout=20, what="pushsvc serve answering /healthz", interval=0.05)
    return proc, url, log_path


@pytest.mark.parametrize(("args", "logged"), [((), False), (("--access-log",), True)])
def test_serve_writes_request_lines_only_with_access_log(
    tmp_path: Any, args: tuple[str, ...], logged: bool
) -> None:
    proc, url, log_path = _serve(tmp_path, *args)
    try:
        r = httpx.post(
            url + "/v1/publish",
            json={"channel": "news", "data": 1},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert r.status_code == 200, r.text
        params = {"channel": "news", "timeout": 0, "token": "tok-xyz-123"}
        assert httpx.get(url + "/v1/poll", params=params).status_code == 401
        assert httpx.get(url + "/healthz", params={"api_key": API_KEY}).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    text = log_path.read_text()
    assert API_KEY not in text and "tok-xyz-123" not in text
    assert ("POST /v1/publish" in text) is logged
    if logged:  # written by the thread, flushed at exit, redacted
        assert "api_key=REDACTED" in text and "token=REDACTED" in text


@pytest.mark.parametrize(
    ("msg", "args"),
    [
        ("subscribe ?token=%s failed", ("sekrit-1",)),
        ("%(method)s %(path)s", {"method": "GET", "path": "/v1/sse?token=sekrit-1"}),
        ("GET /v1/sse?token=sekrit-1 (%d)", (3,)),
    ],
)
def test_the_filter_redacts_however_the_token_reaches_the_message(msg: str, args: Any) -> None:
    record = logging.LogRecord("pushsvc", logging.INFO, __file__, 1, msg, args, None)
    assert logs.RedactCredentials().filter(record)
    message = record.getMessage()
    assert "sekrit-1" not in message and "token=REDACTED" in message
