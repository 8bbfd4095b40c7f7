"""The request-path benchmark (benchmarks/peers/requests.py) end to end, at the smallest
scale: the floor and pushsvc on its memory backend under Debian's wrk, 1 s per run, a few
connections. Every answer must be 2xx and every run must report server CPU per request.
wrk missing fails loudly (scripts/test installs it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "peers" / "requests.py"


def wrk() -> str:
    found = shutil.which("wrk") or ("/usr/bin/wrk" if Path("/usr/bin/wrk").exists() else None)
    if found is None:
        pytest.fail("wrk is not installed: `apt-get install wrk` (scripts/test does it)")
    return found


def test_requests_bench_reports_cpu_per_request_with_every_answer_2xx(tmp_path: Path) -> None:
    out = tmp_path / "req"
    run = subprocess.run(
        [
            sys.executable, str(SCRIPT), "--wrk", wrk(),
            "--servers", "floor,pushsvc-memory", "--scenarios", "publish,poll,poll-idle",
            "--duration", "1", "--warmup", "0", "-c", "4",
            "--idle-connections", "8", "--idle-timeout", "0.3", "--out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((out / "requests.json").read_text())
    runs = {(r["server"], r["scenario"]): r for r in doc["runs"]}
    assert set(runs) == {
        ("floor", "publish"),
        ("floor", "poll"),
        ("pushsvc-memory", "publish"),
        ("pushsvc-memory", "poll"),
        ("pushsvc-memory", "poll-idle"),
    }
    assert doc["skipped"]["poll-idle"]["floor"]  # says why
    for key, r in runs.items():
        f = r["figures"]
        assert r["complete"], (key, r["notes"])
        assert f["requests"] > 0 and f["non_2xx"] == 0, key
        assert sum(f["statuses"].values()) == f["requests"], key
        assert all(200 <= int(status) < 300 for status in f["statuses"]), (key, f["statuses"])
        assert not any(f["socket_errors"].values()), key
        assert f["cpu_us_per_request"] > 0 and f["requests_per_s"] > 0, key
        assert "wrk -t1 -c" in r["command"], key
        if key[0] == "pushsvc-memory":  # its credential is not written out
            assert "WRK_AUTHORIZATION='<wrk_authorization>'" in r["command"], key
    # the idle poll is measured over whole rounds of polls (8 connections, 0.3 s each)
    idle = runs[("pushsvc-memory", "poll-idle")]["figures"]
    assert idle["rounds"]["rounds"] >= 1 and idle["rounds"]["requests"] % 8 == 0
    assert idle["latency_ms"]["p50"] >= 290
    summary = doc["summary"]
    assert summary["publish"]["floor"]["x_floor"] == 1.0
    assert summary["publish"]["pushsvc-memory"]["x_floor"] > 0
    assert summary["poll-idle"]["pushsvc-memory"]["x_answered_poll"] > 0
    pushsvc = next(s for s in doc["servers"] if s["server"] == "pushsvc-memory")
    assert f"from {ROOT / 'pushsvc' / '__init__.py'}" in pushsvc["versions"]
    assert pushsvc["environment"]["PUSHSVC_API_KEYS"] == "<hidden>"
    md = (out / "requests.md").read_text()
    assert "## publish" in md and "## poll-idle" in md and "| pushsvc-memory |" in md
    assert "--servers floor,pushsvc-memory" in md  # the exact command
    assert md.split("\n## publish")[1].split("\n## ")[0] in run.stdout  # the table, printed


def test_requests_bench_measures_a_baseline_checkout_in_the_same_run(tmp_path: Path) -> None:
    # the baseline: this pushsvc package in a git repository of its own, then changed
    base = tmp_path / "before"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "pushsvc", base / "pushsvc", ignore=ignore)
    git = ["git", "-C", str(base), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "pushsvc"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "base"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    with (base / "pushsvc" / "__init__.py").open("a") as f:
        f.write("# changed\n")
    out = tmp_path / "req"
    run = subprocess.run(
        [
            sys.executable, str(SCRIPT), "--wrk", wrk(),
            "--servers", "pushsvc-memory", "--scenarios", "publish", "--baseline-root", str(base),
            "--duration", "1", "--warmup", "0", "-c", "4", "--out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((out / "requests.json").read_text())
    assert [(r["server"], r["complete"]) for r in doc["runs"]] == [
        ("pushsvc-memory", True),
        ("pushsvc-memory@base", True),
    ]
    assert doc["meta"]["baseline"] | {"python": None} == {
        "python": None,
        "root": str(base),
        "commit": commit,
        "dirty": True,
    }
    servers = {s["server"]: s for s in doc["servers"]}
    assert f"from {base / 'pushsvc' / '__init__.py'}" in servers["pushsvc-memory@base"]["versions"]
    assert f"from {ROOT / 'pushsvc' / '__init__.py'}" in servers["pushsvc-memory"]["versions"]
    row = doc["summary"]["publish"]["pushsvc-memory"]
    twin = doc["summary"]["publish"]["pushsvc-memory@base"]
    assert row["after_before"] == round(row["cpu_us_per_request"] / twin["cpu_us_per_request"], 3)
    md = (out / "requests.md").read_text()
    assert "| after/before |" in md and "| pushsvc-memory@base |" in md
    assert f"git {commit} (dirty)" in md
