"""What ``--backend auto`` picks on this machine, and the times it measured: the shipped digits DDPM dense and
pruned (half the MACs, `diffprune prune --method magnitude`), and the CIFAR-10 architecture (random weights,
dense and pruned to 0.56 of the MACs), each probed at batch 1 and batch 8 (runtime/auto.py: 6 DDIM steps from
the same noise on every installed candidate, the first call a warm-up, images compared with ort-cpu's).

    python benchmarks/auto_probe.py prepare [--work /tmp/auto-probe]     # prune + export (not timed; cpu-shared)
    python benchmarks/auto_probe.py measure [--work /tmp/auto-probe] [--models digits]

``measure`` probes with a fresh cache (nothing reused) and writes benchmarks/results/auto_probe.{json,md};
``--models`` measures some and keeps the others' earlier results (to fit each exclusive run in 5 minutes).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = {  # name -> (source, prune arguments or None for dense)
    "digits-dense": (str(ROOT / "diffprune" / "assets" / "digits-ddpm"), None),
    "digits-pruned": (str(ROOT / "diffprune" / "assets" / "digits-ddpm"), ["--method", "magnitude", "--target-macs", "0.5"]),
    "cifar10-dense": ("arch:ddpm-cifar10-32", None),
    "cifar10-pruned": ("arch:ddpm-cifar10-32", ["--method", "magnitude", "--target-macs", "0.56"]),
}
BATCHES = (1, 8)


def cli(*args):
    subprocess.run([sys.executable, "-m", "diffprune", *args], check=True)


def prepare(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for name, (src, prune) in MODELS.items():
        onnx = work / f"{name}-onnx"
        if (onnx / "model.json").is_file():
            continue
        if prune:
            pruned = work / name
            if not (pruned / "pruning.json").is_file():
                cli("prune", src, str(pruned), *prune, "--quiet")
            src = str(pruned)
        cli("export", src, str(onnx), "--max-batch", "16", "--exporter", "torchscript")


def measure(work: Path, names) -> dict:
    from diffprune.evaluation.benchmark import installed_versions
    from diffprune.runtime.auto import candidates, cpu_model, usable_cpus
    from diffprune.runtime.runners import choose_auto

    out = RESULTS / "auto_probe.json"
    earlier = json.loads(out.read_text()) if out.is_file() else {}
    results = {k: v for k, v in (earlier.get("models") or {}).items() if k not in names}
    with tempfile.TemporaryDirectory(prefix="auto-probe-cache-") as cache:
        os.environ["DIFFPRUNE_CACHE"] = cache  # nothing reused: every choice measured in this run
        for name in names:
            results[name] = {}
            for batch in BATCHES:
                record = choose_auto(work / f"{name}-onnx", batch=batch, log=lambda line: print(f"{name} b{batch}: {line}"))
                results[name][str(batch)] = {k: record[k] for k in ("chosen", "reason", "trials", "fields")}
    return {"host": {"cpu": cpu_model(), "cpus": usable_cpus()}, "candidates": candidates("onnx"),
            "versions": installed_versions(), "models": dict(sorted(results.items())),
            "command": "python benchmarks/auto_probe.py measure"}


def markdown(r: dict) -> str:
    lines = ["# What `--backend auto` picks on this machine", "",
             f"Host: {r['host']['cpu']}, {r['host']['cpus']} CPUs; candidates here: {', '.join(r['candidates'])}. "
             "Each probe: 6 DDIM steps from the same noise on each candidate, the first call a warm-up, then the "
             "last call repeated until 1 s is timed (at most 50 calls); median ms per UNet call; images compared with ort-cpu's (mean |difference| in [-1, 1] units, "
             "tolerance 0.02).", "",
             f"Command: `python benchmarks/auto_probe.py prepare && {r['command']}`", "",
             "| model | batch | chosen | " + " | ".join(f"{c} ms/call (diff)" for c in r["candidates"]) + " |",
             "|---|---|---|" + "---|" * len(r["candidates"])]
    for name, by_batch in r["models"].items():
        for batch, rec in by_batch.items():
            cells = []
            for c in r["candidates"]:
                t = next((t for t in rec["trials"] if t["backend"] == c), None)
                cells.append("" if t is None else (t["error"] or f"{t['ms']:.2f} ({t['diff']:.1e})"))
            lines.append(f"| {name} | {batch} | **{rec['chosen']}** | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["prepare", "measure"])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "auto-probe")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    a = parser.parse_args(argv)
    if a.step == "prepare":
        prepare(a.work)
        return 0
    r = measure(a.work, [m for m in a.models.split(",") if m])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "auto_probe.json").write_text(json.dumps(r, indent=1))
    (RESULTS / "auto_probe.md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
