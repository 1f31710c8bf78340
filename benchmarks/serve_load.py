"""What does a pruned model buy a server? `diffprune serve` load-tested on this CPU, dense vs pruned.

The shipped, trained digits DDPM (builtin:digits-ddpm, 28x28) and the same model pruned by magnitude to
half its channels (`diffprune prune --ratio 0.5`; not fine-tuned: serving speed depends on the
architecture, not on the weights), both exported to ONNX and served on one local Ray instance:

1. single-request latency of each model (closed loop, concurrency 1); the SLO is 2x the dense model's
   median single-request latency;
2. for 1 and 2 replicas, open-loop Poisson arrivals at rising rates; the highest throughput whose p99 stays
   under the SLO with at most 1 % errors (diffprune.serve.loadtest.max_rate_under_slo), dense and pruned;
3. batching on vs off (--max-batch-requests 8 vs 1) at concurrency 8, dense, 1 replica.

    python benchmarks/serve_load.py WORK [--steps 10] [--duration 8] [--backend ort-cpu]

WORK holds the exports (reused when present). Writes benchmarks/results/serve_load.{json,md} and one
load-test folder per run under WORK. On a shared machine, other users' load shows up in the numbers: the
report records the CPU and the load average before and after.
"""

import argparse
import json
import os
import socket
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATE_FACTORS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)  # times dense's 1-replica rate at c=1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What each model's requests ask for: the text model gets a prompt at its own guidance (its model card: 1.5).
MODELS = {
    "digits-ddpm": ("digits", {}),
    "digits-text": ("digits-text", {"prompt": "a handwritten digit 7", "guidance": 1.5}),
}


def exports(work: Path, model: str = "digits-ddpm") -> dict:
    from diffprune.cli import main

    stem = MODELS[model][0]
    dense, pruned_src, pruned = work / f"{stem}-dense-onnx", work / f"{stem}-pruned-0.5", work / f"{stem}-pruned-0.5-onnx"
    if not dense.exists():
        assert main(["export", f"builtin:{model}", str(dense)]) == 0
    if not pruned_src.exists():
        assert main(["prune", f"builtin:{model}", str(pruned_src), "--method", "magnitude", "--ratio", "0.5"]) == 0
    if not pruned.exists():
        assert main(["export", str(pruned_src), str(pruned)]) == 0
    return {"dense": dense, "pruned": pruned}


def run(work: Path, steps: int, duration: float, backend: str, model: str = "digits-ddpm") -> dict:
    import ray
    from ray import serve

    from diffprune.serve import resolve_target
    from diffprune.serve.loadtest import closed_loop, cpu_model, max_rate_under_slo, open_loop
    from diffprune.serve.server import start, stop
    from diffprune.serve.client import Client

    models = exports(work, model)
    body = json.dumps({"n": 1, "steps": steps, "seed": 0, **MODELS[model][1]}).encode()
    report = {"format": "diffprune.bench.serve_load/1", "model": model, "request": json.loads(body), "steps": steps, "duration_s": duration, "backend": backend,
              "cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_before": os.getloadavg(), "runs": []}
    ray.init(address="local", include_dashboard=False, num_cpus=os.cpu_count(), log_to_driver=False)
    try:
        def deploy(name, replicas, batch_requests=8):
            config = resolve_target(models[name], backend=backend, replicas=replicas, port=free_port(),
                                    max_ongoing=64, max_batch_requests=batch_requests, name=f"{name}-{replicas}")
            url = start(config)
            client = Client(url, timeout=60)
            for _ in range(3):  # warm-up: first calls pay for graph optimisation and thread pools
                client.request("POST", "/v1/images", body)
            return config, client

        def record(what, level):
            level = {k: v for k, v in level.items() if k != "records"}
            report["runs"].append({**what, **level})
            print(what, {k: level[k] for k in ("requests", "ok", "throughput_rps", "p50_s", "p99_s", "errors")},
                  flush=True)
            return level

        single, rates_found = {}, {}
        for replicas in (1, 2):
            for name in ("dense", "pruned"):
                config, client = deploy(name, replicas)
                if replicas == 1:
                    single[name] = record({"model": name, "replicas": 1, "load": "closed c=1"},
                                          closed_loop(client, body, 1, duration, 200))
                    if name == "dense":
                        slo = 2 * single["dense"]["p50_s"]
                        base = single["dense"]["throughput_rps"]
                        report["slo_s"] = slo
                levels, misses = [], 0
                for factor in RATE_FACTORS:
                    rate = round(base * factor, 3)  # the same ladder for every run, from half the dense rate
                    lv = record({"model": name, "replicas": replicas, "load": f"open {rate}/s"},
                                open_loop(client, body, rate, duration, 400, seed=1))
                    levels.append(lv)
                    missed = lv["p99_s"] is None or lv["p99_s"] > slo
                    misses = misses + 1 if missed else 0
                    if misses >= 2:  # two levels in a row past the SLO: higher rates would only queue more
                        break
                rates_found[f"{name}, {replicas} replica(s)"] = max_rate_under_slo(levels, slo)
                if replicas == 1 and name == "dense":
                    for batch_requests in (1, 8):  # batching off, then on, at concurrency 8
                        stop(config)
                        config, client = deploy(name, 1, batch_requests=batch_requests)
                        record({"model": name, "replicas": 1, "load": f"closed c=8, batch requests {batch_requests}"},
                               closed_loop(client, body, 8, duration, 400))
                stop(config)
        report["max_rate_under_slo"] = rates_found
        dense1, pruned1 = rates_found.get("dense, 1 replica(s)"), rates_found.get("pruned, 1 replica(s)")
        report["pruned_over_dense_1_replica"] = pruned1 / dense1 if dense1 and pruned1 else None
    finally:
        serve.shutdown()
        ray.shutdown()
    report["loadavg_after"] = os.getloadavg()
    return report


