"""What a benchmark run leaves behind: a table on the terminal, ``bench.json``,
``bench.md`` and PNG plots (``latency.png``: publish->receive distribution per transport;
``fanout.png``: deliveries/s and server CPU per delivery per transport) in ``--out``.

matplotlib is imported only here and only when plotting (the ``bench`` extra); without it
the plots are skipped and the report says so.

The public functions beside ``markdown``, ``write_json``, ``print_table`` and ``plot`` are
the building blocks other reports of the same runs use (``benchmarks/peers/compare.py``):
the run's metadata (``git_describe``, ``load_average``, ``machine``, ``pinning``,
``utc_now``) and Markdown pieces (``rows``, ``markdown_table``, ``meta_lines``,
``saturated_sentence``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pushsvc.bench.scenarios import SATURATED, Phase

# (scenario, figure key, column title) in display order
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "fanout": [
        ("subscribers_connected", "subscribers"),
        ("deliveries", "deliveries"),
        ("deliveries_per_s", "deliveries/s"),
        ("server_cpu_us_per_delivery", "server CPU µs/delivery"),
        ("generator_cpu_us_per_delivery", "generator CPU µs/delivery"),
        ("server_events_per_write", "events/write"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("lost", "lost"),
        ("duplicated", "dup"),
    ],
    "latency": [
        ("subscribers_connected", "subscribers"),
        ("deliveries", "deliveries"),
        ("first_p50_ms", "first subscriber p50 ms"),
        ("p50_ms", "p50 ms"),
        ("p90_ms", "p90 ms"),
        ("p99_ms", "p99 ms"),
        ("max_ms", "max ms"),
        ("lost", "lost"),
        ("duplicated", "dup"),
    ],
    "connections": [
        ("connections_open", "connections"),
        ("still_open_after_idle", "open after idle"),
        ("channels", "channels"),
        ("server_rss_kib_per_connection", "server RSS KiB/conn"),
        ("server_idle_cpu_percent", "server idle CPU %"),
        ("redis_commands_per_s", "Redis commands/s"),
        ("redis_cpu_percent", "Redis CPU %"),
    ],
    "idle": [
        ("connections_open", "connections"),
        ("still_open_after_idle", "open after idle"),
        ("channels", "channels"),
        ("server_rss_kib_per_connection", "server RSS KiB/conn"),
        ("server_idle_cpu_percent", "server idle CPU %"),
        ("redis_commands_per_s", "Redis commands/s"),
        ("redis_cpu_percent", "Redis CPU %"),
    ],
    "resume": [
        ("replayed", "replayed"),
        ("time_to_caught_up_s", "caught up s"),
        ("replay_events_per_s", "events/s"),
        ("server_cpu_us_per_event", "server CPU µs/event"),
        ("lost", "lost"),
        ("duplicated", "dup"),
        ("gaps", "gaps"),
    ],
    "handshakes": [
        ("handshakes", "handshakes"),
        ("handshakes_per_s", "handshakes/s"),
        ("handshake_p50_ms", "p50 ms"),
        ("handshake_p99_ms", "p99 ms"),
        ("server_cpu_us_per_handshake", "server CPU µs/handshake"),
        ("generator_cpu_us_per_handshake", "generator CPU µs/handshake"),
        ("failed", "failed"),
    ],
    "storm": [
        ("clients", "clients"),
        ("resumed", "resume"),
        ("time_to_reconnected_s", "all reconnected s"),
        ("reconnect_p99_ms", "reconnect p99 ms"),
        ("time_to_caught_up_s", "all caught up s"),
        ("events_during_storm", "events in storm"),
        ("server_cpu_us_per_reconnect", "server CPU µs/reconnect"),
        ("server_rss_peak_mib", "server peak RSS MiB"),
        ("lost", "lost"),
        ("duplicated", "dup"),
        ("missed_without_resume", "missed (no resume)"),
    ],
    "publish": [
        ("messages", "messages"),
        ("requests_per_s", "requests/s"),
        ("messages_per_s", "messages/s"),
        ("request_p50_ms", "req p50 ms"),
        ("request_p99_ms", "req p99 ms"),
        ("server_cpu_us_per_message", "server CPU µs/msg"),
        ("rejected", "rejected"),
    ],
}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        if value >= 100:
            return f"{value:.1f}"
        return f"{value:.3g}" if value < 10 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def rows(phases: Sequence[Phase], scenario: str) -> tuple[list[str], list[list[str]]]:
    cols = COLUMNS[scenario]
    head = ["transport", *[title for _, title in cols], "server CPU", "generator CPU", "ok"]
    body = []
    for p in phases:
        if p.scenario != scenario:
            continue
        gen = _cpu(p.generator_cpu) + (" SATURATED" if p.saturated else "")
        ok = "yes" if p.complete else ("TIMEOUT" if p.timed_out else "NO")
        body.append(
            [p.transport, *[_fmt(p.figures.get(k)) for k, _ in cols], _cpu(p.server_cpu), gen, ok]
        )
    return head, body


def print_table(phases: Sequence[Phase], console: Console) -> None:
    for scenario in COLUMNS:
        head, body = rows(phases, scenario)
        if not body:
            continue
        table = Table(title=scenario, title_justify="left")
        for i, h in enumerate(head):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in body:
            table.add_row(*row)
        console.print(table)
    saturated = [p for p in phases if p.saturated]
    if saturated:
        names = ", ".join(f"{p.scenario}/{p.transport}" for p in saturated)
        console.print(
            f"[bold yellow]generator saturated (> {SATURATED:.0%} of a core)[/] in: {names}; "
            "those figures may be limited by the load generator, not the server"
        )


def write_json(path: Path, meta: dict[str, Any], phases: Sequence[Phase]) -> None:
    doc = {"meta": meta, "phases": [p.as_dict() for p in phases]}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


# --- the run's metadata ----------------------------------------------------------------------


def git_describe() -> str | None:
    """The commit of the pushsvc source tree the server runs from (dirty: local edits)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def load_average() -> str | None:
    """The machine's 1/5/15-minute load averages: other work skews the figures."""
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    return None


