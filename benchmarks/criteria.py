"""Which importance criterion to use: a resumable study over criteria x seeds x MAC levels x fine-tuning budgets.

Each run prunes a model with one criterion (seeded: the calibration images drawn, the random structure and the
fine-tuning order all follow the seed), fine-tunes it with distillation from the dense model for a share of the
dense model's own training steps, and scores it on images drawn from a fixed noise:

- FID in the 64-d feature space of the shipped digits classifier (``builtin:digits-features``) against the 1,000
  held-out real digits;
- SSIM against the dense model's images from the same noise (and the same prompts);
- prompt accuracy (text model: the classifier reads the prompted digit);
- classes covered (digits the classifier assigns to at least 2 % of the images).

One JSON record per run in ``benchmarks/results/criteria/runs/``: a run whose record exists is skipped, so an
interrupted study continues where it stopped. ``report`` turns the records into criteria.md, criteria.json and
criteria.png (mean +- std over seeds, and per seed the paired difference against Diff-Pruning with a sign count).

    python benchmarks/criteria.py run --models pixel --methods diff-pruning,magnitude --seeds 0,1,2
    python benchmarks/criteria.py run --models text --methods diff-pruning+uncond0.1 --seeds 0
    python benchmarks/criteria.py report

Methods are criteria (diff-pruning, taylor, magnitude, random, reinit), optionally with a variant of the
gradient criteria's calibration after a ``+`` (VARIANTS: uncond0.1, uncond0.5, layer, calib128, ...).
A 30 % budget is its own run of 900 steps from the same seed: the learning rate is constant after warm-up
and step k's batch is drawn from (seed, k), so its first 300 steps are the 10 % run's.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "criteria"
EVAL_SEED = 1234  # the noise every model of a study is sampled from, dense included
CRITERIA_NAMES = ("diff-pruning", "taylor", "magnitude", "random", "reinit")
BASELINE = "diff-pruning"
# Variants of the gradient criteria's calibration (keywords of diffprune.prune), named after a "+".
VARIANTS = {
    "uncond0.1": dict(uncond_fraction=0.1),  # the empty prompt in the share caption dropout trained it
    "uncond0.5": dict(uncond_fraction=0.5),  # the two branches CFG samples with, equally
    "layer": dict(score_norm="layer"),  # each coupled layer's scores normalised before the group average
    "tlog": dict(timestep_weight="log"),  # each timestep's gradient divided by its loss: low-noise steps do not dominate
    # ... and summed on to 1 % of the largest loss (t ~ 670 on the text model instead of ~490), through the timesteps
    # where its prompt decides 12-17 % of the loss (benchmarks/text_timesteps.py)
    "tlog-thr0.01": dict(timestep_weight="log", thr=0.01),
    "calib128": dict(num_images=128),
    "t100": dict(max_timesteps=100),
    "thr0.2": dict(thr=0.2),
    # Pruned to a measured latency instead of the MAC level (issue 23): the widths of every group chosen under the
    # latency table given by --latency-table, its budget --latency-ms (the MAC-level model's measured time, so the
    # two are compared at equal latency); the run key keeps the MAC level it is compared with.
    "latency": dict(score_norm="group"),  # scores normalised per group, as recorded (prune's latency default is now none)
    "latency50": dict(score_norm="group"),  # the same with no group below half its width (LatencyTarget.min_fraction 0.5)
    "latencyraw": dict(score_norm="none"),  # the same with Taylor scores comparable across groups (HALP's ranking)
}
# The variants above that prune to the study's latency target, with the LatencyTarget options each one sets.
LATENCY_VARIANTS = {"latency": {}, "latency50": {"min_fraction": 0.5}, "latencyraw": {}}


@dataclass
class ModelSpec:
    """One model of the study: where it is, what it trains on, how it is fine-tuned and sampled."""

    name: str
    source: str
    data: str  # calibration and fine-tuning data ("captioned" = the text model's captioned digits, made on demand)
    trained_steps: int  # the dense model's own training steps: budgets are shares of them
    recipe: dict  # fine-tuning options (diffprune.FinetuneConfig)
    text: bool = False
    images: int = 256  # images sampled per model for the scores
    sampler_steps: int = 25  # DDIM steps
    guidance: float = 1.0
    calibration: int = 32  # calibration images of the gradient criteria
    max_timesteps: int | None = None


def _trained_steps(folder: Path) -> int:
    record = folder / "finetune.json" if (folder / "finetune.json").is_file() else folder / "unet" / "finetune.json"
    return int(json.loads(record.read_text())["steps"]) if record.is_file() else 3000


ASSETS = ROOT / "diffprune" / "assets"
MODELS = {
    # The shipped pixel DDPM; the recipe is its training's (batch 32, lr 5e-4) plus distillation.
    "pixel": ModelSpec("pixel", str(ASSETS / "digits-ddpm"), "builtin:digits", _trained_steps(ASSETS / "digits-ddpm"),
                       dict(batch_size=32, lr=5e-4, warmup_steps=30, ema_decay=0.995, kd_weight=1.0)),
    # The text digits model with its recovery recipe (benchmarks/text_digits.py RECOVER), CFG 1.5.
    "text": ModelSpec("text", str(ASSETS / "digits-text"), "captioned", _trained_steps(ASSETS / "digits-text"),
                      dict(batch_size=32, lr=1e-3, warmup_steps=30, ema_decay=0.995, kd_weight=10.0, precompute=True),
                      text=True, images=200, guidance=1.5),
}


@dataclass(frozen=True)
class Run:
    model: str
    method: str  # criterion, optionally "+variant"
    seed: int
    macs: float
    budget: float  # share of the dense model's training steps

    @property
    def key(self) -> str:
        return f"{self.model}_{self.method}_m{self.macs:g}_b{self.budget:g}_s{self.seed}"


@dataclass
class Study:
    """Where records go and what the evaluation needs; ``work`` holds models and cached dense images."""

    results: Path = RESULTS
    work: Path = Path("/tmp/criteria-work")
    models: dict = field(default_factory=lambda: dict(MODELS))
    latency_table: Path | None = None  # the "+latency" variant's table (diffprune profile) and budget
    latency_ms: float | None = None

    @property
    def runs(self) -> Path:
        return self.results / "runs"


def parse_method(method: str):
    """(criterion, prune keywords) of ``method``, e.g. "diff-pruning+uncond0.1"."""
    from diffprune import DiffPruneError

    criterion, _, variant = method.partition("+")
    if criterion not in CRITERIA_NAMES:
        raise DiffPruneError(f"Method {method!r}: unknown criterion {criterion!r}; allowed: {', '.join(CRITERIA_NAMES)}.")
    if variant and variant not in VARIANTS:
        raise DiffPruneError(f"Method {method!r}: unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}.")
    return criterion, dict(VARIANTS.get(variant, {}))


def grid(models, methods, seeds, macs, budgets) -> list:
    """The runs in the order they are done: budgets, then MAC levels, seeds and methods innermost, so a study cut
    short still has every method at the first seeds."""
    return [Run(m, method, s, level, b) for m in models for b in budgets for level in macs for s in seeds
            for method in methods]


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)  # a record is whole or absent: a killed run is redone, never half-read


def _data(spec: ModelSpec, study: Study) -> str:
    if spec.data != "captioned":
        return spec.data
    pairs = study.work / "digits-captioned" / "pairs.jsonl"
    if not pairs.is_file():
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from text_digits import prepare

        prepare(pairs.parent)
    return str(pairs)


# ---------------------------------------------------------------- scores


class Judge:
    """The digits classifier's features and logits, and the held-out digits' feature statistics."""

    def __init__(self):
        from diffprune.evaluation.metrics import OnnxFeatures, feature_statistics

        self.features = OnnxFeatures("builtin:digits-features")
        self.classifier = OnnxFeatures("builtin:digits-features", output="logits")
        with np.load(ASSETS / "digits.npz") as z:
            self.real = feature_statistics(self.features(z["images"][9000:][..., None]))  # the held-out 1,000

    def __call__(self, images, labels=None, dense=None) -> dict:
        from diffprune.evaluation.metrics import feature_statistics, frechet_distance, ssim

        predicted = self.classifier(images).argmax(1)
        counts = np.bincount(predicted, minlength=10)
        scores = {"fid": float(frechet_distance(*feature_statistics(self.features(images)), *self.real)),
                  "classes_covered": int((counts >= max(1, 0.02 * len(images))).sum())}
        if labels is not None:
            scores["prompt_accuracy"] = float((predicted == labels).mean())
        if dense is not None:
            scores["ssim_vs_dense"] = float(ssim(images, dense).mean())
        return scores


def sample(spec: ModelSpec, folder) -> tuple:
    """uint8 images (N, H, W, 1) from the study's fixed noise, and the prompted digits (text) or None."""
    if spec.text:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from text_digits import sample as text_sample

        return text_sample(folder, spec.images // 10, spec.guidance, spec.sampler_steps, seed=EVAL_SEED)
    import torch

    from diffprune.data.generate import generate
    from diffprune.runtime.sampler import to_uint8
    from diffprune.sources.loader import load_source

    unet, scheduler_config, _ = load_source(str(folder))
    size = unet.config.sample_size
    noise = torch.randn((spec.images, unet.config.in_channels, size, size), generator=torch.Generator().manual_seed(EVAL_SEED))
    x = generate(unet.eval(), scheduler_config, spec.images, steps=spec.sampler_steps, noise=noise, progress=False)
    return to_uint8(x.numpy()), None


def dense_reference(spec: ModelSpec, study: Study, judge: Judge):
    """The dense model's images (cached in the work folder) and its record (runs/<model>_dense.json)."""
    cache = study.work / f"{spec.name}-dense-{spec.images}-{spec.sampler_steps}.npy"
    if cache.is_file():
        images = np.load(cache)
    else:
        images, _ = sample(spec, spec.source)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, images)
    path = study.runs / f"{spec.name}_dense.json"
    if not path.is_file():
        labels = np.arange(len(images)) % 10 if spec.text else None
        _write_json(path, {"model": spec.name, "method": "dense", **judge(images, labels), "images": spec.images,
                           "sampler": f"DDIM {spec.sampler_steps}", "guidance": spec.guidance})
    return images


