"""State shared by several API processes through Redis (``--redis URL``).

One machine keeps its API limits in process memory (``meshd.web.gate``). Several machines behind one
address (Fly scales an app by adding machines) keep them here instead, in one Redis:

- ``scripts``: key names and the Lua scripts (each update is one atomic script), and the pure parsing of
  what Redis answers (outside input: checked and bounded);
- ``link``: the client (redis-py's asyncio client on the reactor's loop, bridged with
  ``Deferred.fromFuture``), bounded timeouts, and the link's health (up/down, probed; a down link fails
  fast instead of waiting on Redis);
- ``limits``: requests per minute (a token bucket per caller) and concurrency leases (streams per caller,
  the cluster-wide in-flight cap) that expire unless renewed, so a crashed machine frees its slots;
- ``keys``: a hashed API key set that every machine re-reads within half a second, and its admin operations
  (``meshd keys add|revoke|list``, :mod:`meshd.shared.keyscli`);
- ``policy``: :class:`~meshd.shared.policy.SharedGate`, what the API gate calls: the shared checks wrapped in
  the fail-open/fail-closed policy (``--redis-limits-fail``, ``--redis-keys-fail``), plus status and metrics;
- ``store``: a Redis-backed store of per-user state with a TTL (stored Responses for ``previous_response_id``).

Nothing here imports the global reactor; the clock is passed in.
"""