def machine() -> str:
    """Architecture, CPU count and platform, as the reports state them."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"


def pinning(server_cpu: int | None, generator_cpu: int | None) -> str:
    """How the run pinned server and generator ("none" when the generator was not)."""
    if generator_cpu is None:
        return "none"
    return f"server on CPU {server_cpu}, generator on CPU {generator_cpu}"


def utc_now() -> str:
    """Now, to the second, as the reports' ``started``/``finished``."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# --- Markdown ----------------------------------------------------------------------------------


def markdown_table(head: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.extend("| " + " | ".join(row) + " |" for row in body)
    return lines


def meta_lines(meta: dict[str, Any], keys: Iterable[str]) -> list[str]:
    """``- key: value`` for each of ``keys`` that ``meta`` has (and is not None)."""
    return [f"- {key}: {meta[key]}" for key in keys if meta.get(key) is not None]


def saturated_sentence(names: Sequence[str]) -> str:
    """The warning for phases where the generator was saturated (``names``: which)."""
    return (
        f"**The generator was saturated** (above {SATURATED:.0%} of a core) in: "
        + ", ".join(names)
        + ". Those figures may be limited by the generator rather than the server."
    )


def markdown(meta: dict[str, Any], phases: Sequence[Phase], plots: Sequence[str]) -> str:
    """``bench.md``: the run, a section per scenario, the generator's load, the plots."""
    out = ["# pushsvc bench", "", f"- command: `{meta.get('command', '')}`"]
    keys = ("started", "server", "backend", "pinning", "machine", "python", "pushsvc", "git")
    out += meta_lines(meta, (*keys, "load_average_at_start", "load_average_at_end"))
    out += ["", _GLOSSARY, ""]
    for scenario in COLUMNS:
        out += _scenario_section(phases, scenario)
    out += _generator_section(phases)
    out += _plots_section(meta, plots)
    return "\n".join(out) + "\n"


_GLOSSARY = (
    "*lost*: events a subscriber had not received when its phase ended (a subscriber "
    "that stopped early counts everything it missed); *dup*: events received twice; "
    "*server CPU* and *generator CPU*: fraction of one core over the measured part; "
    "latencies are publish (the event ID's time) to receive, 1 ms resolution."
)


# what a scenario's figures mean, where the column titles cannot say it
EXPLAIN = {
    "handshakes": (
        "Each connection: TCP connect, the WebSocket upgrade or the SSE request with its "
        "token, a subscribe, until subscribed (pushsvc's `subscribed` frame or event; a "
        "peer's 101 or response headers). p50/p99 per connection; server CPU over the "
        "whole opening, divided by the handshakes."
    ),
    "storm": (
        "Every client drops its connection at once (a TCP reset, as a network blip), then "
        "all reconnect at once (`--storm-concurrency` at a time) with their cursor, while "
        "the publisher keeps publishing. *all reconnected*: from the drop until the last "
        "client is subscribed again; *all caught up*: until every client has every event "
        "published up to then; *lost*/*dup* over the whole phase; *server CPU "
        "µs/reconnect*: the server's CPU from the drop until the last reconnect, per "
        "client (the steady publishing included); peak RSS sampled every 50 ms. Without "
        "resume a client reconnects without a position: *missed* counts what it lost."
    ),
}


def _scenario_section(phases: Sequence[Phase], scenario: str) -> list[str]:
    head, body = rows(phases, scenario)
    if not body:
        return []
    params = next(p.params for p in phases if p.scenario == scenario)
    out = [f"## {scenario}", ""]
    out += ["parameters: " + ", ".join(f"{k} = {v}" for k, v in params.items()), ""]
    if scenario in EXPLAIN:
        out += [EXPLAIN[scenario], ""]
    out += markdown_table(head, body)
    out += _idle_details(phases, scenario)
    notes = [f"{p.transport}: {n}" for p in phases if p.scenario == scenario for n in p.notes]
    if notes:
        out.append("")
        out.extend(f"- {n}" for n in notes)
    out.append("")
    return out


def _generator_section(phases: Sequence[Phase]) -> list[str]:
    out = ["## Load generator", ""]
    saturated = [f"{p.scenario}/{p.transport}" for p in phases if p.saturated]
    if saturated:
        out.append(saturated_sentence(saturated))
    else:
        out.append(
            f"The generator stayed below {SATURATED:.0%} of a core in every phase "
            "(column *generator CPU*)."
        )
    incomplete = [f"{p.scenario}/{p.transport}" for p in phases if not p.complete]
    out.append("")
    if incomplete:
        names = ", ".join(incomplete)
        out.append(f"**Incomplete phases**: {names} (see lost / duplicated / notes).")
    else:
        out.append("Every phase was complete: no event lost or duplicated.")
    return out


def _plots_section(meta: dict[str, Any], plots: Sequence[str]) -> list[str]:
    if plots:
        return ["", "## Plots", "", *(f"![{name}]({name})" for name in plots)]
    if meta.get("plots_skipped"):
        return ["", f"Plots skipped: {meta['plots_skipped']}"]
    return []


def _rates(rates: dict[str, float], top: int = 8) -> str:
    shown = [f"{cmd} {_fmt(float(n))}" for cmd, n in list(rates.items())[:top]]
    more = len(rates) - top
    return ", ".join(shown) + (f", and {more} more" if more > 0 else "") if shown else "none"


def _idle_details(phases: Sequence[Phase], scenario: str) -> list[str]:
    """idle/connections: what the idle window cost beside the server's CPU: presence
    frames, the server's backend calls, and what Redis processed."""
    if scenario not in ("idle", "connections"):
        return []
    out: list[str] = []
    for p in phases:
        if p.scenario != scenario:
            continue
        f = p.figures
        lines = []
        if "presence_snapshots" in f:
            lines.append(
                f"presence: {_fmt(f['presence_snapshots'])} snapshots, "
                f"{_fmt(f['presence_joins'])} joins, {_fmt(f['presence_leaves'])} leaves "
                f"received (settled after {_fmt(f.get('presence_settle_s'))} s); "
                f"{_fmt(f['presence_frames_while_idle'])} presence frames while idle"
            )
        if "backend_calls_per_s" in f:
            refresh = ""
            if f.get("presence_refreshes"):
                refresh = (
                    f"; {f['presence_refreshes']} presence refreshes, "
                    f"{_fmt(f['presence_refresh_ms_mean'])} ms each on average"
                )
            lines.append(
                "server's backend calls/s while idle: " + _rates(f["backend_calls_per_s"]) + refresh
            )
        if "redis_commands_per_s" in f:
            lines.append(
                f"Redis while idle: {_fmt(f['redis_commands_per_s'])} commands/s (commands "
                f"inside scripts included), {_fmt(f['redis_script_calls_per_s'])} script "
                f"calls/s, {_fmt(f['redis_cpu_percent'])}% of a core; by command: "
                + _rates(f["redis_calls_per_s"])
            )
        out.extend(f"- {p.transport}: {line}" for line in lines)
    return ["", *out] if out else []


def plot(out: Path, phases: Sequence[Phase]) -> list[str]:
    """Write the PNG plots; answers their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    lat = [p for p in phases if p.scenario == "latency" and p.latencies_ms]
    if not lat:
        lat = [p for p in phases if p.scenario == "fanout" and p.latencies_ms]
    if lat:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for p in lat:
            values = sorted(p.latencies_ms or [])
            n = len(values)
            xs = [max(v, 0.05) for v in values]
            ys = [(i + 1) / n for i in range(n)]
            ax.plot(xs, ys, label=f"{p.transport} (p99 {p.figures.get('p99_ms')} ms)")
        ax.set_xscale("log")
        ax.set_xlabel("publish → receive, ms (log scale)")
        ax.set_ylabel("fraction of deliveries ≤ x")
        ax.set_title(f"publish → receive per transport ({lat[0].scenario}: {_params(lat[0])})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        plt.close(fig)
        written.append("latency.png")
    fan = [p for p in phases if p.scenario == "fanout"]
    if fan:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
        names = [p.transport for p in fan]
        rates = [p.figures.get("deliveries_per_s") or 0 for p in fan]
        cpu = [p.figures.get("server_cpu_us_per_delivery") or 0 for p in fan]
        ax1.bar(names, rates, color="#4477aa")
        ax1.set_title("deliveries / s")
        ax2.bar(names, cpu, color="#cc6677")
        ax2.set_title("server CPU µs / delivery")
        for ax, values in ((ax1, rates), (ax2, cpu)):
            for i, v in enumerate(values):
                ax.annotate(_fmt(float(v)), (i, v), ha="center", va="bottom")
            ax.grid(True, axis="y", alpha=0.3)
        fig.suptitle(f"fanout, {_params(fan[0])}")
        fig.tight_layout()
        fig.savefig(out / "fanout.png", dpi=110)
        plt.close(fig)
        written.append("fanout.png")
    return written


def _params(p: Phase) -> str:
    units = {
        "subscribers": "subscribers",
        "events": "events",
        "rate_per_s": "events/s",
        "duration_s": "s",
    }
    return ", ".join(
        f"{v:g} {units.get(k, k)}" if isinstance(v, float) else f"{v} {units.get(k, k)}"
        for k, v in p.params.items()
        if not isinstance(v, float) or math.isfinite(v)
    )