# ---------------------------------------------------------------- one run


def run_one(run: Run, study: Study, judge: Judge, threads: int = 1) -> dict:
    """Prune, fine-tune and score one run; its record is written to runs/<key>.json and returned."""
    import shutil

    import torch

    import diffprune
    from diffprune.pruning.recipe import prune_source
    from diffprune.sources.loader import load_source
    from diffprune.sources.unet import count_macs_params, versions

    torch.set_num_threads(threads)
    spec = study.models[run.model]
    criterion, options = parse_method(run.method)
    variant = run.method.partition("+")[2]
    target = {"target_macs": run.macs}
    if variant in LATENCY_VARIANTS:
        target = {"latency": latency_target(study, **LATENCY_VARIANTS[variant])}
    options.setdefault("num_images", spec.calibration)
    if spec.max_timesteps is not None:
        options.setdefault("max_timesteps", spec.max_timesteps)
    data = _data(spec, study)
    dense_images = dense_reference(spec, study, judge)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    folder = study.work / run.key
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pruned = prune_source(spec.source, method=criterion, **target, seed=run.seed,
                                    data=data if criterion in ("diff-pruning", "taylor") else None,
                                       progress=False, threads=threads, **options)
    pruned.save(folder / "pruned")
    report = pruned.report
    prune_s = time.perf_counter() - wall0
    steps = max(1, int(round(run.budget * spec.trained_steps)))
    ft = diffprune.finetune(str(folder / "pruned"), folder / "tuned", data=data, steps=steps, seed=run.seed,
                            teacher=spec.source, device="cpu", progress=False, checkpoint_every=0,
                            checkpoint_minutes=0, threads=threads, **spec.recipe)
    images, labels = sample(spec, folder / "tuned")
    model, _, _ = load_source(str(folder / "tuned"))
    record = {**asdict(run), "key": run.key, "criterion": criterion, "options": options,
              **judge(images, labels, dense_images),
              "macs_kept": round(report.macs_after / report.macs_before, 4), "params": count_macs_params(model)[1],
              "timesteps_summed": len(report.timesteps_used),
              "last_timestep": report.timesteps_used[-1] if report.timesteps_used else None,
              "finetune_steps": steps, "final_loss": round(ft.final_loss, 5),
              "prune_s": round(prune_s, 1), "finetune_s": round(ft.seconds, 1),
              "wall_s": round(time.perf_counter() - wall0, 1), "cpu_s": round(time.process_time() - cpu0, 1),
              "threads": threads, "images": spec.images, "sampler": f"DDIM {spec.sampler_steps}",
              "guidance": spec.guidance, "recipe": spec.recipe, "host": host(), "versions": versions()}
    if report.latency:
        record["latency"] = {k: v for k, v in report.latency.items() if k != "keep"}
        record["widths"] = report.latency["keep"]
    _write_json(study.runs / f"{run.key}.json", record)
    shutil.rmtree(folder / "tuned", ignore_errors=True)  # the scores are the result; the models are cheap to remake
    if not report.latency:  # a latency-targeted model's widths differ per seed: kept to be timed (`time` stage)
        shutil.rmtree(folder, ignore_errors=True)
    return record


