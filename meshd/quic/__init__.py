"""QUIC transport for meshd: aioquic with iroh's raw-public-key TLS, driven by Twisted.

Public API (see docs/quic.md):

* :class:`QuicEndpoint` -- one UDP port; ``listen``, ``dial``, ``stop``, ``on_connection``.
* :class:`MeshConnection` -- ``remote_id``, ``alpn``, ``open_stream``, ``on_stream``,
  ``close``, ``when_closed``, ``stats``.
* :class:`QuicStream` -- ``set_receiver``, ``write``, ``loseWriteConnection``, ``reset``,
  producer/consumer methods; its lifecycle is :mod:`meshd.quic.lifecycle` (docs/lifecycles.md).

Modules import one way only: ``stream`` knows its connection as a ``StreamOwner``, ``connection``
its endpoint as a ``ConnectionOwner`` (typing Protocols the owners implement).
"""

from meshd.quic.connection import ConnectionStats, MeshConnection
from meshd.quic.core import DEFAULT_LIMITS, MeshQuicConnection, TransportLimits
from meshd.quic.endpoint import ALPN_MESH_V1, QuicEndpoint
from meshd.quic.errors import (
    CloseReason,
    ConnectionClosed,
    DialFailed,
    DialTimeout,
    QuicError,
    SendBufferFull,
    StreamReset,
    StreamStopped,
)
from meshd.quic.stream import QuicStream, StreamReceiver

__all__ = [
    "ALPN_MESH_V1",
    "DEFAULT_LIMITS",
    "CloseReason",
    "ConnectionClosed",
    "ConnectionStats",
    "DialFailed",
    "DialTimeout",
    "MeshConnection",
    "MeshQuicConnection",
    "QuicEndpoint",
    "QuicError",
    "QuicStream",
    "SendBufferFull",
    "StreamReceiver",
    "StreamReset",
    "StreamStopped",
    "TransportLimits",
]
