"""The README's test command (``scripts/test``) on a machine without the system packages
the tests start: as a user who cannot install them, it stops at once with the exact
command to run (before it creates or installs anything). As root on Debian it installs
them with apt-get; ``.ci/run`` runs it that way on every submission."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534


def test_without_the_system_packages_a_user_is_told_the_exact_command(tmp_path: Path) -> None:
    # a world-readable copy: the user below may not read this checkout
    where = Path(tempfile.mkdtemp(prefix="pushsvc-setup-", dir="/tmp"))
    try:
        where.chmod(0o755)
        (where / "scripts").mkdir(mode=0o755)
        shutil.copy(ROOT / "scripts" / "test", where / "scripts" / "test")
        (where / "scripts" / "test").chmod(0o755)
        # a PATH that hides redis-server, nginx and chromium, and no other place to look
        env = {"PATH": str(tmp_path / "nothing-here"), "PUSHSVC_SYSTEM_DIRS": "", "HOME": "/"}
        cmd = ["/bin/bash", str(where / "scripts" / "test")]
        if os.geteuid() == 0:  # run it as a user who cannot install anything
            cmd = ["/usr/bin/setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                   "--clear-groups", *cmd]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "the tests need redis-server nginx chromium" in proc.stderr
        assert (
            "sudo apt-get install -y --no-install-recommends redis-server nginx chromium"
            in proc.stderr
        )
        assert sorted(p.name for p in where.iterdir()) == ["scripts"]  # no venv made
    finally:
        shutil.rmtree(where)


def test_the_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nscripts/test\n" in readme
    assert "\nscripts/test\n" in ci
