"""``meshd status``: a running node's state, read from its console's ``GET /api/status``."""

from __future__ import annotations

import http.client
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from twisted.python import usage

from meshd import __version__
from meshd.commands.text import (
    EXIT_FAILURE,
    CommandOptions,
    as_dict,
    as_list,
    as_number,
    clean,
    duration,
    parse_command_line,
)
from meshd.config import DEFAULT_CONSOLE_PORT

__all__ = ["MAX_STATUS_BYTES", "Options", "StatusError", "console_base_url", "fetch_status", "format_status", "main"]

#: Largest /api/status answer read (a node with hundreds of peers is well under 1 MiB).
MAX_STATUS_BYTES = 4 * 1024 * 1024


class StatusError(Exception):
    """The console could not be reached or did not answer like a meshd console."""


def console_base_url(value: str) -> str:
    """``3131`` → ``http://127.0.0.1:3131``; an ``http(s)://host[:port]`` URL is kept (without a trailing /).
    Raises ``usage.UsageError`` for anything else."""
    text = value.strip()
    if text.isdigit():
        port = int(text)
        if not 1 <= port <= 65535:
            raise usage.UsageError(f"--console must be a port between 1 and 65535, got {value!r}")
        return f"http://127.0.0.1:{port}"
    parts = urlsplit(text)
    try:
        port_ok = parts.port is None or 1 <= parts.port <= 65535
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.path.strip("/"):
        raise usage.UsageError(f"--console needs a port number or an http(s)://host:port URL, got {value!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise usage.UsageError(f"--console URL must be scheme://host:port only, got {value!r}")
    return f"{parts.scheme}://{parts.netloc}"


class Options(CommandOptions):
    synopsis = "Usage: meshd status [--console PORT|URL] [--json]"
    longdesc = (
        "Show a running meshd node's state: role, mesh, models, peers, backend, Nostr relays and its invite "
        "token, read from the GET /api/status route of its web console (the node's --console port, default "
        f"{DEFAULT_CONSOLE_PORT}). Exit code 1 when no console answers."
    )
    optFlags = [["json", None, "Print the /api/status JSON as the node sends it."]]
    optParameters = [
        ["console", "c", str(DEFAULT_CONSOLE_PORT), "The node's console port (its --console), or the console's URL."],
        ["timeout", None, "5", "Seconds to wait for the answer."],
    ]

    def postOptions(self) -> None:
        self.base_url = console_base_url(self["console"])
        try:
            self.timeout = float(self["timeout"])
        except ValueError:
            raise usage.UsageError(f"--timeout must be a number of seconds, got {self['timeout']!r}") from None
        if not 0 < self.timeout <= 600:
            raise usage.UsageError("--timeout must be between 0 and 600 seconds")


def fetch_status(base_url: str, timeout: float) -> dict[str, Any]:
    """``GET base_url/api/status`` → the JSON object; raises :class:`StatusError` with a sentence for users."""
    url = base_url + "/api/status"
    request = urllib.request.Request(url, headers={"accept": "application/json", "user-agent": f"meshd/{__version__}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a node's console: never via a proxy
    where = urlsplit(base_url).netloc
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read(MAX_STATUS_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise StatusError(f"{url} answered HTTP {e.code}: is {where} a meshd console port?") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ConnectionRefusedError):
            raise StatusError(
                f"no meshd console on {where} (connection refused). Is meshd running, and is this its console "
                f"port? Pass the node's --console port: meshd status --console PORT (default {DEFAULT_CONSOLE_PORT})."
            ) from None
        if isinstance(reason, TimeoutError):
            raise StatusError(f"{where} did not answer within {timeout:g} s") from None
        raise StatusError(f"cannot reach {where}: {reason}") from None
    except TimeoutError:
        raise StatusError(f"{where} did not answer within {timeout:g} s") from None
    except OSError as e:
        raise StatusError(f"cannot read {url}: {e}") from None
    except http.client.HTTPException as e:
        raise StatusError(f"{where} did not answer HTTP ({type(e).__name__}): is it a meshd console port?") from None
    if len(body) > MAX_STATUS_BYTES:
        raise StatusError(f"{url} sent more than {MAX_STATUS_BYTES // (1024 * 1024)} MiB: not a meshd status")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise StatusError(f"{url} did not answer JSON: is {where} a meshd console port?") from None
    if not isinstance(data, dict) or "node_id" not in data:
        raise StatusError(f"{url} answered JSON that is not a meshd status: is {where} a meshd console port?")
    return data


def _join(items: Sequence[str], empty: str = "none") -> str:
    return ", ".join(items) if items else empty


def _models(st: Mapping[str, Any]) -> str:
    out: list[str] = []
    for row in as_list(st.get("mesh_models")):
        model = as_dict(row)
        name = clean(model.get("name", "?"), 120)
        count = as_number(model.get("node_count"))
        status = clean(model.get("status", "?"), 20)
        detail = f"{status}, {int(count)} node{'s' if count != 1 else ''}" if count is not None else status
        requests = as_number(model.get("request_count"))
        if requests is not None:
            detail += f", {int(requests)} request{'s' if requests != 1 else ''}"
        out.append(f"{name} ({detail})")
    return _join(out, "none yet")


def _backend(st: Mapping[str, Any]) -> str | None:
    if "backend" not in st:
        return None
    b = as_dict(st.get("backend"))
    health = "healthy" if b.get("healthy") is True else "NOT healthy"
    parts = [clean(b.get("url", "?")), health]
    if b.get("healthy") is not True and b.get("last_error"):
        parts.append(f"({clean(b.get('last_error'), 160)})")
    models = [clean(m, 120) for m in as_list(b.get("models"))]
    parts.append(f"· models {_join(models)}")
    inflight, limit = as_number(b.get("inflight")), as_number(b.get("max_inflight"))
    if inflight is not None and limit is not None:
        parts.append(f"· in flight {int(inflight)}/{int(limit)}")
    requests, failed = as_number(b.get("requests")), as_number(b.get("failed"))
    if requests is not None:
        parts.append(f"· {int(requests)} requests" + (f", {int(failed)} failed" if failed else ""))
    return " ".join(parts)


def _nostr(st: Mapping[str, Any]) -> list[str]:
    lines = []
    for item in as_list(st.get("nostr_discovery")):
        relay = as_dict(item)
        line = f"{clean(relay.get('url', '?'), 120)} {clean(relay.get('state', '?'), 20)}"
        if relay.get("state") != "up" and relay.get("last_error"):
            line += f": {clean(relay.get('last_error'), 160)}"
        lines.append(line)
    return lines or ["off"]


def _iroh(st: Mapping[str, Any]) -> str:
    relay = st.get("iroh_relay")
    if not isinstance(relay, Mapping):
        return "off (direct UDP only)"
    home = relay.get("home")
    urls = [clean(u, 120) for u in as_list(relay.get("relays"))]
    return f"home {clean(home, 120) if home else 'none yet'} (of {_join(urls)})"


def _peers(st: Mapping[str, Any]) -> list[str]:
    peers = [as_dict(p) for p in as_list(st.get("peers"))]
    if not peers:
        return ["peers      none"]
    rows = [("ID", "ROLE", "MODELS", "PATH", "RTT", "LAST SEEN", "VERSION")]
    for p in peers:
        rtt = as_number(p.get("rtt_ms"))
        seen = as_number(p.get("last_seen_secs_ago"))
        rows.append(
            (
                clean(p.get("id", "?"), 16),
                clean(p.get("role", "?"), 12),
                _join([clean(m, 60) for m in as_list(p.get("models"))], "-"),
                clean(p.get("path") or ("-" if not p.get("connected") else "?"), 10),
                f"{rtt:.2f} ms" if rtt is not None else "-",
                f"{duration(seen)} ago" if seen is not None else "?",
                clean(p.get("version") or "?", 20),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"peers ({len(peers)})"]
    for r in rows:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return lines


def meshd_view(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status as meshd means its fields: mesh-llm 0.76's keys, with meshd's own (``node_state``'s
    discovering/joining/joined/standalone, the per-relay Nostr list, ...) from the ``meshd`` objects over
    them, for the node and each peer."""
    st = as_dict(status)
    view = {**st, **as_dict(st.get("meshd"))}
    view["peers"] = [{**as_dict(p), **as_dict(as_dict(p).get("meshd"))} for p in as_list(st.get("peers"))]
    return view


def format_status(status: Mapping[str, Any], base_url: str) -> str:
    """The human-readable form of an ``/api/status`` object (any JSON object is accepted)."""
    st = meshd_view(status)
    host = urlsplit(base_url).hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    role = clean(st.get("role", "?"), 20)
    state = clean(st.get("node_state", "?"), 20)
    head = (
        f"meshd {clean(st.get('version', '?'), 40)} · node {clean(st.get('node_id', '?'), 20)} · {role} · {state}"
        f" · up {duration(st.get('uptime_secs'))}"
    )
    lines = [head]

    def row(label: str, value: str) -> None:
        lines.append(f"{label:<10} {value}")

    api_port = as_number(st.get("api_port"))
    row("API", f"http://{host}:{int(api_port)}/v1" if api_port is not None else "?")
    console_port = as_number(st.get("console_port"))
    row("console", f"http://{host}:{int(console_port)}/" if console_port is not None else base_url)
    mesh_name, mesh_id = st.get("mesh_name"), st.get("mesh_id")
    if mesh_name or mesh_id:
        mesh = clean(mesh_name, 80) if mesh_name else "(unnamed)"
        row("mesh", mesh + (f" (id {clean(mesh_id, 80)})" if mesh_id else ""))
    else:
        row("mesh", "none yet")
    row("models", _models(st))
    inflight = as_number(st.get("inflight_requests"))
    if inflight is not None:
        row("in flight", f"{int(inflight)} request{'s' if inflight != 1 else ''}")
    backend = _backend(st)
    if backend is not None:
        row("backend", backend)
    for i, line in enumerate(_nostr(st)):
        row("nostr" if i == 0 else "", line)
    row("iroh relay", _iroh(st))
    token = st.get("token")
    if token:
        row("token", clean(token, 4096))
        row("", "others join with: meshd --client --join <token>")
    lines.extend(_peers(st))
    return "\n".join(lines) + "\n"


def run(options: Options) -> int:
    try:
        status = fetch_status(options.base_url, options.timeout)
    except StatusError as e:
        sys.stderr.write(f"meshd status: {e}\n")
        return EXIT_FAILURE
    if options["json"]:
        sys.stdout.write(json.dumps(status, indent=2) + "\n")
    else:
        sys.stdout.write(format_status(status, options.base_url))
    return 0


def main(argv: Sequence[str]) -> int:
    options = parse_command_line(Options, "status", argv)
    return options if isinstance(options, int) else run(options)
