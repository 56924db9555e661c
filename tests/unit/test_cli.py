"""The ``meshd`` command: sub-command dispatch, options, help, and the pure output of status/discover/demo."""

from __future__ import annotations

import json
import re
import runpy
import shlex
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd import cli
from meshd.commands import demo, discover, status
from meshd.commands.text import clean, duration, parse_command_line
from meshd.discovery.api import discover_api
from meshd.discovery.listing import DiscoveredMesh, MeshListing
from meshd.discovery.scoring import smart_auto

REPO = Path(__file__).resolve().parents[2]
UNSAFE = {"Cc", "Cf", "Cs", "Co", "Cn"}


def printable(text: str) -> bool:
    """Only newlines may be control characters in terminal output."""
    return all(ch == "\n" or unicodedata.category(ch) not in UNSAFE for ch in text)


# -- dispatch ------------------------------------------------------------------------------------------------------


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["statsu"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'statsu'" in err and "demo, discover, status" in err


def test_version_is_meshds(capsys: pytest.CaptureFixture[str]) -> None:
    from meshd import __version__

    cli.main(["--version"])
    assert capsys.readouterr().out == f"meshd {__version__}\n"
    for command in ("demo", "discover", "status"):
        with pytest.raises(SystemExit) as e:
            cli.main([command, "--version"])
        assert e.value.code == 0
        assert capsys.readouterr().out == f"meshd {__version__}\n"


def test_cli_hands_twistd_the_dropins_service_maker() -> None:
    dropin = runpy.run_path(str(REPO / "twisted" / "plugins" / "meshd_plugin.py"))["meshd"]
    assert (dropin.name, dropin.module, dropin.description, dropin.tapname) == cli.SERVICE_MAKER


def test_daemon_help_says_meshd(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: meshd [options]")
    assert "meshd demo|discover|status" in out
    assert "twistd" not in out
    assert "--console=" in out and "--port=" in out


@pytest.mark.parametrize("command", ["demo", "discover", "status"])
def test_command_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Usage: meshd {command} ")
    assert "twistd" not in out.lower().replace("twisted", "")


def test_static_pages_tell_users_meshd_not_twistd() -> None:
    static = REPO / "meshd" / "web" / "static"
    for path in static.iterdir():
        if path.suffix in (".html", ".js"):
            assert "twistd" not in path.read_text(), path
    assert "<code>meshd --join &lt;token&gt;</code>" in (static / "index.html").read_text()


# -- text ----------------------------------------------------------------------------------------------------------


def test_clean_escapes_terminal_controls() -> None:
    assert clean("lab\x1b[2J\x07") == "lab\\x1b[2J\\x07"
    assert clean("a\u202eb") == "a\\u202eb"  # right-to-left override
    assert clean("line\nbreak") == "line\\x0abreak"
    assert clean("Llama-ü 模型") == "Llama-ü 模型"
    assert clean("x" * 10, limit=5) == "xxxx…"


@given(st.text(max_size=2000), st.integers(min_value=1, max_value=400))
def test_clean_is_one_safe_bounded_line(text: str, limit: int) -> None:
    out = clean(text, limit)
    assert printable(out) and "\n" not in out
    assert len(out) <= limit * 10  # each kept character escapes to at most 10 characters
    if printable(text) and "\n" not in text and len(text) <= limit:
        assert out == text


def test_duration() -> None:
    assert [duration(v) for v in (0, 59.9, 61, 7322, 90000)] == ["0 s", "59 s", "1 min 1 s", "2 h 2 min", "1 d 1 h"]
    assert [duration(v) for v in (-1, None, "3", True, float("nan"))] == ["?"] * 5


# -- status --------------------------------------------------------------------------------------------------------


def parse_status(*args: str) -> status.Options:
    opts = parse_command_line(status.Options, "status", args)
    assert isinstance(opts, status.Options)
    return opts


def test_status_console_option() -> None:
    assert parse_status().base_url == "http://127.0.0.1:3131"
    assert parse_status("--console", "4000").base_url == "http://127.0.0.1:4000"
    assert parse_status("-c", "http://10.0.0.5:3131/").base_url == "http://10.0.0.5:3131"
    assert parse_status("--console", "https://[::1]:99").base_url == "https://[::1]:99"


@pytest.mark.parametrize(
    "value", ["0", "70000", "abc", "ftp://x:1", "http://x:1/api", "http://x:99999", "http://u:p@x:1", "http://x:1?a"]
)
def test_status_bad_console_option(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_command_line(status.Options, "status", ["--console", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("meshd status: error: --console ")
    assert err.count("\n") == 2


HOST_STATUS: dict[str, Any] = {
    "version": "0.1.0",
    "node_id": "54fcdd970c",
    "endpoint_id": "54" * 32,
    "token": "eyJpZCI6IjU0In0",
    "role": "host",
    "node_status": "Serving",
    "node_state": "joined",
    "is_client": False,
    "is_host": True,
    "api_port": 41001,
    "console_port": 41002,
    "uptime_secs": 3725.4,
    "peers": [
        {
            "id": "7eb97d8dc9",
            "role": "Client",
            "models": [],
            "path": "direct",
            "rtt_ms": 0.21,
            "connected": True,
            "last_seen_secs_ago": 3.2,
            "version": "0.76.2",
        }
    ],
    "mesh_id": "ec6ff429",
    "mesh_name": "lab",
    "mesh_models": [{"name": "tiny", "status": "warm", "node_count": 1, "request_count": 3}],
    "inflight_requests": 1,
    "nostr_discovery": [
        {"url": "wss://relay.example", "state": "up", "last_error": None},
        {"url": "ws://127.0.0.1:9", "state": "failing", "last_error": "connection refused"},
    ],
    "iroh_relay": None,
    "backend": {"url": "http://127.0.0.1:8080", "healthy": True, "models": ["tiny"], "inflight": 1, "max_inflight": 4},
}


def test_format_status_of_a_host() -> None:
    out = status.format_status(HOST_STATUS, "http://127.0.0.1:41002").splitlines()
    assert out[0] == "meshd 0.1.0 · node 54fcdd970c · host · joined · up 1 h 2 min"
    assert "API        http://127.0.0.1:41001/v1" in out
    assert "console    http://127.0.0.1:41002/" in out
    assert "mesh       lab (id ec6ff429)" in out
    assert "models     tiny (warm, 1 node, 3 requests)" in out
    assert "in flight  1 request" in out
    assert "backend    http://127.0.0.1:8080 healthy · models tiny · in flight 1/4" in out
    assert "nostr      wss://relay.example up" in out
    assert "           ws://127.0.0.1:9 failing: connection refused" in out
    assert "iroh relay off (direct UDP only)" in out
    assert "token      eyJpZCI6IjU0In0" in out
    assert out[-3] == "peers (1)"
    assert out[-1].split() == ["7eb97d8dc9", "Client", "-", "direct", "0.21", "ms", "3", "s", "ago", "0.76.2"]


def test_format_status_cleans_what_it_prints() -> None:
    evil = dict(HOST_STATUS, mesh_name="lab\x1b]0;pwned\x07", peers=[{"id": "\u202eevil", "models": ["m\x1b[31m"]}])
    out = status.format_status(evil, "http://127.0.0.1:1")
    assert printable(out)
    assert "lab\\x1b]0;pwned\\x07" in out and "\\u202eevil" in out


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30,
)
STATUS_KEYS = [*HOST_STATUS, "gate", "iroh_relay", "headless"]


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(STATUS_KEYS) | st.text(max_size=8), JSON, max_size=12))
def test_format_status_takes_any_json_object(data: dict[str, Any]) -> None:
    out = status.format_status(data, "http://127.0.0.1:3131")
    assert printable(out)
    assert out.startswith("meshd ")


@settings(max_examples=200)
@given(st.fixed_dictionaries({k: JSON for k in ("peers", "mesh_models", "nostr_discovery", "backend", "iroh_relay")}))
def test_format_status_takes_any_shape_of_its_lists(data: dict[str, Any]) -> None:
    assert printable(status.format_status(data, "http://127.0.0.1:3131"))


# -- discover ------------------------------------------------------------------------------------------------------


def parse_discover(*args: str) -> discover.Options:
    opts = parse_command_line(discover.Options, "discover", args)
    assert isinstance(opts, discover.Options)
    return opts


def test_discover_options() -> None:
    opts = parse_discover()
    assert len(opts.relays) == 5 and all(u.startswith("wss://") for u in opts.relays)
    assert discover.query_args(opts) == {}
    assert opts.wait == 5.0
    opts = parse_discover("--model", "qwen", "--min-vram", "24", "-r", "AU", "--nostr-relay", "ws://127.0.0.1:7")
    assert opts.relays == ("ws://127.0.0.1:7",)
    assert discover.query_args(opts) == {"model": ["qwen"], "min_vram": ["24"], "region": ["AU"]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-vram", "lots"], "--min-vram must be a number of GB"),
        (["--min-vram", "-1"], "--min-vram must be a finite number >= 0"),
        (["--nostr-relay", "https://relay"], "--nostr-relay needs a ws:// or wss:// URL"),
        (["--wait", "0"], "--wait must be between"),
        (["--model", "x" * 300], "--model is longer than 256"),
    ],
)
def test_discover_bad_options(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_command_line(discover.Options, "discover", args) == 2
    assert capsys.readouterr().err.startswith(f"meshd discover: error: {message}")


def mesh(tag: str, **kw: Any) -> DiscoveredMesh:
    fields: dict[str, Any] = {"invite_token": f"tok-{tag}", "serving": [], "total_vram_bytes": 0, "node_count": 1}
    fields.update(kw)
    return DiscoveredMesh(
        listing=MeshListing(**fields), publisher_npub=f"npub1{tag}", published_at=1000, expires_at=1120
    )


def test_format_meshes_best_score_first_with_autos_pick() -> None:
    meshes = [
        mesh("big", name="lab", serving=["Qwen3-8B"], node_count=3, total_vram_bytes=48_000_000_000, region="EU"),
        mesh("community", serving=["GLM-4"], wanted=["Llama"], max_clients=10, client_count=2),
    ]
    listed = discover_api(meshes, {}, None)
    auto = smart_auto(meshes, None).join[0][0]
    relays = [{"url": "wss://a", "state": "up"}, {"url": "wss://b", "state": "failing", "last_error": "refused"}]
    out = discover.format_meshes(listed, auto_token=auto, relays=relays, now=1030).splitlines()
    assert out[0] == "2 meshes on Nostr (1 of 2 relays answered), best score first:"
    first = out.index("* (unnamed)  score 438")  # 100 + 300 community + 8 free slots + 5 node + 10 + 15 wanted
    second = out.index("  lab  score 125")
    assert first < second
    assert out[first + 1 : first + 6] == [
        "    serving   GLM-4",
        "    wanted    Llama",
        "    nodes 1 · clients 2/10 · VRAM 0.0 GB",
        "    by npub1community, published 30 s ago, expires in 1 min 30 s",
        "    join      meshd --client --join tok-community",
    ]
    assert "    nodes 3 · clients 0 · VRAM 48.0 GB · region EU" in out
    assert "* the mesh `meshd --client --auto` would join" in out
    assert out[-2:] == ["Relays that did not answer:", "  wss://b (failing): refused"]


def test_format_meshes_when_nothing_is_found() -> None:
    out = discover.format_meshes([], auto_token=None, relays=[{"url": "wss://a", "state": "up"}], now=0)
    assert out == "No meshes found on Nostr (1 of 1 relays answered).\n"


def test_format_meshes_cleans_listings() -> None:
    listed = discover_api([mesh("x", name="\x1b[2Jevil", serving=["a\u202eb"], region="\x9b31m")], {}, None)
    out = discover.format_meshes(listed, auto_token=None, relays=[], now=0)
    assert printable(out)
    assert "\\x1b[2Jevil" in out and "a\\u202eb" in out and "\\x9b31m" in out


@settings(max_examples=300)
@given(
    st.lists(st.dictionaries(st.sampled_from(["listing", "score", "published_at", "expires_at"]), JSON), max_size=4),
    st.lists(JSON, max_size=3),
    st.none() | st.text(max_size=10),
)
def test_format_meshes_takes_any_json(meshes: list[Any], relays: list[Any], auto: str | None) -> None:
    assert printable(discover.format_meshes(meshes, auto_token=auto, relays=relays, now=0))


LISTING_KEYS = [
    *MeshListing(invite_token="t", serving=[], total_vram_bytes=0, node_count=0).to_dict(),
    "name",
    "region",
]


@settings(max_examples=200)
@given(st.lists(st.fixed_dictionaries({"listing": st.dictionaries(st.sampled_from([*LISTING_KEYS, "mesh_id"]), JSON)})))
def test_format_meshes_takes_any_listing_fields(meshes: list[Any]) -> None:
    assert printable(discover.format_meshes(meshes, auto_token=None, relays=[], now=0))


# -- demo ----------------------------------------------------------------------------------------------------------


def parse_demo(*args: str) -> demo.Options:
    opts = parse_command_line(demo.Options, "demo", args)
    assert isinstance(opts, demo.Options)
    return opts


def test_demo_processes_stay_on_this_machine(tmp_path: Path) -> None:
    host = demo.host_args("http://127.0.0.1:8080", tmp_path / "host")
    client = demo.client_args("TOKEN", 9337, 3131, tmp_path / "client")
    for args in (host, client):
        joined = " ".join(args)
        assert "--bind-address 127.0.0.1" in joined
        assert "--no-relay" in args and "--no-nostr" in args
        assert "--listen-all" not in args and "--publish" not in args and "--auto" not in args
        assert "--nostr-relay" not in args and "--relay" not in args
        assert args[args.index("--state-dir") + 1].startswith(str(tmp_path))
    assert host[:2] == ["--serve", "http://127.0.0.1:8080"]
    assert host[host.index("--port") + 1] == host[host.index("--console") + 1] == "0"
    assert client[:3] == ["--client", "--join", "TOKEN"]
    assert (client[client.index("--port") + 1], client[client.index("--console") + 1]) == ("9337", "3131")
    assert demo.meshd_argv(*host)[:3] == [sys.executable, "-m", "meshd"]


def test_demo_host_and_client_args_parse_as_meshd_flags(tmp_path: Path) -> None:
    from meshd.tap import Options

    known = set(re.findall(r"^\s*(?:-\w, )?(--[a-z-]+)", str(Options()), re.MULTILINE))  # what --help lists
    assert {"--serve", "--join", "--bind-address", "--no-relay", "--state-dir"} <= known
    for args in (demo.host_args("http://127.0.0.1:8080", tmp_path), demo.client_args("t", 0, 0, tmp_path)):
        flags = {a for a in args if a.startswith("--")}
        # --no-nostr is the lead's flag (meshd demo depends on it); every other flag must be meshd's today
        assert flags - known <= {"--no-nostr"}


def test_demo_banner_has_urls_and_a_working_curl_line(tmp_path: Path) -> None:
    text = demo.banner(
        api_url="http://127.0.0.1:9337/v1",
        console_url="http://127.0.0.1:3131/",
        host_console_url="http://127.0.0.1:40000/",
        models=["tiny-random"],
        model_note="random weights: random text\nsecond line",
        log_dir=tmp_path,
    )
    assert "API       http://127.0.0.1:9337/v1" in text
    assert "console   http://127.0.0.1:3131/" in text
    assert "model     tiny-random: random weights: random text\n            second line" in text
    assert "  meshd status    #" in text
    assert "Ctrl-C stops everything" in text
    curl = text[text.index("curl ") :].split("\n  meshd status")[0].replace("\\\n", " ")
    argv = shlex.split(curl)
    assert argv[:3] == ["curl", "-s", "http://127.0.0.1:9337/v1/chat/completions"]
    body = json.loads(argv[argv.index("-d") + 1])
    assert body["model"] == "tiny-random" and body["max_tokens"] > 0  # the tiny model never stops on its own


def test_demo_banner_quotes_an_odd_model_name_and_names_the_console_port(tmp_path: Path) -> None:
    text = demo.banner(
        api_url="http://127.0.0.1:1/v1",
        console_url="http://127.0.0.1:4242/",
        host_console_url="x",
        models=["it's"],
        model_note="n",
        log_dir=tmp_path,
    )
    curl = text[text.index("curl ") :].split("\n  meshd status")[0].replace("\\\n", " ")
    assert json.loads(shlex.split(curl)[-1])["model"] == "it's"
    assert "meshd status --console 4242" in text


def test_demo_options(tmp_path: Path) -> None:
    opts = parse_demo("--state-dir", str(tmp_path))
    assert (opts.api_port, opts.console_port) == (9337, 3131)
    assert opts.root == tmp_path / "demo"
    opts = parse_demo("--serve", "http://127.0.0.1:8080", "--port", "0", "--console", "0")
    assert opts["serve"] == "http://127.0.0.1:8080" and opts.api_port == opts.console_port == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--serve", "127.0.0.1:8080"], "--serve needs an http(s)://host[:port] URL"),
        (["--serve", "http://x", "--gguf", "m.gguf"], "--serve uses your server"),
        (["--gguf", "/nonexistent/m.gguf"], "--gguf '/nonexistent/m.gguf' is not a file"),
        (["--port", "4000", "--console", "4000"], "--port and --console are both 4000"),
        (["--port", "http"], "--port must be a port number"),
        (["--timeout", "0"], "--timeout must be between"),
    ],
)
def test_demo_bad_options(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_command_line(demo.Options, "demo", args) == 2
    assert capsys.readouterr().err.startswith(f"meshd demo: error: {message}")


def test_demo_without_gguf_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "meshd.tiny_gguf", None)  # `import` now raises ImportError
    runner = demo.Demo(parse_demo("--state-dir", str(tmp_path)), say=lambda line: None)
    with pytest.raises(demo.DemoError) as e:
        runner.model_file()
    text = str(e.value)
    assert "-m pip install 'gguf==0.19.0'" in text
    assert "meshd demo --gguf FILE" in text and "meshd demo --serve URL" in text
    assert not (tmp_path / "demo" / demo.TINY_MODEL_FILE).exists()


def test_missing_llama_server_help_says_how_to_get_it_or_do_without() -> None:
    from meshd.llamacpp import missing_llama_server_help

    text = missing_llama_server_help()
    assert "scripts/install-llama-server" in text  # this is a checkout
    assert "meshd demo --serve http://127.0.0.1:8080" in text
    assert "--llama-server PATH" in text
    assert missing_llama_server_help("/opt/x").startswith("llama-server not found at /opt/x.")


def test_find_llama_server_prefers_the_explicit_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meshd.llamacpp import find_llama_server

    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    monkeypatch.setenv("MESHD_LLAMA_SERVER", str(tmp_path / "elsewhere"))
    assert find_llama_server(binary) == binary
    assert find_llama_server() is None  # $MESHD_LLAMA_SERVER names a missing file: no guessing
    monkeypatch.setenv("MESHD_LLAMA_SERVER", str(binary))
    assert find_llama_server() == binary
