"""``meshd ARGS`` runs ``twistd -n --pidfile= meshd ARGS`` (foreground, no pid file).

``meshd keys add|revoke|list --redis URL`` manages the API key set in Redis (:mod:`meshd.shared.keyscli`).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "keys":
        # Imported on use: the daemon path must not import anything that installs a reactor before twistd does.
        from meshd.shared.keyscli import main as keys

        raise SystemExit(keys(args[1:]))
    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "meshd", *args]
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
