"""Run ``twistd`` on Twisted's asyncio reactor driven by a uvloop event loop (meshd itself unchanged).

    python bench/uvloop_twistd.py --nodaemon --pidfile= meshd ARGS...

meshd installs Twisted's asyncio reactor on a plain ``asyncio`` loop when it is imported
(``meshd/tap.py`` ``_install_asyncio_reactor``), unless a reactor is installed already; an installed
``AsyncioSelectorReactor`` is accepted as it is. So this launcher installs the reactor first, on a loop
made by ``uvloop.new_event_loop()``, and then hands over to twistd's own ``run()``: meshd finds the
asyncio reactor in place and uses it. The bench's ``--uvloop`` flag starts a second meshd host and client
this way. uvloop comes from the bench's tools (``bench/run --uvloop`` installs it when meshd's Python lacks
it); it is not a dependency of meshd.
"""

from __future__ import annotations

import asyncio
import sys


def main() -> None:
    import uvloop
    from twisted.internet import asyncioreactor

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)

    from twisted.scripts.twistd import run

    sys.argv[0] = "twistd"
    run()


if __name__ == "__main__":
    main()
