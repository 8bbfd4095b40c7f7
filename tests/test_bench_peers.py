"""The comparison benchmark's peers and dialects (benchmarks/peers/, pushsvc.bench.dialects).

Only the peers that need nothing beyond pushsvc's own dependencies run here (bare
Starlette on uvicorn, bare ``websockets``); Nchan, node's Socket.IO and python-socketio are
the benchmark's (benchmarks/peers/install.sh), not the tests'. The Socket.IO handshake and
pushsvc's batch framing are checked on the raw client with a recording transport.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pushsvc.auth import Authenticator
from pushsvc.bench import proc
from pushsvc.bench.dialects import (
    NCHAN,
    PEER_ID_RE,
    PUSHSVC,
    PUSHSVC_AS_PEER,
    Dialect,
    socketio,
)
from pushsvc.bench.scenarios import Bench, Options
from pushsvc.bench.server import free_port, spawn, spawn_command
from pushsvc.bench.wire import SSESubscriber, Tally, Target, WSClient, WSSubscriber
from pushsvc.protocol.wsframes import (
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    encode_close,
    encode_frame,
)

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"


def test_compare_runs_the_bare_peers_complete(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    run = subprocess.run(
        [
            sys.executable, str(PEERS / "compare.py"),
            "--servers", "starlette,websockets",
            "-n", "15", "-k", "12", "--latency-subscribers", "8", "--rate", "40",
            "--duration", "0.5", "-c", "30", "--idle-seconds", "0.3",
            "--phase-timeout", "30", "--no-plots", "--out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads((out / "comparison.json").read_text())
    servers = {s["server"]: s for s in doc["servers"]}
    assert set(servers) == {"starlette", "websockets"}
    expected = {
        "starlette": {
            (s, t) for s in ("fanout", "latency", "connections") for t in ("websocket", "sse")
        },
        "websockets": {(s, "websocket") for s in ("fanout", "latency", "connections")},
    }
    for name, server in servers.items():
        assert server["error"] is None
        got = {(p["scenario"], p["transport"]): p for p in server["phases"]}
        assert set(got) == expected[name], name
        for key, phase in got.items():
            assert phase["complete"], (name, key, phase)
            figures = phase["figures"]
            if key[0] == "fanout":
                assert figures["deliveries"] == 15 * 12
                assert figures["server_cpu_us_per_delivery"] > 0
            if key[0] == "latency":
                assert figures["deliveries"] == 8 * 20
                assert 0 <= figures["p50_ms"] <= figures["p99_ms"] < 1000
            if "lost" in figures:
                assert figures["lost"] == 0 and figures["duplicated"] == 0
            if key[0] == "connections":
                assert figures["still_open_after_idle"] == 30
    md = (out / "comparison.md").read_text()
    assert "bare Starlette on uvicorn" in md and "| — |" in md  # websockets has no SSE
    assert "--servers starlette,websockets" in md  # the exact command


def test_compare_runs_handshakes_and_storms_on_the_bare_peers(tmp_path: Path) -> None:
    """The peers cannot resume: they reconnect, are live again, and the table says what
    they missed; their handshakes check no token."""
    out = tmp_path / "cmp"
    run = subprocess.run(
        [
            sys.executable, str(PEERS / "compare.py"),
            "--servers", "starlette", "--scenarios", "handshakes,storm",
            "--handshakes", "60", "--storm-clients", "40", "--storm-channels", "4",
            "--storm-rate", "40", "--storm-timeout", "20", "--phase-timeout", "30",
            "--no-plots", "--out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads((out / "comparison.json").read_text())
    servers = {s["server"]: s for s in doc["servers"]}
    assert set(servers) == {"starlette"}
    for name, server in servers.items():
        got = {(p["scenario"], p["transport"]): p for p in server["phases"]}
        assert set(got) == {(s, t) for s in ("handshakes", "storm") for t in ("websocket", "sse")}
        for key, phase in got.items():
            assert phase["complete"], (name, key, phase)
            f = phase["figures"]
            if key[0] == "handshakes":
                assert f["handshakes"] == 60 and f["handshakes_per_s"] > 0
                assert phase["params"]["token"] == "none (the peer checks no token)"
            else:
                assert f["reconnected"] == 40 and f["resumed"] is False
                assert f["time_to_reconnected_s"] > 0 and f["time_to_caught_up_s"] is None
                assert f["lost"] is None and f["missed_without_resume"] >= 0
    md = (out / "comparison.md").read_text()
    assert "### Handshakes" in md and "### Connection storm" in md
    assert "| starlette sse | no |" in md and "no resume" in md
    assert "WS fan-out" not in md  # only the scenarios that ran have columns


async def test_pushsvc_resumes_a_storm_when_measured_as_a_peer() -> None:
    """The comparison's pushsvc (the payload's sequence numbers, no event-ID order) still
    resumes from the newest cursor each client received: nothing lost or duplicated."""
    server = await asyncio.to_thread(spawn, "memory")
    try:
        assert server.secret is not None
        auth = Authenticator((server.secret,), ())
        token = auth.issue("t", subscribe=["*"], publish=["*"])
        options = Options(
            storm_clients=40, storm_channels=4, storm_rate=40, storm_timeout=20, phase_timeout=20
        )
        bench = Bench(
            server,
            token,
            options,
            dialect=PUSHSVC_AS_PEER,
            mint=lambda subject: auth.issue(subject, subscribe=["*"]),
        )
        for transport in ("websocket", "sse"):
            phase = await bench.storm(transport)
            assert phase.complete, phase
            f = phase.figures
            assert f["resumed"] is True and f["reconnected"] == 40
            assert f["lost"] == f["duplicated"] == f["gaps"] == 0
    finally:
        await asyncio.to_thread(server.stop)


async def test_fanout_with_the_dialect_against_the_bare_starlette_peer() -> None:
    """In process: the raw clients speak the peer's dialect; every subscriber gets every
    event exactly once, and the peer's CPU is measured from /proc."""
    port = free_port()
    cmd = [sys.executable, str(PEERS / "starlette_broadcast.py"), "--port", str(port)]
    server = await asyncio.to_thread(spawn_command, cmd, port, name="starlette")
    try:
        assert server.pids and proc.cpu_seconds(server.pids) is not None
        options = Options(subscribers=10, events=25, settle=0.1, phase_timeout=20)
        bench = Bench(server, "unused", options, dialect=Dialect("starlette"))
        for transport in ("websocket", "sse"):
            phase = await bench.fanout(transport)
            assert phase.complete, phase
            assert phase.figures["deliveries"] == 250
            assert phase.figures["lost"] == phase.figures["duplicated"] == 0
    finally:
        await asyncio.to_thread(server.stop)


