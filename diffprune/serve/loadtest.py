"""`diffprune loadtest`: a bounded load test of a running `diffprune serve`, on this machine only.

Two kinds of load (Schroeder et al., "Open Versus Closed: A Cautionary Tale", NSDI 2006):

- closed loop: ``c`` clients each send a request, wait for its answer, send the next (concurrency levels);
  throughput follows latency, so it finds the saturated rate;
- open loop: requests arrive as a Poisson process at ``rate`` per second, whatever the answers (exponential
  gaps from a seeded generator); latency then shows queueing, as users see it.

Every level stops at ``duration_s`` or ``max_requests``, whichever comes first, and each request at the
client's timeout; only loopback addresses are accepted. Results: p50/p95/p99 latency of the 200s,
throughput (200s per second), errors by kind, in loadtest.json, loadtest.md and loadtest.png (latency
against throughput). :func:`summarize` is the pure part, tested without a server.
"""

import concurrent.futures
import ipaddress
import json
import platform
import socket
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

from diffprune.runtime.errors import DiffPruneError
from diffprune.runtime.host import cpu_name as cpu_model

from .client import Client

KINDS = ("ok", "4xx", "503", "504", "5xx", "timeout", "connection")


def check_loopback(url: str) -> None:
    host = urllib.parse.urlparse(url).hostname
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)} if host else set()
    except socket.gaierror:
        addresses = set()
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise DiffPruneError(f"loadtest URL {url!r} is not on this machine (host {host!r} resolves to "
                             f"{', '.join(sorted(addresses)) or 'nothing'}); the load tester only loads loopback "
                             "addresses (127.0.0.1, localhost, ::1). Run it on the server's machine.")


def kind_of(status: int | None, error: str | None = None) -> str:
    if status == 200:
        return "ok"
    if status is None:
        return "timeout" if error == "timeout" else "connection"
    if status in (503, 504):
        return str(status)
    return "4xx" if 400 <= status < 500 else "5xx"


def summarize(records: list, elapsed_s: float) -> dict:
    """Records (``latency_s``, ``kind``) of one level -> counts, throughput, p50/p95/p99 of the 200s (seconds)."""
    ok = np.asarray([r["latency_s"] for r in records if r["kind"] == "ok"], dtype=float)
    errors = {k: sum(r["kind"] == k for r in records) for k in KINDS if k != "ok"}
    pct = {f"p{q}_s": (float(np.percentile(ok, q)) if len(ok) else None) for q in (50, 95, 99)}
    return {"requests": len(records), "ok": int(len(ok)), "elapsed_s": elapsed_s,
            "throughput_rps": len(ok) / elapsed_s if elapsed_s > 0 else 0.0, **pct,
            "errors": {k: v for k, v in errors.items() if v}}


def max_rate_under_slo(levels: list, slo_s: float, max_error_share: float = 0.01) -> float | None:
    """The highest throughput among open-loop levels whose p99 stays under ``slo_s`` with at most
    ``max_error_share`` of requests refused or failed; None when no level meets it. A pure function of the
    levels' summaries (what a capacity plan reads off a load test)."""
    good = [lv["throughput_rps"] for lv in levels
            if lv.get("mode", "open") == "open" and lv["p99_s"] is not None and lv["p99_s"] <= slo_s
            and sum(lv["errors"].values()) <= max_error_share * lv["requests"]]
    return max(good) if good else None


def _one(client: Client, body: bytes, t0: float) -> dict:
    started = time.perf_counter()
    status, error = None, None
    try:
        status = client.request("POST", "/v1/images", body)[0]
    except (TimeoutError, socket.timeout):
        error = "timeout"
    except OSError as e:
        error = "timeout" if "timed out" in str(e) else "connection"
    return {"t_s": started - t0, "latency_s": time.perf_counter() - started, "status": status,
            "kind": kind_of(status, error)}


def closed_loop(client: Client, body: bytes, concurrency: int, duration_s: float, max_requests: int) -> dict:
    records, lock, issued = [], threading.Lock(), [0]
    t0 = time.perf_counter()

    def worker():
        while time.perf_counter() - t0 < duration_s:
            with lock:
                if issued[0] >= max_requests:
                    return
                issued[0] += 1
            record = _one(client, body, t0)
            with lock:
                records.append(record)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"mode": "closed", "concurrency": concurrency, **summarize(records, time.perf_counter() - t0),
            "records": records}


