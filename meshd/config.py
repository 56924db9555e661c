"""Frozen run configuration built from the command line. No I/O here."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import attrs

# mesh-llm HEAD's default Nostr relays, in order (MESH_PROTOCOL.md §1.3).
DEFAULT_NOSTR_RELAYS: tuple[str, ...] = (
    "wss://relay.damus.io",
    "wss://nos.lol",
    "wss://relay.nostr.band",
    "wss://nostr.land",
    "wss://nostr.wine",
)

DEFAULT_API_PORT = 9337
DEFAULT_CONSOLE_PORT = 3131


class Role(Enum):
    CLIENT = "client"
    HOST = "host"


@attrs.frozen
class Config:
    role: Role
    auto: bool = False
    join_tokens: tuple[str, ...] = ()
    api_port: int = DEFAULT_API_PORT
    console_port: int = DEFAULT_CONSOLE_PORT
    listen_all: bool = False
    headless: bool = False
    #: ``--no-console``: no console port at all.
    console_enabled: bool = True
    nostr_relays: tuple[str, ...] = DEFAULT_NOSTR_RELAYS
    #: ``--no-nostr``: never contact a Nostr relay (no --auto, no --publish, no discover panel).
    no_nostr: bool = False
    mesh_name: str | None = None
    region: str | None = None
    publish: bool = False
    max_clients: int = 0
    serve_url: str | None = None
    bind_port: int = 0
    bind_address: str = "0.0.0.0"
    models: tuple[str, ...] = ()
    #: None: what the backend says of itself (llama-server's slots), else mesh-llm's 4.
    backend_max_inflight: int | None = None
    #: How long a tunnel from a client that does not say waits for a backend slot.
    backend_queue_timeout: float = 30.0
    state_dir: Path = attrs.field(factory=lambda: Path("~/.meshd").expanduser())
    log_format: str = "text"
    # The API gate (meshd.web.gate): in-flight cap, per-caller limits, keys, CORS, metrics.
    max_inflight: int = 0
    #: How long a request waits for a slot: in the gate's queue, and for a busy host in the mesh.
    queue_timeout: float = 30.0
    #: Requests waiting for a gate slot at most (None: 16 per slot, at least 64).
    max_queue: int | None = None
    #: Responses kept for ``previous_response_id`` (in this process; in Redis with --redis): count and TTL.
    responses_store_entries: int = 1000
    responses_store_ttl: float = 3600.0
    rate_limit_rpm: int = 0
    rate_limit_streams: int = 0
    trust_proxy: bool = False
    api_keys: tuple[str, ...] = attrs.field(default=(), repr=False)
    api_keys_file: Path | None = None
    metrics: bool = False
    cors_origins: tuple[str, ...] = ("*",)
    #: ``--redis URL``: limits, leases and keys shared by several API processes through Redis (meshd.shared).
    #: Its password makes it a secret: kept out of the repr like the keys.
    redis_url: str | None = attrs.field(default=None, repr=False)
    redis_prefix: str = "meshd"
    #: Seconds one Redis call may take (then the fail-open/closed policy decides).
    redis_timeout: float = 0.25
    #: ``--redis-keys``: also accept the keys of the key set in Redis (``meshd keys``).
    redis_keys: bool = False
    #: ``open`` or ``closed``: what limits and key checks do when Redis does not answer.
    redis_limits_fail: str = "open"
    redis_keys_fail: str = "closed"
    #: Seconds a concurrency lease lives in Redis unless renewed (a crashed machine's slots free after this).
    redis_lease_ttl: float = 30.0
    #: ``--max-inflight-global``: API requests in flight across every process sharing the Redis (0 = off).
    max_inflight_global: int = 0
    #: ``--console-token``: lets non-loopback callers use the console's admin routes (``POST /api/join``, and
    #: ``POST /api/chat`` with API keys on); a secret, so kept out of the repr like the keys.
    console_token: str | None = attrs.field(default=None, repr=False)
    #: iroh relays (meshd.iroh_relay); empty = no relay path. The CLI defaults to mesh-llm's (MESH_PROTOCOL.md §4.4).
    relay_urls: tuple[str, ...] = ()
    #: ``--relay-auth URL=TOKEN``: (canonical relay URL, bearer token) pairs.
    relay_auth: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    #: ``--relay-token T`` (``--relay-server``): tokens the relay requires; empty = open.
    relay_tokens: tuple[str, ...] = attrs.field(default=(), repr=False)
    #: ``--relay-server``: run only a relay server on ``relay_port``.
    relay_server: bool = False
    relay_port: int = 3340
    relay_address: str = "0.0.0.0"

    @property
    def interface(self) -> str:
        """Address the HTTP ports bind to: loopback unless --listen-all."""
        return "0.0.0.0" if self.listen_all else "127.0.0.1"

    @property
    def is_client(self) -> bool:
        return self.role is Role.CLIENT
