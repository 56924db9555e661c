"""The bench's goals (PASS/MISS/SKIP) and its table, from the result dict that bench/mesh_bench.py builds."""

from __future__ import annotations

from typing import Any

#: The goals (docs/performance.md): meshd's added latency as a multiple of the two-HAProxy chain's and of
#: LiteLLM's, the streaming rate, the paced streams, the host's chunk rate per core, memory and start-up.
GOALS = {
    "floor": 5.0,  # meshd's added p50 and p99 <= 5x the HAProxy chain's added p50 and p99
    "peer": 0.1,  # meshd's added p50 <= 0.1x LiteLLM's added p50
    "stream_rate_ratio": 0.90,  # meshd chunks/s >= 90% of direct (2,000-chunk burst)
    "streams_ttfb_p99_ms": 500.0,  # 1,000 paced streams: TTFB p99 <= 500 ms (durations: pace .. pace + 10%)
    "host_chunks_per_core": 20_000.0,  # chunks/s through one host per host core, at the largest step held
    "concurrent_rss_mb": 250.0,  # client peak RSS with 1,000 streams < 250 MB
    "idle_rss_mb": 80.0,  # joined client, idle 5 s < 80 MB
    "startup_s": 3.0,  # client process start -> first 200 < 3 s
}

NAMES = {
    "direct": "direct",
    "haproxy": "HAProxy x2",
    "meshd": "meshd",
    "meshd+uvloop": "meshd+uvloop",
    "litellm": "LiteLLM",
}


def _added(lat: dict[str, Any], target: str, key: str) -> float | None:
    if target not in lat or lat[target].get(key) is None or lat["direct"].get(key) is None:
        return None
    return float(lat[target][key] - lat["direct"][key])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _goal(value: Any, goal: str, ok: bool | None, detail: str = "") -> dict[str, Any]:
    return {"value": value, "goal": goal, "pass": ok, "detail": detail}


def goals(res: dict[str, Any], label: str) -> dict[str, Any]:
    """Every goal for the meshd of *label* ('meshd' or 'meshd+uvloop'); pass None = not measured (SKIP)."""
    lat, st = res["latency"], res["stream"]
    pace, stretch = res["pace_s"], res["stretch"]
    g: dict[str, Any] = {}
    a50, a99 = _added(lat, label, "p50_ms"), _added(lat, label, "p99_ms")
    for q, mine in (("p50", a50), ("p99", a99)):
        name = f"floor_{q}"
        if "haproxy" not in lat:
            g[name] = _goal(None, "<= 5x", None, res.get("haproxy", {}).get("skipped", "no HAProxy chain"))
            continue
        chain = _added(lat, "haproxy", f"{q}_ms")
        r = _ratio(mine, chain) if chain and chain > 0 else None
        detail = f"meshd +{mine:.3f} ms, chain +{chain:.3f} ms" if mine is not None and chain is not None else ""
        g[name] = _goal(r, "<= 5x", None if r is None else r <= GOALS["floor"], detail)
    if "litellm" in lat:
        lite = _added(lat, "litellm", "p50_ms")
        r = _ratio(a50, lite) if lite and lite > 0 else None
        detail = f"meshd +{a50:.3f} ms, LiteLLM +{lite:.3f} ms" if a50 is not None and lite is not None else ""
        g["peer_p50"] = _goal(r, "<= 0.1x", None if r is None else r <= GOALS["peer"], detail)
    else:
        g["peer_p50"] = _goal(None, "<= 0.1x", None, res.get("litellm_error", "LiteLLM not run")[:120])
    ratio = st[label]["chunks_per_s"] / st["direct"]["chunks_per_s"]
    g["stream_rate_ratio"] = _goal(
        ratio,
        ">= 0.90",
        ratio >= GOALS["stream_rate_ratio"],
        f"{st[label]['chunks_per_s']:.0f} vs {st['direct']['chunks_per_s']:.0f} chunks/s",
    )
    c = res["many"][label]
    d = c.get("duration_s") or {}
    g["streams_duration"] = _goal(
        d.get("max"),
        f"every stream {pace:.1f}-{pace * stretch:.2f} s",
        bool(c["held"]),
        f"{c['completed']}/{c['streams']} complete, {c['within_pace']} within; "
        f"min {_f(d.get('min'))} p50 {_f(d.get('p50'))} p99 {_f(d.get('p99'))} max {_f(d.get('max'))} s",
    )
    t = c.get("ttfb_ms") or {}
    g["streams_ttfb_p99"] = _goal(
        t.get("p99"),
        "<= 500 ms",
        t.get("p99") is not None and t["p99"] <= GOALS["streams_ttfb_p99_ms"],
        f"p50 {_f(t.get('p50'), '{:.1f}')} max {_f(t.get('max'), '{:.1f}')} ms",
    )
    scale = res["scale"][label]
    best = scale["best"]
    if best is not None:
        v = best["chunks_per_host_core"]
        g["host_chunks_per_core"] = _goal(
            v,
            ">= 20,000",
            v is not None and v >= GOALS["host_chunks_per_core"],
            f"at {best['streams']} streams held ({best['clients']} client(s)): {best['chunks_per_s']:.0f} chunks/s, "
            f"host {best['host_cores']:.2f} cores",
        )
    else:
        first = next((s for s in scale["steps"] if s.get("chunks_per_host_core")), None)
        g["host_chunks_per_core"] = _goal(
            first["chunks_per_host_core"] if first else None,
            ">= 20,000",
            False,
            "no step held the pace" + (f" (value at {first['streams']} streams)" if first else ""),
        )
    rss = c["processes"]["client"]["peak_rss_mb"]
    g["concurrent_rss_mb"] = _goal(
        rss,
        f"< 250 MB, all {c['streams']} complete",
        rss < GOALS["concurrent_rss_mb"] and c["completed"] == c["streams"],
    )
    idle = res["idle"][label]["client_rss_mb"]
    g["idle_rss_mb"] = _goal(idle, "< 80 MB", idle < GOALS["idle_rss_mb"])
    s = res["startup"][label]["first_completion_s"]
    g["startup_s"] = _goal(s, "< 3 s", s < GOALS["startup_s"])
    return g


