"""The real mesh-llm 0.76 client as a test peer: the official Node SDK ``@mesh-llm/sdk`` 0.76.2,
which ships mesh-llm's Rust client (iroh 1.0.x) as a prebuilt N-API addon.

The addon needs glibc >= 2.38, so it runs in the Debian 13 chroot that ``scripts/install-mesh-sdk``
builds (cached in ``~/.cache/meshd-mesh-sdk``). A test hands :meth:`MeshSdk.run` a Node script; the
script runs as ``chroot ROOT node /tmp/<script>.js`` (same network namespace, so 127.0.0.1 reaches
meshd), with a deadline both inside the script and around the process, and its last stdout line is
parsed as JSON. If the chroot is missing, the ``mesh_sdk`` fixture fails with the install command;
set ``MESHD_SKIP_MESH_SDK=1`` to skip instead. ``MESHD_MESH_SDK_ROOT`` picks a chroot explicitly.

Inside a script: ``sdk`` is the loaded SDK, ``emit(obj)`` prints the result and exits, and
``errorText(e)`` is an error's message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

SDK_VERSION = "0.76.2"
INSTALL_HINT = (
    "the mesh-llm SDK chroot is not installed: run `scripts/install-mesh-sdk` (a Debian 13 chroot with "
    "nodejs and @mesh-llm/sdk@0.76.2, ~40 s and ~540 MB once, then cached), or set MESHD_SKIP_MESH_SDK=1 "
    "to skip the tests that need it"
)
_STAMP = ".meshd-mesh-sdk"

# Runs before every test script: the SDK, a way to report, and a deadline that always reports.
_PRELUDE = """'use strict'
const sdk = require('/opt/meshsdk/index.js')
function emit(obj) { process.stdout.write(JSON.stringify(obj) + '\\n'); process.exit(0) }
function errorText(e) { return String((e && e.message) || e) }
setTimeout(() => { process.stdout.write(JSON.stringify({ deadline: true }) + '\\n'); process.exit(3) }, %d).unref()
process.on('unhandledRejection', (e) => {
  process.stdout.write(JSON.stringify({ unhandled: errorText(e) }) + '\\n')
  process.exit(4)
})
"""


def default_root() -> Path:
    explicit = os.environ.get("MESHD_MESH_SDK_ROOT")
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get("MESHD_MESH_SDK_CACHE", Path.home() / ".cache" / "meshd-mesh-sdk"))
    return cache / f"trixie-sdk-{SDK_VERSION}"


@attrs.frozen
class SdkRun:
    returncode: int
    stdout: str
    stderr: str
    #: The JSON object the script emitted (its last stdout line).
    output: Any


@attrs.define
class MeshSdk:
    root: Path
    chroot: str

    def run(self, script: str, *, timeout: float = 60.0, env: dict[str, str] | None = None) -> SdkRun:
        """Run ``script`` under the SDK with a deadline of ``timeout`` seconds (the script's own
        deadline fires two seconds earlier so it can still report)."""
        name = f"meshd-test-{uuid.uuid4().hex}.js"
        path = self.root / "tmp" / name
        inner_ms = max(1000, int((timeout - 2) * 1000))
        path.write_text((_PRELUDE % inner_ms) + script)
        run_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", **(env or {})}
        try:
            proc = subprocess.run(
                [self.chroot, str(self.root), "node", f"/tmp/{name}"],
                env=run_env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(
                f"SDK script still running after {timeout} s; stdout={e.stdout!r} stderr={e.stderr!r}"
            ) from None
        finally:
            path.unlink(missing_ok=True)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        if not lines:
            raise AssertionError(f"SDK script printed nothing (exit {proc.returncode}); stderr:\n{proc.stderr[-4000:]}")
        try:
            output = json.loads(lines[-1])
        except ValueError:
            raise AssertionError(
                f"SDK script's last line is not JSON: {lines[-1]!r}; stderr:\n{proc.stderr[-4000:]}"
            ) from None
        return SdkRun(proc.returncode, proc.stdout, proc.stderr, output)


@pytest.fixture(scope="session")
def mesh_sdk() -> Iterator[MeshSdk]:
    """The SDK chroot, checked to be complete and runnable as root."""

    def unavailable(reason: str) -> None:
        if os.environ.get("MESHD_SKIP_MESH_SDK") == "1":
            pytest.skip(f"{reason} and MESHD_SKIP_MESH_SDK=1")
        pytest.fail(f"{reason}: {INSTALL_HINT}", pytrace=False)

    root = default_root()
    if not (root / _STAMP).is_file() or not (root / "opt" / "meshsdk" / "index.js").is_file():
        unavailable(f"no SDK chroot at {root}")
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    if os.geteuid() != 0 or not Path(chroot).is_file():
        unavailable("running the SDK chroot needs root and chroot(8)")
    yield MeshSdk(root, chroot)