async def test_pushsvc_measured_as_a_peer() -> None:
    """The comparison measures pushsvc like a peer: the payload (its event's data) carries
    the sequence number and the generator's clock."""
    server = await asyncio.to_thread(spawn, "memory")
    try:
        assert server.secret is not None
        token = Authenticator((server.secret,), ()).issue("t", subscribe=["*"], publish=["*"])
        options = Options(subscribers=8, events=20, settle=0.1, phase_timeout=20)
        bench = Bench(server, token, options, dialect=PUSHSVC_AS_PEER)
        assert b'"data":"@' in bench.body("c", 3).replace(b" ", b"")
        for transport in ("websocket", "sse"):
            phase = await bench.fanout(transport)
            assert phase.complete, phase
            assert phase.figures["deliveries"] == 160 and phase.figures["duplicated"] == 0
            assert phase.figures["p99_ms"] is not None
    finally:
        await asyncio.to_thread(server.stop)


def test_peer_payload_carries_sequence_and_time() -> None:
    body = Dialect("x").payload(41, 64)
    assert len(body) == 64
    m = PEER_ID_RE.search(body)
    assert m is not None and int(m.group(2)) == 41 and int(m.group(1)) > 1_700_000_000_000
    # it survives inside a Socket.IO event packet (no JSON escaping needed)
    packet = b'42["m",' + json.dumps(body.decode()).encode() + b"]"
    assert PEER_ID_RE.findall(packet) == [(m.group(1), m.group(2))]