def startup(work: Path) -> dict:
    """Replica start-up and memory: ONNX Runtime, then OpenVINO with an empty IR cache (cold: the ONNX file is
    converted) and again with the cache it left (warm). Time to ready is `start()`'s wall time (Ray Serve
    deploys the gateway and the model replica and waits for both); load is the replica's own model loading."""
    import tempfile

    os.environ["DIFFPRUNE_CACHE"] = tempfile.mkdtemp(prefix="serve-load-cache-")  # before Ray starts its workers
    import ray
    from ray import serve

    from diffprune.serve import resolve_target
    from diffprune.serve.server import start, stop

    models = exports(work)
    rows = []
    ray.init(address="local", include_dashboard=False, num_cpus=os.cpu_count(), log_to_driver=False)
    try:
        for name in ("dense", "pruned"):
            for backend, state in (("ort-cpu", "-"), ("openvino", "cold"), ("openvino", "warm")):
                config = resolve_target(models[name], backend=backend, port=free_port(), name=f"start-{name}")
                started = time.perf_counter()
                start(config)
                ready_s = time.perf_counter() - started
                info = serve.get_deployment_handle("model", app_name=config.name).info.remote().result()
                rows.append({"model": name, "backend": backend, "ir_cache": state, "ready_s": ready_s,
                             "load_s": info["load_s"], "rss_mib": info["rss_mib"]})
                print(rows[-1], flush=True)
                stop(config)
    finally:
        serve.shutdown()
        ray.shutdown()
    return {"startup": rows}


def batching(work: Path, steps: int, backend: str, repeats: int = 5) -> dict:
    """The compute side of batching, without Ray or HTTP: 8 one-image requests run as one batch (one runtime call,
    batch 8) against the same 8 one at a time, alternating, ``repeats`` times, median seconds; 2 threads."""
    import statistics

    from diffprune.serve import resolve_target
    from diffprune.serve.model import ServedModel
    from diffprune.serve.schema import model_facts, parse_request

    models = exports(work)
    rows = []
    for name in ("dense", "pruned"):
        config = resolve_target(models[name], backend=backend, threads=2)
        model = ServedModel(config).open()
        try:
            jobs = [parse_request(json.dumps({"n": 1, "steps": steps, "seed": i}).encode(), config,
                                  model_facts(config)) for i in range(8)]
            for job in jobs:
                job["deadline"] = float("inf")
            model.run(jobs[:2])  # warm-up
            together, alone = [], []
            for _ in range(repeats):
                t = time.perf_counter()
                model.run(jobs)
                together.append(time.perf_counter() - t)
                t = time.perf_counter()
                for job in jobs:
                    model.run([job])
                alone.append(time.perf_counter() - t)
        finally:
            model.close()
        rows.append({"model": name, "batched_s": statistics.median(together), "one_by_one_s": statistics.median(alone),
                     "speedup": statistics.median(alone) / statistics.median(together)})
        print(rows[-1], flush=True)
    return {"batching_compute": rows}


