"""TUNNEL_HTTP, both halves: ``client`` (a request tried on hosts in order, meshd.web.proxy's engine)
and ``host`` (one inbound stream relayed to the host's ``backend``)."""

from meshd.tunnel.backend import Backend, BackendStats
from meshd.tunnel.host import BUSY_HEADER, WAIT_HEADER, HostTunnel, TunnelState, requested_model, requested_wait

__all__ = [
    "BUSY_HEADER",
    "WAIT_HEADER",
    "Backend",
    "BackendStats",
    "HostTunnel",
    "TunnelState",
    "requested_model",
    "requested_wait",
]
