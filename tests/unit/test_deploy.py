"""Deployment files: the entrypoint's command lines (run with a fake twistd), the Fly configs checked against them,
the Dockerfile's required parts and the systemd unit's settings. No container, no systemd: see
tests/integration/test_image.py for the real image build and ``systemd-analyze verify``."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from meshd.tap import Options

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
DOCKERFILE = REPO / "fly" / "Dockerfile"
FLY_APPS = {"console": REPO / "fly" / "console" / "fly.toml", "api": REPO / "fly" / "api" / "fly.toml"}
UNIT = REPO / "deploy" / "systemd" / "meshd.service"
UNIT_ENV = REPO / "deploy" / "systemd" / "meshd.env"

CONSOLE_CMD = ["-n", "--pidfile=", "meshd", "--client", "--auto", "--port", "9337", "--console", "3131"]
CONSOLE_CMD += ["--listen-all", "--state-dir", "/data"]
API_CMD = ["-n", "--pidfile=", "meshd", "--client", "--auto", "--port", "9337", "--listen-all", "--no-console"]
API_CMD += ["--state-dir", "/data"]
DEFAULT_LIMITS = ["--max-inflight", "5", "--queue-timeout", "2", "--rate-limit-rpm", "60", "--rate-limit-streams", "2"]

# A stand-in for twistd: prints its pid, then each argument on its own line (so spaces inside one survive).
FAKE_TWISTD = """#!/bin/sh
echo "$$"
for a in "$@"; do printf '%s\\n' "$a"; done
"""


@pytest.fixture(scope="module")
def fakebin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fakebin")
    twistd = d / "twistd"
    twistd.write_text(FAKE_TWISTD)
    twistd.chmod(0o755)
    return d


def run_entrypoint(fakebin: Path, *args: str, **env: str) -> list[str]:
    """Run docker/entrypoint.sh with the fake twistd first on PATH; return twistd's argv (without argv[0])."""
    proc = subprocess.Popen(
        [str(ENTRYPOINT), *args],
        env={"PATH": f"{fakebin}:/usr/bin:/bin", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    lines = out.split("\n")[:-1]
    # exec: twistd replaces the entrypoint's shell (same pid), so the container's SIGTERM reaches twistd.
    assert lines[0] == str(proc.pid)
    return lines[1:]


def meshd_options(argv: list[str]) -> Options:
    """Parse the flags after ``meshd`` with meshd's own option parser (what twistd would do)."""
    assert argv[:3] == ["-n", "--pidfile=", "meshd"]
    opts = Options()
    opts.parseOptions(argv[3:])
    return opts


# --- entrypoint -----------------------------------------------------------------------------------------------


def test_console_mode_is_the_default(fakebin: Path) -> None:
    assert run_entrypoint(fakebin) == CONSOLE_CMD
    assert run_entrypoint(fakebin, APP_MODE="console") == CONSOLE_CMD


def test_console_mode_parses_with_meshd_options(fakebin: Path, tmp_path: Path) -> None:
    argv = run_entrypoint(fakebin, MESH_STATE_DIR=str(tmp_path), MESH_NOSTR_RELAYS="ws://127.0.0.1:9")
    config = meshd_options(argv).config
    assert (config.api_port, config.console_port) == (9337, 3131)
    assert config.listen_all and config.auto and not config.headless
    assert config.role.value == "client"
    assert config.state_dir == tmp_path
    assert config.nostr_relays == ("ws://127.0.0.1:9",)


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "True", "yes", "on"])
def test_console_headless(fakebin: Path, value: str) -> None:
    argv = run_entrypoint(fakebin, MESH_HEADLESS=value)
    assert argv == [*CONSOLE_CMD, "--headless"]
    assert meshd_options(argv).config.headless


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "2"])
def test_console_not_headless(fakebin: Path, value: str) -> None:
    assert run_entrypoint(fakebin, MESH_HEADLESS=value) == CONSOLE_CMD


