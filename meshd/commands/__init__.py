"""``meshd`` sub-commands that are not the daemon: ``demo``, ``discover``, ``status``.

Each module has an ``Options`` class (twisted.python.usage) and a ``run(options) -> int`` that returns the
process exit code. Formatting is pure (``format_*`` functions taking the JSON the daemon serves), so tests
call it directly; what comes from outside (a console's JSON, Nostr listings) is cleaned before it reaches
the terminal (:func:`meshd.commands.text.clean`).
"""