def test_unordered_tally_counts_distinct_sequence_numbers() -> None:
    tally = Tally(3, ordered=False)
    tally.add([(b"100", b"1"), (b"99", b"0"), (b"100", b"1")])
    assert (tally.count, tally.dups) == (2, 1)
    tally.add([(b"101", b"2")])
    assert tally.count == 3 and tally.done.is_set()


class Recorder:
    """A stand-in transport: what the client wrote, unmasked."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        if data.startswith(b"GET "):
            self.sent.append(data)
            return
        length = data[1] & 0x7F
        mask, payload = data[2:6], data[6 : 6 + length]
        self.sent.append(bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def server_frame(text: bytes) -> bytes:
    if len(text) < 126:
        return bytes((0x81, len(text))) + text
    assert len(text) < 65536
    return bytes((0x81, 126)) + len(text).to_bytes(2, "big") + text


def upgraded(client: WSClient) -> Recorder:
    transport = Recorder()
    client.connection_made(transport)  # type: ignore[arg-type]
    client.data_received(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    return transport


async def test_socketio_handshake_pings_and_events() -> None:
    target = Target("127.0.0.1", 1, "t", "", socketio("sio"))
    tally = Tally(2, ordered=False)
    client = WSClient(target, tally, "/socket.io/?EIO=4&transport=websocket&channel=c")
    transport = upgraded(client)
    assert transport.sent[0].startswith(b"GET /socket.io/?EIO=4&transport=websocket&channel=c ")
    assert b"Authorization" not in transport.sent[0]
    client.data_received(server_frame(b'0{"sid":"a","upgrades":[],"pingInterval":25000}'))
    assert transport.sent[-1] == b"40"
    assert not tally.subscribed.is_set()
    client.data_received(server_frame(b'40{"sid":"b"}') + server_frame(b"2"))
    assert tally.subscribed.is_set() and transport.sent[-1] == b"3"
    client.data_received(
        server_frame(b'42["m","@1764000000000-0@xx"]')
        + server_frame(b'42["m","@1764000000001-1@"]')
    )
    assert tally.count == 2 and tally.done.is_set()


async def test_pushsvc_client_asks_for_batch_framing_and_splits_messages() -> None:
    target = Target("127.0.0.1", 1, "tok", "k", PUSHSVC)
    tally = Tally(3)
    client = WSClient(target, tally)
    transport = upgraded(client)
    assert transport.sent[0].startswith(b"GET /v1/ws?batch=1 HTTP/1.1")
    assert b"Authorization: Bearer tok" in transport.sent[0]
    frames: list[dict[str, Any]] = [
        {"type": "subscribed", "cursor": "C0"},
        {"type": "event", "channel": "c", "id": "1764000000000-1", "data": {"n": 0}},
        {"type": "event", "channel": "c", "id": "1764000000000-2", "data": {"n": 1}},
    ]
    batch = "\n".join(json.dumps(f, separators=(",", ":")) for f in frames).encode()
    client.data_received(server_frame(batch))
    assert tally.subscribed.is_set() and tally.cursor == "C0"
    assert (tally.count, tally.dups) == (2, 0)
    one = {"type": "event", "channel": "c", "id": "1764000000001-0", "data": {"n": 2}}
    client.data_received(server_frame(json.dumps(one, separators=(",", ":")).encode()))
    assert tally.count == 3 and tally.done.is_set()


async def test_ws_client_reassembles_fragments_answers_pings_and_keeps_the_close_code() -> None:
    tally = Tally(2)
    client = WSClient(Target("127.0.0.1", 1, "tok", "k", PUSHSVC), tally)
    transport = upgraded(client)
    event = b'{"type":"event","channel":"c","id":"1764000000000-1","data":{}}'
    second = b'{"type":"event","channel":"c","id":"1764000000000-2","data":{}}'
    client.data_received(
        encode_frame(OP_TEXT, event[:20], fin=False) + encode_frame(OP_PING, b"hi")
    )
    assert transport.sent[-1] == b"hi" and tally.count == 0  # the pong, unmasked
    wire = encode_frame(OP_CONTINUATION, event[20:]) + encode_frame(OP_TEXT, second)
    client.data_received(wire[:-5])  # the second frame arrives in two parts
    assert tally.count == 1
    client.data_received(wire[-5:] + encode_frame(OP_CLOSE, encode_close(4008, "slow")))
    assert tally.count == 2 and client.close_code == 4008 and transport.closed


async def test_ws_client_closes_on_a_broken_frame() -> None:
    client = WSClient(Target("127.0.0.1", 1, "tok", "k", PUSHSVC), Tally())
    transport = upgraded(client)
    client.data_received(b"\xc1\x00")  # RSV1 set: no extension was negotiated
    assert client.close_code == 1002 and transport.closed


def test_the_subscriber_paths_follow_the_dialect() -> None:
    assert Dialect("x").path(Dialect("x").ws_path, "a b/c") == "/ws?channel=a%20b%2Fc"
    assert socketio("s").transports == ("websocket",)
    assert Dialect("x").transports == ("websocket", "sse")
    assert PUSHSVC.transports == ("websocket", "sse", "long-polling")
    assert WSSubscriber.transport_name == "websocket"


async def test_a_storm_client_keeps_the_newest_cursor_of_every_transport() -> None:
    """Only a client that keeps its cursor (the storm's) reads it from every event: a
    pushsvc WebSocket event's cursor, an SSE id: line, a Nchan ws+meta.nchan message's
    id (asked for with the subprotocol)."""
    plain = Tally()
    client = WSClient(Target("127.0.0.1", 1, "tok", "k", PUSHSVC), plain)
    upgraded(client)
    event = b'{"type":"event","channel":"c","id":"1764000000000-1","data":{},"cursor":"c1A"}'
    client.data_received(server_frame(event))
    assert plain.count == 1 and plain.cursor is None
    kept = Tally()
    kept.keep_cursor = True
    client = WSClient(Target("127.0.0.1", 1, "tok", "k", PUSHSVC), kept)
    upgraded(client)
    second = event.replace(b"-1", b"-2").replace(b"c1A", b"c1B")
    client.data_received(server_frame(event + b"\n" + second))
    assert kept.count == 2 and kept.cursor == "c1B"

    nchan = Tally(ordered=False)
    nchan.keep_cursor = True
    client = WSClient(Target("127.0.0.1", 1, "", "", NCHAN), nchan, "/ws?channel=c")
    transport = upgraded(client)
    assert b"Sec-WebSocket-Protocol: ws+meta.nchan\r\n" in transport.sent[0]
    client.data_received(server_frame(b"id: 1795999802:3\n\n@1764000000000-7@xx"))
    assert nchan.count == 1 and nchan.cursor == "1795999802:3"
    assert b"Sec-WebSocket-Protocol" not in upgraded(WSClient(client.target, Tally())).sent[0]

    sse = SSESubscriber(Target("127.0.0.1", 1, "", "", NCHAN), "c", Tally(ordered=False))
    sse.tally.keep_cursor = True
    sse.pushsvc, sse.id_re, sse.buf = False, NCHAN.id_re, b""
    sse._chunk(b"id: 17:0\ndata: @1764000000000-0@\n\nid: 17:1\ndata: @1764000000000-1@\n\n")
    assert sse.tally.count == 2 and sse.tally.cursor == "17:1"
