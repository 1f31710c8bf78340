"""`diffprune bench`: dense vs pruned end-to-end latency on a deployment runtime, next to the
baseline a user would otherwise run (the dense model in a diffusers pipeline, PyTorch eager).

The runtime side (runners, sampler, interleaved timing) is torch-free and lives in
diffprune.runtime.bench; torch appears here only for the eager baseline.
"""

import json
import os
import platform
import statistics
import time
from pathlib import Path

from .._io import atomic_dir, quiet
from ..errors import DiffPruneError
from ..runtime.host import cpu_name


def torch_eager_case(src, batch: int, steps: int, device: str = "cpu", name: str = "dense (diffusers, PyTorch eager)"):
    """A bench case running ``DDIMPipeline`` on the dense model: noise -> uint8, as users run it."""
    import numpy as np
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler

    from ..sources.loader import load_source
    from ..sources.unet import require_unconditional
    from ..runtime.bench import Case

    unet, scheduler_config, _ = load_source(src, device=device)
    require_unconditional(unet, "The PyTorch eager baseline")
    allowed = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    pipe = DDIMPipeline(unet=unet.eval(), scheduler=DDIMScheduler.from_config(allowed))
    pipe.set_progress_bar_config(disable=True)
    spent = [0.0]
    marks = {}

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def before(module, args):
        sync()
        marks["t"] = time.perf_counter()

    def after(module, args, output):
        sync()
        spent[0] += time.perf_counter() - marks["t"]

    unet.register_forward_pre_hook(before)
    unet.register_forward_hook(after)
    counter = iter(range(10**9))

    def run():
        spent[0] = 0.0
        sync()
        started = time.perf_counter()
        with torch.no_grad():
            images = pipe(batch_size=batch, num_inference_steps=steps, output_type="np",
                          generator=torch.Generator(device="cpu").manual_seed(next(counter))).images
        (np.asarray(images) * 255).round().astype(np.uint8)
        return time.perf_counter() - started, spent[0]

    return Case(name, run, {"backend": f"torch-eager-{device}", "torch": torch.__version__})


def diffusers_pipeline(src, scheduler: str | None = None, device: str = "cpu", dtype: str = "fp32"):
    """``(pipeline, kind, scheduler_config)``: the diffusers pipeline a user would run for the pipeline source
    ``src`` (arch:sd15, a pipeline folder, ...): StableDiffusionPipeline, StableDiffusionXLPipeline or LDMPipeline
    over the same torch modules that ``diffprune export`` exports, with the runtime scheduler's diffusers twin."""
    import tempfile

    import diffusers
    from transformers import CLIPTokenizer

    from ..export import load_pipeline
    from ..runtime.formats import DIFFUSERS_SCHEDULERS, scheduler_name, scheduler_variant

    parts = load_pipeline(src)
    config = {k: v for k, v in dict(parts.scheduler).items()}
    name = scheduler or scheduler_name(config)
    base, variant_config = scheduler_variant(name, config)  # euler-karras: EulerDiscreteScheduler, use_karras_sigmas
    sched = getattr(diffusers, DIFFUSERS_SCHEDULERS[base]).from_config(variant_config)

    def tokenizer(i):
        if parts.tokenizer_dirs:
            return CLIPTokenizer.from_pretrained(str(parts.tokenizer_dirs[i]))
        with tempfile.TemporaryDirectory() as tmp:  # arch: sources use the runtime's CLIP BPE; transformers reads it
            return CLIPTokenizer.from_pretrained(str(parts.text.parts[i][0].save(tmp)))

    if parts.kind == "text-to-image":
        pipe = diffusers.StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text.parts[0][1], tokenizer=tokenizer(0),
                                                 unet=parts.unet, scheduler=sched, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False)
    elif parts.kind == "text-to-image-xl":
        pipe = diffusers.StableDiffusionXLPipeline(vae=parts.vae, text_encoder=parts.text.parts[0][1],
                                                   text_encoder_2=parts.text.parts[1][1], tokenizer=tokenizer(0),
                                                   tokenizer_2=tokenizer(1), unet=parts.unet, scheduler=sched)
    elif parts.kind == "text-to-image-pixel":  # diffusers has no such pipeline: StableDiffusionPipeline without its VAE
        from .pixel_text import PixelTextPipeline

        pipe = PixelTextPipeline(unet=parts.unet, text_encoder=parts.text.parts[0][1], tokenizer=tokenizer(0),
                                 scheduler=sched)
    elif parts.kind == "latent":
        pipe = diffusers.LDMPipeline(vqvae=parts.vq, unet=parts.unet, scheduler=sched)
    else:
        raise DiffPruneError(f"The PyTorch eager baseline for a {parts.kind} pipeline is not implemented; pass "
                             "--torch-baseline none.")
    pipe.set_progress_bar_config(disable=True)
    import torch

    return pipe.to(device, torch.float16 if dtype == "fp16" else torch.float32), parts.kind, name


