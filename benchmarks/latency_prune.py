"""Latency tables and pruning to a latency (issue 23): prediction accuracy and --target-speedup on the CIFAR-10
architecture, on ort-cpu and openvino@f32, batch 1 and 8.

Phases, so that only timing runs on a quiet machine (each timing phase is short):

    python benchmarks/latency_prune.py export WORK                 # probes + 10 random checks (shared CPU)
    python benchmarks/latency_prune.py time WORK --backend ort-cpu --batch 1
    python benchmarks/latency_prune.py prune WORK --backend ort-cpu --batch 1 --speedup 2   # export both models
    python benchmarks/latency_prune.py time-pruned WORK --backend ort-cpu --batch 1
    python benchmarks/latency_prune.py report WORK benchmarks/results/latency

``time`` fits the table to the probes (diffprune.latency.profile.probe_configs) and checks it on 10 random width
configurations drawn with another seed (not used to fit). ``prune`` chooses widths at the speedup with the table
(magnitude importance: the weights are random) and, for comparison, the MAC-targeted model (one ratio for every
group, as ``--target-macs`` prunes) whose predicted time is the same; ``time-pruned`` measures both and dense.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ARCH = "ddpm-cifar10-32"
CHECKS = 10


def _planner():
    from diffprune.latency.profile import planner_for
    from diffprune.sources.unet import build_unet

    return planner_for(build_unet(ARCH))


def export(work: Path):
    from diffprune.latency.profile import keep_at, layer_rows, probe_configs, random_configs, write_probes

    planner = _planner()
    steps = planner.steps()
    rows = layer_rows(planner, 1)
    (work / "rows.json").write_text(json.dumps({"rows": rows, "steps": steps}))
    write_probes(planner, work / "probes", probe_configs(steps, rows, seed=0), 1, {}, {"source": f"arch:{ARCH}"})
    checks = [(label, keep_at(steps, f)) for label, f in random_configs(steps, seed=1, n=CHECKS)]
    write_probes(planner, work / "checks", checks, 1, {}, {"source": f"arch:{ARCH}"})


def _rows(work: Path, batch: int) -> tuple:
    saved = json.loads((work / "rows.json").read_text())
    rows = saved["rows"]
    if batch != 1:  # MACs and elements scale with the batch; the stages do not change
        rows = [{**r, "macs": r["macs"] * batch, "elements": r["elements"] * batch} for r in rows]
    return rows, {g: tuple(v) for g, v in saved["steps"].items()}


def time_tables(work: Path, backend: str, batch: int, rounds: int = 2):
    from diffprune.latency import model as lm
    from diffprune.latency.profile import fit_table, time_probes

    rows, steps = _rows(work, batch)
    started = time.perf_counter()
    probes = time_probes(work / "probes", backend, batch, rounds=rounds)
    seconds = time.perf_counter() - started
    table = fit_table(rows, steps, probes, key=f"bench-{backend}-{batch}", backend=backend, batch=batch, threads=None,
                      model_info={"arch": ARCH}, resolution=[32, 32], seconds=seconds)
    checks = time_probes(work / "checks", backend, batch, rounds=rounds)
    predicted = [lm.predict_ms(table, lm.fractions(c["keep"], steps)) for c in checks]
    measured = [c["measured_ms"] for c in checks]
    out = {"backend": backend, "batch": batch, "table": table, "probe_seconds": round(seconds, 1),
           "checks": [{"label": c["label"], "measured_ms": m, "predicted_ms": round(p, 3)}
                      for c, m, p in zip(checks, measured, predicted)],
           "check_errors": lm.errors(predicted, measured)}
    (work / f"table-{backend}-{batch}.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out["check_errors"]), "fit", json.dumps(table["fit"]))


def prune_pair(work: Path, backend: str, batch: int, speedup: float):
    from diffprune.latency import model as lm
    from diffprune.latency.knapsack import choose_widths
    from diffprune.latency.profile import export_model, keep_at
    from diffprune.sources.unet import count_macs_params

    planner = _planner()
    saved = json.loads((work / f"table-{backend}-{batch}.json").read_text())
    table = saved["table"]
    steps = planner.steps()
    scores = {g: imp.view(groups, -1).mean(0).tolist() for g, (imp, groups, _, _) in planner.plan.items()}
    choice = choose_widths(table, steps, scores, table["dense_ms"] / speedup)
    # MAC-targeted at the same predicted time: the uniform fraction whose prediction matches (bisection).
    lo, hi = 0.05, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        ms = lm.predict_ms(table, lm.fractions(keep_at(steps, {g: mid for g in steps}), steps))
        lo, hi = (mid, hi) if ms < choice.predicted_ms else (lo, mid)
    uniform = keep_at(steps, {g: hi for g in steps})
    out = {"speedup_target": speedup, "budget_ms": table["dense_ms"] / speedup, "models": {}}
    for name, keep in (("latency-targeted", choice.keep), ("MAC-targeted (uniform)", uniform)):
        model = planner.apply(keep=keep)
        macs, params = count_macs_params(model)
        folder = work / f"pruned-{backend}-{batch}-{'lat' if name.startswith('lat') else 'mac'}"
        export_model(model, folder, batch, {}, {"source": f"arch:{ARCH}"})
        out["models"][name] = {"folder": folder.name, "macs": macs, "params": params,
                               "predicted_ms": round(lm.predict_ms(table, lm.fractions(keep, steps)), 3),
                               "widths": {g: keep[g] * steps[g][0] for g in steps}}
    out["macs_dense"] = count_macs_params(planner.dense)[0]
    out["retained_importance_latency"] = round(choice.retained, 4)
    (work / f"pruned-{backend}-{batch}.json").write_text(json.dumps(out, indent=1))
    print({k: (v["macs"] / 1e9, v["predicted_ms"]) for k, v in out["models"].items()})


def time_pruned(work: Path, backend: str, batch: int):
    from diffprune.latency.profile import time_artifact

    info = json.loads((work / f"pruned-{backend}-{batch}.json").read_text())
    dense, _ = time_artifact(work / "probes" / "probe-00", backend, batch)
    info["dense_ms"] = round(dense, 3)
    for name, m in info["models"].items():
        ms, runner = time_artifact(work / m["folder"], backend, batch)
        m["measured_ms"], m["measured_speedup"], m["precision"] = round(ms, 3), round(dense / ms, 3), runner.get("precision")
    (work / f"pruned-{backend}-{batch}.json").write_text(json.dumps(info, indent=1))
    print(json.dumps({k: (v["measured_ms"], v["measured_speedup"]) for k, v in info["models"].items()}), "dense", dense)


def report(work: Path, out: Path, command: str):
    from diffprune.latency.profile import cpu_name

    out.mkdir(parents=True, exist_ok=True)
    results = {"host": cpu_name(), "arch": ARCH, "command": command, "tables": {}, "pruned": {}}
    lines = ["# Latency tables and pruning to a latency (CIFAR-10 architecture, random weights)\n",
             f"Host: {cpu_name()} (2 cores), every timing alone on the machine; backend default threads.  ",
             "Made by the phases of `benchmarks/latency_prune.py` (its docstring lists them; export and prune "
             "phases ran alone on the machine too, the shared queue being starved); this file: "
             + f"`{command}`\n",
             "## Prediction of a whole UNet call (10 random width configurations not used to fit)\n",
             "| backend | batch | fit probes | fit median err | checks median err | checks max err | per-check errors |",
             "|---|---|---|---|---|---|---|"]
    for f in sorted(work.glob("table-*.json")):
        t = json.loads(f.read_text())
        results["tables"][f.stem] = t
        e = t["check_errors"]
        lines.append(f"| {t['backend']} | {t['batch']} | {len(t['table']['probes'])} ({t['probe_seconds']:.0f} s) | "
                     f"{t['table']['fit']['median_abs']:.1%} | {e['median_abs']:.1%} | {e['max_abs']:.1%} | "
                     + ", ".join(f"{r:+.1%}" for r in e["relative"]) + " |")
    lines += ["", "## --target-speedup 2.0 vs MAC-targeted (uniform ratio) at the same predicted time\n",
              "| backend | batch | dense ms | model | GMACs | predicted ms | measured ms | measured speedup |",
              "|---|---|---|---|---|---|---|---|"]
    for f in sorted(work.glob("pruned-*.json")):
        p = json.loads(f.read_text())
        if "dense_ms" not in p:
            continue
        results["pruned"][f.stem] = p
        backend, batch = f.stem[len("pruned-"):].rsplit("-", 1)
        for name, m in p["models"].items():
            lines.append(f"| {backend} | {batch} | {p['dense_ms']:.1f} | {name} | {m['macs'] / 1e9:.2f} of "
                         f"{p['macs_dense'] / 1e9:.2f} | {m['predicted_ms']:.1f} | {m['measured_ms']:.1f} | "
                         f"{m['measured_speedup']:.2f}x |")
    (out / "latency.json").write_text(json.dumps(results, indent=1))
    (out / "latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["export", "time", "prune", "time-pruned", "report"])
    p.add_argument("work", type=Path)
    p.add_argument("out", type=Path, nargs="?", default=Path("benchmarks/results/latency"))
    p.add_argument("--backend", default="ort-cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--speedup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=2, help="passes over the probes; each probe's fastest pass is kept")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.phase == "export":
        export(args.work)
    elif args.phase == "time":
        time_tables(args.work, args.backend, args.batch, args.rounds)
    elif args.phase == "prune":
        prune_pair(args.work, args.backend, args.batch, args.speedup)
    elif args.phase == "time-pruned":
        time_pruned(args.work, args.backend, args.batch)
    else:
        report(args.work, args.out, "python benchmarks/latency_prune.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