def markdown(report: dict) -> str:
    ms = lambda v: "-" if v is None else f"{v * 1000:.0f}"  # noqa: E731
    what = {"digits-ddpm": "digits DDPM", "digits-text": "digits-text pipeline (prompt, guidance 1.5)"}[report.get("model", "digits-ddpm")]
    lines = [f"# Serving load test: {what}, dense vs pruned (ratio 0.5), {report['steps']} DDIM steps, 1 image per request",
             "", f"CPU: {report['cpu']}, {report['cores']} cores (shared; load average before "
             f"{report['loadavg_before'][0]:.1f}, after {report['loadavg_after'][0]:.1f}); backend {report['backend']}; "
             f"{report['duration_s']:g} s per level. SLO: p99 under {ms(report['slo_s'])} ms (2x the dense model's "
             "median single-request latency).", "",
             "| highest rate with p99 under the SLO | requests/s |", "|---|---:|"]
    for what, rate in report["max_rate_under_slo"].items():
        lines.append(f"| {what} | {'-' if rate is None else f'{rate:.2f}'} |")
    ratio = report.get("pruned_over_dense_1_replica")
    lines += ["", f"Pruned / dense at 1 replica: {'-' if ratio is None else f'{ratio:.2f}x'} (target 1.5x).", "",
              "| model | replicas | load | requests | 200 | req/s | p50 (ms) | p99 (ms) | errors |",
              "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in report["runs"]:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "none"
        lines.append(f"| {r['model']} | {r['replicas']} | {r['load']} | {r['requests']} | {r['ok']} | "
                     f"{r['throughput_rps']:.2f} | {ms(r['p50_s'])} | {ms(r['p99_s'])} | {errors} |")
    lines += ["", "Command: `python benchmarks/serve_load.py WORK --steps {} --duration {:g} --backend {}`".format(
        report["steps"], report["duration_s"], report["backend"])]
    if report.get("startup"):
        lines += ["", "## Replica start-up and memory", "",
                  "| model | backend | OpenVINO IR cache | time to ready (s) | model load in the replica (s) | replica RSS (MiB) |",
                  "|---|---|---|---:|---:|---:|"]
        for r in report["startup"]:
            lines.append(f"| {r['model']} | {r['backend']} | {r['ir_cache']} | {r['ready_s']:.1f} | {r['load_s']:.2f} | "
                         f"{r['rss_mib']:.0f} |")
        lines += ["", "Command: `python benchmarks/serve_load.py WORK --startup` (merged into this file)."]
    if report.get("batching_compute"):
        lines += ["", "## Batching, compute only (8 one-image requests, no Ray, no HTTP, 2 threads, median of 5)", "",
                  "| model | as one batch (s) | one by one (s) | speedup |", "|---|---:|---:|---:|"]
        for r in report["batching_compute"]:
            lines.append(f"| {r['model']} | {r['batched_s']:.2f} | {r['one_by_one_s']:.2f} | {r['speedup']:.2f}x |")
        lines += ["", "Command: `python benchmarks/serve_load.py WORK --batching` (merged into this file)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("work")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--backend", default="ort-cpu")
    p.add_argument("--model", choices=sorted(MODELS), default="digits-ddpm",
                   help="the shipped model served, dense and pruned (default digits-ddpm)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load"))
    p.add_argument("--startup", action="store_true",
                   help="measure replica start-up and memory only, and add them to an existing OUT.json")
    p.add_argument("--batching", action="store_true",
                   help="measure batching's compute gain only (no Ray), and add it to an existing OUT.json")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    p_extra = args.startup or args.batching
    if p_extra:
        report = json.loads(Path(args.out + ".json").read_text())
        report.update(startup(work) if args.startup else batching(work, report["steps"], report["backend"]))
        Path(args.out + ".json").write_text(json.dumps(report, indent=1))
        Path(args.out + ".md").write_text(markdown(report))
        print(markdown(report))
        return 0
    started = time.time()
    report = run(work, args.steps, args.duration, args.backend, args.model)
    report["wall_s"] = time.time() - started
    Path(args.out + ".json").write_text(json.dumps(report, indent=1))
    Path(args.out + ".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
