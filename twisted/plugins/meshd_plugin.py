"""twistd dropin for meshd: a lazy ServiceMaker, nothing else.

The module it names (meshd.tap) is imported only when `twistd meshd` is chosen, so
`twistd --help` stays cheap and the asyncio reactor is installed before anything else
imports the default one.
"""

from twisted.application.service import ServiceMaker

meshd = ServiceMaker(
    "meshd",
    "meshd.tap",
    "Join LLM meshes (mesh-llm protocol) and serve an OpenAI-compatible API and a web console",
    "meshd",
)