def latency_target(study: Study, min_fraction: float | None = None):
    """The "+latency" variant's target: the study's table and budget, not measured here (the ``time`` stage times
    the kept models on a quiet machine)."""
    from diffprune import DiffPruneError
    from diffprune.latency import LatencyTarget
    from diffprune.runtime.formats import read_latency_table

    if study.latency_table is None or study.latency_ms is None:
        raise DiffPruneError("The +latency variant prunes to a measured latency: give --latency-table TABLE.json (made "
                             "by `diffprune profile`) and --latency-ms MS (the budget: the MAC-level model's measured "
                             "call time on that table's backend and batch).")
    table = read_latency_table(study.latency_table)
    floor = {} if min_fraction is None else {"min_fraction": min_fraction}  # else LatencyTarget's own default
    return LatencyTarget(backend=table["backend"], target_ms=study.latency_ms, table=str(study.latency_table),
                         batch=table["batch"], measure=False, **floor)


def time_latency_runs(study: Study, rounds: int = 3) -> list:
    """The ``time`` stage: one UNet call of each kept "+latency" model and of the MAC-level model it is compared
    with (the same widths for every seed and criterion: a MAC level prunes every group at one ratio), on the
    latency table's backend and batch, exported once and timed in ``rounds`` alternating rounds (fastest kept);
    the times go into the records. Run it alone on the machine."""
    from diffprune.latency.profile import export_model, time_artifact
    from diffprune.pruning.recipe import prune_source
    from diffprune.runtime.formats import read_latency_table
    from diffprune.sources.loader import load_source

    todo, exported = [], {}
    (study.work / "timing").mkdir(parents=True, exist_ok=True)
    for path in sorted(study.runs.glob("*+latency*_*.json")):
        record = json.loads(path.read_text())
        folder = study.work / record["key"] / "pruned"
        if not folder.is_dir():
            print(f"criteria time: {record['key']}: its pruned model is gone ({folder}); rerun the run", flush=True)
            continue
        table = read_latency_table(record["latency"]["table"])
        backend, batch = table["backend"], table["batch"]
        model, scheduler_config, _ = load_source(str(folder))
        onnx = study.work / "timing" / record["key"]
        export_model(model, onnx, batch, scheduler_config, {})
        mac_key = (record["model"], record["macs"], backend, batch)
        if mac_key not in exported:
            mac = prune_source(study.models[record["model"]].source, method="magnitude", target_macs=record["macs"],
                               progress=False)
            exported[mac_key] = study.work / "timing" / f"{record['model']}_m{record['macs']:g}_{backend}_b{batch}"
            export_model(mac.model, exported[mac_key], batch, scheduler_config, {})
        todo.append((path, record, onnx, exported[mac_key], backend, batch))
    times = {}
    for _ in range(rounds):
        for path, record, onnx, mac_onnx, backend, batch in todo:
            for folder in (onnx, mac_onnx):
                ms, _ = time_artifact(folder, backend, batch)
                times.setdefault(str(folder), []).append(round(ms, 3))
    out = []
    for path, record, onnx, mac_onnx, backend, batch in todo:
        ms, mac_ms = min(times[str(onnx)]), min(times[str(mac_onnx)])
        record["latency"].update(measured_ms=ms, mac_model_ms=mac_ms, measured_rounds_ms=times[str(onnx)],
                                 mac_model_rounds_ms=times[str(mac_onnx)],
                                 compared_with=Run(record["model"], record["criterion"], record["seed"], record["macs"],
                                                   record["budget"]).key)
        _write_json(path, record)
        print(f"criteria time: {record['key']}: {ms:.1f} ms vs the {record['macs']:g}-MACs model {mac_ms:.1f} ms "
              f"({backend}, batch {batch})", flush=True)
        out.append(record)
    return out


