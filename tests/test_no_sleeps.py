"""Tests wait on conditions, not on the clock.

The rule this test enforces, over every ``tests/**/*.py`` (parsed with ``ast``) and every
file under ``tests/pages/`` (line by line):

* A call to anything named ``sleep`` (``time.sleep``, ``asyncio.sleep``, a bare ``sleep``)
  or Playwright's ``wait_for_timeout`` / ``waitForTimeout``, and in page JS a
  ``setTimeout``, must carry a marker comment on its own line or on the line just above,
  a comment that begins with one of (an optional "a " before it is allowed):

  - ``# poll``: the interval of a loop that re-checks a condition against a deadline
    (prefer ``tests.waiting.until`` / ``until_sync``, which already carry it);
  - ``# window``: a fixed window in which the test asserts that nothing arrives or
    nothing changes (a duplicate, a leave, an expiry...);
  - ``# pace``: spacing out what a load generator or a timer does (a stream of
    publishes, a refresh tick, a CPU hog); it waits on nothing.

* ``sleep(0)`` with a literal ``0`` is exempt: it yields one turn of the event loop (so a
  task just created reaches its first ``await``), deterministic and clock-free.

Anything else that waits for something to happen waits on that thing: an event, a frame,
``tests.waiting.until(probe, timeout, what)``, or ``page.wait_for_function`` in a page.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).parent
SLEEPS = {"sleep", "wait_for_timeout", "waitForTimeout"}
MARKER = re.compile(r"(#|//)\s*(a\s+)?(poll|window|pace)\b", re.IGNORECASE)
JS_SLEEP = re.compile(r"\b(setTimeout|waitForTimeout)\s*\(")


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _is_yield(call: ast.Call) -> bool:
    return (
        len(call.args) == 1
        and isinstance(call.args[0], ast.Constant)
        and call.args[0].value == 0
        and not isinstance(call.args[0].value, bool)
    )


def _marked(lines: list[str], lineno: int) -> bool:
    """``lineno`` is 1-based: the call's line carries a marker, or the line above is a
    comment line that begins with one."""
    here = lines[lineno - 1]
    above = lines[lineno - 2].strip() if lineno >= 2 else ""
    return bool(MARKER.search(here) or MARKER.match(above))


def _shown(path: Path) -> str:
    return str(path.relative_to(TESTS.parent)) if path.is_relative_to(TESTS.parent) else str(path)


def unmarked_python_sleeps(path: Path) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    found = []
    calls = [node for node in ast.walk(ast.parse(text, str(path))) if isinstance(node, ast.Call)]
    for node in sorted(calls, key=lambda call: call.lineno):
        if _called_name(node) not in SLEEPS:
            continue
        if _called_name(node) == "sleep" and _is_yield(node):
            continue
        if not _marked(lines, node.lineno):
            found.append(f"{_shown(path)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def unmarked_page_timers(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [
        f"{_shown(path)}:{n}: {line.strip()}"
        for n, line in enumerate(lines, 1)
        if JS_SLEEP.search(line) and not _marked(lines, n)
    ]


def test_every_sleep_in_the_tests_polls_a_condition_or_is_a_stated_window() -> None:
    found: list[str] = []
    for path in sorted(TESTS.rglob("*.py")):
        found += unmarked_python_sleeps(path)
    for path in sorted((TESTS / "pages").rglob("*")):
        if path.suffix in {".js", ".mjs", ".html"}:
            found += unmarked_page_timers(path)
    assert not found, (
        "a fixed sleep waits for something: wait on the condition instead "
        "(tests.waiting.until, an event, page.wait_for_function), or mark it "
        "'# poll', '# window' or '# pace' as this module's docstring says:\n" + "\n".join(found)
    )


def test_the_scan_catches_an_unmarked_sleep_and_accepts_the_marked_ones(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import asyncio, time\n"
        "async def f():\n"
        "    await asyncio.sleep(0.3)\n"  # 3: caught
        "    await asyncio.sleep(0)\n"  # a yield
        "    await asyncio.sleep(0.3)  # window: nothing may arrive\n"
        "    # poll: until ready\n"
        "    time.sleep(0.1)\n"
        "    await asyncio.sleep(0.1)  # a window in which nothing may expire\n"
        "    await asyncio.sleep(0.01)  # pace: a stream of publishes\n"
        "    await page.wait_for_timeout(100)\n"  # 10: caught (the pace above is not its own)
        "    sleep(1)  # let it settle\n"  # 11: caught
    )
    found = unmarked_python_sleeps(sample)
    assert [line.split(":")[1] for line in found] == ["3", "10", "11"], found
    page = tmp_path / "page.html"
    page.write_text(
        "setTimeout(check, 50);\n// poll: until the client is ready\nsetTimeout(f, 10);\n"
    )
    assert [line.split(":")[1] for line in unmarked_page_timers(page)] == ["1"]
