"""``meshd discover``: meshes listed on Nostr with their scores, filtered like the console's ``/api/discover``.

It is the daemon's own discovery (:mod:`meshd.discovery`): one :class:`~meshd.discovery.nostr_pool.NostrPool`,
:func:`~meshd.discovery.discover.discover` (every signature verified), the console's filter and score
(:func:`~meshd.discovery.api.discover_api`) and ``--auto``'s choice (:func:`~meshd.discovery.scoring.smart_auto`).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.python import usage

from meshd.commands.text import (
    EXIT_FAILURE,
    CommandOptions,
    ago,
    as_dict,
    as_list,
    as_number,
    clean,
    gigabytes,
    parse_command_line,
)
from meshd.config import DEFAULT_NOSTR_RELAYS
from meshd.discovery.api import parse_discover_query

__all__ = ["Options", "format_meshes", "main", "query_args"]


class Options(CommandOptions):
    synopsis = "Usage: meshd discover [--model M] [--min-vram GB] [--region R] [--nostr-relay URL ...] [--json]"
    longdesc = (
        "List the meshes published on Nostr, best score first, with what they serve and the token to join them. "
        "The filters are those of the console's GET /api/discover (model: a case-insensitive part of a served, "
        "wanted or on-disk model name; min-vram: the mesh's total VRAM in GB; region: the listing's region). "
        "The score is --auto's (mesh-llm's smart_auto), with the sticky last mesh read from --state-dir; '*' marks "
        "the mesh `meshd --client --auto [--mesh-name NAME]` would join. Exit code 1 when no Nostr relay could be "
        "reached."
    )
    optFlags = [
        ["json", None, "Print the console's /api/discover JSON (a list; each mesh with its score)."],
        ["verbose", "v", "Log what discovery does (relay connections, skipped listings) on stderr."],
    ]
    optParameters = [
        ["model", "m", None, "Only meshes with this model (part of a name, any case)."],
        ["min-vram", None, None, "Only meshes with at least this much VRAM in total, in GB."],
        ["region", "r", None, "Only meshes listed in this region (any case)."],
        ["mesh-name", None, None, "Mark the mesh `meshd --client --auto --mesh-name NAME` would join."],
        ["wait", None, "5", "Seconds to wait for the relays' answers at most."],
        ["state-dir", None, "~/.meshd", "meshd's state folder (its last-mesh file gives the sticky score)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["nostr-relay"] = []

    def opt_nostr_relay(self, url: str) -> None:
        """Nostr relay URL (repeatable; replaces the defaults, mesh-llm's 5 public relays)."""
        self["nostr-relay"].append(url)

    def postOptions(self) -> None:
        self.relays = tuple(self["nostr-relay"]) or DEFAULT_NOSTR_RELAYS
        for url in self.relays:
            parts = urlsplit(url)
            if parts.scheme not in ("ws", "wss") or not parts.hostname:
                raise usage.UsageError(f"--nostr-relay needs a ws:// or wss:// URL, got {url!r}")
        try:
            parse_discover_query(query_args(self))
        except ValueError as e:  # the console's words for its query parameters, said with our flags
            message = str(e)
            for flag, name in (("--model", "model"), ("--min-vram", "min_vram"), ("--region", "region")):
                message = message.replace(f"query parameter {name!r}", flag)
            raise usage.UsageError(message.replace("min_vram", "--min-vram")) from None
        try:
            self.wait = float(self["wait"])
        except ValueError:
            raise usage.UsageError(f"--wait must be a number of seconds, got {self['wait']!r}") from None
        if not 0 < self.wait <= 120:
            raise usage.UsageError("--wait must be between 0 and 120 seconds")
        if self["mesh-name"] is not None and not self["mesh-name"].strip():
            raise usage.UsageError("--mesh-name must not be empty")
        self.state_dir = Path(self["state-dir"]).expanduser()


def query_args(options: Mapping[str, Any]) -> dict[str, list[str]]:
    """The options as the query arguments of ``GET /api/discover`` (the console's parser checks them)."""
    args: dict[str, list[str]] = {}
    for flag, name in (("model", "model"), ("min-vram", "min_vram"), ("region", "region")):
        if options.get(flag) is not None:
            args[name] = [options[flag]]
    return args


def _names(values: object, limit: int = 8) -> str:
    names = [clean(v, 120) for v in as_list(values)]
    if len(names) > limit:
        names = [*names[:limit], f"… {len(names) - limit} more"]
    return ", ".join(names)


def format_meshes(
    meshes: Sequence[Mapping[str, Any]],
    *,
    auto_token: str | None,
    relays: Sequence[Mapping[str, Any]],
    now: float,
    mesh_name: str | None = None,
) -> str:
    """Human output: one block per mesh (best score first), then the relays that failed.

    ``meshes`` are ``/api/discover`` elements; ``auto_token`` is the invite token ``--auto`` would use;
    ``relays`` is the pool's per-relay status. Any JSON shape is accepted."""
    items = [as_dict(m) for m in meshes]
    order = sorted(range(len(items)), key=lambda i: -(as_number(items[i].get("score")) or 0))
    up = [r for r in relays if as_dict(r).get("state") == "up"]
    lines: list[str] = []
    if not items:
        lines.append(f"No meshes found on Nostr ({len(up)} of {len(relays)} relays answered).")
    else:
        noun = "mesh" if len(items) == 1 else "meshes"
        lines.append(f"{len(items)} {noun} on Nostr ({len(up)} of {len(relays)} relays answered), best score first:")
    marked = False
    for i in order:
        item = items[i]
        listing = as_dict(item.get("listing"))
        token = listing.get("invite_token")
        mark = " "
        if auto_token is not None and token == auto_token:
            mark, marked = "*", True
        name = clean(listing["name"], 80) if listing.get("name") else "(unnamed)"
        score = as_number(item.get("score"))
        lines.append("")
        lines.append(f"{mark} {name}  score {int(score) if score is not None else '?'}")
        serving = _names(listing.get("serving"))
        lines.append(f"    serving   {serving or 'nothing yet'}")
        wanted = _names(listing.get("wanted"))
        if wanted:
            lines.append(f"    wanted    {wanted}")
        on_disk = _names(listing.get("on_disk"))
        if on_disk:
            lines.append(f"    on disk   {on_disk}")
        nodes = as_number(listing.get("node_count"))
        clients = as_number(listing.get("client_count"))
        max_clients = as_number(listing.get("max_clients"))
        client_text = "?" if clients is None else str(int(clients))
        if max_clients:
            client_text += f"/{int(max_clients)}"
        facts = [
            f"nodes {int(nodes) if nodes is not None else '?'}",
            f"clients {client_text}",
            f"VRAM {gigabytes(listing.get('total_vram_bytes'))}",
        ]
        if listing.get("region"):
            facts.append(f"region {clean(listing['region'], 40)}")
        if listing.get("mesh_id"):
            facts.append(f"mesh id {clean(listing['mesh_id'], 80)}")
        lines.append("    " + " · ".join(facts))
        published = f"published {ago(item.get('published_at'), now)}"
        if item.get("expires_at") is not None:
            published += f", expires {ago(item.get('expires_at'), now)}"
        lines.append(f"    by {clean(item.get('publisher_npub', '?'), 80)}, {published}")
        lines.append(f"    join      meshd --client --join {clean(token, 4096) if token else '?'}")
    if marked:
        auto = "--auto" if mesh_name is None else f"--auto --mesh-name {shlex.quote(clean(mesh_name, 80))}"
        lines.append("")
        lines.append(f"* the mesh `meshd --client {auto}` would join")
    failed = [as_dict(r) for r in relays if as_dict(r).get("state") != "up"]
    if failed:
        lines.append("")
        lines.append("Relays that did not answer:")
        for r in failed:
            reason = f": {clean(r.get('last_error'), 160)}" if r.get("last_error") else ""
            lines.append(f"  {clean(r.get('url', '?'), 120)} ({clean(r.get('state', '?'), 20)}){reason}")
    return "\n".join(lines) + "\n"


async def discover_meshes(reactor: Any, options: Options) -> tuple[list[dict[str, Any]], str | None, list[Any]]:
    """Run one discovery: ``(the /api/discover list, --auto's token or None, the relays' status)``."""
    from twisted.internet.defer import Deferred

    from meshd.discovery.api import discover_api
    from meshd.discovery.discover import discover
    from meshd.discovery.nostr_pool import NostrPool
    from meshd.discovery.scoring import read_last_mesh_id, smart_auto

    pool = NostrPool(reactor, list(options.relays))
    pool.startService()
    try:
        meshes = await discover(pool, reactor, window=options.wait)
        status = pool.status()
    finally:
        stopped: Deferred[Any] = pool.stopService()
        await stopped
    last = read_last_mesh_id(options.state_dir)
    listed = discover_api(meshes, query_args(options), last)
    auto = smart_auto(meshes, options["mesh-name"], last).join
    return listed, (auto[0][0] if auto else None), status


def start_logging(verbose: bool) -> None:
    """Errors (and with ``verbose`` everything from info up) on stderr, as text."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    level = LogLevel.info if verbose else LogLevel.error
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(level)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def run(options: Options) -> int:
    from twisted.internet import task

    from meshd.discovery.errors import NoRelayAvailable

    start_logging(bool(options["verbose"]))

    async def main(reactor: Any) -> None:
        try:
            listed, auto_token, relays = await discover_meshes(reactor, options)
        except NoRelayAvailable:
            urls = ", ".join(options.relays)
            sys.stderr.write(
                f"meshd discover: could not reach any Nostr relay within {options.wait:g} s (tried {urls})\n"
            )
            raise SystemExit(EXIT_FAILURE) from None
        if options["json"]:
            sys.stdout.write(json.dumps(listed, indent=2) + "\n")
        else:
            text = format_meshes(
                listed, auto_token=auto_token, relays=relays, now=time.time(), mesh_name=options["mesh-name"]
            )
            sys.stdout.write(text)

    try:
        task.react(main)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_FAILURE
    return 0


def main(argv: Sequence[str]) -> int:
    options = parse_command_line(Options, "discover", argv)
    return options if isinstance(options, int) else run(options)