def host() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} logical CPUs"
    return "unknown CPU"


def run_study(runs: list, study: Study, threads: int = 1) -> list:
    """Every run of ``runs`` without a record, one after the other, with a progress line each."""
    todo = [r for r in runs if not (study.runs / f"{r.key}.json").is_file()]
    print(f"criteria: {len(runs)} runs, {len(runs) - len(todo)} recorded already, {len(todo)} to do", flush=True)
    judge, done = Judge(), []
    for i, run in enumerate(todo, 1):
        if (study.runs / f"{run.key}.json").is_file():  # recorded meanwhile by another study process
            print(f"criteria: [{i}/{len(todo)}] {run.key}: recorded meanwhile, skipped", flush=True)
            continue
        print(f"criteria: [{i}/{len(todo)}] {run.key} ...", flush=True)
        record = run_one(run, study, judge, threads)
        extra = f", prompt accuracy {record['prompt_accuracy']:.1%}" if "prompt_accuracy" in record else ""
        print(f"criteria: [{i}/{len(todo)}] {run.key}: FID {record['fid']:.1f}, SSIM {record['ssim_vs_dense']:.3f}"
              f"{extra}, {record['classes_covered']} classes, {record['wall_s'] / 60:.1f} min "
              f"({record['cpu_s'] / 60:.1f} CPU-min)", flush=True)
        done.append(record)
    return done


