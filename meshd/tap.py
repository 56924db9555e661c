"""twistd entry point: options, the asyncio reactor, and the one place services are wired."""

from __future__ import annotations

import sys


def _install_asyncio_reactor() -> str | None:
    """Install Twisted's asyncio reactor unless a reactor is installed already.

    Returns None when the running reactor is the asyncio one, else the installed reactor's class
    name (``meshd`` then refuses to start, from ``Options.postOptions``).
    """
    if "twisted.internet.reactor" not in sys.modules:
        import asyncio

        from twisted.internet import asyncioreactor

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)
        return None
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if isinstance(reactor, AsyncioSelectorReactor):
        return None
    return type(reactor).__name__


# Before anything below imports klein or treq (which would install the default reactor).
_FOREIGN_REACTOR = _install_asyncio_reactor()

import ipaddress  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from twisted.application.service import IService, MultiService, Service  # noqa: E402
from twisted.internet.error import CannotListenError  # noqa: E402
from twisted.logger import Logger  # noqa: E402
from twisted.python import usage  # noqa: E402

from meshd import __version__  # noqa: E402
from meshd.autojoin import Discovery, listing_for  # noqa: E402
from meshd.commands.text import EXIT_USAGE, port_option  # noqa: E402
from meshd.config import (  # noqa: E402
    DEFAULT_API_PORT,
    DEFAULT_CONSOLE_PORT,
    DEFAULT_NOSTR_RELAYS,
    Config,
    Role,
)
from meshd.discovery.nostr_pool import NostrPool  # noqa: E402
from meshd.discovery.publish import Publisher  # noqa: E402
from meshd.host import BackendWatch  # noqa: E402
from meshd.identity import Identity, IdentityError, load_or_create_key  # noqa: E402
from meshd.iroh_relay.client import canonical_relay_url  # noqa: E402
from meshd.iroh_relay.home import DEFAULT_RELAYS  # noqa: E402
from meshd.iroh_relay.server import RelayServerConfig, RelayServerService  # noqa: E402
from meshd.limits import raise_nofile_limit  # noqa: E402
from meshd.logs import LEVELS as LOG_LEVELS  # noqa: E402
from meshd.logs import set_level as set_log_level  # noqa: E402
from meshd.node import Node  # noqa: E402
from meshd.protocol.errors import InvalidToken  # noqa: E402
from meshd.protocol.streams import StreamType  # noqa: E402
from meshd.protocol.token import decode_token  # noqa: E402
from meshd.shared.scripts import PREFIX_RE as REDIS_PREFIX  # noqa: E402
from meshd.shared.scripts import BadRedisURL  # noqa: E402
from meshd.shared.scripts import check_url as check_redis_url  # noqa: E402
from meshd.status import StatusView  # noqa: E402
from meshd.tunnel import Backend  # noqa: E402
from meshd.web.api import APIApp  # noqa: E402
from meshd.web.console import ConsoleApp  # noqa: E402
from meshd.web.gate import Gate, GateService  # noqa: E402
from meshd.web.listen import TCPListenService  # noqa: E402


