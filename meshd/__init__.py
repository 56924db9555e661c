"""meshd: a Python/Twisted node for LLM meshes that speaks mesh-llm's wire protocol."""

__version__ = "0.1.0"
