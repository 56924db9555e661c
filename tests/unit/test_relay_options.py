"""--relay / --no-relay / --relay-server options and the relay-server-only service (no network)."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from meshd.iroh_relay.client import canonical_relay_url, relay_endpoint
from meshd.iroh_relay.home import DEFAULT_RELAYS, ping_url
from meshd.iroh_relay.server import RelayServerService
from meshd.tap import Options, build_service


def parse(*args: str) -> Options:
    opts = Options()
    opts.parseOptions(list(args))
    return opts


def test_relay_defaults_and_overrides() -> None:
    assert parse().config.relay_urls == DEFAULT_RELAYS
    assert len(DEFAULT_RELAYS) == 4 and all(u.endswith("iroh.link./") for u in DEFAULT_RELAYS)  # 0.76 §8
    cfg = parse("--relay", "http://127.0.0.1:3340", "--relay", "https://r.example./").config
    assert cfg.relay_urls == ("http://127.0.0.1:3340", "https://r.example./")
    assert parse("--no-relay").config.relay_urls == ()


@pytest.mark.parametrize(
    "args",
    [
        ("--relay", "ftp://x/"),
        ("--relay", "http://"),
        ("--no-relay", "--relay", "http://a/"),
        ("--relay-port", "x"),
        ("--relay", "http://a/", "--relay-auth", "http://b/=t"),  # not one of the --relay URLs
        ("--relay", "http://a/", "--relay-auth", "http://a/"),  # no token
        ("--relay", "http://a/", "--relay-auth", "http://a/=two words"),
        ("--relay-token", "t"),  # for --relay-server only
    ],
)
def test_bad_relay_options_are_usage_errors(args: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as e:
        parse(*args)
    assert e.value.code == 2


def test_relay_auth_pairs_and_server_tokens() -> None:
    cfg = parse("--relay", "http://A:3340", "--relay-auth", "http://a:3340/=tok=with=equals").config
    assert cfg.relay_auth == (("http://a:3340/", "tok=with=equals"),)  # split on the first '=' only
    assert "tok=with" not in repr(cfg)
    server = parse("--relay-server", "--relay-token", "s1", "--relay-token", "s2").config
    assert server.relay_tokens == ("s1", "s2")


def test_relay_server_mode_builds_only_the_relay() -> None:
    cfg = parse("--relay-server", "--relay-port", "0", "--relay-address", "127.0.0.1").config
    service = build_service(cfg, Clock())
    assert isinstance(service, RelayServerService)
    assert (service.port, service.interface) == (0, "127.0.0.1")


def test_urls_trailing_dot_and_schemes() -> None:
    assert canonical_relay_url("HTTPS://Relay.Example.:443") == "https://relay.example.:443/"
    assert ping_url("https://usw1-2.relay.michaelneale.mesh-llm.iroh.link./") == (
        "https://usw1-2.relay.michaelneale.mesh-llm.iroh.link/ping"
    )
    assert ping_url("http://127.0.0.1:3340/") == "http://127.0.0.1:3340/ping"
    _, ws = relay_endpoint(MemoryReactorClock(), "https://relay.example./")
    assert ws == "wss://relay.example:443/relay"
    _, ws = relay_endpoint(MemoryReactorClock(), "http://127.0.0.1:3340")
    assert ws == "ws://127.0.0.1:3340/relay"
