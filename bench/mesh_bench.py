"""What the mesh costs a request: meshd vs straight to the backend vs two HAProxy hops vs LiteLLM, on 127.0.0.1.

    bench/run [--quick] [--no-litellm] [--no-haproxy] [--no-profile] [--uvloop] [--meshd-tree DIR]
              [--out bench/results/latest.json]

One run starts (all on 127.0.0.1, nothing leaves the machine): the bench backend (bench/fake_backend.py),
the floor (two HAProxy processes in a chain, bench/haproxy_chain.py), a meshd host (``twistd -n meshd
--serve``), a meshd client (``--client --join TOKEN``), LiteLLM's proxy in front of the same backend (when its
venv is there), and the load generator (bench/loadgen.py), which uses the same HTTP client for every target.
With ``--uvloop`` a second meshd host and client run on a uvloop event loop (bench/uvloop_twistd.py) and get
their own column. It prints a table (every goal PASS/MISS/SKIP) and writes JSON.

Measures: start-up (client process start -> first 200 completion), idle RSS, added latency over direct
(p50/p99) and its multiples of the HAProxy chain's and LiteLLM's, streaming TTFB and chunks/s, 1,000
concurrent paced streams through one client and one host (every duration against the backend's pace, TTFB,
peak RSS, CPU), the number of paced streams one host holds at pace (a rising ladder) and its chunks/s per
host core, QUIC RTT and MB/s (bench/quic_bench.py), the latency the Redis-backed gate adds (``--redis``;
skipped when ``redis-server`` is not installed), and py-spy profiles where a goal is missed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import haproxy_chain  # noqa: E402
from bench.report import goals, table  # noqa: E402
from tests.integration.daemon import Daemon, twistd_cmd  # noqa: E402

PY = sys.executable
BENCH = REPO / "bench"
TOOLS_VENV = Path(os.environ.get("MESHD_BENCH_VENV", str(Path.home() / ".cache" / "meshd-bench" / "venv")))
#: bench/run --uvloop installs uvloop here (pip --target, for meshd's Python) when meshd's Python lacks it.
UVLOOP_DIR = TOOLS_VENV / f"uvloop-py{sys.version_info.major}.{sys.version_info.minor}"
NO_NOSTR = "ws://127.0.0.1:9"  # discard port: nothing answers, nothing leaves the machine
#: LiteLLM refuses to start without a master key; the load generator sends it to every target (same bytes).
API_KEY = "sk-meshd-bench-" + os.urandom(16).hex()
TICK = os.sysconf("SC_CLK_TCK")

#: The paced streams: model ``bench-paced``, PACED_CHUNKS chunks, one every PACE_INTERVAL s = 5.0 s a stream.
PACED_CHUNKS = 50
PACE_INTERVAL = 0.1
PACE_S = PACED_CHUNKS * PACE_INTERVAL
STRETCH = 1.10  # a stream holds the pace when it ends within 10% of it
RAMP_S = 2.0  # streams start evenly over this many seconds
#: meshd, like mesh-llm, lets a peer open 1,024 bidirectional QUIC streams per connection (meshd/quic/core.py),
#: so above 1,000 streams the ladder spreads them over more clients, all joined to the one host.
STREAMS_PER_CLIENT = 1000
SCALE_STEPS = (250, 500, 1000, 2000, 4000)
QUICK_SCALE_STEPS = (100, 200, 400)


# processes ---------------------------------------------------------------------------------------------


def raise_nofile(want: int = 65536) -> tuple[int, int]:
    """Raise the soft fd limit (inherited by every process started here) within the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS/VmHWM (MB) and CPU seconds (utime+stime) of a process."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    out["cpu_s"] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def reset_peak_rss(pid: int) -> None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def event_loop_of(pid: int) -> str:
    """'uvloop' when the process has uvloop's extension mapped, else 'asyncio'."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "uvloop" if any("uvloop" in line for line in f) else "asyncio"
    except OSError:
        return "unknown"


def http_json(url: str, body: Any = None, timeout: float = 5.0, key: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def until(pred: Any, within: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except OSError as e:
            last = None
            err = e
        if last:
            return last
        time.sleep(step)
    raise RuntimeError(f"timed out waiting for {what} ({locals().get('err', last)!r})")


def git_rev(tree: Path) -> str | None:
    out = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or None


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class Flavour:
    """Which meshd: the code tree it is imported from and its event loop (plain asyncio, or uvloop)."""

    label: str
    tree: Path
    uvloop: bool = False
    extra_path: str | None = None  # where uvloop is found when meshd's Python lacks it

    def command(self, args: list[str]) -> list[str]:
        if self.uvloop:
            return [PY, str(BENCH / "uvloop_twistd.py"), "--nodaemon", "--pidfile=", "meshd", *args]
        return twistd_cmd(*args)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.tree), self.extra_path) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env


class Meshd(Daemon):
    """A meshd process of a Flavour: the test helper's JSON log reader, with the bench's command and env.

    Daemon.__init__ always runs ``twistd_cmd`` from the repo's own tree, so this starts the process itself and
    then sets up the same reader state (``records``, the condition, the reader thread) that Daemon's other
    methods use. stderr goes to a file so that nothing blocks on a pipe nobody reads.
    """

    def __init__(self, flavour: Flavour, args: list[str], cwd: Path, name: str) -> None:
        self.args = ["--log-format", "json", *args]
        self.stderr_path = cwd / f"{name}.stderr"
        self.proc = subprocess.Popen(
            flavour.command(self.args),
            cwd=cwd,
            env=flavour.env(),
            stdout=subprocess.PIPE,
            stderr=self.stderr_path.open("w"),
            text=True,
        )
        self.records: list[dict[str, Any]] = []
        self.bad_lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _stderr_if_done(self) -> str:
        if self.proc.poll() is None:
            return ""
        return self.stderr_path.read_text()[-2000:]


class Procs:
    """Every process this run starts; all are ended at the end (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[Any]] = []
        self.daemons: list[Daemon] = []

    def stop_daemon(self, d: Daemon) -> None:
        with contextlib.suppress(Exception):
            d.terminate(5)
        d.kill()
        if d in self.daemons:
            self.daemons.remove(d)

    def stop(self) -> None:
        for d in list(self.daemons):
            self.stop_daemon(d)
        for p in self.popens:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.popens:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def start_backend(procs: Procs, log: Path) -> tuple[subprocess.Popen[str], str]:
    p = subprocess.Popen(
        [PY, str(BENCH / "fake_backend.py"), "--port", "0", "--paced-interval", str(PACE_INTERVAL)],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    procs.popens.append(p)
    assert p.stdout is not None
    line = p.stdout.readline()
    port = json.loads(line)["port"]
    return p, f"http://127.0.0.1:{port}"


COMPLETION = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def completes(api: str, key: str | None = None) -> bool:
    try:
        return http_json(api + "/v1/chat/completions", COMPLETION, timeout=2, key=key)[0] == 200
    except (OSError, ValueError):
        return False


def start_chain(procs: Procs, tmp: Path, backend: str) -> dict[str, Any]:
    """The floor target: two HAProxy hops in front of the backend, or why not."""
    binary = haproxy_chain.haproxy_binary()
    if binary is None:
        return {"skipped": "haproxy is not installed (bench/run installs Debian's haproxy with apt-get when it can)"}
    ports = [free_port(), free_port()]
    procs.popens.extend(haproxy_chain.start_chain(binary, tmp, int(backend.rsplit(":", 1)[1]), ports))
    url = f"http://127.0.0.1:{ports[0]}"
    try:
        until(lambda: completes(url, API_KEY), 10, "a completion through the HAProxy chain")
    except RuntimeError as e:
        return {"skipped": f"the HAProxy chain did not answer: {e} | {(tmp / 'haproxy-hop1.log').read_text()[-300:]}"}
    return {"url": url, "version": haproxy_chain.haproxy_version(binary), "hops": len(ports)}


def meshd_common(tmp: Path, name: str) -> list[str]:
    return [
        "--console",
        "0",
        "--bind-address",
        "127.0.0.1",
        "--no-relay",
        "--nostr-relay",
        NO_NOSTR,
        "--state-dir",
        str(tmp / name),
    ]


def start_host(procs: Procs, tmp: Path, backend: str, flavour: Flavour, name: str) -> tuple[Meshd, str]:
    args = ["--serve", backend, "--backend-max-inflight", "10000", "--port", "0", *meshd_common(tmp, name)]
    d = Meshd(flavour, args, tmp, name)
    procs.daemons.append(d)
    ready = d.wait_event("ready", 30)
    console = ready["console_url"]
    until(lambda: http_json(console + "/api/status")[1].get("hosted_models"), 20, "host serving models")
    token = http_json(console + "/api/status")[1]["token"]
    return d, token


def start_client(
    procs: Procs, tmp: Path, token: str, flavour: Flavour, name: str, *extra: str
) -> tuple[Meshd, str, float]:
    """A client joined to *token*; returns it, its API URL and seconds from Popen to the first 200 completion."""
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    args = ["--client", "--join", token, "--port", str(port), *meshd_common(tmp, name), *extra]
    d = Meshd(flavour, args, tmp, name)
    procs.daemons.append(d)
    until(lambda: completes(api), 30, f"{name}'s first completion", step=0.01)
    first = time.perf_counter() - t0
    d.wait_event("ready", 5)
    return d, api, first


@dataclass
class Pair:
    """A meshd host and the client joined to it (plus the ladder's extra clients while it runs)."""

    flavour: Flavour
    host: Meshd
    token: str
    client: Meshd
    api: str
    startup_s: float
    extra: list[tuple[Meshd, str]] = field(default_factory=list)


#: The gate's limits in both gate phases: every completion is checked (rate) and, with Redis, also takes a slot of
#: the cluster-wide cap in the same script and gives it back after; the numbers are high enough never to refuse.
GATE_LIMITS = ["--rate-limit-rpm", "1000000000", "--rate-limit-streams", "1000"]


def start_redis(procs: Procs, tmp: Path) -> str | None:
    """Debian's redis-server on a free port (nothing on disk); None when it is not installed."""
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if binary is None:
        return None
    port = free_port()
    p = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "redis.log").open("w"),
        cwd=tmp,
    )
    procs.popens.append(p)

    def pong() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    until(pong, 10, "redis-server")
    return f"redis://127.0.0.1:{port}/0"


