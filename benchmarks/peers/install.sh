#!/usr/bin/env bash
# Install what the benchmark peers need (idempotent; run from anywhere, as root or with sudo):
#   - apt: nginx with the Nchan module (libnginx-mod-nchan, Debian 1:1.3.6); wrk (requests.py);
#   - npm: socket.io 4.8 into benchmarks/peers/node/ (from the committed package-lock.json);
#   - pip: python-socketio 5.x into the current Python environment ($PYTHON, else python3
#     on PATH, else /work/venv/bin/python when it exists).
# pushsvc itself (and `websockets`, starlette, uvicorn for the bare peers) comes from
# `pip install -e .`; matplotlib for the PNG from `pip install -e '.[bench]'`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

sudo_=()
if [ "$(id -u)" != 0 ]; then sudo_=(sudo); fi

if ! command -v wrk >/dev/null 2>&1; then
    echo "installing with apt: wrk"
    "${sudo_[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -qq --no-install-recommends wrk
fi
if ! dpkg-query -W -f='${Status}' libnginx-mod-nchan 2>/dev/null | grep -q "install ok installed"; then
    echo "installing with apt: nginx libnginx-mod-nchan"
    "${sudo_[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -qq --no-install-recommends \
        nginx libnginx-mod-nchan
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "node 20 and npm are needed for the Socket.IO peer (e.g. apt-get install nodejs npm)" >&2
    exit 1
fi
if [ ! -d "$here/node/node_modules/socket.io" ]; then
    echo "installing with npm: socket.io@4.8 into $here/node"
    (cd "$here/node" && if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; \
        else npm install --no-audit --no-fund "socket.io@~4.8.0"; fi)
fi

py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ]; then py="$VIRTUAL_ENV/bin/python"
    elif [ -x /work/venv/bin/python ]; then py=/work/venv/bin/python
    else py=python3; fi
fi
sio_version() { "$py" -c 'from importlib.metadata import version; print(version("python-socketio"))' 2>/dev/null; }
if [[ "$(sio_version)" != 5.* ]]; then
    echo "installing with pip ($py): python-socketio 5.x"
    "$py" -m pip install -q "python-socketio>=5.11,<6"
fi
echo "peers installed: $(nginx -v 2>&1), nchan $(dpkg-query -W -f='${Version}' libnginx-mod-nchan)," \
    "node $(node --version), socket.io $(node -p "require('$here/node/node_modules/socket.io/package.json').version")," \
    "python-socketio $(sio_version)"
