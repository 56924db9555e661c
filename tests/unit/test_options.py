"""Command-line options: defaults, repeatable flags, and usage errors (exit 2, one line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.config import DEFAULT_NOSTR_RELAYS, Role
from meshd.identity import Identity
from meshd.protocol.token import EndpointAddr, encode_token
from meshd.tap import Options


def parse(*args: str) -> Options:
    opts = Options()
    opts.parseOptions(list(args))
    return opts


def test_defaults_are_a_client_on_the_standard_ports() -> None:
    cfg = parse("--client", "--auto").config
    assert cfg.role is Role.CLIENT
    assert cfg.auto
    assert (cfg.api_port, cfg.console_port) == (9337, 3131)
    assert cfg.interface == "127.0.0.1"
    assert cfg.nostr_relays == DEFAULT_NOSTR_RELAYS
    assert len(DEFAULT_NOSTR_RELAYS) == 5
    assert cfg.bind_port == 0
    assert cfg.state_dir == Path("~/.meshd").expanduser()
    assert cfg.log_format == "text"


TOK1 = encode_token(EndpointAddr(Identity.generate().public_bytes, ip_addrs=(("127.0.0.1", 4000),)))
TOK2 = encode_token(EndpointAddr(Identity.generate().public_bytes, relay_urls=("https://relay.example./",)))


def test_repeatable_join_and_relays_replace_defaults() -> None:
    cfg = parse("-j", TOK1, "--join", f" {TOK2} ", "--nostr-relay", "ws://127.0.0.1:7777").config
    assert cfg.join_tokens == (TOK1, TOK2)
    assert cfg.nostr_relays == ("ws://127.0.0.1:7777",)


def test_host_role_and_publisher_options() -> None:
    cfg = parse(
        "--serve",
        "http://127.0.0.1:8080",
        "--publish",
        "--mesh-name",
        "lab",
        "--region",
        "AU",
        "--max-clients",
        "7",
        "--listen-all",
        "--bind-port",
        "4433",
    ).config
    assert cfg.role is Role.HOST
    assert cfg.serve_url == "http://127.0.0.1:8080"
    assert (cfg.publish, cfg.mesh_name, cfg.region, cfg.max_clients) == (True, "lab", "AU", 7)
    assert cfg.interface == "0.0.0.0"
    assert cfg.bind_port == 4433


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--client", "--serve", "http://127.0.0.1:8080"], "--client and --serve"),
        (["--auto", "--join", "tok"], "--auto and --join"),
        (["--join", "not-a-token"], "--join: not an invite token"),
        (["--join", TOK1 + "x"], "--join: not an invite token"),
        (["--no-nostr", "--auto"], "--auto needs Nostr"),
        (["--no-nostr", "--serve", "http://h:1", "--publish"], "--publish needs Nostr"),
        (["--no-nostr", "--nostr-relay", "ws://127.0.0.1:1"], "contradict"),
        (["--log-level", "chatty"], "--log-level must be one of"),
        (["--client", "--publish"], "clients never publish"),
        (["--client", "--region", "AU"], "--region only applies"),
        (["--serve", "http://h:1", "--max-clients", "3"], "--max-clients needs --publish"),
        (["--serve", "http://h:1", "--publish", "--max-clients", "x"], "--max-clients must be a number"),
        (["--serve", "http://h:1", "--publish", "--max-clients", "0"], "at least 1"),
        (["--serve", "ftp://h"], "--serve needs an http(s)"),
        (["--serve", "http://"], "--serve needs an http(s)"),
        (["--port", "70000"], "--port must be between"),
        (["--console", "abc"], "--console must be a port number"),
        (["--port", "4000", "--console", "4000"], "different ports"),
        (["--bind-port", "-1"], "--bind-port must be between"),
        (["--nostr-relay", "http://relay"], "ws:// or wss://"),
        (["--mesh-name", "  "], "--mesh-name must not be empty"),
        (["--join", " "], "non-empty invite token"),
        (["--log-format", "xml"], "text or json"),
        (["--no-such-flag"], "no-such-flag"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("meshd: error: ")
    assert fragment in err
