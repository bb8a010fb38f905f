"""Private networks for WebRTC tests, made and removed by the test itself.

ICE cannot connect over loopback alone (aioice skips 127.0.0.1 and Chromium gathers no
candidates there), so a WebRTC test runs its server and its client inside a new network namespace
(``unshare --user --map-root-user --net``: no root needed where user namespaces are allowed) with
a veth pair whose two ends, ``SERVER_IP`` and ``CLIENT_IP``, exist only inside it. Every packet
stays in that namespace, which disappears with the process.

By hand::

    unshare --user --map-root-user --net sh -c '
        ip link set lo up
        ip link add vs type veth peer name vc
        ip addr add 10.99.0.1/24 dev vs && ip addr add 10.99.0.2/24 dev vc
        ip link set vs up && ip link set vc up
        exec sh'
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

SERVER_IP = "10.99.0.1"
CLIENT_IP = "10.99.0.2"
_SETUP = (
    "set -e; ip link set lo up; ip link add vs type veth peer name vc;"
    f" ip addr add {SERVER_IP}/24 dev vs; ip addr add {CLIENT_IP}/24 dev vc;"
    ' ip link set vs up; ip link set vc up; exec "$@"'
)
ROOT = Path(__file__).resolve().parent.parent


def available() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare and ip (util-linux, iproute2) are needed"
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--net", "sh", "-c", _SETUP, "sh", "true"],
        capture_output=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.decode()[-300:]}"
    return None


def run_scenarios(module: str, out: Path, *args: str, timeout: float) -> dict[str, Any]:
    """Run ``python -m module out args…`` inside a fresh namespace; return the JSON it wrote."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    log = out.with_suffix(".log")
    with open(log, "wb") as sink:
        proc = subprocess.run(
            ["unshare", "--user", "--map-root-user", "--net", "sh", "-c", _SETUP, "sh",
             sys.executable, "-m", module, str(out), *args],
            stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=timeout,
        )  # fmt: skip
    if proc.returncode != 0 or not out.exists():
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{log.read_text()[-6000:]}")
    return json.loads(out.read_text())  # type: ignore[no-any-return]
