"""Run real ``twistd -n meshd`` processes for tests and read their JSON log lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def twistd_cmd(*args: str, reactor: str | None = None) -> list[str]:
    pre = ["--nodaemon", "--pidfile="]
    if reactor:
        pre.append(f"--reactor={reactor}")
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *pre, "meshd", *args]


def repo_env(extra_path: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [p for p in (extra_path, str(REPO)) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Daemon:
    """A meshd process with ``--log-format json``; its stdout lines are parsed as they arrive."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None, preexec_fn: Any = None) -> None:
        self.args = ["--log-format", "json", *args]
        if not any(a in ("--relay", "--no-relay", "--relay-server") or a.startswith("--relay=") for a in args):
            self.args.append("--no-relay")  # tests never contact the public iroh relays
        self.proc = subprocess.Popen(
            twistd_cmd(*self.args),
            cwd=cwd,
            env=env or repo_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,
        )
        self.records: list[dict[str, Any]] = []
        self.bad_lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    self.bad_lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_event(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for rec in self.records:
                    if rec.get("event") == name:
                        return rec
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no {name!r} event; exit={self.proc.poll()} records={self.records[-5:]} "
                        f"stderr={self._stderr_if_done()}"
                    )
                self._cond.wait(min(left, 0.2))

    def _stderr_if_done(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait. Returns 0 for a clean shutdown.

        twistd stops every service, logs "Server Shut Down." and then re-raises the signal so the
        parent sees how it ended; that counts as clean only after the shutdown line was logged.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        finally:
            self._reader.join(timeout)
        if rc == -signal.SIGTERM and any(r.get("msg") == "Server Shut Down." for r in self.records):
            return 0
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
