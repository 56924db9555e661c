"""Process-wide resource limits: open files.

Every HTTP connection, backend connection and Nostr websocket is a file descriptor. systemd leaves a
service 1,024 unless the unit says otherwise, and Docker's soft limit may be as low; 1,100 idle TCP
connections then starve the API and the console of descriptors. :func:`raise_nofile_limit` lifts the
soft limit to the hard one at start (meshd runs on epoll, so high descriptor numbers are fine), and
:func:`connection_limit` derives how many connections one HTTP port may hold from what is left.
"""

from __future__ import annotations

import resource

__all__ = ["DESCRIPTOR_RESERVE", "MAX_CONNECTIONS_PER_PORT", "connection_limit", "nofile_limits", "raise_nofile_limit"]

#: Descriptors kept out of the HTTP ports' share (QUIC, backends, Nostr, relays, logs, the interpreter).
DESCRIPTOR_RESERVE = 512
#: Upper bound on the connections one HTTP port holds, whatever the descriptor limit.
MAX_CONNECTIONS_PER_PORT = 8192
#: A soft limit this high is plenty (used when the hard limit is "unlimited").
_ENOUGH = 1 << 20


def nofile_limits() -> tuple[int, int]:
    """The current (soft, hard) RLIMIT_NOFILE."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard limit. Returns (before, after); never raises (a
    sandbox that forbids setrlimit, as meshd's systemd unit does, leaves the limit as it is)."""
    soft, hard = nofile_limits()
    target = _ENOUGH if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        # The hard limit first; where the kernel caps lower than it says (macOS), smaller steps.
        for wanted in (target, 65536, 10240):
            if wanted <= soft or wanted > target:
                continue
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                break
            except (OSError, ValueError):
                continue
    return soft, nofile_limits()[0]


def connection_limit(ports: int = 2) -> int:
    """Connections one of ``ports`` HTTP ports may hold at once with today's soft limit."""
    soft, _hard = nofile_limits()
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_PER_PORT
    return max(64, min(MAX_CONNECTIONS_PER_PORT, (soft - DESCRIPTOR_RESERVE) // max(1, ports)))