def test_api_mode_default_limits(fakebin: Path) -> None:
    assert run_entrypoint(fakebin, APP_MODE="api") == [*API_CMD, *DEFAULT_LIMITS]


def test_api_mode_limits_from_env(fakebin: Path) -> None:
    assert run_entrypoint(fakebin, APP_MODE="api", MESH_API_LIMITS="") == API_CMD
    argv = run_entrypoint(fakebin, APP_MODE="api", MESH_API_LIMITS="--rate-limit-rpm 10", MESH_TRUST_PROXY="1")
    assert argv == [*API_CMD, "--rate-limit-rpm", "10", "--trust-proxy"]
    # The api mode runs no console whatever MESH_HEADLESS says.
    assert "--no-console" in run_entrypoint(fakebin, APP_MODE="api", MESH_HEADLESS="0")


def test_api_mode_without_limits_parses_with_meshd_options(fakebin: Path, tmp_path: Path) -> None:
    argv = run_entrypoint(fakebin, APP_MODE="api", MESH_API_LIMITS="", MESH_STATE_DIR=str(tmp_path))
    config = meshd_options(argv).config
    assert config.api_port == 9337 and not config.console_enabled and config.listen_all and config.auto


def test_api_mode_default_limits_parse_with_meshd_options(fakebin: Path, tmp_path: Path) -> None:
    argv = run_entrypoint(fakebin, APP_MODE="api", MESH_TRUST_PROXY="1", MESH_STATE_DIR=str(tmp_path))
    meshd_options(argv)


def test_mode_as_first_argument_and_extra_arguments_appended(fakebin: Path) -> None:
    assert run_entrypoint(fakebin, "api", APP_MODE="console", MESH_API_LIMITS="") == API_CMD
    argv = run_entrypoint(fakebin, "console", "--mesh-name", "my mesh", "--log-format", "json", APP_MODE="api")
    assert argv == [*CONSOLE_CMD, "--mesh-name", "my mesh", "--log-format", "json"]
    assert run_entrypoint(fakebin, "--log-format", "json") == [*CONSOLE_CMD, "--log-format", "json"]


def test_nostr_relays_and_extra_args_from_env(fakebin: Path) -> None:
    argv = run_entrypoint(
        fakebin,
        MESH_NOSTR_RELAYS=" ws://127.0.0.1:9  wss://r.example ",
        MESH_ARGS="--log-format json",
        MESH_HEADLESS="1",
    )
    tail = ["--headless", "--nostr-relay", "ws://127.0.0.1:9", "--nostr-relay", "wss://r.example"]
    assert argv == [*CONSOLE_CMD, *tail, "--log-format", "json"]
    argv = run_entrypoint(fakebin, APP_MODE="api", MESH_API_LIMITS="", MESH_NOSTR_RELAYS="ws://a:1")
    assert argv == [*API_CMD, "--nostr-relay", "ws://a:1"]


def test_env_lists_are_not_globbed(fakebin: Path) -> None:
    # (run from the repository root, where "*" would match files)
    proc_env = {"MESH_ARGS": "*", "MESH_STATE_DIR": "/var/lib/my state"}
    argv = run_entrypoint(fakebin, **proc_env)
    assert argv[-1] == "*"
    assert argv[argv.index("--state-dir") + 1] == "/var/lib/my state"


def test_other_modes_pass_arguments_to_twistd_as_is(fakebin: Path) -> None:
    args = ["--serve", "http://127.0.0.1:8080", "--publish", "--mesh-name", "two words"]
    assert run_entrypoint(fakebin, *args, APP_MODE="host", MESH_HEADLESS="1", MESH_NOSTR_RELAYS="ws://a:1") == [
        "-n",
        "--pidfile=",
        "meshd",
        *args,
    ]
    assert run_entrypoint(fakebin, "--version", APP_MODE="raw") == ["-n", "--pidfile=", "meshd", "--version"]


def test_entrypoint_is_executable_posix_sh() -> None:
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)


