"""``meshd keys add|revoke|list --redis URL``: manage the API key set in Redis, restarting nothing.

Every meshd started with ``--redis URL --redis-keys`` re-reads the set within half a second. Keys are stored
as SHA-256 digests: ``add`` prints a new key once (on stdout, alone, so ``KEY=$(meshd keys add ...)`` works)
and it cannot be shown again. ``revoke`` takes a key id (the 8 hex digits logs show), a key's SHA-256, or the
key itself. The URL comes from ``--redis`` or ``MESHD_REDIS_URL``; it is never printed with its password.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit

from meshd.commands.text import EXIT_FAILURE, EXIT_USAGE
from meshd.shared import scripts
from meshd.shared.keys import KeyAdminError, add_key, list_keys, revoke
from meshd.shared.scripts import BadRedisURL, KeyEntry, Namespace

EXIT_OK = 0
TIMEOUT = 5.0


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--redis", help="Redis URL (redis:// or rediss://, with password); default $MESHD_REDIS_URL")
    common.add_argument(
        "--redis-prefix", default=scripts.DEFAULT_PREFIX, help="prefix of meshd's keys in Redis (as the daemons')"
    )
    top = _Parser(prog="meshd keys", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add = sub.add_parser("add", parents=[common], help="add a key (a new random one, printed once)")
    add.add_argument("--label", default="", help="a note kept with the key (who it is for)")
    add.add_argument("--key", help="store this key instead of a new random one (visible in ps: prefer the default)")
    add.add_argument("--json", action="store_true", help="print {key, id, label} as JSON")
    rev = sub.add_parser("revoke", parents=[common], help="remove a key: every daemon refuses it within a second")
    rev.add_argument("what", metavar="ID|SHA256|KEY", help="the key id (8 hex), the key's SHA-256, or the key")
    ls = sub.add_parser("list", parents=[common], help="the keys' ids, labels and creation times (never the keys)")
    ls.add_argument("--json", action="store_true", help="print the entries as JSON")
    return top


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, str, Namespace]:
    """The arguments, the checked URL and the key namespace; UsageError for bad ones."""
    args = parser().parse_args(list(argv))
    url = args.redis or os.environ.get("MESHD_REDIS_URL")
    if not url:
        raise UsageError("--redis URL (or MESHD_REDIS_URL) is required")
    try:
        url = scripts.check_url(url)
    except BadRedisURL as e:
        raise UsageError(f"--redis: {e}") from None
    try:
        ns = Namespace(args.redis_prefix)
    except ValueError as e:
        raise UsageError(f"--redis-prefix: {e}") from None
    return args, url, ns


def connect(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, client_name="meshd-keys")


def _row(e: KeyEntry) -> dict[str, Any]:
    return {"id": e.key_id, "label": e.label, "created": e.created, "sha256": e.digest}


def run(args: argparse.Namespace, url: str, ns: Namespace, out: TextIO, err: TextIO, client: Any = None) -> int:
    import redis

    client = client if client is not None else connect(url)
    try:
        if args.command == "add":
            key, entry = add_key(client, ns, label=args.label, key=args.key, now=time.time())
            if args.json:
                out.write(json.dumps({"key": key, "id": entry.key_id, "label": entry.label}) + "\n")
            else:
                out.write(key + "\n")
                err.write(f"added key {entry.key_id}: keep it now, it is stored only as its SHA-256\n")
        elif args.command == "revoke":
            gone = revoke(client, ns, args.what)
            for e in gone:
                out.write(f"revoked key {e.key_id}" + (f" ({e.label})" if e.label else "") + "\n")
            if not gone:
                err.write("meshd keys: nothing revoked (removed meanwhile?)\n")
                return EXIT_FAILURE
        else:
            entries = list_keys(client, ns)
            if args.json:
                out.write(json.dumps([_row(e) for e in entries]) + "\n")
            else:
                for e in entries:
                    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.created)) if e.created else "-"
                    out.write(f"{e.key_id}  {when}  {e.label}\n")
                err.write(f"{len(entries)} key(s)\n")
    except KeyAdminError as e:
        err.write(f"meshd keys: {e}\n")
        return EXIT_FAILURE
    except redis.RedisError as e:
        err.write(f"meshd keys: Redis at {scripts.redact_url(url)}: {type(e).__name__}: {_clean(str(e), url)}\n")
        return EXIT_FAILURE
    finally:
        client.close()
    return EXIT_OK


def _clean(text: str, url: str) -> str:
    """An error message without the URL's password, whatever the client library put in it."""
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


def main(argv: Sequence[str]) -> int:
    try:
        args, url, ns = parse(argv)
    except UsageError as e:
        sys.stderr.write(f"meshd keys: error: {e}\n{parser().format_usage()}")
        return EXIT_USAGE
    return run(args, url, ns, sys.stdout, sys.stderr)
