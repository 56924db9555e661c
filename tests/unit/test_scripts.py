"""scripts/bootstrap installs once and again only when pyproject.toml changes; scripts/run runs `meshd demo` by
default. Both run here against a stand-in venv whose `python` and `meshd` record how they were called."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAKE_TOOL = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
case "$*" in *"$FAIL_ON"*) [ -n "$FAIL_ON" ] && exit 3 ;; esac
exit 0
"""


class Checkout:
    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "repo"
        (self.root / "scripts").mkdir(parents=True)
        for script in ("bootstrap", "run"):
            shutil.copy2(REPO / "scripts" / script, self.root / "scripts" / script)
        (self.root / "pyproject.toml").write_text('[project]\nname = "meshd"\n')
        venv_bin = self.root / ".venv" / "bin"
        venv_bin.mkdir(parents=True)
        (self.root / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.7\n")
        self.log = tmp_path / "calls.log"
        self.log.touch()
        for tool in ("python", "meshd"):
            (venv_bin / tool).write_text(FAKE_TOOL.format(log=self.log))
            (venv_bin / tool).chmod(0o755)
        (self.root / "scripts" / "install-llama-server").write_text(FAKE_TOOL.format(log=self.log))
        (self.root / "scripts" / "install-llama-server").chmod(0o755)

    def run(self, *args: str, fail_on: str = "") -> subprocess.CompletedProcess[str]:
        before = len(self.calls())
        proc = subprocess.run(
            [str(self.root / "scripts" / args[0]), *args[1:]],
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "FAIL_ON": fail_on},
        )
        proc.new_calls = self.calls()[before:]  # type: ignore[attr-defined]
        return proc

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    return Checkout(tmp_path)


def pip_installs(calls: list[str]) -> list[str]:
    return [c for c in calls if " -m pip install " in c and "--upgrade pip" not in c]


def test_bootstrap_installs_once_until_pyproject_changes(checkout: Checkout) -> None:
    first = checkout.run("bootstrap", "run")
    assert first.returncode == 0, first.stderr
    assert pip_installs(first.new_calls) == ["python -m pip install --no-input -e .[demo]"]
    assert "installing meshd (editable)" in first.stderr and "done in" in first.stderr
    assert any(c.startswith("python -c import meshd.cli") for c in first.new_calls)

    again = checkout.run("bootstrap", "run")
    assert again.returncode == 0 and again.new_calls == [] and again.stderr == ""

    tests = checkout.run("bootstrap", "test")  # the test extra is more than the run extra
    assert pip_installs(tests.new_calls) == ["python -m pip install --no-input -e .[test]"]
    assert "installing what meshd[test] adds (test)" in tests.stderr
    assert checkout.run("bootstrap", "run").new_calls == []  # ...and holds all of it
    assert checkout.run("bootstrap").new_calls == []  # test is the default

    (checkout.root / "pyproject.toml").write_text('[project]\nname = "meshd"\nversion = "2"\n')
    changed = checkout.run("bootstrap", "run")
    assert pip_installs(changed.new_calls) == ["python -m pip install --no-input -e .[demo]"]
    assert (
        "pyproject.toml (or this script, or the venv's Python) changed: installing meshd[demo] again" in changed.stderr
    )


def test_bootstrap_failure_leaves_no_stamp(checkout: Checkout) -> None:
    failed = checkout.run("bootstrap", "run", fail_on="-e .[demo]")
    assert failed.returncode == 3
    assert "failed (exit code 3)" in failed.stderr
    retried = checkout.run("bootstrap", "run")
    assert pip_installs(retried.new_calls) == ["python -m pip install --no-input -e .[demo]"]


def test_bootstrap_rejects_an_unknown_profile(checkout: Checkout) -> None:
    proc = checkout.run("bootstrap", "dev")
    assert proc.returncode == 2 and "usage: scripts/bootstrap [run|test]" in proc.stderr


def test_run_without_arguments_is_the_demo(checkout: Checkout) -> None:
    first = checkout.run("run")
    assert first.returncode == 0, first.stderr
    assert first.new_calls[-1] == "meshd demo"
    assert not any(c.startswith("install-llama-server") for c in first.new_calls)  # llama-server was found
    flags = checkout.run("run", "--client", "--auto")
    assert flags.new_calls == ["meshd --client --auto"]  # set up already: meshd at once
    assert checkout.run("run", "status", "--json").new_calls == ["meshd status --json"]


def test_install_llama_server_reads_the_pins_from_meshd(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(REPO / "scripts" / "install-llama-server"), str(tmp_path / "no-venv")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip() == f"install-llama-server: no venv at {tmp_path / 'no-venv'} (run scripts/bootstrap first)"
    )


def test_run_builds_llama_server_for_the_demo_when_there_is_none(checkout: Checkout) -> None:
    proc = checkout.run("run", fail_on="find_llama_server")  # the stand-in python finds no llama-server
    assert proc.returncode == 0, proc.stderr
    assert proc.new_calls[-2:] == [f"install-llama-server {checkout.root / '.venv'}", "meshd demo"]
    assert "meshd demo needs llama.cpp's llama-server" in proc.stderr and "scripts/run demo --serve URL" in proc.stderr
    flags = checkout.run("run", "demo", "--serve", "http://127.0.0.1:8080", fail_on="find_llama_server")
    assert flags.new_calls == ["meshd demo --serve http://127.0.0.1:8080"]  # with arguments: no build
