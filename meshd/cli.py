"""The ``meshd`` command.

* ``meshd demo|discover|status [options]`` run the sub-commands of :mod:`meshd.commands`;
* ``meshd keys add|revoke|list --redis URL`` manages the API key set in Redis (:mod:`meshd.shared.keyscli`);
* ``meshd [options]`` runs the daemon: ``twistd --nodaemon --pidfile= meshd [options]`` (foreground, no pid
  file), exactly as before the sub-commands existed.

twistd finds ``meshd`` through Twisted's plug-in search of ``twisted/plugins`` folders on ``sys.path``, which an
editable install (``pip install -e``, what scripts/bootstrap does) does not put there. So this command hands
twistd the same ServiceMaker as the dropin (``twisted/plugins/meshd_plugin.py``) directly: ``meshd`` works with
any kind of install, and skips the plug-in search.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

COMMANDS = ("demo", "discover", "status", "keys")

#: The arguments of the dropin's ``ServiceMaker`` (twisted/plugins/meshd_plugin.py; a test keeps them equal).
SERVICE_MAKER = (
    "meshd",
    "meshd.tap",
    "Join LLM meshes (mesh-llm protocol) and serve an OpenAI-compatible API and a web console",
    "meshd",
)


def _command(name: str) -> Callable[[Sequence[str]], int]:
    # Imported on use: the daemon path must not import anything that installs a reactor before twistd does.
    if name == "demo":
        from meshd.commands.demo import main as demo

        return demo
    if name == "discover":
        from meshd.commands.discover import main as discover

        return discover
    if name == "keys":
        from meshd.shared.keyscli import main as keys

        return keys
    from meshd.commands.status import main as status

    return status


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:  # what the daemon's --version prints, without loading the daemon
        from meshd import __version__

        sys.stdout.write(f"meshd {__version__}\n")
        return
    if args and args[0] in COMMANDS:
        raise SystemExit(_command(args[0])(args[1:]))
    if args and not args[0].startswith("-"):
        sys.stderr.write(
            f"meshd: error: unknown command {args[0]!r}; the commands are {', '.join(COMMANDS)}, "
            "and the daemon's options start with -- (meshd --help)\n"
        )
        raise SystemExit(2)
    run_daemon(args)


def run_daemon(args: Sequence[str]) -> None:
    """``twistd --nodaemon --pidfile= meshd ARGS`` with meshd's ServiceMaker handed to twistd directly."""
    from twisted.application import app
    from twisted.application.service import IServiceMaker, ServiceMaker
    from twisted.plugin import getPlugins
    from twisted.scripts.twistd import ServerOptions, runApp

    maker = ServiceMaker(*SERVICE_MAKER)

    class MeshdServerOptions(ServerOptions):  # type: ignore[misc]
        def _getPlugins(self, interface: Any, package: Any = None) -> Any:
            if interface is IServiceMaker:
                return [maker]
            return getPlugins(interface, package)

    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "meshd", *args]
    app.run(runApp, MeshdServerOptions)


if __name__ == "__main__":
    main()
