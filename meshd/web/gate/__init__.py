"""The API port's gate: API keys, per-caller rate limits, the in-flight cap, CORS and the access log.

The cores are sans-IO (they take ``now`` and return decisions): ``keys`` (``APIKeys``), ``limits``
(``RequestRateLimiter``, a token bucket per caller; ``StreamLimiter``), ``meshd.concurrency``
(``ConcurrencyLimiter``: a hard cap with a short FIFO queue), ``cors`` (``CORSPolicy``) and ``ready``
(``readiness``); ``policy.Gate`` holds one port's set of them, built from the Config. ``resource`` is the
thin twisted.web adapter (``GateResource``): it wraps the Klein resource of the API app and applies, in
order: CORS preflight (answered before anything else), bypass of ``/health``, ``/ready`` and
``/metrics``, API key (401), requests per minute (429), concurrent streams per caller (429), the
process-wide in-flight cap (queue, then 503). Once the caller is known it builds the request's one
record (``meshd.apirequest.ApiRequest``: id, caller, body and its JSON, model, stream flag), which the
app reads with ``record_of``. It writes one ``event="access"`` log line and one metrics observation per
request when the response ends.

With ``--redis`` the gate also holds a ``meshd.shared.policy.SharedGate``: its per-caller limits, leases
and key set live in Redis, shared by every API process using it; those checks are Deferreds, so ``render``
answers such requests asynchronously (``NOT_DONE_YET``), as it does for queued ones. Without it nothing
here waits on anything.

The console's chat proxy passes the key check with ``Gate.console_credential``: a random secret made
per process, handed in memory to the console, sent only over loopback in ``x-meshd-console``, accepted
only from a loopback peer on ``/v1/chat/completions``, removed from every request before anything
else looks at it, and never logged or shown (the console adds it server-side; browsers never see it).
"""

from meshd.web.gate.cors import CORSPolicy
from meshd.web.gate.keys import CONSOLE_CREDENTIAL_HEADER, APIKeys, bearer_token, key_id, parse_keys, presented_key
from meshd.web.gate.limits import RateDecision, RequestRateLimiter, StreamLimiter, format_duration
from meshd.web.gate.policy import Gate, client_ip, route_label
from meshd.web.gate.ready import readiness, ready_response
from meshd.web.gate.resource import GateResource, GateService, IApiRequest, record_of

__all__ = [
    "CONSOLE_CREDENTIAL_HEADER",
    "APIKeys",
    "CORSPolicy",
    "Gate",
    "GateResource",
    "GateService",
    "IApiRequest",
    "RateDecision",
    "RequestRateLimiter",
    "StreamLimiter",
    "bearer_token",
    "client_ip",
    "format_duration",
    "key_id",
    "parse_keys",
    "presented_key",
    "readiness",
    "ready_response",
    "record_of",
    "route_label",
]