def torch_pipeline_case(src, batch: int, steps: int, device: str = "cpu", prompt: str = "", guidance=None,
                        scheduler: str | None = None, name: str = "dense (diffusers, PyTorch eager)",
                        dtype: str = "fp32"):
    """A bench case running the diffusers pipeline of ``src``: prompt -> uint8, as users run it, with each
    component timed (forward hooks on the text encoders and UNet, a wrapper around the VAE's decode)."""
    import numpy as np
    import torch

    from ..export.pipeline import default_guidance
    from ..runtime.bench import Case
    from ..runtime.formats import TEXT_KINDS
    from ..sources.resolve import resolve

    pipe, kind, scheduler = diffusers_pipeline(src, scheduler, device, dtype)
    spent = {"text_encoder": 0.0, "unet": 0.0, "decoder": 0.0}
    marks = {}

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed_module(module, part):
        def before(mod, args, *kw):
            sync()
            marks[part] = time.perf_counter()

        def after(mod, args, output, *kw):
            sync()
            spent[part] += time.perf_counter() - marks[part]

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    for attr in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, attr, None) is not None:
            timed_module(getattr(pipe, attr), "text_encoder")
    timed_module(pipe.unet, "unet")
    decoder = getattr(pipe, "vae", None) or getattr(pipe, "vqvae", None)  # none in pixel space
    if decoder is not None:
        decode = decoder.decode

        def timed_decode(*args, **kwargs):
            sync()
            started = time.perf_counter()
            out = decode(*args, **kwargs)
            sync()
            spent["decoder"] += time.perf_counter() - started
            return out

        decoder.decode = timed_decode
    text = kind in TEXT_KINDS
    g = guidance if guidance is not None else default_guidance(resolve(src), kind)
    counter = iter(range(10**9))

    def run(settings=None):
        for part in spent:
            spent[part] = 0.0
        sync()
        started = time.perf_counter()
        generator = torch.Generator(device="cpu").manual_seed(next(counter))
        with torch.no_grad():
            if text:
                images = pipe([prompt] * batch, guidance_scale=g, num_inference_steps=steps, generator=generator,
                              output_type="np").images
            else:
                images = pipe(batch_size=batch, num_inference_steps=steps, generator=generator, output_type="np").images
        (np.asarray(images) * 255).round().astype(np.uint8)
        total = time.perf_counter() - started
        parts = {**spent, "sampler": total - sum(spent.values())}
        return total, spent["unet"], parts

    return Case(name, run, {"backend": f"torch-eager-{device}", "torch": torch.__version__, "kind": kind,
                            "guidance": g if text else None, "scheduler": scheduler, "dtype": dtype})


def torch_worker_case(src, batch: int, steps: int, device: str = "cpu", threads: int | None = None, info=None,
                      pipeline: bool = False, prompt: str | None = None, guidance: float | None = None,
                      scheduler: str | None = None):
    """``torch_eager_case`` (``torch_pipeline_case`` with ``pipeline``) in a process of its own
    (``python -m diffprune.evaluation.benchmark --serve-torch``)."""
    import sys

    from ..runtime.bench import WorkerCase

    argv = [sys.executable, "-m", "diffprune.evaluation.benchmark", "--serve-torch", str(src), "--batch", str(batch),
            "--steps", str(steps), "--device", device]
    if threads:
        argv += ["--threads", str(threads)]
    if pipeline:
        argv += ["--pipeline", "--prompt", prompt or ""]
        if guidance is not None:
            argv += ["--guidance", str(guidance)]
        if scheduler:
            argv += ["--scheduler", scheduler]
    return WorkerCase("dense (diffusers, PyTorch eager)", argv, info, env={})  # glibc defaults: see runtime.bench