# --- Fly configs ------------------------------------------------------------------------------------------------


def load_fly(mode: str) -> dict:
    with FLY_APPS[mode].open("rb") as f:
        return tomllib.load(f)


@pytest.mark.parametrize("mode", ["console", "api"])
def test_fly_config_matches_the_entrypoint(fakebin: Path, mode: str) -> None:
    cfg = load_fly(mode)
    assert cfg["app"] == f"meshd-{mode}"
    assert cfg["primary_region"] == "syd"
    assert cfg["kill_signal"] == "SIGTERM"
    # The Dockerfile path is relative to the fly.toml and must reach the one real Dockerfile.
    dockerfile = (FLY_APPS[mode].parent / cfg["build"]["dockerfile"]).resolve()
    assert dockerfile == DOCKERFILE.resolve()
    # The build arg selects the mode (ARG CMD -> ENV APP_MODE); [env] says the same.
    assert cfg["build"]["args"]["CMD"] == mode
    assert cfg["env"]["APP_MODE"] == mode
    env = {k: str(v) for k, v in cfg["env"].items()}
    argv = run_entrypoint(fakebin, **env)
    service = cfg["http_service"]
    # The port Fly routes to is the one this mode's meshd serves.
    flag = "--console" if mode == "console" else "--port"
    assert argv[argv.index(flag) + 1] == str(service["internal_port"])
    assert service["internal_port"] == {"console": 3131, "api": 9337}[mode]
    if mode == "api":
        assert "--console" not in argv and "--no-console" in argv
    assert service["force_https"] is True
    assert service["auto_stop_machines"] == "off"
    assert service["auto_start_machines"] is True
    assert service["min_machines_running"] == 1
    checks = service["checks"]
    assert checks and all(c["path"] == "/health" and c["method"].upper() == "GET" for c in checks)
    assert cfg["vm"][0]["size"] == "shared-cpu-1x"


def test_fly_api_limits(fakebin: Path) -> None:
    cfg = load_fly("api")
    concurrency = cfg["http_service"]["concurrency"]
    assert concurrency == {"type": "requests", "soft_limit": 3, "hard_limit": 5}
    argv = run_entrypoint(fakebin, **{k: str(v) for k, v in cfg["env"].items()})
    # meshd's own limits sit next to Fly's: never more in flight than Fly's hard limit lets through.
    assert int(argv[argv.index("--max-inflight") + 1]) <= concurrency["hard_limit"]
    assert "--rate-limit-rpm" in argv and "--rate-limit-streams" in argv
    # Behind Fly's proxy the client address comes from its header.
    assert "--trust-proxy" in argv
    assert "concurrency" not in load_fly("console")["http_service"]


# --- Dockerfile ---------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_one_dockerfile_for_both_paths() -> None:
    root = REPO / "Dockerfile"
    # The root Dockerfile is a symlink into fly/, never a second copy. (This direction works with BuildKit too:
    # it follows a Dockerfile symlink only inside the Dockerfile's own folder, which the root contains.)
    assert root.is_symlink() and os.readlink(root) == "fly/Dockerfile"
    assert root.resolve() == DOCKERFILE.resolve()
    assert not DOCKERFILE.is_symlink()


