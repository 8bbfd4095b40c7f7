"""Start the Nchan peer: nginx (Debian's, with ``libnginx-mod-nchan``) in the foreground with
``nchan.conf.template`` rendered into a temp dir of its own (prefix, pid file, temp paths,
error log), one worker process, on ``--host``/``--port``.

    python benchmarks/peers/nchan_serve.py --host 127.0.0.1 --port 8006

Runs nginx as a child (``daemon off``) and stops it on SIGTERM/SIGINT (nginx's fast
shutdown: SIGTERM to its master), then removes the temp dir. The measured processes are
nginx's master and worker (compare.py sums the CPU and RSS of this process's descendants;
this wrapper sleeps meanwhile). The worker runs as nginx's default user when started as
root: the temp dir is made readable for it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = (
    "/usr/lib/nginx/modules/ngx_nchan_module.so",
    "/usr/share/nginx/modules/ngx_nchan_module.so",
)


def render(prefix: Path, host: str, port: int) -> Path:
    module = next((m for m in MODULES if os.path.exists(m)), None)
    if module is None:
        sys.exit("ngx_nchan_module.so not found: run benchmarks/peers/install.sh")
    text = (HERE / "nchan.conf.template").read_text()
    for name, value in (
        ("PREFIX", str(prefix)),
        ("HOST", host),
        ("PORT", str(port)),
        ("MODULE", module),
    ):
        text = text.replace(f"@{name}@", value)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8006)
    args = parser.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = Path(tempfile.mkdtemp(prefix="pushsvc-nchan-"))
    os.chmod(prefix, 0o755)
    try:
        conf = render(prefix, args.host, args.port)
        child = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf)])

        def stop(signum: int, frame: object) -> None:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            child.wait(timeout=None)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        log = prefix / "error.log"
        if child.returncode and log.exists():
            sys.stderr.write(log.read_text()[-4000:])
        sys.exit(child.returncode if child.returncode and child.returncode > 0 else 0)
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


if __name__ == "__main__":
    main()
