"""Local process probes for the benchmark, read from ``/proc`` (Linux only).

- CPU time: the sum over a process's threads of ``/proc/<pid>/task/<tid>/schedstat``'s
  first field (nanoseconds on a CPU; precise, unlike ``stat``'s 10 ms clock ticks), with
  ``/proc/<pid>/stat`` utime + stime as the fallback.
- Memory: ``VmRSS`` from ``/proc/<pid>/status``.
- The server behind a loopback ``--url``: the processes holding the listening socket
  (``/proc/net/tcp*`` for its inode, then ``/proc/*/fd``; needs the rights to read them).

And the generator's own process: its file descriptor limit (``raise_fd_limit``), its event
loop (``loop_factory``: uvloop when installed), its CPU affinity (``pin``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
from collections.abc import Callable
from pathlib import Path

PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def available() -> bool:
    return (PROC / "self" / "stat").exists()


def cpu_seconds(pids: list[int]) -> float | None:
    """CPU seconds used so far by ``pids`` (all threads); ``None`` when unreadable."""
    total = 0.0
    for pid in pids:
        value = _schedstat(pid)
        if value is None:
            value = _stat_cpu(pid)
        if value is None:
            return None
        total += value
    return total


def _schedstat(pid: int) -> float | None:
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
        ns = 0
        for task in tasks:
            with contextlib.suppress(FileNotFoundError):  # a thread ended meanwhile
                ns += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return ns / 1e9


def _stat_cpu(pid: int) -> float | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = raw.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def core_busy_seconds(cpu: int) -> float | None:
    """Seconds core ``cpu`` spent busy (not idle nor waiting for I/O), all processes and
    interrupts together, from ``/proc/stat``."""
    try:
        for line in (PROC / "stat").read_text().splitlines():
            if line.startswith(f"cpu{cpu} "):
                fields = [int(x) for x in line.split()[1:]]
                idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
                # guest time is already counted in user time
                return (sum(fields[:8]) - idle) / _TICK
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes(pids: list[int]) -> int | None:
    total = 0
    for pid in pids:
        try:
            for line in (PROC / str(pid) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError):
            return None
    return total


def listening_pids(port: int) -> list[int]:
    """Processes holding a socket that listens on ``port`` (any local address)."""
    inodes: set[str] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != "0A":  # 0A: LISTEN
                continue
            if int(parts[1].rpartition(":")[2], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return []
    targets = {f"socket:[{inode}]" for inode in inodes}
    pids: list[int] = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        pids.append(int(entry.name))
                        break
        except OSError:
            continue
    return sorted(pids)


def local_ports(pids: list[int]) -> set[int]:
    """The local TCP ports of the sockets ``pids`` hold (their connections to Redis, say)."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in (PROC / str(pid) / "fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    ports: set[int] = set()
    if not inodes:
        return ports
    for name in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) >= 10 and parts[9] in inodes:
                with contextlib.suppress(ValueError):
                    ports.add(int(parts[1].rpartition(":")[2], 16))
    return ports


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, grandchildren, ...), from ``/proc/*/stat``."""
    parents: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw.rpartition(")")[2].split()
        with contextlib.suppress(IndexError, ValueError):
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 10_000:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return sorted(out)


def pin(pid: int, cpus: set[int]) -> bool:
    """Pin ``pid`` (0: this process) to ``cpus``; False where affinity is unsupported."""
    setter = getattr(os, "sched_setaffinity", None)
    if setter is None:
        return False
    try:
        setter(pid, cpus)
    except OSError:
        return False
    return True


def affinity(pid: int = 0) -> set[int] | None:
    getter = getattr(os, "sched_getaffinity", None)
    if getter is None:
        return None
    try:
        cpus: set[int] = getter(pid)
    except OSError:
        return None
    return cpus


def raise_fd_limit() -> None:
    """Raise this process's open-file limit to its hard limit (processes it starts
    inherit it): thousands of connections need as many descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard)
            )


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The generator's event loop for ``asyncio.Runner``: uvloop's when installed (a
    cheaper generator), else None (asyncio's default)."""
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop
    return None
