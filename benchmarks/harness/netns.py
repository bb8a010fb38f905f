"""A private network for the harness's WebRTC runs.

ICE does not connect over loopback (aioice skips 127.0.0.1), so when ``voice bench`` starts the
server itself and WebRTC is among the protocols, it runs again inside a new network namespace
(``unshare --user --map-root-user --net``: no root needed where user namespaces are allowed)
with a veth pair whose two ends, ``SERVER_IP`` and ``CLIENT_IP``, exist only inside it; the
server listens on ``SERVER_IP`` and every caller — WebSocket, Twilio and WebRTC alike — reaches it
over the same veth, so the protocols are compared on one path. Everything disappears with the
process. The tests make theirs the same way (``tests/netns.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SERVER_IP = "10.99.0.1"
CLIENT_IP = "10.99.0.2"
INSIDE = "VOICE_BENCH_NETNS"
"""Set (to 1) in the environment of the run inside the namespace."""
_SETUP = (
    "set -e; ip link set lo up; ip link add vs type veth peer name vc;"
    f" ip addr add {SERVER_IP}/24 dev vs; ip addr add {CLIENT_IP}/24 dev vc;"
    ' ip link set vs up; ip link set vc up; exec "$@"'
)
_UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "sh", "-c", _SETUP, "sh"]
ROOT = Path(__file__).resolve().parents[2]


def inside() -> bool:
    """Whether this process is the run inside the namespace."""
    return os.environ.get(INSIDE) == "1"


def available() -> str | None:
    """None when a namespace can be made here, else the reason it cannot."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare and ip (util-linux, iproute2) are needed"
    probe = subprocess.run([*_UNSHARE, "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.decode()[-300:]}"
    return None


def run_inside(argv: list[str]) -> int:
    """``python -m benchmarks.harness argv…`` inside a fresh namespace; its exit status (its
    output goes where this process's goes)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, INSIDE: "1", "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    command = [*_UNSHARE, sys.executable, "-m", "benchmarks.harness", *argv]
    return subprocess.run(command, env=env, check=False).returncode
