"""The floor: two HAProxy processes in a chain between the load generator and the backend.

meshd puts two processes between a caller and a backend (the client and the host); two HTTP reverse proxies
in a row are what the same job costs with a mature C proxy. Each hop is Debian's ``haproxy`` (2.6) in HTTP
mode with keep-alive on both sides (its defaults), one thread (as a meshd process has one), no logging, started
in the foreground with ``haproxy -f CFG`` (no ``daemon`` line). Everything on 127.0.0.1.

``option http-no-delay``: by default HAProxy sends a partial message with MSG_MORE, which holds a stream's first
SSE chunk ~200 ms per hop (measured: a paced stream's first chunk 410 ms after the request through two hops,
1.6 ms with the option); non-streaming completions are the same either way (p50 0.27 ms both).

    load generator -> hop 1 (127.0.0.1:P1) -> hop 2 (127.0.0.1:P2) -> backend
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

#: Where Debian puts it (/usr/sbin is not on every user's PATH).
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path=SEARCH_PATH)


def haproxy_version(binary: str) -> str | None:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    # "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/"
    parts = first.split()
    return parts[2] if len(parts) > 2 and parts[1] == "version" else None


def hop_config(listen_port: int, next_port: int, maxconn: int) -> str:
    """One hop: a frontend on 127.0.0.1:listen_port, a backend server at 127.0.0.1:next_port."""
    return (
        "global\n"
        f"    maxconn {maxconn}\n"
        "    nbthread 1\n"
        "defaults\n"
        "    mode http\n"
        "    option http-no-delay\n"
        f"    maxconn {maxconn}\n"
        "    timeout connect 5s\n"
        "    timeout client 120s\n"
        "    timeout server 120s\n"
        "frontend hop\n"
        f"    bind 127.0.0.1:{listen_port}\n"
        "    default_backend next\n"
        "backend next\n"
        f"    server next 127.0.0.1:{next_port}\n"
    )


def start_chain(
    binary: str, tmp: Path, backend_port: int, ports: list[int], maxconn: int = 8000
) -> list[subprocess.Popen[bytes]]:
    """Start one haproxy per port in *ports*, each forwarding to the next, the last to the backend.

    Returns the processes (the caller stops them); the chain's entry is ``127.0.0.1:ports[0]``.
    """
    procs: list[subprocess.Popen[bytes]] = []
    nexts = [*ports[1:], backend_port]
    for i, (port, nxt) in enumerate(zip(ports, nexts, strict=True)):
        cfg = tmp / f"haproxy-hop{i + 1}.cfg"
        cfg.write_text(hop_config(port, nxt, maxconn))
        log = (tmp / f"haproxy-hop{i + 1}.log").open("w")
        procs.append(subprocess.Popen([binary, "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp))
    return procs