def _baseline_source(metas: dict, first, torch_baseline):
    if torch_baseline == "auto":
        source = metas[str(first)].get("source", {})
        return source.get("source") if source.get("format") != "diffprune" or source.get("source") else None
    return None if torch_baseline in (None, "none") else torch_baseline


def default_threads() -> int:
    """The CPUs this process may run on: the thread count every process of a bench gets unless told."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _torch_missing() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is None for m in ("torch", "diffusers"))


def _describe(path) -> dict:
    """What the report needs of an artifact: its model.json (engine.json's model); for a pipeline export its
    UNet's, with the pipeline's kind and source."""
    from ..runtime.artifact import describe
    from ..runtime.formats import is_pipeline, read_pipeline_json

    if is_pipeline(path):
        spec = read_pipeline_json(path)
        _, _, meta = describe(Path(path) / spec["components"]["unet"])
        return {**meta, "pipeline": spec["kind"], "source": spec.get("source", {}), "guidance": spec.get("guidance")}
    kind, folder, meta = describe(path)
    return meta if kind != "tensorrt" else {**meta["model"], "batch": meta["profile"]["batch"]}


def run_bench(artifacts, backend="ort-cpu", batches=(1,), steps: int = 50, scheduler: str | None = "ddim",
              runs: int = 10, warmup: int = 1, threads: int | None = None, torch_baseline: str | None = "auto",
              memory: bool = True, progress: bool = True, prompt: str | None = None,
              guidance: float | None = None, cache_interval: int = 1) -> dict:
    """Measure every artifact on every backend (and the torch baseline) at every batch size.

    ``backend`` is one backend spec or a list of them (``["ort-cpu", "openvino"]``): each artifact is
    then served once per backend. Each (model, backend) is a process of its own and the runs alternate
    between them (see diffprune.runtime.bench); the same processes report peak memory per batch size.
    ``threads`` (default: the CPUs this process may use) goes to every process alike, the PyTorch
    baseline included, and is recorded. ``memory`` keeps the first batch size's summary in
    ``results["memory"]``. Speedups are given against the first model on the first backend, against
    the first model on the same backend, and against the PyTorch eager baseline.

    Pipeline exports (pipeline.json) are measured prompt -> uint8 image: ``batch`` images of ``prompt`` with
    guidance ``guidance`` (default the pipeline's), each run timing the text encoders, the UNet (all its
    steps), the decoder and the sampler; ``scheduler`` None means the pipeline's own. The baseline is then
    the diffusers pipeline (StableDiffusionPipeline, ...) of the same source, PyTorch eager.
    """
    from tqdm.auto import tqdm

    from ..runtime.bench import WORKER_ENV, measure, worker_case
    from ..runtime.runners import parse_backend, resolve_backend

    if len(artifacts) < 1:
        raise DiffPruneError("Give at least one artifact to measure (dense first, then pruned ones).")
    backends = [backend] if isinstance(backend, str) else list(backend)
    if not backends:
        raise DiffPruneError("Give at least one backend to measure on (e.g. ort-cpu, or ort-cpu,openvino).")
    threads = threads or default_threads()
    auto = None
    if "auto" in backends:  # measured once, on the first artifact (dense), and used for all: like against like
        from ..runtime.runners import choose_auto

        first = artifacts[0]
        auto = choose_auto(first, threads=threads)
        auto = {"artifact": str(first), **{k: auto[k] for k in ("chosen", "reason", "trials", "cached", "line")}}
    backends = list(dict.fromkeys(auto["chosen"] if spec == "auto" else resolve_backend(spec) for spec in backends))
    metas = {str(path): _describe(path) for path in artifacts}
    pipelines = {bool(m.get("pipeline")) for m in metas.values()}
    if len(pipelines) > 1:
        raise DiffPruneError("Give either pipeline exports (pipeline.json) or single-model exports, not both: a "
                             "pipeline is timed prompt -> image, a model noise -> image, and the two do not compare.")
    pipeline = pipelines.pop()
    conditional = [str(p) for p, m in metas.items() if not m.get("pipeline") and (m.get("conditioning") or {}).get(
        "kind", "none") != "none"]
    if conditional:
        # Before any process starts: the noise -> image loop feeds no conditioning, and an eager baseline of a lone
        # conditional UNet would time something no deployment runs.
        raise DiffPruneError(
            f"{', '.join(map(repr, conditional))} {'is a UNet export' if len(conditional) == 1 else 'are UNet exports'} "
            f"conditioned on {metas[conditional[0]]['conditioning']['kind']} (exported alone, e.g. with --unet-only); "
            "bench measures single unconditional models noise -> image, and conditional ones as the pipeline they "
            "belong to, prompt -> image. Export the whole pipeline (`diffprune export SRC OUT` without --unet-only; "
            "builtin:digits-text and pruned copies of it are pipelines) and bench that folder.")
    if not pipeline and (prompt is not None or guidance is not None):
        raise DiffPruneError("--prompt and --guidance apply to pipeline exports (pipeline.json); these artifacts are "
                             "single unconditional models.")
    if pipeline:
        from ..runtime.formats import read_pipeline_json, scheduler_name

        prompt = prompt if prompt is not None else "a photo of an astronaut riding a horse on mars"
        scheduler = scheduler or scheduler_name(read_pipeline_json(artifacts[0]).get("scheduler") or {})
    baseline_src = _baseline_source(metas, artifacts[0], torch_baseline)
    baseline_note = None
    if baseline_src and _torch_missing():
        if torch_baseline not in (None, "auto"):
            raise DiffPruneError(
                f"--torch-baseline {torch_baseline!r} needs torch and diffusers, which are not installed here. "
                "Install the toolchain (pip install 'diffprune[torch]') or pass --torch-baseline none."
            )
        baseline_src, baseline_note = None, "torch is not installed here: no PyTorch eager baseline"
    dense_meta = metas[str(artifacts[0])]
    device = "cpu"
    on_gpu = any(parse_backend(b)[0] in ("ort-cuda", "ort-trt", "trt") for b in backends)
    if baseline_src and on_gpu:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"

    def case_name(path, spec):
        return Path(path).name if len(backends) == 1 else f"{Path(path).name} on {spec}"

    results = {"batches": {}, "memory_by_batch": {}}
    for batch in batches:
        cases = []
        bar = tqdm(total=len(artifacts) * len(backends) + bool(baseline_src), desc=f"batch {batch}: loading",
                   disable=quiet(progress), leave=False)
        try:
            for spec in backends:
                for path in artifacts:
                    meta = metas[str(path)]
                    cases.append(worker_case(case_name(path, spec), path, spec, scheduler, steps, batch, threads,
                                             info={"artifact": str(path), "params": meta.get("params"),
                                                   "macs": meta.get("macs")},
                                             prompt=prompt if pipeline else None, guidance=guidance,
                                             cache_interval=cache_interval))
                    bar.update(1)
            if baseline_src:
                cases.append(torch_worker_case(baseline_src, batch, steps, device, threads if device == "cpu" else None,
                                               info={"params": dense_meta.get("params"), "macs": dense_meta.get("macs"),
                                                     "threads": threads if device == "cpu" else None},
                                               pipeline=pipeline, prompt=prompt, guidance=guidance, scheduler=scheduler))
                bar.update(1)
            bar.close()
            bar = tqdm(total=runs, desc=f"batch {batch}", disable=quiet(progress), leave=False)
            results["batches"][batch] = measure(cases, batch, runs=runs, warmup=warmup,
                                                progress=lambda k, n: bar.update(1))
        finally:
            bar.close()
            memory_rows = {case.name: case.close() for case in cases}
        results["memory_by_batch"][batch] = memory_rows
        for name, row in results["batches"][batch].items():
            if memory_rows.get(name):
                row["peak_rss_mib"] = memory_rows[name]["peak_mib"]
    if memory:
        results["memory"] = {k: v for k, v in results["memory_by_batch"][batches[0]].items() if v}
    else:
        del results["memory_by_batch"]
        for rows in results["batches"].values():
            for row in rows.values():
                row.pop("peak_rss_mib", None)
    first = case_name(artifacts[0], backends[0])
    for batch, rows in results["batches"].items():
        eager = next((r for r in rows.values() if str(r.get("backend", "")).startswith("torch-eager")), None)
        dense_by_backend = {rows[case_name(artifacts[0], spec)]["backend"]: rows[case_name(artifacts[0], spec)]
                            for spec in backends}
        for name, row in rows.items():
            row["speedup_vs_first"] = rows[first]["e2e_ms"]["median"] / row["e2e_ms"]["median"]
            # Runs of one round are seconds apart, so the ratio within a round cancels slow drift (another
            # tenant on a shared VM) that the ratio of medians keeps when it hits some rounds only.
            pairs = zip(rows[first].get("e2e_ms_runs", []), row.get("e2e_ms_runs", []))
            row["speedup_paired"] = statistics.median([b / r for b, r in pairs] or [row["speedup_vs_first"]])
            same = dense_by_backend.get(row.get("backend"))
            row["speedup_vs_dense_same_backend"] = same["e2e_ms"]["median"] / row["e2e_ms"]["median"] if same else None
            row["speedup_vs_eager"] = eager["e2e_ms"]["median"] / row["e2e_ms"]["median"] if eager else None
    results.update({
        "backend": backends[0] if len(backends) == 1 else ",".join(backends), "backends": backends,
        "steps": steps, "scheduler": scheduler, "cache_interval": cache_interval, "runs": runs, "warmup": warmup,
        "pipeline": pipeline, "prompt": prompt, "guidance": guidance,
        "threads": threads, "artifacts": [str(a) for a in artifacts], "torch_baseline": baseline_src,
        "torch_baseline_note": baseline_note, "auto": auto,
        "isolation": "one process per model and backend, runs alternating", "worker_env": WORKER_ENV,
        "machine": {"platform": platform.platform(), "processor": f"{cpu_name()} ({platform.machine()})", "cpus": os.cpu_count()},
        "versions": installed_versions(),
    })
    return results


def installed_versions() -> dict:
    """Versions of diffprune and of the inference and torch packages that are installed (torch-free)."""
    from importlib import metadata

    from .. import __version__

    found = {"diffprune": __version__}
    for dist in ("numpy", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "torch", "diffusers"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def markdown(results: dict, command: str = "") -> str:
    lines = [f"# End-to-end latency, {results['steps']} {results['scheduler']} steps, backend {results['backend']}\n"]
    if command:
        lines.append(f"Command: `{command}`  ")
    lines.append(f"Machine: {results['machine']['processor']}, {results['machine']['platform']}; "
                 f"{results['threads'] or 'default'} threads; {results['runs']} timed runs after {results['warmup']} warm-up; "
                 "each model in its own process, runs alternating between them"
                 + "".join(f", {k}={v}" for k, v in (results.get("worker_env") or {}).items())
                 + (" for the runtime" if results.get("worker_env") else "") + ".\n")
    if results.get("auto"):
        lines.append(f"Backend chosen by `--backend auto` on {Path(results['auto']['artifact']).name}: "
                     f"{results['auto']['reason']}.\n")
    multi = len(results.get("backends", [results["backend"]])) > 1
    lines += ["| batch | model | backend | params (M) | MACs (G) | e2e median ms | p90 ms | min ms | UNet ms | sampler share | "
              f"images/s | speedup | paired |{' vs dense, same backend |' if multi else ''} vs PyTorch eager |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if multi else "") + "---|"]
    for batch, rows in results["batches"].items():
        for name, r in rows.items():
            params = f"{r['params'] / 1e6:.2f}" if r.get("params") else "-"
            macs = f"{r['macs'] / 1e9:.2f}" if r.get("macs") else "-"
            backend = r["backend"] + (f" ({r['precision']})" if r.get("precision") else "")
            lines.append(f"| {batch} | {name} | {backend} | {params} | {macs} | {r['e2e_ms']['median']:.1f} | "
                         f"{r['e2e_ms']['p90']:.1f} | {r['e2e_ms']['min']:.1f} | {r['unet_ms']['median']:.1f} | "
                         f"{r['sampler_share']:.2%} | {r['images_per_s']:.2f} | {r['speedup_vs_first']:.2f}x | "
                         f"{r.get('speedup_paired', r['speedup_vs_first']):.2f}x |"
                         + (f" {_x(r.get('speedup_vs_dense_same_backend'))} |" if multi else "")
                         + f" {_x(r.get('speedup_vs_eager'))} |")
    lines += ["", "speedup: the first model's median over this one's; paired: the median over rounds of the same ratio "
              "within one round (its runs are seconds apart, so drift on a shared machine cancels)."]
    if any(r.get("parts_ms") for rows in results["batches"].values() for r in rows.values()):
        lines += ["", f"Time per component (medians over the runs, ms; prompt {results.get('prompt')!r}; the UNet over all "
                  f"{results['steps']} steps, on the doubled batch where guidance is on; sampler: tokenizing, noise, "
                  "scheduler steps, guidance, uint8):", "",
                  "| batch | model | guidance | text encoder | UNet | UNet per step | decoder | sampler | e2e |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for batch, rows in results["batches"].items():
            for name, r in rows.items():
                parts = r.get("parts_ms") or {}
                if not parts:
                    continue
                g = r.get("guidance")
                lines.append(f"| {batch} | {name} | {'-' if g is None else f'{g:g}'} | {parts['text_encoder']:.1f} | "
                             f"{parts['unet']:.1f} | {parts['unet'] / results['steps']:.1f} | {parts['decoder']:.1f} | "
                             f"{parts['sampler']:.1f} | {r['e2e_ms']['median']:.1f} |")
    if results.get("torch_baseline_note"):
        lines.append(f"PyTorch eager baseline: none ({results['torch_baseline_note']}).")
    by_batch = results.get("memory_by_batch") or ({next(iter(results["batches"])): results["memory"]}
                                                   if results.get("memory") else {})
    if by_batch:
        lines += ["", "Peak resident memory of each model's process (VmHWM); \"before model\" is the same process with "
                  "numpy and its backend (onnxruntime, or torch and diffusers) imported.", "",
                  "| batch | model | peak RSS MiB | before model MiB | model's share MiB | peak vs first |",
                  "|---|---|---|---|---|---|"]
        for batch, rows in by_batch.items():
            rows = {k: v for k, v in rows.items() if v}
            first = next(iter(rows.values()), None)
            for name, m in rows.items():
                lines.append(f"| {batch} | {name} | {m['peak_mib']:.0f} | {m['baseline_mib']:.0f} | {m['model_mib']:.0f} | "
                             f"{m['peak_mib'] / first['peak_mib']:.2f}x |")
    return "\n".join(lines) + "\n"


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


PLOT_SKIPPED = ("bench.png was not written: matplotlib is not installed in this Python (an inference host needs "
                "none); pip install matplotlib, or the 'dev' extra (pip install 'diffprune[dev]'), to get the plot")


def plot(results: dict, path) -> bool:
    """Latency against batch, one line per model. Returns False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    batches = sorted(results["batches"], key=int)
    names = list(results["batches"][batches[0]])
    for name in names:
        ys = [results["batches"][b][name]["e2e_ms"]["median"] / int(b) for b in batches]
        ax.plot([int(b) for b in batches], ys, marker="o", label=name)
    ax.set_xlabel("batch")
    ax.set_ylabel("ms per image (median, end-to-end)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title(f"{results['steps']} {results['scheduler']} steps on {results['backend']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(results: dict, out, command: str = "", overwrite: bool = False) -> Path:
    """bench.json, bench.md and, where matplotlib is installed, bench.png in the folder ``out``; see
    :func:`report_files` for what was written."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        plotted = plot(results, tmp / "bench.png")
        record = {**results, "command": command, "plot": "bench.png" if plotted else PLOT_SKIPPED}
        (tmp / "bench.json").write_text(json.dumps(record, indent=1, default=str))
        (tmp / "bench.md").write_text(markdown(results, command))
    return Path(out)


def report_files(out) -> tuple:
    """(the report files in ``out``, a note when the plot was skipped): only files that exist are named."""
    out = Path(out)
    files = [name for name in ("bench.json", "bench.md", "bench.png") if (out / name).is_file()]
    return files, None if "bench.png" in files else PLOT_SKIPPED


def _serve_torch(argv=None):
    import argparse

    from ..runtime.bench import serve

    parser = argparse.ArgumentParser(description="internal: serve timed PyTorch eager runs to `diffprune bench`")
    parser.add_argument("--serve-torch", required=True, metavar="SRC")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pipeline", action="store_true", help="SRC is a pipeline source: prompt -> image")
    parser.add_argument("--prompt", default="")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--scheduler", default=None)
    a = parser.parse_args(argv)

    import torch  # imported before serve() reads the baseline memory, like onnxruntime for the runtime workers
    import diffusers  # noqa: F401

    def make_case():
        if a.threads:
            torch.set_num_threads(a.threads)
        if a.pipeline:
            return torch_pipeline_case(a.serve_torch, a.batch, a.steps, a.device, a.prompt, a.guidance, a.scheduler)
        return torch_eager_case(a.serve_torch, a.batch, a.steps, a.device)

    serve(make_case)


if __name__ == "__main__":
    import sys

    try:
        _serve_torch()
    except DiffPruneError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