def open_loop(client: Client, body: bytes, rate: float, duration_s: float, max_requests: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    arrivals, t = [], 0.0
    while len(arrivals) < max_requests:
        t += rng.exponential(1.0 / rate)  # Poisson process: exponential gaps, mean 1/rate
        if t >= duration_s:
            break
        arrivals.append(t)
    workers = max(1, min(256, len(arrivals)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = []
        for at in arrivals:
            wait = at - (time.perf_counter() - t0)
            if wait > 0:
                time.sleep(wait)
            futures.append(pool.submit(_one, client, body, t0))
        records = [f.result() for f in futures]
    return {"mode": "open", "rate_rps": rate, **summarize(records, time.perf_counter() - t0), "records": records}


def loadtest(url: str, out, api_key: str | None = None, concurrency=(1, 2, 4, 8), rates=(), duration_s: float = 10.0,
             max_requests: int = 200, request: dict | None = None, timeout_s: float = 60.0, overwrite: bool = False,
             progress=print) -> dict:
    """Run every closed-loop level, then every open-loop rate, against ``url``; write ``out``/loadtest.{json,md,png}.
    ``request`` is the body sent each time (default: one image, the server's default steps, seed 0)."""
    from diffprune._io import atomic_dir, check_writable

    import importlib.util

    check_loopback(url)
    check_writable(out, overwrite)  # before any request: a refused output costs the server nothing
    if importlib.util.find_spec("matplotlib") is None:
        raise DiffPruneError("The load test draws loadtest.png with matplotlib, which is not installed here; "
                             "install it with: pip install 'diffprune[serve]' (or pip install matplotlib).")
    if duration_s <= 0 or max_requests < 1 or timeout_s <= 0:
        raise DiffPruneError(f"--duration {duration_s} and --timeout {timeout_s} must be > 0 s and --max-requests "
                             f"{max_requests} >= 1: the load test is bounded in time and count.")
    if not concurrency and not rates:
        raise DiffPruneError("Give at least one --concurrency level or --rate.")
    if any(c < 1 for c in concurrency) or any(r <= 0 for r in rates):
        raise DiffPruneError(f"--concurrency {list(concurrency)} must be whole numbers >= 1 and --rate "
                             f"{list(rates)} numbers > 0 (requests per second).")
    say = progress or (lambda *a: None)
    client = Client(url, api_key=api_key, timeout=timeout_s)
    body = json.dumps(request if request is not None else {"n": 1, "seed": 0}).encode()
    probe = client.request("POST", "/v1/images", body)  # one request first: a wrong body or key fails here, once
    if probe[0] != 200:
        raise DiffPruneError(f"The first request to {url}/v1/images got HTTP {probe[0]}: "
                             f"{probe[2][:300].decode(errors='replace')}. Fix the request (--request JSON, --api-key) "
                             "before loading the server.")
    served = json.loads(probe[2]).get("config", {})
    with atomic_dir(out, overwrite) as tmp:
        levels = []
        for c in concurrency:
            levels.append(closed_loop(client, body, c, duration_s, max_requests))
            say(_line(levels[-1]))
        for r in rates:
            levels.append(open_loop(client, body, r, duration_s, max_requests))
            say(_line(levels[-1]))
        report = {"format": "diffprune.loadtest/1", "url": url, "request": json.loads(body), "served": served,
                  "bounds": {"duration_s": duration_s, "max_requests": max_requests, "timeout_s": timeout_s},
                  "machine": {"cpu": cpu_model(), "python": platform.python_version()},
                  "levels": [{k: v for k, v in lv.items() if k != "records"} for lv in levels],
                  "records": [{"level": i, **rec} for i, lv in enumerate(levels) for rec in lv["records"]]}
        Path(tmp, "loadtest.json").write_text(json.dumps(report, indent=1))
        Path(tmp, "loadtest.md").write_text(markdown(report))
        plot(report, Path(tmp, "loadtest.png"))
    return report


def _line(level: dict) -> str:
    what = f"concurrency {level['concurrency']}" if level["mode"] == "closed" else f"rate {level['rate_rps']:g}/s"
    ms = lambda v: "-" if v is None else f"{v * 1000:.0f} ms"  # noqa: E731
    return (f"{what}: {level['ok']}/{level['requests']} ok, {level['throughput_rps']:.2f} req/s, p50 {ms(level['p50_s'])}, "
            f"p99 {ms(level['p99_s'])}" + (f", errors {level['errors']}" if level["errors"] else ""))


def markdown(report: dict) -> str:
    ms = lambda v: "-" if v is None else f"{v * 1000:.0f}"  # noqa: E731
    served = report["served"]
    lines = [f"# Load test of {report['url']}", "",
             f"Model: `{served.get('target')}` ({served.get('kind')}, backend {served.get('backend')}, "
             f"{served.get('threads')} threads per replica); request `{json.dumps(report['request'])}`; "
             f"CPU {report['machine']['cpu']}.",
             f"Bounds per level: {report['bounds']['duration_s']:g} s or {report['bounds']['max_requests']} requests; "
             f"client timeout {report['bounds']['timeout_s']:g} s.", "",
             "| load | requests | 200 | throughput (req/s) | p50 (ms) | p95 (ms) | p99 (ms) | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for lv in report["levels"]:
        load = f"closed, concurrency {lv['concurrency']}" if lv["mode"] == "closed" else f"open, {lv['rate_rps']:g} req/s"
        errors = ", ".join(f"{k}: {v}" for k, v in lv["errors"].items()) or "none"
        lines.append(f"| {load} | {lv['requests']} | {lv['ok']} | {lv['throughput_rps']:.2f} | {ms(lv['p50_s'])} | "
                     f"{ms(lv['p95_s'])} | {ms(lv['p99_s'])} | {errors} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, marker in (("closed", "o"), ("open", "s")):
        levels = [lv for lv in report["levels"] if lv["mode"] == mode and lv["p50_s"] is not None]
        if not levels:
            continue
        x = [lv["throughput_rps"] for lv in levels]
        for q, style in (("p50_s", "-"), ("p99_s", "--")):
            ax.plot(x, [lv[q] * 1000 for lv in levels], style, marker=marker, label=f"{mode} loop, {q[:3]}")
        for lv, xi in zip(levels, x):
            ax.annotate(f"c={lv['concurrency']}" if mode == "closed" else f"{lv['rate_rps']:g}/s",
                        (xi, lv["p99_s"] * 1000), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("throughput (200s per second)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{report['served'].get('target', report['url'])}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
