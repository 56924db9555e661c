"""Measure the test backend: llama-server start-up, first-token latency and tokens/s on the tiny model.

Usage: ``python -m bench.llama_backend [--requests N] [--max-tokens T]`` (needs scripts/install-llama-server).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from meshd.llamacpp import find_llama_server
from meshd.tiny_gguf import write_tiny_llama
from tests.integration.backend import start_llama_server


def one_stream(client: openai.OpenAI, model: str, max_tokens: int) -> tuple[float, int, float]:
    """(seconds to the first content chunk, content chunks, seconds in total) of one streamed completion."""
    start = time.perf_counter()
    first = 0.0
    chunks = 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hello mesh"}],
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if chunks == 0:
                first = time.perf_counter() - start
            chunks += 1
    return first, chunks, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    binary = find_llama_server()
    if binary is None:
        sys.stderr.write("llama-server not found: run scripts/install-llama-server\n")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = write_tiny_llama(Path(tmp) / "tiny.gguf")
        t1 = time.perf_counter()
        backend = start_llama_server(binary, model, Path(tmp) / "server.log")
        t2 = time.perf_counter()
        try:
            client = openai.OpenAI(base_url=backend.api_base, api_key="unused", max_retries=0)
            one_stream(client, backend.model, 8)  # warm-up
            runs = [one_stream(client, backend.model, args.max_tokens) for _ in range(args.requests)]
            ttft = [r[0] * 1000 for r in runs]
            rates = [r[1] / r[2] for r in runs]
            lines = [
                f"llama-server: {binary}",
                f"model: {model.stat().st_size} bytes, written in {(t1 - t0) * 1000:.0f} ms",
                f"start-up to /health 200: {(t2 - t1) * 1000:.0f} ms",
                f"sequential, {args.requests} streams x {args.max_tokens} tokens:",
                f"  first token ms: median {statistics.median(ttft):.1f}, max {max(ttft):.1f}",
                f"  tokens/s per stream: median {statistics.median(rates):.0f}",
            ]
            with ThreadPoolExecutor(4) as pool:
                start = time.perf_counter()
                par = list(pool.map(lambda _: one_stream(client, backend.model, args.max_tokens), range(8)))
                wall = time.perf_counter() - start
            lines.append(
                f"4 concurrent clients, 8 streams: {sum(r[1] for r in par) / wall:.0f} tokens/s in total, "
                f"first token ms median {statistics.median(r[0] * 1000 for r in par):.1f}"
            )
        finally:
            backend.stop()
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
