"""The relay-only scenario: the relay test files rerun inside a private network namespace where loopback UDP is
dropped (IROH_RELAY.md §5), so every QUIC byte must cross meshd's relay server.

``unshare -n`` gives the child its own network namespace (only ``lo``, brought up here); an nftables input rule
drops all UDP. The namespace disappears with the child process; the host's network is untouched.
Needs root, ``unshare`` and ``nft``; skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

RULES = """
table inet meshd_relay_test {
    chain input { type filter hook input priority 0; policy accept; meta l4proto udp drop; }
}
"""

CHECK_UDP_DROPPED = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.settimeout(0.3)
s.sendto(b"x", s.getsockname())
try:
    s.recv(1)
except TimeoutError:
    pass
else:
    raise SystemExit("UDP on loopback still works: the namespace is not relay-only")
"""

FILES = [
    "tests/integration/test_relay_iroh.py",
    "tests/integration/test_relay_quic.py",
    "tests/integration/test_relay_node.py",
]


def _usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a network namespace"
    for tool in ("unshare", "nft", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@pytest.mark.timeout(240)
def test_relay_is_the_only_path_in_a_udp_dropping_namespace() -> None:
    reason = _usable()
    if reason is not None:
        pytest.skip(reason)
    script = (
        "set -e; ip link set lo up; nft -f -; "
        f"{sys.executable} -c '{CHECK_UDP_DROPPED}'; "
        f"exec {sys.executable} -m pytest -q -p no:cacheprovider -o addopts='' --reactor=asyncio " + " ".join(FILES)
    )
    env = dict(os.environ, MESHD_RELAY_ONLY_NETNS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", script],
        input=RULES,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert " passed" in output and "skipped" not in output, output[-3000:]