class Options(usage.Options):
    synopsis = "[options]"

    def getSynopsis(self) -> str:
        # What users type, also under `twistd [twistd options] meshd [options]` (that form is in the README).
        return (
            "Usage: meshd [options]                 run a node: a client, or a host with --serve URL\n"
            "       meshd demo|discover|status ...  a local demo mesh | meshes on Nostr | a running node's state\n"
            "                                       (meshd COMMAND --help)"
        )

    longdesc = (
        "meshd joins LLM meshes that speak mesh-llm's protocol and serves an OpenAI-compatible API "
        f"(--port, default {DEFAULT_API_PORT}) and a web console (--console, default {DEFAULT_CONSOLE_PORT}). "
        "Roles: --client (no GPU; tunnel requests to mesh hosts) or --serve URL (share an "
        "OpenAI-compatible backend into a mesh)."
    )

    optFlags = [
        ["client", None, "Run as an API-only client (the default role)."],
        ["auto", None, "Discover meshes on Nostr and join the best one."],
        ["listen-all", None, "Bind the API and console on 0.0.0.0 instead of 127.0.0.1."],
        ["headless", None, "Serve no web UI pages; /api/* and the API port keep working."],
        ["no-console", None, "Run no console port at all (API only)."],
        ["publish", None, "Publish this mesh's listing on Nostr (hosts only)."],
        ["trust-proxy", None, "Take the caller's address from Fly-Client-IP, then X-Forwarded-For."],
        ["metrics", None, "Serve Prometheus metrics at /metrics on both ports."],
        ["no-relay", None, "Use no iroh relay (direct UDP only; peers behind NAT become unreachable)."],
        ["no-nostr", None, "Never contact a Nostr relay (no --auto, --publish or discover panel)."],
        ["relay-server", None, "Run only an iroh-compatible relay server (see --relay-port)."],
        ["redis-keys", None, "Also accept the API keys of the key set in Redis (meshd keys add|revoke|list)."],
    ]
    optParameters = [
        ["port", None, str(DEFAULT_API_PORT), "OpenAI-compatible API port (0 = any free port)."],
        ["console", None, str(DEFAULT_CONSOLE_PORT), "Web console port (0 = any free port)."],
        ["mesh-name", None, None, "Mesh name to join (or to publish, with --publish)."],
        ["region", None, None, "Region label for the published listing (needs --publish)."],
        ["max-clients", None, None, "Delist when this many clients are connected (needs --publish)."],
        ["serve", None, None, "Host role: share this OpenAI-compatible backend URL into a mesh."],
        ["bind-port", None, "0", "UDP port for QUIC (0 = an ephemeral port)."],
        ["bind-address", None, "0.0.0.0", "Address the QUIC UDP socket binds (peers must reach it)."],
        [
            "backend-max-inflight",
            None,
            "auto",
            "Host: requests relayed to the backend at once (auto: llama-server's slots, else 4); more wait.",
        ],
        [
            "backend-queue-timeout",
            None,
            "30",
            "Host: seconds a request waits for a backend slot before a 503 server_busy.",
        ],
        ["state-dir", None, "~/.meshd", "Folder for keys and state."],
        ["log-format", None, "text", "Log output: text or json (one JSON object per line)."],
        ["log-level", None, "info", "Lowest level logged: debug, info, warn or error."],
        ["max-inflight", None, "0", "API requests in flight at once (0 = unlimited); more wait in a queue."],
        [
            "queue-timeout",
            None,
            "30",
            "Seconds a request waits for a slot (--max-inflight, or busy hosts) before a 503 server_busy.",
        ],
        ["max-queue", None, None, "Requests waiting for a --max-inflight slot at most (default 16 per slot, >= 64)."],
        ["responses-store-size", None, "1000", "Responses kept for previous_response_id (/v1/responses) at most."],
        ["responses-store-ttl", None, "3600", "Seconds a stored Response is kept for previous_response_id."],
        ["rate-limit-rpm", None, "0", "Requests per minute per caller (API key, else client IP; 0 = off)."],
        ["rate-limit-streams", None, "0", "Concurrent streaming requests per caller (0 = off)."],
        ["api-keys-file", None, None, "File of API keys, one a line, # comments; re-read on SIGHUP."],
        ["console-token", None, None, "Admin token: non-loopback callers of POST /api/join need it as a Bearer."],
        [
            "redis",
            None,
            None,
            "Share limits (and keys) with other API processes through this Redis: redis:// or rediss:// URL, "
            "with password (default $MESHD_REDIS_URL).",
        ],
        ["redis-prefix", None, "meshd", "Prefix of meshd's keys in Redis (several deployments can share one)."],
        ["redis-timeout", None, "0.25", "Seconds one Redis call may take before the fail policy decides."],
        ["redis-limits-fail", None, "open", "Redis down or slow: open (this process's own limits) or closed (503)."],
        ["redis-keys-fail", None, "closed", "Redis key set unreadable: closed (503) or open (the last set read)."],
        ["redis-lease-ttl", None, "30", "Seconds a concurrency slot held in Redis lives unless renewed."],
        ["max-inflight-global", None, "0", "API requests in flight across all processes sharing --redis (0 = off)."],
        ["relay-port", None, "3340", "--relay-server: TCP port of the relay (plain HTTP; put TLS in front)."],
        ["relay-address", None, "0.0.0.0", "--relay-server: address the relay binds."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["join"] = []
        self["nostr-relay"] = []
        self["model"] = []
        self["api-key"] = []
        self["cors-origin"] = []
        self["relay"] = []
        self["relay-auth"] = []
        self["relay-token"] = []

    def opt_api_key(self, key: str) -> None:
        """Require this API key (Authorization: Bearer KEY) on the API port (repeatable)."""
        self["api-key"].append(key)

    def opt_cors_origin(self, origin: str) -> None:
        """Origin allowed to call the API from a browser (repeatable; default *)."""
        self["cors-origin"].append(origin)

    def opt_join(self, token: str) -> None:
        """Join the mesh behind this invite token (repeatable; tried in order)."""
        self["join"].append(token)

    opt_j = opt_join

    def opt_nostr_relay(self, url: str) -> None:
        """Nostr relay URL for discovery and publishing (repeatable; replaces the defaults)."""
        self["nostr-relay"].append(url)

    def opt_model(self, name: str) -> None:
        """Host: advertise this model name (repeatable; default: the backend's /v1/models)."""
        self["model"].append(name)

    def opt_relay(self, url: str) -> None:
        """iroh relay URL (repeatable; the home relay is the fastest /ping; default: mesh-llm's two)."""
        self["relay"].append(url)

    def opt_relay_auth(self, value: str) -> None:
        """URL=TOKEN: send Authorization: Bearer TOKEN to the --relay URL (repeatable)."""
        self["relay-auth"].append(value)

    def opt_relay_token(self, token: str) -> None:
        """--relay-server: accept only clients presenting this bearer token (repeatable)."""
        self["relay-token"].append(token)

    def opt_version(self) -> None:
        """Print meshd's version and exit."""
        print(f"meshd {__version__}")
        sys.exit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write(f"meshd: error: {e}\n")
            sys.stderr.flush()
            raise SystemExit(EXIT_USAGE) from None

    def postOptions(self) -> None:
        if _FOREIGN_REACTOR is not None:
            raise usage.UsageError(
                f"meshd runs on Twisted's asyncio reactor but {_FOREIGN_REACTOR} is installed: "
                "drop --reactor, or use --reactor=asyncio"
            )
        self.config = self._build_config()
        set_log_level(self["log-level"])
        if self.parent is not None and not self.parent.get("logger") and self.parent.get("logfile") in (None, "-"):
            # twistd builds its log observer from its own `logger` option after parsing.
            self.parent["logger"] = f"meshd.logs.{self.config.log_format}_observer_factory"

    def _build_config(self) -> Config:
        serve = self["serve"]
        if self["client"] and serve:
            raise usage.UsageError("--client and --serve are different roles; choose one")
        if self["auto"] and self["join"]:
            raise usage.UsageError("--auto and --join both choose the mesh; use one of them")
        role = Role.HOST if serve else Role.CLIENT
        if serve:
            parts = urlsplit(serve)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise usage.UsageError(f"--serve needs an http(s)://host[:port] URL, got {serve!r}")
        if role is Role.CLIENT:
            if self["model"]:
                raise usage.UsageError("--model names what a host serves; it needs --serve")
            if self["publish"]:
                raise usage.UsageError("--publish is for hosts (--serve); clients never publish")
            for flag in ("region", "max-clients"):
                if self[flag] is not None:
                    raise usage.UsageError(f"--{flag} only applies to a host publishing its mesh")
        elif not self["publish"]:
            for flag in ("region", "max-clients"):
                if self[flag] is not None:
                    raise usage.UsageError(f"--{flag} needs --publish")
        max_clients = 0
        if self["max-clients"] is not None:
            try:
                max_clients = int(self["max-clients"])
            except ValueError:
                raise usage.UsageError(f"--max-clients must be a number, got {self['max-clients']!r}") from None
            if max_clients < 1:
                raise usage.UsageError("--max-clients must be at least 1")
        api_port = port_option(self["port"], "--port")
        console_port = port_option(self["console"], "--console")
        if api_port and api_port == console_port and not self["no-console"]:
            raise usage.UsageError(f"--port and --console are both {api_port}; they need different ports")
        relays = tuple(self["nostr-relay"]) or DEFAULT_NOSTR_RELAYS
        for url in relays:
            parts = urlsplit(url)
            if parts.scheme not in ("ws", "wss") or not parts.hostname:
                raise usage.UsageError(f"--nostr-relay needs a ws:// or wss:// URL, got {url!r}")
        for name in ("mesh-name", "region"):
            if self[name] is not None and not self[name].strip():
                raise usage.UsageError(f"--{name} must not be empty")
        for token in self["join"]:
            if not token.strip():
                raise usage.UsageError("--join needs a non-empty invite token")
            try:
                decode_token(token.strip())
            except InvalidToken as e:
                raise usage.UsageError(f"--join: not an invite token ({e})") from None
        if self["no-nostr"]:
            for flag in ("auto", "publish"):
                if self[flag]:
                    raise usage.UsageError(f"--{flag} needs Nostr; it contradicts --no-nostr")
            if self["nostr-relay"]:
                raise usage.UsageError("--nostr-relay and --no-nostr contradict each other")
        inflight: int | None = None
        if self["backend-max-inflight"] != "auto":
            try:
                inflight = int(self["backend-max-inflight"])
            except ValueError:
                raise usage.UsageError("--backend-max-inflight must be a number or auto") from None
            if inflight < 1:
                raise usage.UsageError("--backend-max-inflight must be at least 1")
        try:
            backend_queue_timeout = float(self["backend-queue-timeout"])
        except ValueError:
            raise usage.UsageError("--backend-queue-timeout must be a number of seconds") from None
        if not 0 <= backend_queue_timeout <= 600:
            raise usage.UsageError("--backend-queue-timeout must be between 0 and 600 seconds")
        bind_address = self["bind-address"]
        try:
            ipaddress.ip_address(bind_address)
        except ValueError:
            raise usage.UsageError(f"--bind-address must be an IP address, got {bind_address!r}") from None
        for name in self["model"]:
            if not name.strip():
                raise usage.UsageError("--model must not be empty")
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(f"--log-format must be text or json, got {self['log-format']!r}")
        if self["log-level"] not in LOG_LEVELS:
            raise usage.UsageError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {self['log-level']!r}")
        gate = self._gate_options()
        # --- iroh relay (meshd.iroh_relay) ---
        if self["no-relay"] and self["relay"]:
            raise usage.UsageError("--relay and --no-relay contradict each other")
        relay_urls: tuple[str, ...] = () if self["no-relay"] else (tuple(self["relay"]) or DEFAULT_RELAYS)
        for url in relay_urls:
            try:
                canonical_relay_url(url)
            except ValueError as e:
                raise usage.UsageError(f"--relay: {e}") from None
        relay_auth: list[tuple[str, str]] = []
        given = {canonical_relay_url(u) for u in self["relay"]}
        for item in self["relay-auth"]:
            url, sep, token = item.partition("=")  # split on the first '=', as mesh-llm does
            if not sep or not token.strip() or any(c.isspace() for c in token):
                raise usage.UsageError(f"--relay-auth needs URL=TOKEN, got {item.split('=', 1)[0]!r}=...")
            try:
                canonical = canonical_relay_url(url)
            except ValueError as e:
                raise usage.UsageError(f"--relay-auth: {e}") from None
            if canonical not in given:
                raise usage.UsageError(f"--relay-auth names {url!r}, which is not one of the --relay URLs")
            relay_auth.append((canonical, token))
        for token in self["relay-token"]:
            if not token or any(c.isspace() for c in token):
                raise usage.UsageError("--relay-token must be a non-empty token without spaces")
        if self["relay-token"] and not self["relay-server"]:
            raise usage.UsageError("--relay-token is for --relay-server")
        try:
            ipaddress.ip_address(self["relay-address"])
        except ValueError:
            raise usage.UsageError(f"--relay-address must be an IP address, got {self['relay-address']!r}") from None
        return Config(
            relay_urls=relay_urls,
            relay_auth=tuple(relay_auth),
            relay_tokens=tuple(self["relay-token"]),
            relay_server=bool(self["relay-server"]),
            relay_port=port_option(self["relay-port"], "--relay-port"),
            relay_address=self["relay-address"],
            role=role,
            auto=bool(self["auto"]),
            join_tokens=tuple(t.strip() for t in self["join"]),
            api_port=api_port,
            console_port=console_port,
            listen_all=bool(self["listen-all"]),
            headless=bool(self["headless"]),
            console_enabled=not self["no-console"],
            nostr_relays=relays,
            no_nostr=bool(self["no-nostr"]),
            mesh_name=self["mesh-name"],
            region=self["region"],
            publish=bool(self["publish"]),
            max_clients=max_clients,
            serve_url=serve,
            bind_port=port_option(self["bind-port"], "--bind-port"),
            bind_address=bind_address,
            models=tuple(self["model"]),
            backend_max_inflight=inflight,
            backend_queue_timeout=backend_queue_timeout,
            state_dir=Path(self["state-dir"]).expanduser(),
            log_format=self["log-format"],
            **gate,
            console_token=self["console-token"] or None,
        )

    def _gate_options(self) -> dict[str, Any]:
        def count(flag: str) -> int:
            try:
                n = int(self[flag])
            except ValueError:
                raise usage.UsageError(f"--{flag} must be a whole number, got {self[flag]!r}") from None
            if n < 0:
                raise usage.UsageError(f"--{flag} must be 0 or more, got {n}")
            return n

        try:
            queue_timeout = float(self["queue-timeout"])
        except ValueError:
            raise usage.UsageError(
                f"--queue-timeout must be a number of seconds, got {self['queue-timeout']!r}"
            ) from None
        if not 0 <= queue_timeout <= 600:
            raise usage.UsageError("--queue-timeout must be between 0 and 600 seconds")
        keys = tuple(self["api-key"])
        for key in keys:
            if not key or any(c.isspace() for c in key) or not key.isprintable():
                raise usage.UsageError("--api-key must be a non-empty key without spaces")
        keys_file = None
        if self["api-keys-file"] is not None:
            keys_file = Path(self["api-keys-file"]).expanduser()
            if not keys_file.is_file() or not os.access(keys_file, os.R_OK):
                raise usage.UsageError(f"--api-keys-file {str(keys_file)!r} is not a readable file")
        max_queue = None
        if self["max-queue"] is not None:
            max_queue = count("max-queue")
        store_entries = count("responses-store-size")
        try:
            store_ttl = float(self["responses-store-ttl"])
        except ValueError:
            raise usage.UsageError("--responses-store-ttl must be a number of seconds") from None
        if not 1 <= store_ttl <= 30 * 86400:
            raise usage.UsageError("--responses-store-ttl must be between 1 s and 30 days")
        origins = tuple(self["cors-origin"]) or ("*",)
        for origin in origins:
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/")):
                raise usage.UsageError(f"--cors-origin must be * or scheme://host[:port], got {origin!r}")
        return {
            **self._redis_options(count),
            "max_inflight": count("max-inflight"),
            "queue_timeout": queue_timeout,
            "max_queue": max_queue,
            "responses_store_entries": store_entries,
            "responses_store_ttl": store_ttl,
            "rate_limit_rpm": count("rate-limit-rpm"),
            "rate_limit_streams": count("rate-limit-streams"),
            "trust_proxy": bool(self["trust-proxy"]),
            "api_keys": keys,
            "api_keys_file": keys_file,
            "metrics": bool(self["metrics"]),
            "cors_origins": origins,
        }

    def _redis_options(self, count: Any) -> dict[str, Any]:
        url = self["redis"] or os.environ.get("MESHD_REDIS_URL") or None
        global_cap = count("max-inflight-global")

        def seconds(flag: str, low: float, high: float) -> float:
            try:
                value = float(self[flag])
            except ValueError:
                raise usage.UsageError(f"--{flag} must be a number of seconds, got {self[flag]!r}") from None
            if not low < value <= high:
                raise usage.UsageError(f"--{flag} must be more than {low:g} and at most {high:g} seconds")
            return value

        for flag in ("redis-limits-fail", "redis-keys-fail"):
            if self[flag] not in ("open", "closed"):
                raise usage.UsageError(f"--{flag} must be open or closed, got {self[flag]!r}")
        if url is None:
            if self["redis-keys"]:
                raise usage.UsageError("--redis-keys needs --redis URL (or MESHD_REDIS_URL)")
            if global_cap:
                raise usage.UsageError("--max-inflight-global needs --redis URL (or MESHD_REDIS_URL)")
        else:
            try:
                url = check_redis_url(url)
            except BadRedisURL as e:
                raise usage.UsageError(f"--redis: {e}") from None
        if not REDIS_PREFIX.match(self["redis-prefix"]):
            raise usage.UsageError("--redis-prefix must be 1-64 of A-Z a-z 0-9 . _ -")
        return {
            "redis_url": url,
            "redis_prefix": self["redis-prefix"],
            "redis_timeout": seconds("redis-timeout", 0.0, 10.0),
            "redis_keys": bool(self["redis-keys"]),
            "redis_limits_fail": self["redis-limits-fail"],
            "redis_keys_fail": self["redis-keys-fail"],
            "redis_lease_ttl": seconds("redis-lease-ttl", 0.0, 3600.0),
            "max_inflight_global": global_cap,
        }


class MeshdService(MultiService):
    """The whole daemon. Named children: node, api, console (and discovery, quic as they land)."""

    _log = Logger()

    def __init__(
        self, reactor: Any, config: Config, node: Node, api: TCPListenService, console: TCPListenService | None
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self.config = config
        self.node = node
        self.api = api
        self.console = console

    def privilegedStartService(self) -> None:
        # MultiService.privilegedStartService one child at a time, so that a bind error names its flag.
        Service.privilegedStartService(self)
        ports = {id(self.node): ("QUIC UDP port", "--bind-port"), id(self.api): ("API port", "--port")}
        if self.console is not None:
            ports[id(self.console)] = ("console port", "--console")
        what, flag = "port", ""
        try:
            for svc in self:
                what, flag = ports.get(id(svc), ("port", ""))
                svc.privilegedStartService()
        except CannotListenError as e:
            hint = f"; choose another with {flag} N (0 = any free port)" if flag else ""
            self._log.critical(
                "cannot listen on {interface}:{port} (the {what}): {reason}{hint}",
                event="bind_error",
                interface=e.interface,
                port=e.port,
                reason=str(e.socketError),
                what=what,
                flag=flag,
                hint=hint,
            )
            for svc in (self.api, self.console):
                if svc is not None:
                    svc.unbind()
            raise SystemExit(
                f"meshd: cannot listen on {e.interface}:{e.port} (the {what}): {e.socketError}{hint}"
            ) from None
        self.node.ports_bound(self.api.bound_port, self.console.bound_port if self.console is not None else None)

    def startService(self) -> None:
        super().startService()
        # Announce readiness once the reactor runs and handles SIGTERM (signal handlers are
        # installed during startup, so "after startup" is the first moment that holds).
        if getattr(self._reactor, "running", False):
            self._announce_ready()
        else:
            self._reactor.addSystemEventTrigger("after", "startup", self._announce_ready)

    def _announce_ready(self) -> None:
        host = "127.0.0.1" if not self.config.listen_all else "0.0.0.0"
        api_url = f"http://{host}:{self.node.api_port}"
        console_url = f"http://{host}:{self.node.console_port}" if self.console is not None else None
        self._log.info(
            "meshd {version} ready: API {api_url}/v1, console {console_url}",
            event="ready",
            version=__version__,
            api_url=api_url,
            console_url=console_url,
            node_id=self.node.identity.short_id,
            role=self.config.role.value,
            state=self.node.state.value,
        )


def build_service(config: Config, reactor: Any) -> Any:
    """Wire every service for ``config`` on ``reactor``. Raises IdentityError on key problems."""
    if config.relay_server:  # --- relay server role: nothing else runs ---
        return RelayServerService(
            reactor,
            config.relay_port,
            config.relay_address,
            RelayServerConfig(tokens=frozenset(config.relay_tokens)),
        )
    if config.role is Role.HOST:
        identity, _created = load_or_create_key(config.state_dir)
    else:
        identity = Identity.generate()
    node = Node(config, identity, reactor)
    extra: list[tuple[str, Any]] = []
    watch: BackendWatch | None = None
    if config.role is Role.HOST:
        assert config.serve_url is not None
        backend = Backend(reactor, config.serve_url, config.backend_max_inflight, config.backend_queue_timeout)
        watch = BackendWatch(reactor, node, backend, config.models)
        node.streams.register(StreamType.TUNNEL_HTTP, watch.tunnel_for)  # TUNNEL_HTTP streams go to the backend
        extra.append(("backend", watch))
    # Nostr only where the role needs it: always connected for --auto and --publish, on demand (the
    # console's discover panel) otherwise, never with --no-nostr.
    discovery: Discovery
    publisher: Publisher | None = None
    if config.no_nostr:
        discovery = Discovery(reactor, node)
        extra.append(("discovery", discovery))
    elif config.auto or config.publish:
        pool = NostrPool(reactor, list(config.nostr_relays))
        discovery = Discovery(reactor, node, pool)
        discovery.setServiceParent(pool)
        if config.publish:
            publisher = Publisher(reactor, pool, lambda: listing_for(node), state_dir=config.state_dir)
            publisher.setServiceParent(pool)
        extra.append(("discovery", pool))
    else:
        discovery = Discovery(reactor, node, make_pool=lambda: NostrPool(reactor, list(config.nostr_relays)))
        extra.append(("discovery", discovery))
    shared = _shared_gate(config, reactor)
    if shared is not None:
        extra.append(("redis", shared))
    store = None
    if shared is not None:
        from meshd.agentapi.store import StoredResponse
        from meshd.shared.store import RedisResponseStore

        store = RedisResponseStore(shared.link, decode=StoredResponse.from_json, ttl=config.responses_store_ttl)
    api_app = APIApp(node, reactor, gate=Gate.from_config(config, reactor, shared=shared), backend=watch, store=store)
    extra.append(("gate", GateService(reactor, api_app.gate)))
    api_site = api_app.site()
    status = StatusView(
        node, gate=api_app.gate, proxy=api_app.proxy, backend=watch, discovery=discovery, publisher=publisher
    )
    console_app = ConsoleApp(
        node, discovery, api_credential=api_app.gate.console_credential, status=status, metrics=api_app.metrics
    )
    console_site = console_app.site()
    api = TCPListenService(reactor, config.interface, config.api_port, api_site)
    children: list[tuple[str, Any]] = [("node", node), *extra, ("api", api)]
    console: TCPListenService | None = None
    if config.console_enabled:
        console = TCPListenService(
            reactor, config.interface, config.console_port, console_site, on_stop=[console_app.close]
        )
        children.append(("console", console))
    top = MeshdService(reactor, config, node, api, console)
    for name, svc in children:
        svc.setName(name)
        svc.setServiceParent(top)
    return top


def _shared_gate(config: Config, reactor: Any) -> Any:
    """``--redis``: the link and the shared limits and keys (meshd.shared), else None (redis is not imported)."""
    if config.redis_url is None:
        return None
    from meshd.shared.link import RedisLink
    from meshd.shared.policy import Policy, SharedGate

    link = RedisLink(reactor, config.redis_url, timeout=config.redis_timeout, prefix=config.redis_prefix)
    return SharedGate(
        link,
        reactor,
        rate_limit_rpm=config.rate_limit_rpm,
        rate_limit_streams=config.rate_limit_streams,
        max_inflight_global=config.max_inflight_global,
        lease_ttl=config.redis_lease_ttl,
        limits_fail=Policy(config.redis_limits_fail),
        keys=config.redis_keys,
        keys_fail=Policy(config.redis_keys_fail),
    )


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    # Before the HTTP ports size their connection limits from it (docs/security.md).
    before, after = raise_nofile_limit()
    Logger().info("open files limit {before} -> {after}", before=before, after=after, event="nofile_limit")
    try:
        return build_service(options.config, reactor)
    except IdentityError as e:
        raise SystemExit(f"meshd: {e}") from None