# ---------------------------------------------------------------- report

SCORES = (("fid", "FID", False), ("ssim_vs_dense", "SSIM vs dense", True), ("prompt_accuracy", "prompt accuracy", True),
          ("classes_covered", "classes", True))


def load_records(study: Study) -> tuple:
    records = [json.loads(p.read_text()) for p in sorted(study.runs.glob("*.json"))]
    return [r for r in records if r["method"] != "dense"], {r["model"]: r for r in records if r["method"] == "dense"}


def summarise(records: list) -> dict:
    """Per (model, MAC level, budget): per method, mean and std of each score over seeds, and the paired
    per-seed difference against Diff-Pruning (method minus diff-pruning, with wins counted for the method: lower
    FID, higher SSIM / accuracy / classes)."""
    cells = {}
    for r in records:
        cells.setdefault((r["model"], r["macs"], r["budget"]), {}).setdefault(r["method"], {})[r["seed"]] = r
    out = {}
    for (model, macs, budget), methods in sorted(cells.items()):
        base = methods.get(BASELINE, {})
        rows = {}
        for method, by_seed in sorted(methods.items(), key=lambda kv: (kv[0] != BASELINE, kv[0])):
            row = {"seeds": sorted(by_seed), "cpu_s": sum(r["cpu_s"] for r in by_seed.values())}
            timed = [r["latency"] for r in by_seed.values() if "measured_ms" in r.get("latency", {})]
            if timed:  # "+latency" runs: their measured call time beside the MAC-level model's
                row["latency"] = {"backend": timed[0]["backend"], "batch": timed[0]["batch"],
                                  "budget_ms": timed[0]["budget_ms"], "measured_ms": [t["measured_ms"] for t in timed],
                                  "mac_model_ms": [t["mac_model_ms"] for t in timed]}
            for key, _, higher in SCORES:
                values = [r[key] for r in by_seed.values() if key in r]
                if not values:
                    continue
                row[key] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                            "n": len(values)}
                if method != BASELINE:
                    shared = sorted(s for s in by_seed if s in base and key in base[s])
                    diffs = [by_seed[s][key] - base[s][key] for s in shared]
                    wins = sum(1 for d in diffs if (d > 0) == higher and d != 0)
                    row[key]["vs_diff_pruning"] = {"seeds": shared, "diffs": diffs,
                                                   "mean_diff": float(np.mean(diffs)) if diffs else None,
                                                   "method_wins": wins, "sign_p": sign_test(wins, sum(d != 0 for d in diffs))}
            rows[method] = row
        out[f"{model} {macs:g} {budget:g}"] = {"model": model, "macs": macs, "budget": budget, "methods": rows}
    return out


