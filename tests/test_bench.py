"""``pushsvc bench`` at a tiny scale: every scenario runs, the report files are written and
every event reached every subscriber exactly once. Full-scale runs are the benchmark's
(benchmarks/README.md), not the tests'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from pushsvc.bench.cli import bench
from tests.fixtures_server import API_KEY, SECRET, Server

TINY = [
    "-n", "12", "-k", "15", "--rate", "30", "--duration", "0.5", "-c", "30",
    "--idle-seconds", "0.5", "-m", "250", "--publishes", "200", "--batch", "50",
    "--handshakes", "40", "--storm-clients", "30", "--storm-channels", "3",
    "--storm-rate", "30", "--no-progress",
]  # fmt: skip


def run_bench(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushsvc.bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def phases(out: Path) -> list[dict[str, Any]]:
    doc = json.loads((out / "bench.json").read_text())
    result: list[dict[str, Any]] = doc["phases"]
    return result


def test_every_scenario_runs_complete_with_a_spawned_server(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_bench("--spawn", "memory", "--out", str(out), *TINY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("bench.json", "bench.md", "latency.png", "fanout.png"):
        assert (out / name).exists(), name
    assert (out / "latency.png").read_bytes().startswith(b"\x89PNG")
    got = {(p["scenario"], p["transport"]): p for p in phases(out)}
    transports = ("websocket", "sse", "long-polling")
    expected = {(s, t) for s in ("fanout", "latency", "connections", "resume") for t in transports}
    expected |= {("publish", "single"), ("publish", "batch"), ("idle", "mixed")}
    # a long-poll holds no connection to open or drop: handshakes and storm are streams'
    expected |= {(s, t) for s in ("handshakes", "storm") for t in ("websocket", "sse")}
    assert set(got) == expected
    for key, phase in got.items():
        assert phase["complete"], (key, phase)
        figures = phase["figures"]
        if "lost" in figures:
            assert figures["lost"] == 0 and figures["duplicated"] == 0, key
    for t in transports:
        fan = got[("fanout", t)]["figures"]
        assert fan["deliveries"] == 12 * 15
        assert fan["server_cpu_us_per_delivery"] > 0  # the spawned server is local
        assert fan["server_events_per_write"] is not None  # read from its /metrics
        lat = got[("latency", t)]["figures"]
        assert lat["deliveries"] == 12 * 15 and lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        conn = got[("connections", t)]["figures"]
        assert conn["connections_open"] == conn["still_open_after_idle"] == 30
        assert conn["server_rss_kib_per_connection"] is not None
        res = got[("resume", t)]["figures"]
        assert res["replayed"] == 250 and res["gaps"] == 0
    idle = got[("idle", "mixed")]
    assert idle["params"]["transports"] == ",".join(transports)
    assert idle["figures"]["connections_open"] == idle["figures"]["still_open_after_idle"] == 30
    assert got[("publish", "batch")]["figures"]["messages"] == 200
    for t in ("websocket", "sse"):
        assert got[("handshakes", t)]["figures"]["handshakes"] == 40
        storm = got[("storm", t)]["figures"]
        assert storm["reconnected"] == 30 and storm["resumed"] is True
    report = (out / "bench.md").read_text()
    assert "## fanout" in report and "no event lost or duplicated" in report
    assert "--no-progress" in report  # the exact command is recorded
    meta = json.loads((out / "bench.json").read_text())["meta"]
    assert meta["pinning"].startswith("server on CPU") or meta["pinning"] == "none"


@pytest.mark.parametrize("secret_from", ["option", "PUSHSVC_SECRETS", "PUSHSVC_SECRET"])
def test_bench_against_a_running_server_matches_its_metrics(
    secret_from: str, server: Server, tmp_path: Path
) -> None:
    """The secret as ``pushsvc serve`` takes it: ``--secret`` or ``PUSHSVC_SECRETS`` (the
    first of the list signs); the old ``PUSHSVC_SECRET`` still works, with a warning."""

    def delivered() -> float:
        text = httpx.get(server.url + "/metrics").text
        line = next(
            x
            for x in text.splitlines()
            if x.startswith('pushsvc_events_delivered_total{transport="websocket"}')
        )
        return float(line.split()[-1])

    before = delivered()
    out = tmp_path / "out"
    secret_args = ["--secret", SECRET] if secret_from == "option" else []
    env = {"PUSHSVC_SECRETS": "", "PUSHSVC_SECRET": ""}
    if secret_from == "PUSHSVC_SECRETS":
        env["PUSHSVC_SECRETS"] = f"{SECRET}, an-older-secret"
    elif secret_from == "PUSHSVC_SECRET":
        env["PUSHSVC_SECRET"] = SECRET
    proc = run_bench(
        "fanout",
        "--url",
        server.url,
        *secret_args,
        "--api-key",
        API_KEY,
        "-t",
        "ws",
        "--out",
        str(out),
        "--no-plots",
        *TINY,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deprecated = "PUSHSVC_SECRET is deprecated" in proc.stderr
    assert deprecated == (secret_from == "PUSHSVC_SECRET")
    [phase] = phases(out)
    assert phase["complete"]
    assert phase["figures"]["deliveries"] == 12 * 15 == delivered() - before
    # the server behind a loopback --url is found in /proc: its CPU is measured
    assert phase["figures"]["server_cpu_us_per_delivery"] is not None
    assert SECRET not in (out / "bench.md").read_text()  # credentials are not recorded


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_idle_with_presence_reports_its_cost(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A few presence connections (each its own member, 4 per channel) held idle: every
    subscriber got its snapshot, nothing arrived while idle, and the figures are there:
    the refreshes (fast ones here), and on Redis the commands it processed."""
    out = tmp_path / "out"
    args = ["idle", "--presence", "-c", "24", "--channel-size", "4", "--idle-seconds", "1.5"]
    if backend == "redis":
        args += ["--redis-url", request.getfixturevalue("redis_server_url")]
    fast = {"PUSHSVC_PRESENCE_REFRESH_INTERVAL": "0.25", "PUSHSVC_PRESENCE_TTL": "2"}
    proc = run_bench(
        "--spawn", backend, "--out", str(out), "--no-progress", "--no-plots", *args, env=fast
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [phase] = phases(out)
    assert phase["complete"], phase
    params, figures = phase["params"], phase["figures"]
    assert params["presence"] is True and params["tokens"] == "one per connection"
    assert figures["connections_open"] == figures["still_open_after_idle"] == 24
    assert figures["channels"] == 6  # 8 per transport, 4 per channel
    assert figures["presence_snapshots"] >= 24  # one at least per subscriber
    # joins: only those newer than a member's snapshot (none when all joined at once)
    assert figures["presence_joins"] >= 0
    assert figures["presence_frames_while_idle"] == 0 and figures["presence_leaves"] == 0
    assert figures["server_idle_cpu_percent"] is not None
    assert figures["presence_refreshes"] >= 2
    assert figures["presence_refresh_ms_mean"] > 0
    assert figures["backend_calls_per_s"]["presence_refresh"] > 0
    report = (out / "bench.md").read_text()
    assert "presence refreshes" in report and "presence = True" in report
    if backend == "redis":
        # one script per channel per refresh, plus the long-polls' joins when re-polled
        assert figures["redis_script_calls_per_s"] > 0
        assert figures["redis_commands_per_s"] >= figures["redis_script_calls_per_s"]
        assert figures["redis_calls_per_s"]["evalsha"] > 0
        assert "Redis while idle" in report
    else:
        assert "redis_commands_per_s" not in figures


def test_storm_resumes_every_client_from_its_cursor(tmp_path: Path) -> None:
    """50 clients per transport drop their connections at once and reconnect at once with
    their cursors while events keep coming: every client is back, has every event once,
    and the storm's times, CPU and RSS are reported."""
    out = tmp_path / "out"
    args = ["storm", "-t", "ws,sse", "--storm-clients", "50", "--storm-channels", "5"]
    args += ["--storm-rate", "50", "--storm-timeout", "30"]
    proc = run_bench("--spawn", "memory", "--out", str(out), "--no-progress", "--no-plots", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = {p["transport"]: p for p in phases(out)}
    assert set(got) == {"websocket", "sse"}
    for transport, phase in got.items():
        assert phase["complete"], (transport, phase)
        assert phase["params"]["resume"] is True
        assert phase["params"]["token"] == "one per connection, each checked"
        f = phase["figures"]
        assert f["clients"] == f["reconnected"] == 50
        assert f["lost"] == f["duplicated"] == f["gaps"] == 0
        assert f["events_published"] > f["events_during_storm"] >= 0
        assert 0 < f["time_to_reconnected_s"] <= f["time_to_caught_up_s"] < 30
        assert f["reconnect_p50_ms"] <= f["reconnect_p99_ms"]
        assert f["server_cpu_us_per_reconnect"] > 0 and f["server_cpu_s"] > 0
        assert f["server_rss_peak_mib"] >= f["server_rss_before_mib"] > 0
        assert f["missed_without_resume"] is None
    report = (out / "bench.md").read_text()
    assert "## storm" in report and "all caught up" in report


def test_handshakes_open_connections_each_with_its_token(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["handshakes", "-t", "ws,sse", "--handshakes", "100", "--handshake-concurrency", "20"]
    proc = run_bench("--spawn", "memory", "--out", str(out), "--no-progress", "--no-plots", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = {p["transport"]: p for p in phases(out)}
    assert set(got) == {"websocket", "sse"}
    for transport, phase in got.items():
        assert phase["complete"], (transport, phase)
        assert phase["params"] == {
            "connections": 100,
            "concurrency": 20,
            "token": "one per connection, each checked",
        }
        f = phase["figures"]
        assert f["handshakes"] == 100 and f["failed"] == 0
        assert f["handshakes_per_s"] > 0
        assert 0 < f["handshake_p50_ms"] <= f["handshake_p99_ms"] <= f["handshake_max_ms"]
        assert f["server_cpu_us_per_handshake"] > 0
    assert "## handshakes" in (out / "bench.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--url", "http://192.0.2.1:8000", "--api-key", "k", "--secret", "s"], "--allow-remote"),
        (["--url", "http://127.0.0.1:9", "--secret", "s"], "--api-key"),
        ([], "exactly one of --url and --spawn"),
        (["--spawn", "memory", "--url", "http://127.0.0.1:9"], "exactly one"),
    ],
)
def test_bench_refuses_unsafe_or_incomplete_targets(args: list[str], message: str) -> None:
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.slow
def test_fanout_at_full_scale(tmp_path: Path) -> None:
    """1,000 subscribers x 300 events per transport (minutes; run with -m slow)."""
    proc = run_bench(
        "fanout", "--spawn", "memory", "-n", "1000", "-k", "300", "--no-progress",
        "--out", str(tmp_path),
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(p["complete"] for p in phases(tmp_path))