GOAL_LABELS = {
    "floor_p50": "added p50, x the HAProxy chain's",
    "floor_p99": "added p99, x the HAProxy chain's",
    "peer_p50": "added p50, x LiteLLM's",
    "stream_rate_ratio": "burst chunks/s, x direct",
    "streams_duration": "1,000 paced streams: longest, s",
    "streams_ttfb_p99": "1,000 paced streams: TTFB p99, ms",
    "host_chunks_per_core": "chunks/s per host core",
    "concurrent_rss_mb": "1,000 streams: client peak RSS, MB",
    "idle_rss_mb": "idle client RSS, MB",
    "startup_s": "start to first completion, s",
}


# the table ---------------------------------------------------------------------------------------------


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else ("PASS" if ok else "MISS")


def table(res: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    lat, st = res["latency"], res["stream"]
    targets = res["targets"]
    labels = res["flavours"]
    load = res.get("load", {})
    add(
        f"meshd bench  {res['when']}  cpus={res['machine']['cpus']}  python {res['machine']['python']}"
        f"  wall {res.get('wall_s', 0)} s" + ("  (--quick)" if res["quick"] else "")
    )
    add(
        "load average (1/5/15 min): "
        + ", ".join(f"{k} {' '.join(f'{x:.2f}' for x in v)}" for k, v in load.items())
        + "   (2 cores: above ~0.5 others are using the machine)"
    )
    add(
        f"meshd from {res['meshd_tree']} at {res.get('meshd_commit')}; bench at {res.get('bench_commit')}; event loops "
        + ", ".join(f"{lb}: host {v['host']}, client {v['client']}" for lb, v in res.get("event_loop", {}).items())
    )
    if "uvloop_skipped" in res:
        add(f"meshd+uvloop: not measured ({res['uvloop_skipped']})")
    elif res.get("uvloop_version"):
        add(f"meshd+uvloop: uvloop {res['uvloop_version']} under Twisted's asyncio reactor (bench/uvloop_twistd.py)")
    hp = res.get("haproxy", {})
    if "skipped" in hp:
        add(f"HAProxy chain (floor): not measured ({hp['skipped']})")
    else:
        add(f"HAProxy {hp.get('version')} chain (floor): {hp.get('hops')} hops, HTTP mode, keep-alive, 1 thread each")
    if "litellm_error" in res:
        add(f"LiteLLM: not measured ({res['litellm_error'][:200]})")
    elif "litellm" in lat:
        add(f"LiteLLM {res.get('litellm_version')}  (start to first completion {res['litellm_start_s']:.1f} s)")
    own = res.get("backend_own", {})
    add(
        f"backend's own time per completion: p50 {_f(own.get('p50_us'), '{:.0f}')} us, "
        f"p99 {_f(own.get('p99_us'), '{:.0f}')} us  (far above ~250 us at p99: the machine was busy)"
    )
    add("")
    width = 13
    hdr = f"{'measure':34s}" + "".join(f"{NAMES.get(t, t):>{width}s}" for t in targets)
    add(hdr)
    add("-" * len(hdr))

    def row(label: str, values: list[Any], fmt: str = "{:.3f}") -> None:
        add(f"{label:34s}" + "".join(f"{_f(v, fmt):>{width}s}" for v in values))

    row("completion p50 (ms)", [lat[t]["p50_ms"] for t in targets])
    row("completion p99 (ms)", [lat[t]["p99_ms"] for t in targets])
    row("added p50 over direct (ms)", [None if t == "direct" else _added(lat, t, "p50_ms") for t in targets])
    row("added p99 over direct (ms)", [None if t == "direct" else _added(lat, t, "p99_ms") for t in targets])
    row("completions/s, one connection", [lat[t]["rps"] for t in targets], "{:.0f}")
    row("stream TTFB (ms), 2,000-chunk burst", [st[t]["ttfb_ms"] for t in targets])
    row("stream chunks/s, 2,000-chunk burst", [st[t]["chunks_per_s"] for t in targets], "{:.0f}")
    row("  x direct", [st[t]["chunks_per_s"] / st["direct"]["chunks_per_s"] for t in targets])
    for lb in labels:
        pr = res["per_request"][lb]
        add(
            f"per {lb} completion: client CPU {pr['client_cpu_ms']:.2f} ms, host CPU {pr['host_cpu_ms']:.2f} ms, "
            f"{pr['udp_datagrams']} UDP datagrams, log lines: client {pr['client_log_lines']}"
            f" host {pr['host_log_lines']}"
        )
    add("")
    _many(res, add)
    add("")
    _ladder(res, add)
    add("")
    for lb in labels:
        idle = res["idle"][lb]
        add(
            f"{lb}: start-up (client process start -> first 200 completion) "
            f"{res['startup'][lb]['first_completion_s']:.2f} s; idle RSS after 5 s: client "
            f"{idle['client_rss_mb']:.0f} MB, host {idle['host_rss_mb']:.0f} MB"
        )
    for name, t in res.get("transport", {}).items():
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
    n_streams = res["many"][labels[0]]["streams"]
    add(f"{'goals':40s}" + "".join(f"  {lb:>17s}" for lb in labels) + "  goal")
    for name, label in GOAL_LABELS.items():
        label = label.replace("1,000", f"{n_streams:,}")
        cells = []
        for lb in labels:
            gl = res["goals"][lb][name]
            v = gl["value"]
            fmt = "{:.0f}" if name == "host_chunks_per_core" else "{:.3f}"
            cells.append(f"{_verdict(gl['pass'])} {_f(v, fmt):>12s}")
        goal = res["goals"][labels[0]][name]["goal"]
        add(f"  {label:38s}" + "".join(f"  {c:>17s}" for c in cells) + f"  {goal}")
        for lb in labels:
            detail = res["goals"][lb][name].get("detail")
            if detail:
                add(f"  {'':38s}  {lb}: {detail}")
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
            for fn, pct in summary["own"][:10]:
                add(f"  {pct:5.1f}%  {fn}")
            add("  top inclusive:")
            for fn, pct in summary.get("inclusive", [])[:8]:
                add(f"  {pct:5.1f}%  {fn}")
    return "\n".join(lines)


def _many(res: dict[str, Any], add: Any) -> None:
    many = res["many"]
    first = next(iter(many.values()))
    pace, stretch = res["pace_s"], res["stretch"]
    add(
        f"{first['streams']} paced streams ({first['chunks_each']} chunks, "
        f"1 per {pace / first['chunks_each'] * 1000:.0f} ms "
        f"= {pace:.2f} s at the backend's pace), opened over {first['ramp_s']:.0f} s, each on its own connection, "
        f"through one client and one host:"
    )
    hdr = (
        f"  {'target':13s} {'complete':>10s} {'in pace':>8s} {'dur min':>8s} {'p50':>6s} {'p90':>6s} {'p99':>6s} "
        f"{'max s':>6s} {'TTFB p50':>9s} {'p99':>7s} {'max ms':>7s}"
    )
    add(hdr)
    for name, c in many.items():
        d = c.get("duration_s") or {}
        t = c.get("ttfb_ms") or {}
        add(
            f"  {NAMES.get(name, name):13s} {c['completed']:>5d}/{c['streams']:<4d} {c['within_pace']:>8d} "
            f"{_f(d.get('min')):>8s} {_f(d.get('p50')):>6s} {_f(d.get('p90')):>6s} {_f(d.get('p99')):>6s} "
            f"{_f(d.get('max')):>6s} {_f(t.get('p50'), '{:.1f}'):>9s} {_f(t.get('p99'), '{:.1f}'):>7s} "
            f"{_f(t.get('max'), '{:.1f}'):>7s}"
        )
    add(f"  'in pace' = ended {pace:.2f}-{pace * stretch:.2f} s after its request was sent")
    for name, c in many.items():
        hist = " | ".join(f"{b}: {k}" for b, k in c.get("duration_hist", []) if k)
        add(f"  {NAMES.get(name, name)} durations: {hist or '-'}")
        if c.get("errors"):
            add(f"  {NAMES.get(name, name)} errors: {c['errors']}")
        for proc, p in c.get("processes", {}).items():
            add(
                f"    {proc:6s}: peak RSS {p['peak_rss_mb']:.0f} MB (before {p['rss_before_mb']:.0f} MB), "
                f"CPU {p['cpu_s']:.1f} s"
            )


def _ladder(res: dict[str, Any], add: Any) -> None:
    add(
        "paced streams through one host, rising (a step holds when every stream ends within 10% of the pace; "
        "above 1,000 streams more clients share them: a QUIC connection carries at most 1,024 streams):"
    )
    hdr = (
        f"  {'':13s} {'streams':>7s} {'clients':>7s} {'held':>5s} {'complete':>9s} {'max s':>6s} {'TTFB p99':>9s} "
        f"{'chunks/s':>9s} {'host cores':>10s} {'per host core':>13s} {'clients':>7s} {'backend':>7s} {'loadgen':>7s}"
    )
    add(hdr)
    for label, sc in res["scale"].items():
        for r in sc["steps"]:
            if "failed" in r:
                add(f"  {label:13s} {r['streams']:>7d} {r['clients']:>7d}  failed: {r['failed'][:120]}")
                continue
            d = r.get("duration_s") or {}
            t = r.get("ttfb_ms") or {}
            add(
                f"  {label:13s} {r['streams']:>7d} {r['clients']:>7d} {'yes' if r['held'] else 'NO':>5s} "
                f"{r['completed']:>9d} {_f(d.get('max')):>6s} {_f(t.get('p99'), '{:.0f}'):>9s} "
                f"{_f(r['chunks_per_s'], '{:.0f}'):>9s} {_f(r['host_cores']):>10s} "
                f"{_f(r['chunks_per_host_core'], '{:.0f}'):>13s} {_f(r['client_cores']):>7s} "
                f"{_f(r['backend_cores']):>7s} {_f(r['loadgen_cores']):>7s}"
            )
        stop = sc.get("stopped")
        if stop:
            line = f"  {label}: stopped at {stop['streams']} streams: {stop['why']}"
            dr = stop.get("direct")
            if dr:
                dd = dr.get("duration_s") or {}
                line += (
                    f"; straight to the backend at {stop['streams']}: {'held' if dr['held'] else 'NOT held'} "
                    f"({dr['completed']} complete, max {_f(dd.get('max'))} s)"
                )
            add(line)
        else:
            add(f"  {label}: held every step (the ladder's top is --scale-max)")
    add("  (cores = CPU-seconds per wall-second while every stream is open; chunks/s = chunks received then)")
