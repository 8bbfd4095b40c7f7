"""What importing pushsvc loads: the app needs neither the bench (rich, matplotlib: the
``[bench]`` extra) nor uvicorn's internals, and the CLI loads the bench only when
``pushsvc bench`` runs. Each check runs in a fresh interpreter, with ``-X importtime``
(every module imported, from its stderr) and ``sys.modules`` after the import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

BENCH_ONLY = ("rich", "matplotlib", "pushsvc.bench")


def loaded(code: str) -> tuple[set[str], set[str]]:
    """The modules that running ``code`` imports: as ``-X importtime`` reports them, and
    as ``sys.modules`` holds them afterwards (``code`` must not print)."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    timed = {
        line.rpartition("|")[2].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and not line.endswith("| imported package")
    }
    return timed, set(json.loads(proc.stdout.splitlines()[-1]))


def offending(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(
        m for m in modules if m in prefixes or m.startswith(tuple(p + "." for p in prefixes))
    )


def test_importing_the_app_loads_neither_the_bench_nor_uvicorn_internals() -> None:
    timed, modules = loaded("import pushsvc.app")
    assert "pushsvc.app" in timed and "pushsvc.app" in modules
    for found in (timed, modules):
        assert offending(found, BENCH_ONLY) == []
        assert offending(found, ("uvicorn", "httptools", "pushsvc.server")) == []


def test_the_cli_module_does_not_load_the_bench() -> None:
    timed, modules = loaded("import pushsvc.cli")
    assert "pushsvc.cli" in timed and "pushsvc.cli" in modules
    for found in (timed, modules):
        assert offending(found, BENCH_ONLY) == []


@pytest.mark.parametrize("args", [["serve", "--help"], ["--help"]])
def test_serve_help_does_not_load_the_bench(args: list[str]) -> None:
    code = (
        "import contextlib, io\n"
        "from pushsvc.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    main({args!r}, prog_name='pushsvc', standalone_mode=False)\n"
        "assert 'Usage: pushsvc' in out.getvalue()\n"
    )
    timed, modules = loaded(code)
    for found in (timed, modules):
        assert offending(found, BENCH_ONLY) == []


def test_the_bench_command_is_loaded_when_it_runs() -> None:
    # the other side of the lazy import: `pushsvc bench --help` does import it
    code = (
        "import contextlib, io\n"
        "from pushsvc.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    main(['bench', '--help'], prog_name='pushsvc', standalone_mode=False)\n"
        "assert 'Usage: pushsvc bench' in out.getvalue()\n"
    )
    timed, modules = loaded(code)
    assert "pushsvc.bench.cli" in modules and "rich" in modules
    # -X importtime times only `import` statements, not importlib.import_module (which
    # pushsvc.cli uses for the bench): what the bench's modules import shows
    assert "rich" in timed and "pushsvc.bench.scenarios" in timed
