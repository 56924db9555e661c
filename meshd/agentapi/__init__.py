"""Speak what coding agents speak: OpenAI's Responses API and Anthropic's Messages API over chat hosts.

A sans-IO translation layer (no Twisted, no I/O): requests in those APIs become chat-completions
requests that any OpenAI-compatible host serves, and the host's answer (JSON or SSE) becomes the caller's
API again. The web layer uses :mod:`meshd.agentapi.adapter`; the mapping is in ``docs/agent-apis.md``.
"""

from meshd.agentapi.adapter import AgentApi, Answer, Api, Endpoint, Forward, Prepared, match, random_id
from meshd.agentapi.errors import AgentApiError
from meshd.agentapi.store import MemoryResponseStore, ResponseStore, StoredResponse, load_history
from meshd.agentapi.translate import Head, Output, Translator

__all__ = [
    "AgentApi",
    "AgentApiError",
    "Answer",
    "Api",
    "Endpoint",
    "Forward",
    "Head",
    "MemoryResponseStore",
    "Output",
    "Prepared",
    "ResponseStore",
    "StoredResponse",
    "Translator",
    "load_history",
    "match",
    "random_id",
]
