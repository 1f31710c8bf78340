"""Evidence for step caching (DeepCache, Ma, Fang, Wang, CVPR 2024) in the torch-free runtime, on the models
trained here: the text-conditioned digits pipeline (builtin:digits-text) and the unconditional digits DDPM.

    python benchmarks/deepcache_digits.py export    # both exported with --step-cache into /tmp/deepcache-work
    python benchmarks/deepcache_digits.py quality   # prompt accuracy + FID (text), FID (DDPM) at intervals 1, 2, 3
    python benchmarks/deepcache_digits.py time --model text   # end-to-end latency,
    python benchmarks/deepcache_digits.py time --model ddpm   # same intervals
    python benchmarks/deepcache_digits.py report    # -> benchmarks/results/deepcache/deepcache.{md,json}

Quality is judged as benchmarks/text_digits.py judges it (its ``judge``): the digits classifier
(builtin:digits-features) reads each image; prompt accuracy is its argmax against the prompted digit, FID is
in its 64-d feature space against the 1,000 held-out real digits. The text model samples 50 prompts per digit
("a handwritten digit seven") with guidance 1.5 (that model's setting, benchmarks/results/text_digits.md) and
DDIM 25; the DDPM 500 images with DDIM 25. Every interval samples the same seeds on ONNX Runtime CPU, so
interval 1 is the runtime's own uncached baseline. Timing alternates the intervals within one process per
model (warm-up first), median and p90 over the runs, on one pinned thread count.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from diffprune.runtime.host import cpu_name as cpu_model  # the one reader of the CPU's name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
WORK = Path("/tmp/deepcache-work")
OUT = ROOT / "benchmarks" / "results" / "deepcache"
TEXT_ASSET = ROOT / "diffprune" / "assets" / "digits-text"
DDPM_ASSET = ROOT / "diffprune" / "assets" / "digits-ddpm"
INTERVALS = (1, 2, 3)
STEPS, GUIDANCE, PER_DIGIT = 25, 1.5, 50


def export() -> None:
    from diffprune.export import export_pipeline, to_onnx

    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    export_pipeline(str(TEXT_ASSET), WORK / "text", batch=(1, 16, 100), validate_batches=[1, 2], step_cache=1,
                    overwrite=True)
    to_onnx(str(DDPM_ASSET), WORK / "ddpm", batch=(1, 16, 100), validate_batches=[1, 2], step_cache=1, overwrite=True)
    print(f"exported both in {time.perf_counter() - started:.0f} s")


def _judges():
    from diffprune.evaluation.metrics import OnnxFeatures

    return OnnxFeatures("builtin:digits-features"), OnnxFeatures("builtin:digits-features", output="logits")


def quality(per_digit: int = PER_DIGIT) -> None:
    from text_digits import WORDS, judge

    from diffprune.runtime import Pipeline, Sampler, make_scheduler, open_runner
    from diffprune.runtime.formats import read_model_json

    features, classifier = _judges()
    labels = np.array([i % 10 for i in range(10 * per_digit)])
    prompts = [f"a handwritten digit {WORDS[d]}" for d in labels]
    rows = []
    with Pipeline(WORK / "text", "ort-cpu") as pipe:
        for interval in INTERVALS:
            images = pipe.generate(prompts, guidance=GUIDANCE, steps=STEPS, scheduler="ddim", seed=0, batch=100,
                                   cache_interval=interval)
            rows.append({"model": "digits-text", "cache_interval": interval, **judge(images, labels, features, classifier)})
            print(json.dumps(rows[-1]), flush=True)
    with open_runner(WORK / "ddpm", "ort-cpu") as runner:
        for interval in INTERVALS:
            with Sampler(runner, make_scheduler("ddim", runner.scheduler_config), cache_interval=interval) as sampler:
                images = sampler.generate(10 * per_digit, seed=0, steps=STEPS, batch=100)
            scores = judge(images, labels, features, classifier)  # the DDPM has no prompt: FID only
            rows.append({"model": "digits-ddpm", "cache_interval": interval, "fid": scores["fid"], "n": scores["n"]})
            print(json.dumps(rows[-1]), flush=True)
    macs = {}
    for name, folder in (("digits-text", WORK / "text" / "unet"), ("digits-ddpm", WORK / "ddpm")):
        macs[name] = {"full": read_model_json(folder)["macs"], "shallow": read_model_json(folder / "shallow")["macs"]}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "quality.json").write_text(json.dumps({"rows": rows, "macs": macs, "steps": STEPS, "guidance": GUIDANCE,
                                                  "images": 10 * per_digit}, indent=1))


def _stats(values) -> dict:
    ms = sorted(v * 1e3 for v in values)
    return {"median_ms": statistics.median(ms), "p90_ms": ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))],
            "runs": len(ms)}


def _alternate(generate, runs: int) -> dict:
    """interval -> seconds of ``runs`` end-to-end runs of ``generate(interval, seed)``, the intervals taking turns
    (A B C A B C ...) after two untimed rounds."""
    times = {i: [] for i in INTERVALS}
    for r in range(runs + 2):
        for interval in INTERVALS:
            seconds = generate(interval, r)
            if r >= 2:
                times[interval].append(seconds)
    return times


def timing(model: str, runs: int = 10, batches=(1, 8)) -> None:
    """Alternating intervals per batch for ``model`` (text or ddpm); one ONNX Runtime thread per core of this
    host. Each model is its own short exclusive run (results/deepcache/timing-MODEL.json)."""
    from text_digits import WORDS

    from diffprune.runtime import Pipeline, Sampler, make_scheduler, open_runner

    threads = len(__import__("os").sched_getaffinity(0))
    out = []
    if model == "text":
        with Pipeline(WORK / "text", "ort-cpu", threads=threads) as pipe:
            for b in batches:
                prompts = [f"a handwritten digit {WORDS[i % 10]}" for i in range(b)]

                def generate(interval, seed, b=b, prompts=prompts):
                    pipe.generate(prompts, guidance=GUIDANCE, steps=STEPS, scheduler="ddim", seed=seed, batch=b,
                                  cache_interval=interval)
                    return pipe.last_timing["total_s"]

                for interval, values in _alternate(generate, runs).items():
                    out.append({"model": "digits-text", "batch": b, "cache_interval": interval, **_stats(values)})
                    print(json.dumps(out[-1]), flush=True)
    else:
        with open_runner(WORK / "ddpm", "ort-cpu", threads=threads) as runner:
            samplers = {i: Sampler(runner, make_scheduler("ddim", runner.scheduler_config), cache_interval=i)
                        for i in INTERVALS}
            for b in batches:
                def generate(interval, seed, b=b):
                    samplers[interval].generate(b, seed=seed, steps=STEPS, batch=b)
                    return samplers[interval].last_timing["total_s"]

                for interval, values in _alternate(generate, runs).items():
                    out.append({"model": "digits-ddpm", "batch": b, "cache_interval": interval, **_stats(values)})
                    print(json.dumps(out[-1]), flush=True)
            for sampler in samplers.values():
                sampler.close()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"timing-{model}.json").write_text(json.dumps({"rows": out, "threads": threads, "cpu": cpu_model(),
                                                          "steps": STEPS, "guidance": GUIDANCE, "backend": "ort-cpu",
                                                          "runs": runs}, indent=1))


def report() -> None:
    q = json.loads((OUT / "quality.json").read_text())
    parts = [json.loads((OUT / f"timing-{m}.json").read_text()) for m in ("text", "ddpm")
             if (OUT / f"timing-{m}.json").is_file()]
    t = {**parts[0], "rows": [r for p in parts for r in p["rows"]]}
    base = {(r["model"], r["batch"]): r["median_ms"] for r in t["rows"] if r["cache_interval"] == 1}
    lines = [
        "# Step caching (DeepCache) on the digits models",
        "",
        f"Host: {t['cpu']}, {t['threads']} ONNX Runtime threads (ort-cpu). DDIM {q['steps']} steps; the text model "
        f"with guidance {q['guidance']} (its setting). {q['images']} images per row for quality, the same seeds at "
        "every interval; timing alternates the intervals in one process, median and p90 of "
        f"{t['rows'][0]['runs']} runs after 2 warm-up rounds.",
        "",
        "Commands: `python benchmarks/deepcache_digits.py export`, `python benchmarks/deepcache_digits.py quality`, "
        "`python benchmarks/deepcache_digits.py time --model text` (and `--model ddpm`), "
        "`python benchmarks/deepcache_digits.py report`.",
        "",
        "UNet MACs per call: " + "; ".join(f"{m}: full {v['full'] / 1e6:.0f}M, shallow {v['shallow'] / 1e6:.0f}M "
                                           f"({v['shallow'] / v['full']:.0%})" for m, v in q["macs"].items()) + ".",
        "",
        "| model | cache interval | prompt accuracy | FID (digits features) | batch | median ms | p90 ms | speedup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    quality_of = {(r["model"], r["cache_interval"]): r for r in q["rows"]}
    for r in t["rows"]:
        qr = quality_of.get((r["model"], r["cache_interval"]), {})
        acc = f"{qr['prompt_accuracy']:.1%}" if "prompt_accuracy" in qr else "-"
        fid = f"{qr['fid']:.2f}" if "fid" in qr else "-"
        speedup = base[(r["model"], r["batch"])] / r["median_ms"]
        lines.append(f"| {r['model']} | {r['cache_interval']} | {acc} | {fid} | {r['batch']} | {r['median_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {speedup:.2f}x |")
    (OUT / "deepcache.md").write_text("\n".join(lines) + "\n")
    (OUT / "deepcache.json").write_text(json.dumps({"quality": q, "timing": t}, indent=1))
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["export", "quality", "time", "report"])
    parser.add_argument("--runs", type=int, default=10, help="time: timed runs per interval and batch (default 10)")
    parser.add_argument("--batches", default="1,8", help="time: comma-separated batch sizes (default 1,8)")
    parser.add_argument("--model", default="text", choices=["text", "ddpm"], help="time: which model (default text)")
    parser.add_argument("--per-digit", type=int, default=PER_DIGIT,
                        help=f"quality: images per digit (default {PER_DIGIT})")
    a = parser.parse_args(argv)
    batches = tuple(int(b) for b in a.batches.split(","))
    {"export": export, "quality": lambda: quality(a.per_digit), "time": lambda: timing(a.model, a.runs, batches),
     "report": report}[a.stage]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