def gate_phase(procs: Procs, tmp: Path, token: str, flavour: Flavour, n: int) -> dict[str, Any]:
    """Latency through two clients with the same limits: in-process gate vs the Redis-backed one."""
    if not (flavour.tree / "meshd" / "shared").is_dir():
        return {"skipped": f"the meshd in {flavour.tree} has no --redis"}
    url = start_redis(procs, tmp)
    if url is None:
        return {"skipped": "redis-server is not installed (apt-get install redis-server)"}
    _, local, _ = start_client(procs, tmp, token, flavour, "gate-local", *GATE_LIMITS)
    _, shared, _ = start_client(
        procs, tmp, token, flavour, "gate-redis", *GATE_LIMITS, "--redis", url, "--max-inflight-global", "1000000"
    )
    lat = loadgen("latency", "--url", local, "--url", shared, "--n", str(n), "--warmup", str(n // 10), "--rounds", "4")
    in_process, redis = lat["latency"]
    return {
        "in_process": in_process,
        "redis": redis,
        "added_p50_ms": redis["p50_ms"] - in_process["p50_ms"],
        "added_p99_ms": redis["p99_ms"] - in_process["p99_ms"],
        "redis_calls_per_request": 2,  # the admit script (rate check + cluster-wide slot), the slot given back
    }


def litellm_bin() -> Path | None:
    p = TOOLS_VENV / "bin" / "litellm"
    return p if p.exists() else None


def start_litellm(procs: Procs, tmp: Path, backend: str) -> tuple[subprocess.Popen[bytes], str] | None:
    binary = litellm_bin()
    if binary is None:
        return None
    cfg = tmp / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        "      model: openai/bench\n"
        f"      api_base: {backend}/v1\n"
        "      api_key: unused\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
        "  set_verbose: false\n"
        "general_settings:\n"
        f"  master_key: {API_KEY}\n"
    )
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "DISABLE_SCHEMA_UPDATE": "True",
            "NO_PROXY": "*",
        }
    )
    env.pop("DATABASE_URL", None)
    log = (tmp / "litellm.log").open("w")
    p = subprocess.Popen(
        [str(binary), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp,
    )
    procs.popens.append(p)
    return p, f"http://127.0.0.1:{port}"


def wait_litellm(url: str, within: float = 90.0) -> float:
    t0 = time.perf_counter()
    until(lambda: completes(url, API_KEY), within, "LiteLLM's first completion", step=0.25)
    return time.perf_counter() - t0


def loadgen(*args: str, timeout: float = 300) -> dict[str, Any]:
    out = subprocess.run(
        [PY, str(BENCH / "loadgen.py"), *args, "--api-key", API_KEY],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen {args[0]} failed: {out.stderr[-1500:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def quic_bench(tree: Path, mib: int, rounds: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    env = dict(os.environ, PYTHONPATH=str(tree))
    for name in ("meshd-meshd", "meshd-iroh"):
        cmd = [PY, str(BENCH / "quic_bench.py"), "--scenario", name, "--mib", str(mib), "--rounds", str(rounds)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False, env=env)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            res[name] = json.loads(lines[-1]) if lines else {"error": out.stderr[-500:]}
        except subprocess.TimeoutExpired:
            res[name] = {"error": "timeout"}
    return res


def udp_counters() -> dict[str, int]:
    """System-wide UDP InDatagrams/OutDatagrams (only meshd's QUIC uses UDP while this runs)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=True)}


def per_request(api: str, daemons: dict[str, Daemon], n: int) -> dict[str, Any]:
    """CPU ms, log lines and UDP datagrams per non-streaming completion through meshd (no profiler attached)."""
    lines0 = {k: len(d.records) for k, d in daemons.items()}
    cpu0 = {k: proc_status(d.proc.pid)["cpu_s"] for k, d in daemons.items()}
    udp0 = udp_counters()
    loadgen("latency", "--url", api, "--n", str(n), "--warmup", "0", "--rounds", "1")
    time.sleep(0.3)  # let the last log lines arrive
    udp1 = udp_counters()
    out: dict[str, Any] = {"requests": n, "udp_datagrams": round((udp1["OutDatagrams"] - udp0["OutDatagrams"]) / n, 1)}
    for k, d in daemons.items():
        out[f"{k}_cpu_ms"] = round((proc_status(d.proc.pid)["cpu_s"] - cpu0[k]) * 1000 / n, 3)
        out[f"{k}_log_lines"] = round((len(d.records) - lines0[k]) / n, 2)
    return out


# paced streams -----------------------------------------------------------------------------------------


def paced(urls: list[str], streams: int, pids: dict[str, list[int]]) -> dict[str, Any]:
    """*streams* paced streams spread over *urls* (loadgen concurrent), CPU of *pids* sampled as they run."""
    pid_args = [a for name, ids in pids.items() for pid in ids for a in ("--pid", f"{name}={pid}")]
    url_args = [a for u in urls for a in ("--url", u)]
    limit = 60.0
    out = loadgen(
        "concurrent",
        *url_args,
        "--streams",
        str(streams),
        "--chunks",
        str(PACED_CHUNKS),
        "--interval",
        str(PACE_INTERVAL),
        "--ramp",
        str(RAMP_S),
        "--timeout",
        str(limit),
        *pid_args,
        timeout=RAMP_S + limit + 60,
    )
    return out["concurrent"]  # type: ignore[no-any-return]


def held(c: dict[str, Any]) -> bool:
    """Every stream complete and ended within the backend's pace + 10%."""
    d = c.get("duration_s")
    return bool(c["completed"] == c["streams"] and d and d["min"] >= PACE_S * 0.999 and d["max"] <= PACE_S * STRETCH)


def per_core(c: dict[str, Any]) -> dict[str, Any]:
    """Chunks/s through the host and per host core (chunks/s / host CPU-seconds per wall-second).

    From the steady window (all streams open) when there is one, else from the whole run.
    """
    steady = c.get("steady")
    if steady and steady["cpu_share"].get("host"):
        share = steady["cpu_share"]
        rate = steady["chunks_per_s"]
        src = "steady"
    else:
        whole = c["whole"]
        wall = c["wall_s"]
        share = {k: v / wall for k, v in whole["cpu_s"].items()} if wall else {}
        rate = whole["chunks_per_s"]
        src = "whole run"
    host = share.get("host") or 0.0
    return {
        "chunks_per_s": rate,
        "host_cores": host,
        "client_cores": share.get("client"),
        "backend_cores": share.get("backend"),
        "loadgen_cores": share.get("loadgen"),
        "chunks_per_host_core": rate / host if host else None,
        "window": src,
    }


def many_streams(pair: Pair, backend_pid: int, streams: int) -> dict[str, Any]:
    """The 1,000 paced streams through one client and one host: durations, TTFB, peak RSS, CPU."""
    pids = {"client": pair.client.proc.pid, "host": pair.host.proc.pid}
    for pid in pids.values():
        reset_peak_rss(pid)
    before = {n: proc_status(p) for n, p in pids.items()}
    c = paced([pair.api], streams, {"host": [pids["host"]], "client": [pids["client"]], "backend": [backend_pid]})
    after = {n: proc_status(p) for n, p in pids.items()}
    c["processes"] = {
        n: {
            "peak_rss_mb": after[n]["VmHWM"],
            "rss_before_mb": before[n]["VmRSS"],
            "cpu_s": round(after[n]["cpu_s"] - before[n]["cpu_s"], 2),
        }
        for n in pids
    }
    c["held"] = held(c)
    c["rate"] = per_core(c)
    return c


def ladder(
    procs: Procs,
    tmp: Path,
    pair: Pair,
    backend: str,
    backend_pid: int,
    steps: tuple[int, ...],
    reuse: dict[str, Any],
) -> dict[str, Any]:
    """Raise the number of paced streams through one host until durations stretch past 10% or a step fails.

    Above STREAMS_PER_CLIENT streams more clients (joined to the same host) share them. *reuse* is the
    many-streams result, which is the step of its size. At the first step that does not hold, the same number
    of streams straight to the backend says whether the load generator and backend held it themselves.
    """
    rows: list[dict[str, Any]] = []
    stopped: dict[str, Any] | None = None
    try:
        for n in steps:
            need = math.ceil(n / STREAMS_PER_CLIENT)
            if n == reuse["streams"] and need == 1:
                c = reuse
            else:
                while len(pair.extra) + 1 < need:
                    k = len(pair.extra) + 2
                    name = f"{pair.flavour.label}-client{k}".replace("+", "-")
                    d, api, _ = start_client(procs, tmp, pair.token, pair.flavour, name)
                    pair.extra.append((d, api))
                clients = [(pair.client, pair.api), *pair.extra][:need]
                try:
                    c = paced(
                        [api for _, api in clients],
                        n,
                        {
                            "host": [pair.host.proc.pid],
                            "client": [d.proc.pid for d, _ in clients],
                            "backend": [backend_pid],
                        },
                    )
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    rows.append({"streams": n, "clients": need, "failed": str(e)[-300:]})
                    stopped = {"streams": n, "why": "the step failed"}
                    break
                c["held"] = held(c)
                c["rate"] = per_core(c)
            rows.append({"streams": n, "clients": need, **_ladder_row(c)})
            if not c["held"]:
                stopped = {"streams": n, "why": _why_not_held(c)}
                break
    finally:
        for d, _ in pair.extra:
            procs.stop_daemon(d)
        pair.extra.clear()
    if stopped is not None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            ref = paced([backend], stopped["streams"], {"backend": [backend_pid]})
            stopped["direct"] = {
                "held": held(ref),
                "completed": ref["completed"],
                "duration_s": ref["duration_s"],
                "ttfb_ms": ref["ttfb_ms"],
            }
    best = next((r for r in reversed(rows) if r.get("held")), None)
    return {"steps": rows, "stopped": stopped, "best": best}


def _ladder_row(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "held": c["held"],
        "completed": c["completed"],
        "duration_s": c["duration_s"],
        "ttfb_ms": c["ttfb_ms"],
        "errors": c.get("errors"),
        **c["rate"],
    }


def _why_not_held(c: dict[str, Any]) -> str:
    if c["completed"] != c["streams"]:
        return f"{c['streams'] - c['completed']} streams incomplete ({c.get('errors')})"
    d = c["duration_s"]
    return f"durations {d['min']:.2f}-{d['max']:.2f} s, outside {PACE_S:.1f}-{PACE_S * STRETCH:.2f} s"


# profiles ----------------------------------------------------------------------------------------------


def py_spy() -> str | None:
    p = TOOLS_VENV / "bin" / "py-spy"
    return str(p) if p.exists() else shutil.which("py-spy")


#: Leaf frames where a thread waits (py-spy counts them as samples when it cannot tell idle threads apart).
IDLE_LEAVES = {"select", "poll", "epoll", "wait", "get", "sleep", "accept", "_wait_for_tstate_lock"}

#: Where busy samples go, by the first matching frame (searched from the leaf up).
BUCKETS = (
    ("logging", ("meshd/logs.py", "twisted/logger/", "twisted/python/log.py:", "formatEvent")),
    ("UDP send (sendto)", ("Port.write (twisted/internet/udp.py",)),
    ("TCP send", ("Connection.writeSomeData (twisted/internet/tcp.py",)),
    ("UDP receive", ("Port.doRead (twisted/internet/udp.py",)),
    ("TCP connect / name resolution", ("doConnect", "HostnameEndpoint", "getaddrinfo", "_resolver", "threadpool")),
    ("QUIC crypto", ("aioquic/_crypto",)),
    ("QUIC (aioquic)", ("aioquic/",)),
    ("meshd QUIC glue", ("meshd/quic/",)),
    ("HTTP parse/serialise (twisted.web, h11, httpwire)", ("twisted/web/", "h11/", "meshd/httpwire.py", "email/")),
    ("meshd web/tunnel", ("meshd/web/", "meshd/tunnel/", "meshd/host.py")),
    ("Deferreds/reactor", ("twisted/internet/defer.py", "twisted/internet/", "asyncio/")),
)


def summarize_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by own (leaf) and inclusive samples from py-spy's raw collapsed stacks.

    Samples whose leaf is a wait (select, Condition.wait, Queue.get) are idle and left out; percentages are
    of the busy samples. ``buckets`` groups busy samples by the innermost frame matching BUCKETS.
    """
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    total = busy = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        raw_frames = stack.split(";")
        frames = [_frame_name(f) for f in raw_frames]
        frames = [f for f in frames if f]
        if not frames or frames[-1].split(" (")[0].rsplit(".", 1)[-1] in IDLE_LEAVES:
            continue
        busy += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
        for raw in reversed(raw_frames):
            hit = next((name for name, keys in BUCKETS if any(k in raw for k in keys)), None)
            if hit:
                buckets[hit] += count
                break
        else:
            buckets["other"] += count
    if not busy:
        return {"samples": total, "busy": 0}
    return {
        "samples": total,
        "busy": busy,
        "own": [(f, round(100 * c / busy, 1)) for f, c in own.most_common(top)],
        "inclusive": [(f, round(100 * c / busy, 1)) for f, c in incl.most_common(top * 4) if not _boring(f)][:top],
        "buckets": [(b, round(100 * c / busy, 1)) for b, c in buckets.most_common()],
    }


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; keep "function (file.py)"
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", str(REPO) + "/"):
        if marker in loc:
            loc = loc.split(marker, 1)[1]
    return f"{name} ({loc})" if loc else name


def _boring(frame: str) -> bool:
    name = frame.split(" (")[0]
    return name in {"<module>", "run", "main", "_run_once", "_run", "runApp", "mainLoop", "start"} or any(
        k in frame
        for k in (
            "twistd",
            "twisted/application/",
            "asyncioreactor.py",
            "base_events.py",
            "context.py",
            "twisted/python/log.py",
            "events.py",
            "threading.py",
        )
    )


def profile_pids(pids: dict[str, int], seconds: float, outdir: Path, drive: list[str]) -> dict[str, Any]:
    """py-spy record (raw) every pid while the load generator drives *drive*; summaries per process."""
    spy = py_spy()
    if spy is None:
        return {"error": "py-spy not installed (bench/run installs it into the bench venv)"}
    outdir.mkdir(parents=True, exist_ok=True)
    recs = {}
    for name, pid in pids.items():
        raw = outdir / f"profile-{name}.txt"
        recs[name] = (
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "-o",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            raw,
        )
    time.sleep(0.5)
    before = {n: proc_status(p)["cpu_s"] for n, p in pids.items()}
    t0 = time.perf_counter()
    with contextlib.suppress(RuntimeError):
        loadgen(*drive, timeout=seconds * 4)
    wall = time.perf_counter() - t0
    cpu = {n: proc_status(p)["cpu_s"] - before[n] for n, p in pids.items()}
    out: dict[str, Any] = {}
    for name, (proc, raw) in recs.items():
        try:
            proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        summary: dict[str, Any] = summarize_collapsed(raw) if raw.exists() else {"error": "no samples"}
        summary["cpu_share_of_one_core"] = round(cpu[name] / wall, 2) if wall else None
        summary["raw"] = str(raw.relative_to(REPO)) if raw.is_relative_to(REPO) else str(raw)
        out[name] = summary
    return out


def flamegraph(pid: int, seconds: float, svg: Path, drive: list[str]) -> str | None:
    spy = py_spy()
    if spy is None:
        return None
    p = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "-o",
            str(svg),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    with contextlib.suppress(RuntimeError):
        loadgen(*drive, timeout=seconds * 4)
    try:
        p.wait(seconds + 30)
    except subprocess.TimeoutExpired:
        p.kill()
    return str(svg.relative_to(REPO)) if svg.exists() else None


# the run -----------------------------------------------------------------------------------------------


def uvloop_flavour(tree: Path) -> Flavour | str:
    """meshd on uvloop, or why not: uvloop from meshd's Python, else from UVLOOP_DIR (bench/run puts it there)."""
    probe = [PY, "-c", "import uvloop; print(uvloop.__version__)"]
    out = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    if out.returncode == 0:
        return Flavour("meshd+uvloop", tree, uvloop=True)
    if UVLOOP_DIR.is_dir():
        env = dict(os.environ, PYTHONPATH=str(UVLOOP_DIR))
        out = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False, env=env)
        if out.returncode == 0:
            return Flavour("meshd+uvloop", tree, uvloop=True, extra_path=str(UVLOOP_DIR))
    return f"uvloop is not importable by {PY} nor from {UVLOOP_DIR} (bench/run --uvloop installs it there)"


def uvloop_version(flavour: Flavour) -> str | None:
    out = subprocess.run(
        [PY, "-c", "import uvloop; print(uvloop.__version__)"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=flavour.env(),
    )
    return out.stdout.strip() or None


def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    tree = Path(args.meshd_tree).resolve() if args.meshd_tree else REPO
    res: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "nofile": list(nofile)},
        "quick": args.quick,
        "bench_commit": git_rev(REPO),
        "meshd_tree": str(tree),
        "meshd_commit": git_rev(tree),
        "load": {"start": load_avg()},
        "pace_s": PACE_S,
        "stretch": STRETCH,
    }
    n = 500 if args.quick else 2000
    streams = 200 if args.quick else 1000
    steps = QUICK_SCALE_STEPS if args.quick else tuple(s for s in SCALE_STEPS if s <= args.scale_max)
    flavours = [Flavour("meshd", tree)]
    if args.uvloop:
        uv = uvloop_flavour(tree)
        if isinstance(uv, str):
            res["uvloop_skipped"] = uv
        else:
            flavours.append(uv)
            res["uvloop_version"] = uvloop_version(uv)
    labels = [f.label for f in flavours]
    res["flavours"] = labels
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="meshd-bench-"))
    t_start = time.perf_counter()
    try:
        backend_proc, backend = start_backend(procs, tmp / "backend.log")
        bpid = backend_proc.pid
        res["haproxy"] = {"skipped": "--no-haproxy"} if args.no_haproxy else start_chain(procs, tmp, backend)
        lite = None if args.no_litellm else start_litellm(procs, tmp, backend)
        hosts = {}
        for fl in flavours:
            hosts[fl.label] = start_host(procs, tmp, backend, fl, fl.label.replace("+", "-") + "-host")
        pairs: dict[str, Pair] = {}
        for fl in flavours:
            host, token = hosts[fl.label]
            client, api, first = start_client(procs, tmp, token, fl, fl.label.replace("+", "-") + "-client")
            pairs[fl.label] = Pair(fl, host, token, client, api, first)
        res["startup"] = {label: {"first_completion_s": p.startup_s} for label, p in pairs.items()}
        res["event_loop"] = {
            label: {"host": event_loop_of(p.host.proc.pid), "client": event_loop_of(p.client.proc.pid)}
            for label, p in pairs.items()
        }
        time.sleep(5)
        res["idle"] = {
            label: {
                "client_rss_mb": proc_status(p.client.proc.pid)["VmRSS"],
                "host_rss_mb": proc_status(p.host.proc.pid)["VmRSS"],
            }
            for label, p in pairs.items()
        }
        targets = {"direct": backend}
        if "url" in res["haproxy"]:
            targets["haproxy"] = res["haproxy"]["url"]
        targets.update({label: p.api for label, p in pairs.items()})
        if lite is not None:
            try:
                res["litellm_start_s"] = wait_litellm(lite[1])
                targets["litellm"] = lite[1]
                res["litellm_version"] = _litellm_version()
            except RuntimeError as e:
                res["litellm_error"] = str(e) + " | " + (tmp / "litellm.log").read_text()[-800:]
        res["targets"] = list(targets)
        urls = [a for t in targets.values() for a in ("--url", t)]

        res["load"]["latency"] = load_avg()
        http_json(backend + "/stats/reset", {})
        lat = loadgen("latency", *urls, "--n", str(n), "--warmup", str(n // 10), "--rounds", "4")["latency"]
        res["latency"] = {name: r for name, r in zip(targets, lat, strict=True)}
        res["backend_own"] = http_json(backend + "/stats")[1]
        res["per_request"] = {
            label: per_request(p.api, {"client": p.client, "host": p.host}, 500 if args.quick else 1000)
            for label, p in pairs.items()
        }

        st = loadgen("stream", *urls, "--chunks", "2000", "--repeat", "3" if args.quick else "5")["stream"]
        res["stream"] = {name: r for name, r in zip(targets, st, strict=True)}

        res["load"]["streams"] = load_avg()
        many: dict[str, Any] = {}
        direct = paced([backend], streams, {"backend": [bpid]})
        direct["held"] = held(direct)
        many["direct"] = direct
        for label, p in pairs.items():
            many[label] = many_streams(p, bpid, streams)
        res["many"] = many
        res["concurrent"] = many["meshd"]  # the name earlier JSON readers know

        res["scale"] = {label: ladder(procs, tmp, p, backend, bpid, steps, many[label]) for label, p in pairs.items()}
        res["transport"] = quic_bench(tree, 20 if args.quick else 50, 1000)
        main_pair = pairs["meshd"]
        res["gate"] = (
            {"skipped": "--no-redis"}
            if args.no_redis
            else gate_phase(procs, tmp, main_pair.token, main_pair.flavour, n // 2)
        )
        res["goals"] = {label: goals(res, label) for label in labels}

        missed = {k for k, g in res["goals"]["meshd"].items() if g["pass"] is False}
        if args.profile_all:
            missed |= {"floor_p50", "stream_rate_ratio", "streams_duration"}
        if not args.no_profile and missed:
            res["profiles"] = profiles(main_pair, missed, streams)
        res["log_lines"] = {
            label: {"client": len(p.client.records), "host": len(p.host.records)} for label, p in pairs.items()
        }
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    res["load"]["end"] = load_avg()
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    return res


#: Which profile shows where the time of a missed goal goes.
PROFILE_FOR = {
    "floor_p50": "latency",
    "floor_p99": "latency",
    "peer_p50": "latency",
    "stream_rate_ratio": "stream",
    "streams_duration": "concurrent",
    "streams_ttfb_p99": "concurrent",
    "host_chunks_per_core": "concurrent",
    "concurrent_rss_mb": "concurrent",
}


def profiles(pair: Pair, missed: set[str], streams: int) -> dict[str, Any]:
    outdir = BENCH / "results"
    pids = {"client": pair.client.proc.pid, "host": pair.host.proc.pid}
    wanted = {PROFILE_FOR[k] for k in missed if k in PROFILE_FOR}
    prof: dict[str, Any] = {}
    if "latency" in wanted:
        prof["latency"] = profile_pids(pids, 10, outdir / "latency", _timed_latency(pair.api, 10))
        prof["latency"]["client_svg"] = flamegraph(
            pair.client.proc.pid, 6, outdir / "profile.svg", _timed_latency(pair.api, 6)
        )
    if "stream" in wanted:
        drive = ["stream", "--url", pair.api, "--chunks", "20000", "--repeat", "3"]
        prof["stream"] = profile_pids(pids, 8, outdir / "stream", drive)
    if "concurrent" in wanted:
        drive = [
            "concurrent",
            "--url",
            pair.api,
            "--streams",
            str(streams),
            "--chunks",
            str(PACED_CHUNKS),
            "--ramp",
            str(RAMP_S),
            "--timeout",
            "120",
        ]
        prof["concurrent"] = profile_pids(pids, 9, outdir / "concurrent", drive)
    if missed & {"idle_rss_mb", "startup_s"}:
        prof["note"] = "memory and start-up goals: see the RSS numbers; py-spy profiles CPU only"
    return prof


def _timed_latency(api: str, seconds: float) -> list[str]:
    # ~2-3 ms a request through meshd: enough requests to cover the sampling window (bounded by count)
    return ["latency", "--url", api, "--n", str(int(seconds * 500)), "--warmup", "0", "--rounds", "1"]


def _litellm_version() -> str | None:
    py = TOOLS_VENV / "bin" / "python"
    out = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return out.stdout.strip() or None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests, 200 streams, a short ladder")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--no-haproxy", action="store_true", help="leave out the two-HAProxy floor")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-redis", action="store_true", help="leave out the Redis-backed gate's row")
    parser.add_argument("--profile-all", action="store_true", help="profile latency, streaming and 1,000 streams")
    parser.add_argument("--uvloop", action="store_true", help="also a meshd host and client on uvloop, own column")
    parser.add_argument("--meshd-tree", default=None, help="import meshd from this checkout (default: this one)")
    parser.add_argument("--scale-max", type=int, default=SCALE_STEPS[-1], help="largest step of the stream ladder")
    parser.add_argument("--out", default=str(BENCH / "results" / "latest.json"))
    args = parser.parse_args()
    # SIGTERM ends the run through the same clean-up as Ctrl-C: every process started here is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    res = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    sys.stdout.write(table(res) + "\n")
    sys.stdout.write(f"\nJSON: {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
