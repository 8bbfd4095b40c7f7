"""``pushsvc check --backend URL``, run as users run it (the installed command in a
subprocess), against memory://, a real Redis, and a URL where nothing listens."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from urllib.parse import parse_qs, urlsplit

import redis

from pushsvc.backends import BACKENDS
from tests.fixtures_redis import without_query

STEPS = ("connect", "listen", "append", "read back", "notify")


def pushsvc_check(url: str, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushsvc", "check", "--backend", url, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def step_latencies(stdout: str) -> dict[str, float]:
    found = {}
    for line in stdout.splitlines():
        m = re.match(r"(connect|listen|append|read back|notify)\s+([\d.]+) ms", line)
        if m:
            found[m[1]] = float(m[2])
    return found


def test_check_on_memory_runs_every_step_and_prints_its_latency() -> None:
    proc = pushsvc_check("memory://")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(step_latencies(proc.stdout)) == set(STEPS)
    assert "memory (in this process only" in proc.stdout
    assert proc.stdout.rstrip().endswith("the backend is ready for pushsvc")


def test_check_on_redis_reports_version_mode_and_retention_and_leaves_no_key(
    redis_url: str,
) -> None:
    proc = pushsvc_check(
        redis_url, PUSHSVC_RETENTION_MAX_LEN="500", PUSHSVC_RETENTION_APPROXIMATE="0"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(step_latencies(proc.stdout)) == set(STEPS)
    client = redis.Redis.from_url(without_query(redis_url))
    try:
        version = client.info("server")["redis_version"]
        assert f"Redis {version} (standalone)" in proc.stdout
        # the retention a server with the same environment would apply
        assert "exactly the newest 500 events per channel" in proc.stdout
        # the scratch channel's stream is deleted afterwards
        prefix = parse_qs(urlsplit(redis_url).query)["prefix"][0]
        assert client.keys(prefix + "*") == []
    finally:
        client.close()
    assert proc.stderr == ""


def test_check_where_nothing_listens_exits_non_zero_with_one_clear_line() -> None:
    with socket.socket() as s:  # a port that was free a moment ago, and nothing bound to it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = pushsvc_check(f"redis://127.0.0.1:{port}/0")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        f"Error: backend check connect failed: cannot reach Redis at redis://127.0.0.1:{port}/0"
    )
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_check_with_an_unknown_scheme_names_the_valid_ones() -> None:
    proc = pushsvc_check("mongodb://127.0.0.1/")
    assert proc.returncode == 1
    valid = ", ".join(f"{scheme}://" for scheme in BACKENDS)
    assert proc.stderr.strip().splitlines() == [
        "Error: backend check configuration failed: unknown backend URL 'mongodb://127.0.0.1/': "
        f"valid schemes are {valid}"
    ]
