"""Does prune + fine-tune slow down in proportion when other processes share the CPU? A fixed workload (Diff-Pruning
of the shipped digits DDPM to half its MACs, then N fine-tuning steps), run through the `diffprune` command alone
and beside K competitor processes (each a busy single-threaded Python loop, started and stopped here, bounded in
time), under a thread policy (diffprune/threads.py): ``share`` (diffprune's default: torch threads = the cores the
other running tasks leave free, looked at again every few seconds), ``yield`` (OMP_WAIT_POLICY=PASSIVE, every usable
core) or ``torch-default`` (PyTorch's own: libgomp threads spin before they sleep). Wall time and CPU time
(resource.getrusage of the children) per stage.

    for k in 0 1 3; do for p in share yield torch-default; do
        python benchmarks/shared_cpu.py run --policy $p --competitors $k --round 1; done; done
    python benchmarks/shared_cpu.py report

Each ``run`` is one piece (under a minute alone, up to 3 minutes beside 3 competitors on 2 cores) that adds its
record to benchmarks/results/shared_cpu.json (one per policy, competitors, steps and round; ``--round 2`` repeats
without replacing); ``report`` writes benchmarks/results/shared_cpu.md. Run it with nothing else on the machine:
it makes the load itself.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from diffprune.runtime.host import cpu_name as _cpu  # the one reader of the CPU's name

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "shared_cpu.json"
DIGITS = ROOT / "diffprune" / "assets" / "digits-ddpm"

# A pure-Python loop: one core's worth of demand, no threads and no waiting of its own; it stops by itself.
COMPETITOR = "import time, sys\nend = time.time() + float(sys.argv[1])\nn = 0\nwhile time.time() < end:\n    n += 1\n"


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def stage(argv, env) -> dict:
    """One `diffprune` command as a child: wall and CPU seconds (user + system), its exit status."""
    cpu, started = children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "diffprune", *argv], env=env, capture_output=True, text=True)
    wall, used = time.perf_counter() - started, children_cpu() - cpu
    if proc.returncode:
        sys.exit(f"`diffprune {' '.join(argv)}` failed:\n{proc.stderr[-2000:]}")
    return {"wall_s": wall, "cpu_s": used, "cpu_per_wall": used / wall}


def run(policy: str, competitors: int, steps: int, limit: float, round_: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                                            "MKL_NUM_THREADS")}
    env["DIFFPRUNE_THREAD_POLICY"] = policy
    busy = [subprocess.Popen([sys.executable, "-c", COMPETITOR, str(limit)]) for _ in range(competitors)]
    time.sleep(0.5 if busy else 0)  # the competitors are running before the workload starts
    try:
        with tempfile.TemporaryDirectory(prefix="shared-cpu-") as work:
            pruned, tuned = Path(work) / "pruned", Path(work) / "tuned"
            record = {
                "prune": stage(["prune", str(DIGITS), str(pruned), "--method", "diff-pruning", "--data", "builtin:digits",
                                "--target-macs", "0.5", "--num-images", "32", "--max-timesteps", "20", "--quiet"], env),
                "finetune": stage(["finetune", str(pruned), str(tuned), "--data", "builtin:digits", "--steps", str(steps),
                                   "--batch-size", "32", "--warmup-steps", "5", "--checkpoint-every", "0",
                                   "--checkpoint-minutes", "0", "--device", "cpu", "--quiet"], env),
            }
            info = json.loads((tuned / "pruning.json").read_text())
            record["threads_recorded"] = info["finetune"].get("thread_policy")
    finally:
        still = sum(p.poll() is None for p in busy)
        for p in busy:
            p.terminate()
        for p in busy:
            p.wait()
    if still < competitors:
        sys.exit(f"{competitors - still} competitor(s) stopped before the workload ended (--limit {limit:g} s is too "
                 "short): the load was not held throughout; rerun with a larger --limit.")
    total_wall = sum(record[s]["wall_s"] for s in ("prune", "finetune"))
    total_cpu = sum(record[s]["cpu_s"] for s in ("prune", "finetune"))
    return {"policy": policy, "competitors": competitors, "finetune_steps": steps, "round": round_, **record,
            "total": {"wall_s": total_wall, "cpu_s": total_cpu, "cpu_per_wall": total_cpu / total_wall},
            "host": {"cpu": _cpu(), "usable_cpus": len(os.sched_getaffinity(0))},
            "command": f"python benchmarks/shared_cpu.py run --policy {policy} "
                       f"--competitors {competitors} --steps {steps} --round {round_}",
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def report(records: list) -> str:
    alone = {(r["policy"], r.get("round", 1)): r for r in records if r["competitors"] == 0}
    host = records[0]["host"] if records else {"cpu": "?", "usable_cpus": "?"}
    lines = ["# Prune + fine-tune on a shared CPU", "",
             f"Host: {host['cpu']}, {host['usable_cpus']} usable cores. Workload: Diff-Pruning of the digits DDPM to 0.5 "
             f"of its MACs (32 calibration images, <= 20 timesteps), then {records[0]['finetune_steps'] if records else '?'} "
             "fine-tuning steps at batch 32, each a `diffprune` command; competitors are busy single-threaded Python "
             "loops. A fair share of the cores predicts wall x (K + threads) / cores and no change in CPU time.", "",
             "Commands: see the docstring of benchmarks/shared_cpu.py (each piece alone on the machine).", "",
             "| policy | competitors | round | stage | wall s | CPU s | CPU/wall | wall vs alone | CPU vs alone |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["policy"], r["competitors"], r.get("round", 1))):
        base = alone.get((r["policy"], r.get("round", 1))) or alone.get((r["policy"], 1))
        for s in ("prune", "finetune", "total"):
            x = r[s]
            rel = (f"{x['wall_s'] / base[s]['wall_s']:.2f}x | {x['cpu_s'] / base[s]['cpu_s']:.2f}x" if base else " | ")
            lines.append(f"| {r['policy']} | {r['competitors']} | {r.get('round', 1)} | {s} | {x['wall_s']:.1f} | {x['cpu_s']:.1f} | "
                         f"{x['cpu_per_wall']:.2f} | {rel} |")
    return "\n".join(lines) + "\n"


def plot(records: list, path: Path) -> None:
    """Wall and CPU time against alone, per policy and number of competitors (mean over rounds), with the fair-share
    expectation: a picture of what the table says."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = [p for p in ("share", "yield", "torch-default") if any(r["policy"] == p for r in records)]
    ks = sorted({r["competitors"] for r in records})
    alone = {}
    for r in records:
        if r["competitors"] == 0:
            alone.setdefault(r["policy"], []).append(r["total"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / len(policies)
    for i, pol in enumerate(policies):
        base_wall = sum(t["wall_s"] for t in alone[pol]) / len(alone[pol])
        base_cpu = sum(t["cpu_s"] for t in alone[pol]) / len(alone[pol])
        for ax, key, base in ((axes[0], "wall_s", base_wall), (axes[1], "cpu_s", base_cpu)):
            ys = []
            for k in ks:
                xs = [r["total"][key] for r in records if r["policy"] == pol and r["competitors"] == k]
                ys.append(sum(xs) / len(xs) / base if xs else float("nan"))
            ax.bar([j + i * width for j in range(len(ks))], ys, width, label=pol)
    cores = records[0]["host"]["usable_cpus"]
    axes[0].plot([j + 0.4 - width / 2 for j in range(len(ks))], [(k + cores) / cores if k else 1 for k in ks], "k_",
                 markersize=30, label=f"fair share, {cores} threads")
    axes[0].set_title("wall time vs alone (lower is better)")
    axes[1].set_title("CPU time vs alone (1.0 = no waste)")
    for ax in axes:
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ks))], [f"{k} busy" for k in ks])
        ax.axhline(1.0, color="grey", lw=0.5)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"prune + fine-tune beside busy processes, {records[0]['host']['cpu']}, {cores} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["run", "report"])
    parser.add_argument("--policy", choices=["share", "yield", "torch-default"], default="share")
    parser.add_argument("--competitors", type=int, default=0, help="busy processes beside the workload (default 0)")
    parser.add_argument("--steps", type=int, default=40, help="fine-tuning steps (default 40)")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds the competitors run at most (default 600)")
    parser.add_argument("--round", type=int, default=1, dest="round_", help="repeat number: a piece is kept per round (default 1)")
    a = parser.parse_args(argv)
    records = json.loads(OUT.read_text()) if OUT.is_file() else []
    if a.step == "run":
        new = run(a.policy, a.competitors, a.steps, a.limit, a.round_)
        records = [r for r in records if (r["policy"], r["competitors"], r["finetune_steps"], r.get("round", 1)) !=
                   (a.policy, a.competitors, a.steps, a.round_)] + [new]
        RESULTS.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(records, indent=1))
        print(json.dumps({k: new[k] for k in ("policy", "competitors", "prune", "finetune", "total")}, indent=1))
    (RESULTS / "shared_cpu.md").write_text(report(records))
    plot(records, RESULTS / "shared_cpu.png")
    print(report(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
