"""The artefact users install: the wheel and the sdist build, the wheel installs into a
clean virtual environment (its dependencies from the index, nothing from this checkout),
and the installed ``pushsvc`` serves, answers ``--version``, and carries a publish to a
subscriber."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest

import pushsvc
from tests.fixtures_server import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "wheel-test-secret-" + "y" * 16
API_KEY = "wheel-test-key"

pytestmark = pytest.mark.timeout(600)


def run(*cmd: str | Path, cwd: Path, timeout: float = 300) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=out)
    return out


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv with the built wheel installed; answers its bin directory."""
    venv = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", venv, cwd=venv)
    (wheel,) = dist.glob("pushsvc-*.whl")
    # uv: the same resolution as pip, ten times faster
    run(sys.executable, "-m", "uv", "pip", "install", "-q", "--python", venv / "bin/python",
        wheel, cwd=venv)  # fmt: skip
    return venv / "bin"


def test_the_wheel_and_sdist_carry_the_package_its_static_files_and_types(dist: Path) -> None:
    (wheel,) = dist.glob("pushsvc-*.whl")
    (sdist,) = dist.glob("pushsvc-*.tar.gz")
    version = pushsvc.__version__
    assert (
        wheel.name.startswith(f"pushsvc-{version}-") and sdist.name == f"pushsvc-{version}.tar.gz"
    )
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("pushsvc/static/pushsvc.js", "pushsvc/static/pushsvc.d.ts", "pushsvc/py.typed"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pushsvc = pushsvc.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "pushsvc/static/pushsvc.js"} <= members


def test_the_installed_wheel_serves_and_carries_a_publish_to_a_subscriber(
    installed: Path, tmp_path: Path
) -> None:
    # run from an empty directory: nothing may come from this checkout
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PUSHSVC_", "PYTHON"))}
    version = run(installed / "pushsvc", "--version", cwd=tmp_path)
    assert pushsvc.__version__ in version
    where = run(installed / "python", "-c", "import pushsvc; print(pushsvc.__file__)", cwd=tmp_path)
    assert str(installed.parent) in where and str(ROOT) not in where

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [installed / "pushsvc", "serve", "--port", str(port), "--secret", SECRET,
         "--api-key", API_KEY],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the installed server did not start"
            time.sleep(0.1)  # poll: until the server answers, against the deadline
        js = httpx.get(url + "/pushsvc.js")
        assert js.status_code == 200 and "export class PushClient" in js.text
        types = httpx.get(url + "/pushsvc.d.ts")
        assert types.status_code == 200 and "PushClient" in types.text

        token = run(
            installed / "pushsvc", "token", "--secret", SECRET, "--user", "wheel",
            "--subscribe", "*", "--ttl", "600", cwd=tmp_path,
        ).splitlines()[-1]  # fmt: skip
        subscriber = subprocess.Popen(
            [installed / "pushsvc", "subscribe", "wheel:room", "--url", url, "--token", token,
             "--count", "1"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert subscriber.stderr is not None
            while "start pinned" not in (line := subscriber.stderr.readline()):
                assert line, "the installed subscriber exited before pinning its start"
            published = run(
                installed / "pushsvc", "publish", "wheel:room", '"from the wheel"',
                "--url", url, "--api-key", API_KEY, cwd=tmp_path,
            )  # fmt: skip
            out, _ = subscriber.communicate(timeout=30)
        finally:
            subscriber.kill()
        assert subscriber.returncode == 0
        event_id = published.split()[-1]
        assert out.splitlines() == [f'wheel:room message {event_id} "from the wheel"']
    finally:
        server.terminate()
        server.wait(10)