def test_dockerfile_parts() -> None:
    ins = dockerfile_instructions()
    assert ins[0] == ("ARG", "BASE=python:3.12-slim")
    froms = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    assert len(froms) >= 2 and all(ins[i][1].startswith("${BASE}") for i in froms)
    final = ins[froms[-1] :]
    build = ins[: froms[-1]]
    assert any(w == "RUN" and "pip wheel" in a for w, a in build)
    assert any(w == "RUN" and "python3 -m venv /opt/venv" in a for w, a in build)
    assert not any(w == "RUN" and "pip" in a for w, a in final), "the runtime stage installs nothing"
    assert ("ARG", "CMD=console") in final
    env = " ".join(a for w, a in final if w == "ENV")
    assert "APP_MODE=${CMD}" in env and "MESH_STATE_DIR=/data" in env and "/opt/venv/bin" in env
    user = [a for w, a in final if w == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert ("VOLUME", '["/data"]') in final
    exposed = {p for w, a in final if w == "EXPOSE" for p in a.split()}
    assert exposed == {"3131", "9337"}
    health = [a for w, a in final if w == "HEALTHCHECK"]
    assert len(health) == 1 and "/health" in health[0] and "python3" in health[0] and "curl" not in health[0]
    assert ("COPY", "docker/entrypoint.sh /usr/local/bin/meshd-entrypoint") in final
    assert ("ENTRYPOINT", '["/usr/local/bin/meshd-entrypoint"]') in final  # exec form: no shell in between


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    for word, args in dockerfile_instructions():
        if word == "COPY" and not args.startswith("--from"):
            *sources, _dest = shlex.split(args)
            for src in sources:
                assert src.split("/")[0] in allowed, src


# --- systemd ------------------------------------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def test_systemd_unit_settings() -> None:
    s = unit_settings()

    def one(key: str) -> str:
        assert len(s[key]) == 1, key
        return s[key][0]

    assert one("Service.Type") == "simple"
    assert one("Service.EnvironmentFile") == "-/etc/meshd/meshd.env"
    assert one("Service.DynamicUser") == "yes"
    assert one("Service.StateDirectory") == "meshd"
    assert one("Service.Restart") == "on-failure"
    assert one("Service.RestartSec") == "5"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "LockPersonality"):
        assert one(f"Service.{key}") == "yes", key
    assert one("Service.ProtectSystem") == "strict"
    assert one("Service.CapabilityBoundingSet") == ""
    assert set(one("Service.RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in s["Service.SystemCallFilter"]
    # pyOpenSSL's verify callback needs W+X memory: MemoryDenyWriteExecute=yes breaks every wss:// relay.
    assert one("Service.MemoryDenyWriteExecute") == "no"
    # HTTP connections are descriptors (#6); the sandbox denies setrlimit, so the unit sets it.
    assert int(one("Service.LimitNOFILE")) >= 65536
    assert "@resources" in " ".join(s["Service.SystemCallFilter"])
    assert one("Install.WantedBy") == "multi-user.target"
    exec_start = shlex.split(one("Service.ExecStart"))
    assert exec_start[:4] == ["/opt/meshd/bin/twistd", "--nodaemon", "--pidfile=", "meshd"]
    assert exec_start[exec_start.index("--state-dir") + 1] == "/var/lib/meshd"  # = StateDirectory=meshd
    assert exec_start[-1] == "$MESHD_ARGS"


def test_systemd_env_example_parses_with_meshd_options(tmp_path: Path) -> None:
    values = dict(
        line.split("=", 1)
        for line in UNIT_ENV.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    args = values["MESHD_ARGS"].split()
    opts = Options()
    opts.parseOptions([*args, "--state-dir", str(tmp_path)])
    assert opts.config.auto and opts.config.listen_all and opts.config.role.value == "client"


def test_python_is_the_venv_python() -> None:
    # The tests above parse flags with this interpreter's meshd; make sure it is the checkout under test.
    import meshd

    assert Path(meshd.__file__).resolve().is_relative_to(REPO), (meshd.__file__, sys.executable)


def test_entrypoint_raises_the_open_files_limit_to_the_hard_limit(tmp_path: Path) -> None:
    """A runtime that starts the container at 512 open files: twistd gets the hard limit (#6)."""
    import resource

    bindir = tmp_path / "bin"
    bindir.mkdir()
    twistd = bindir / "twistd"
    twistd.write_text("#!/bin/sh\nulimit -Sn\n")
    twistd.chmod(0o755)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 4096)

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, wanted))

    out = subprocess.run(
        [str(ENTRYPOINT), "api"],
        env={"PATH": f"{bindir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
        preexec_fn=low_limit,
        check=True,
    ).stdout
    assert out.split() == [str(wanted)]