def sign_test(wins: int, n: int) -> float | None:
    """Two-sided exact sign-test p-value of ``wins`` out of ``n`` non-zero paired differences (None for n = 0).
    With 3 seeds the smallest possible p is 0.25: three seeds can show a direction, not settle it."""
    from math import comb

    if n == 0:
        return None
    tail = sum(comb(n, k) for k in range(min(wins, n - wins) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def report(study: Study) -> dict:
    """criteria.json, criteria.md and criteria.png from the records."""
    records, dense = load_records(study)
    summary = summarise(records)
    cpu = sum(r["cpu_s"] for r in records)
    result = {"summary": summary, "dense": dense, "runs": len(records), "cpu_s_total": round(cpu, 1),
              "wall_s_total": round(sum(r["wall_s"] for r in records), 1),
              "host": records[0]["host"] if records else host()}
    study.results.mkdir(parents=True, exist_ok=True)
    _write_json(study.results / "criteria.json", result)
    (study.results / "criteria.md").write_text(markdown(result))
    if records:
        plot(summary, study.results / "criteria.png")
    return result


def _fmt(key, value):
    if key == "prompt_accuracy":
        return f"{value:.1%}"
    return f"{value:.3f}" if key == "ssim_vs_dense" else f"{value:.1f}"


def markdown(result: dict) -> str:
    lines = ["# Which criterion: the study's table (`python benchmarks/criteria.py report`)", "",
             f"{result['runs']} runs, {result['cpu_s_total'] / 3600:.2f} CPU-hours ({result['wall_s_total'] / 3600:.2f} h wall) "
             f"on {result['host']}. Mean ± std over seeds; \"vs diff-pruning\": the mean paired difference "
             "(method minus diff-pruning, same seed) and the seeds where the method is better (lower FID, higher "
             "otherwise), with the two-sided sign-test p (3 seeds: p >= 0.25 whatever happens).", ""]
    for dense in result["dense"].values():
        acc = f", prompt accuracy {dense['prompt_accuracy']:.1%}" if "prompt_accuracy" in dense else ""
        lines.append(f"- dense {dense['model']}: FID {dense['fid']:.1f}{acc}, {dense['classes_covered']} classes "
                     f"({dense['images']} images, {dense['sampler']}, guidance {dense['guidance']:g})")
    for cell in result["summary"].values():
        keys = [k for k in SCORES if any(k[0] in row for row in cell["methods"].values())]
        lines += ["", f"## {cell['model']}, {cell['macs']:.0%} of the MACs, fine-tuned {cell['budget']:.0%} of the "
                      "dense training steps", "",
                  "| method | seeds | " + " | ".join(label for _, label, _ in keys) + " | vs diff-pruning |",
                  "|---|---|" + "---|" * len(keys) + "---|"]
        for method, row in cell["methods"].items():
            cols = [f"{_fmt(k, row[k]['mean'])} ± {_fmt(k, row[k]['std'])}" for k, _, _ in keys]
            versus = []
            for k, label, _ in keys:
                v = row[k].get("vs_diff_pruning")
                if v and v["diffs"]:
                    p = f", p {v['sign_p']:.2f}" if v["sign_p"] is not None else ""
                    diff = f"{100 * v['mean_diff']:+.1f} pt" if k == "prompt_accuracy" else f"{v['mean_diff']:+.3g}"
                    versus.append(f"{label} {diff} ({v['method_wins']}/{len(v['diffs'])} better{p})")
            lines.append(f"| {method} | {len(row['seeds'])} | " + " | ".join(cols) + f" | {'; '.join(versus) or '-'} |")
        for method, row in cell["methods"].items():
            if "latency" in row:
                lat = row["latency"]
                lines.append(f"\n{method}: one UNet call on {lat['backend']} at batch {lat['batch']}, budget "
                             f"{lat['budget_ms']:.1f} ms; measured " + ", ".join(f"{m:.1f}" for m in lat["measured_ms"])
                             + " ms (per seed) against the MAC-level model's "
                             + ", ".join(f"{m:.1f}" for m in lat["mac_model_ms"]) + " ms, timed in the same `time` stage.")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    """FID per method (mean, seeds as dots) per cell; text cells also prompt accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(summary.values())
    fig, axes = plt.subplots(1, len(cells), figsize=(4.5 * len(cells), 3.6), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        methods = list(cell["methods"])
        means = [cell["methods"][m]["fid"]["mean"] for m in methods]
        stds = [cell["methods"][m]["fid"]["std"] for m in methods]
        ax.bar(range(len(methods)), means, yerr=stds, color="#8fb3d9", capsize=3)
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("FID (digits features), lower is better")
        ax.set_title(f"{cell['model']}, {cell['macs']:.0%} MACs, {cell['budget']:.0%} steps", fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------- command line


def _list(text, kind=str):
    return [kind(x) for x in text.split(",") if x]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["run", "time", "report"])
    parser.add_argument("--models", default="pixel", help="comma-separated: pixel, text (default pixel)")
    parser.add_argument("--methods", default="diff-pruning,magnitude,taylor,random,reinit",
                        help="criteria, each optionally +variant (" + ", ".join(VARIANTS) + ")")
    parser.add_argument("--seeds", default="0,1,2", help="default 0,1,2")
    parser.add_argument("--macs", default="0.5", help="MAC levels kept, e.g. 0.5,0.3 (default 0.5)")
    parser.add_argument("--budgets", default="0.1", help="fine-tuning steps as shares of the dense training, e.g. 0.1,0.3")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--work", type=Path, default=Study.work, help="models and cached dense images (default /tmp/criteria-work)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="records and report (default benchmarks/results/criteria)")
    parser.add_argument("--latency-table", type=Path, default=None,
                        help="the +latency variant's latency table (diffprune profile SRC --backend B --batch N --out T)")
    parser.add_argument("--latency-ms", type=float, default=None,
                        help="the +latency variant's budget: one UNet call in ms on the table's backend and batch")
    args = parser.parse_args(argv)
    study = Study(results=args.results, work=args.work, latency_table=args.latency_table, latency_ms=args.latency_ms)
    if args.stage == "run":
        runs = grid(_list(args.models), _list(args.methods), _list(args.seeds, int), _list(args.macs, float),
                    _list(args.budgets, float))
        for r in runs:
            parse_method(r.method)
        run_study(runs, study, args.threads)
    if args.stage == "time":
        time_latency_runs(study)
    result = report(study)
    print((study.results / "criteria.md").read_text() if result["runs"] else "criteria: no runs recorded yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
