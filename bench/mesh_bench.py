"""What the mesh costs a request: meshd vs straight to the backend vs LiteLLM's proxy, on 127.0.0.1.

    bench/run [--quick] [--no-litellm] [--no-profile] [--out bench/results/latest.json]

One run starts (all on 127.0.0.1, nothing leaves the machine): the bench backend (bench/fake_backend.py),
a meshd host (``twistd -n meshd --serve``), a meshd client (``--client --join TOKEN``), LiteLLM's proxy in
front of the same backend (when its venv is there), and the load generator (bench/loadgen.py), which uses
the same keep-alive HTTP client for every target. It prints a table and writes JSON.

Measures: start-up (client process start → first 200 completion), idle client RSS, added latency (p50/p99),
streaming TTFB and chunks/s, 1,000 concurrent streams through one client (all complete? peak RSS, CPU
seconds), QUIC RTT and MB/s (bench/quic_bench.py), the latency the Redis-backed gate adds over the in-process
gate (``--redis``; skipped when ``redis-server`` is not installed), and py-spy profiles where a goal is missed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.daemon import Daemon  # noqa: E402

PY = sys.executable
BENCH = REPO / "bench"
TOOLS_VENV = Path(os.environ.get("MESHD_BENCH_VENV", str(Path.home() / ".cache" / "meshd-bench" / "venv")))
NO_NOSTR = "ws://127.0.0.1:9"  # discard port: nothing answers, nothing leaves the machine
#: LiteLLM refuses to start without a master key; the load generator sends it to every target (same bytes).
API_KEY = "sk-meshd-bench-" + os.urandom(16).hex()
TICK = os.sysconf("SC_CLK_TCK")

GOALS = {
    "added_p50_ms": 2.0,  # meshd p50 - direct p50 <= 2 ms
    "stream_rate_ratio": 0.90,  # meshd chunks/s >= 90% of direct
    "concurrent_rss_mb": 250.0,  # client peak RSS with 1,000 streams < 250 MB
    "idle_rss_mb": 80.0,  # joined client, idle 5 s < 80 MB
    "startup_s": 3.0,  # client process start -> first 200 < 3 s
}


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


class Procs:
    """Every process this run starts; all are ended at the end (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[Any]] = []
        self.daemons: list[Daemon] = []

    def stop(self) -> None:
        for d in self.daemons:
            with contextlib.suppress(Exception):
                d.terminate(5)
            d.kill()
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
        [PY, str(BENCH / "fake_backend.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    procs.popens.append(p)
    assert p.stdout is not None
    line = p.stdout.readline()
    port = json.loads(line)["port"]
    return p, f"http://127.0.0.1:{port}"


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


def start_host(procs: Procs, tmp: Path, backend: str) -> tuple[Daemon, str, str]:
    d = Daemon(["--serve", backend, "--backend-max-inflight", "2000", "--port", "0", *meshd_common(tmp, "host")], tmp)
    procs.daemons.append(d)
    ready = d.wait_event("ready", 30)
    console = ready["console_url"]
    until(lambda: http_json(console + "/api/status")[1].get("hosted_models"), 20, "host serving models")
    token = http_json(console + "/api/status")[1]["token"]
    return d, console, token


def start_client_timed(procs: Procs, tmp: Path, token: str) -> tuple[Daemon, str, dict[str, float]]:
    """Start a client and time process start -> `ready` log event -> first 200 completion."""
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    t0 = time.perf_counter()
    d = Daemon(["--client", "--join", token, "--port", str(port), *meshd_common(tmp, "client")], tmp)
    procs.daemons.append(d)

    def ok() -> bool:
        try:
            return http_json(api + "/v1/chat/completions", body, timeout=2)[0] == 200
        except (OSError, ValueError):
            return False

    until(ok, 30, "client's first completion", step=0.01)
    first = time.perf_counter() - t0
    d.wait_event("ready", 5)
    return d, api, {"first_completion_s": first}


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


def start_client(procs: Procs, tmp: Path, token: str, name: str, *extra: str) -> str:
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    d = Daemon(["--client", "--join", token, "--port", str(port), *meshd_common(tmp, name), *extra], tmp)
    procs.daemons.append(d)
    d.wait_event("ready", 30)
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    until(lambda: http_json(api + "/v1/chat/completions", body, timeout=2)[0] == 200, 30, f"{name}'s first completion")
    return api


def gate_phase(procs: Procs, tmp: Path, token: str, n: int) -> dict[str, Any]:
    """Latency through two clients with the same limits: in-process gate vs the Redis-backed one."""
    url = start_redis(procs, tmp)
    if url is None:
        return {"skipped": "redis-server is not installed (apt-get install redis-server)"}
    local = start_client(procs, tmp, token, "gate-local", *GATE_LIMITS)
    shared = start_client(
        procs, tmp, token, "gate-redis", *GATE_LIMITS, "--redis", url, "--max-inflight-global", "1000000"
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
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}

    def ok() -> bool:
        try:
            return http_json(url + "/v1/chat/completions", body, timeout=5, key=API_KEY)[0] == 200
        except (OSError, ValueError):
            return False

    until(ok, within, "LiteLLM's first completion", step=0.25)
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


def quic_bench(mib: int, rounds: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    env = dict(os.environ, PYTHONPATH=str(REPO))
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    res: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "nofile": list(nofile)},
        "quick": args.quick,
    }
    n = 500 if args.quick else 2000
    streams = 200 if args.quick else 1000
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="meshd-bench-"))
    t_start = time.perf_counter()
    try:
        backend_proc, backend = start_backend(procs, tmp / "backend.log")
        lite = None if args.no_litellm else start_litellm(procs, tmp, backend)
        host, _, token = start_host(procs, tmp, backend)
        client, api, startup = start_client_timed(procs, tmp, token)
        res["startup"] = startup
        time.sleep(5)
        res["idle"] = {
            "client_rss_mb": proc_status(client.proc.pid)["VmRSS"],
            "host_rss_mb": proc_status(host.proc.pid)["VmRSS"],
        }
        targets = {"direct": backend, "meshd": api}
        if lite is not None:
            try:
                res["litellm_start_s"] = wait_litellm(lite[1])
                targets["litellm"] = lite[1]
                res["litellm_version"] = _litellm_version()
            except RuntimeError as e:
                res["litellm_error"] = str(e) + " | " + (tmp / "litellm.log").read_text()[-800:]
        urls = [a for t in targets.values() for a in ("--url", t)]

        http_json(backend + "/stats/reset", {})
        lat = loadgen("latency", *urls, "--n", str(n), "--warmup", str(n // 10), "--rounds", "4")["latency"]
        res["latency"] = {name: r for name, r in zip(targets, lat, strict=True)}
        res["backend_own"] = http_json(backend + "/stats")[1]
        res["per_request"] = per_request(api, {"client": client, "host": host}, 500 if args.quick else 1000)

        st = loadgen("stream", *urls, "--chunks", "2000", "--repeat", "3" if args.quick else "5")["stream"]
        res["stream"] = {name: r for name, r in zip(targets, st, strict=True)}

        pids = {"client": client.proc.pid, "host": host.proc.pid}
        for pid in pids.values():
            reset_peak_rss(pid)
        before = {n_: proc_status(p) for n_, p in pids.items()}
        conc = loadgen(
            "concurrent", "--url", api, "--streams", str(streams), "--chunks", "50", "--ramp", "2", "--timeout", "120"
        )["concurrent"]
        after = {n_: proc_status(p) for n_, p in pids.items()}
        conc["processes"] = {
            n_: {
                "peak_rss_mb": after[n_]["VmHWM"],
                "rss_before_mb": before[n_]["VmRSS"],
                "cpu_s": round(after[n_]["cpu_s"] - before[n_]["cpu_s"], 2),
            }
            for n_ in pids
        }
        res["concurrent"] = conc
        res["transport"] = quic_bench(20 if args.quick else 50, 1000)
        res["gate"] = {"skipped": "--no-redis"} if args.no_redis else gate_phase(procs, tmp, token, n // 2)
        res["goals"] = goals(res)

        missed = {k for k, g in res["goals"].items() if not g["pass"]}
        if args.profile_all:
            missed |= {"added_p50_ms", "stream_rate_ratio", "concurrent_rss_mb"}
        if not args.no_profile and missed:
            outdir = BENCH / "results"
            prof: dict[str, Any] = {}
            if "added_p50_ms" in missed:
                prof["latency"] = profile_pids(pids, 10, outdir / "latency", _timed_latency(api, 10))
                svg = flamegraph(client.proc.pid, 6, outdir / "profile.svg", _timed_latency(api, 6))
                prof["latency"]["client_svg"] = svg
            if "stream_rate_ratio" in missed:
                prof["stream"] = profile_pids(
                    pids, 8, outdir / "stream", ["stream", "--url", api, "--chunks", "20000", "--repeat", "3"]
                )
            if "concurrent_rss_mb" in missed:
                drive = ["concurrent", "--url", api, "--streams", str(streams), "--chunks", "50", "--ramp", "2"]
                prof["concurrent"] = profile_pids(pids, 9, outdir / "concurrent", [*drive, "--timeout", "120"])
            if missed & {"idle_rss_mb", "startup_s"}:
                prof["note"] = "memory and start-up goals: see the RSS numbers; py-spy profiles CPU only"
            res["profiles"] = prof
        res["client_log_lines"] = len(client.records)
        res["host_log_lines"] = len(host.records)
        _ = backend_proc
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    return res


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


def goals(res: dict[str, Any]) -> dict[str, Any]:
    lat, st = res["latency"], res["stream"]
    added = lat["meshd"]["p50_ms"] - lat["direct"]["p50_ms"]
    ratio = st["meshd"]["chunks_per_s"] / st["direct"]["chunks_per_s"]
    conc = res["concurrent"]
    conc_rss = conc["processes"]["client"]["peak_rss_mb"]
    g = {
        "added_p50_ms": {"value": added, "goal": "<= 2 ms", "pass": added <= GOALS["added_p50_ms"]},
        "stream_rate_ratio": {"value": ratio, "goal": ">= 0.90", "pass": ratio >= GOALS["stream_rate_ratio"]},
        "concurrent_rss_mb": {
            "value": conc_rss,
            "goal": f"< 250 MB, all {conc['streams']} complete",
            "pass": conc_rss < GOALS["concurrent_rss_mb"] and conc["completed"] == conc["streams"],
        },
        "idle_rss_mb": {
            "value": res["idle"]["client_rss_mb"],
            "goal": "< 80 MB",
            "pass": res["idle"]["client_rss_mb"] < GOALS["idle_rss_mb"],
        },
        "startup_s": {
            "value": res["startup"]["first_completion_s"],
            "goal": "< 3 s",
            "pass": res["startup"]["first_completion_s"] < GOALS["startup_s"],
        },
    }
    return g


# the table ---------------------------------------------------------------------------------------------


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def table(res: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    lat, st = res["latency"], res["stream"]
    has_lite = "litellm" in lat
    add(
        f"meshd bench  {res['when']}  cpus={res['machine']['cpus']}  python {res['machine']['python']}"
        f"  wall {res.get('wall_s', 0)} s" + ("  (--quick)" if res["quick"] else "")
    )
    if "litellm_error" in res:
        add(f"LiteLLM: not measured ({res['litellm_error'][:200]})")
    elif has_lite:
        add(f"LiteLLM {res.get('litellm_version')}  (start to first completion {res['litellm_start_s']:.1f} s)")
    own = res.get("backend_own", {})
    add(
        f"backend's own time per completion: p50 {_f(own.get('p50_us'), '{:.0f}')} us, "
        f"p99 {_f(own.get('p99_us'), '{:.0f}')} us"
    )
    add("")
    hdr = (
        f"{'measure':34s} {'direct':>10s} {'meshd':>10s} {'LiteLLM':>10s} {'meshd/direct':>13s} {'meshd/LiteLLM':>14s}"
    )
    add(hdr)
    add("-" * len(hdr))

    def row(label: str, d: Any, m: Any, lt: Any, fmt: str = "{:.3f}") -> None:
        r1 = m / d if d and m is not None else None
        r2 = m / lt if lt and m is not None else None
        add(f"{label:34s} {_f(d, fmt):>10s} {_f(m, fmt):>10s} {_f(lt, fmt):>10s} {_f(r1):>13s} {_f(r2):>14s}")

    lite_lat = lat.get("litellm", {})
    row("completion p50 (ms)", lat["direct"]["p50_ms"], lat["meshd"]["p50_ms"], lite_lat.get("p50_ms"))
    row("completion p99 (ms)", lat["direct"]["p99_ms"], lat["meshd"]["p99_ms"], lite_lat.get("p99_ms"))
    row("completions/s, one connection", lat["direct"]["rps"], lat["meshd"]["rps"], lite_lat.get("rps"), "{:.0f}")
    lite_st = st.get("litellm", {})
    row("stream TTFB (ms)", st["direct"]["ttfb_ms"], st["meshd"]["ttfb_ms"], lite_st.get("ttfb_ms"))
    row(
        "stream chunks/s (2,000 chunks)",
        st["direct"]["chunks_per_s"],
        st["meshd"]["chunks_per_s"],
        lite_st.get("chunks_per_s"),
        "{:.0f}",
    )
    pr = res.get("per_request")
    if pr:
        add(
            f"per meshd completion: client CPU {pr['client_cpu_ms']:.2f} ms, host CPU {pr['host_cpu_ms']:.2f} ms, "
            f"{pr['udp_datagrams']} UDP datagrams, log lines: client {pr['client_log_lines']}"
            f" host {pr['host_log_lines']}"
        )
    add("")
    c = res["concurrent"]
    add(
        f"concurrent streams via one client: {c['completed']}/{c['streams']} complete ({c['chunks_each']} chunks "
        f"each, 1 per 100 ms), wall {c['wall_s']:.1f} s, TTFB p50 {_f(c['ttfb_p50_ms'], '{:.1f}')} ms "
        f"p99 {_f(c['ttfb_p99_ms'], '{:.1f}')} ms"
    )
    for name, p in c["processes"].items():
        add(
            f"  meshd {name:6s}: peak RSS {p['peak_rss_mb']:.0f} MB (before {p['rss_before_mb']:.0f} MB), "
            f"CPU {p['cpu_s']:.1f} s"
        )
    if c.get("errors"):
        add(f"  errors: {c['errors']}")
    add(f"start-up (client process start -> first 200 completion): {res['startup']['first_completion_s']:.2f} s")
    add(f"idle RSS after 5 s: client {res['idle']['client_rss_mb']:.0f} MB, host {res['idle']['host_rss_mb']:.0f} MB")
    for name, t in res["transport"].items():
        if "error" in t:
            add(f"QUIC {name}: error {t['error'][:200]}")
        else:
            add(
                f"QUIC {name:12s}: RTT {t['rtt_us']:.0f} us (64 B x 1000), {t['mb_per_s']:.1f} MB/s one stream, "
                f"peak RSS {t['peak_rss_mb']:.0f} MB"
            )
    gate = res.get("gate", {})
    if "skipped" in gate:
        add(f"gate with --redis: not measured ({gate['skipped']})")
    elif gate:
        loc, red = gate["in_process"], gate["redis"]
        add(
            f"gate with --redis (one admit script + one release per completion, Redis on 127.0.0.1): p50 "
            f"{red['p50_ms']:.3f} ms vs {loc['p50_ms']:.3f} ms in-process (+{gate['added_p50_ms']:.3f} ms), "
            f"p99 {red['p99_ms']:.3f} vs {loc['p99_ms']:.3f} ms (+{gate['added_p99_ms']:.3f} ms)"
        )
    add("")
    add("goals:")
    for name, g in res["goals"].items():
        add(f"  {'PASS' if g['pass'] else 'MISS'}  {name:18s} {g['value']:.3f}  (goal {g['goal']})")
    for phase, prof in res.get("profiles", {}).items():
        if not isinstance(prof, dict):
            continue
        for proc_name, summary in prof.items():
            if not isinstance(summary, dict) or "own" not in summary:
                continue
            add("")
            add(
                f"profile ({phase}, meshd {proc_name}: {summary['busy']} busy of {summary['samples']} samples, "
                f"{summary['cpu_share_of_one_core']} of a core); where busy time goes:"
            )
            add("  " + ", ".join(f"{b} {p}%" for b, p in summary["buckets"][:8]))
            add("  top own time:")
            for fn, pct in summary["own"][:8]:
                add(f"  {pct:5.1f}%  {fn}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and 200 streams (a smoke run)")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-redis", action="store_true", help="leave out the Redis-backed gate's row")
    parser.add_argument("--profile-all", action="store_true", help="profile latency, streaming and 1,000 streams")
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
