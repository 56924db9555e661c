"""``meshd ARGS`` runs ``twistd -n --pidfile= meshd ARGS`` (foreground, no pid file)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "meshd", *args]
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
