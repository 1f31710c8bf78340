"""Every GPU check in one call (for the lent H100/H200 machine; one `run` of about 5 minutes).

    python benchmarks/gpu_check.py --out "$OUT"      # writes $OUT/gpu_results.json

1. Pruning on CUDA: diff-pruning importance (a few timesteps) on the CIFAR-10 DDPM architecture.
2. Dense vs pruned (ratio 0.3, the paper's 3.4G MACs), batch 1 and 64, 50 DDIM steps end to end:
   PyTorch eager, PyTorch eager + CUDA graph of the UNet forward, and ONNX Runtime (CPU build there).
3. Fine-tuning steps/s on CUDA with bf16 autocast.
4. Export and validate dense and pruned on that machine; ONNX Runtime (CPU) sampling there.
5. Text-conditioned Diff-Pruning at real size on CUDA: the SD-1.5 UNet with CLIP ViT-L (random weights),
   calibration latents drawn with 4 prompts (classifier-free guidance), a few timesteps: seconds per
   timestep, peak GPU memory, params and MACs (77 tokens) before and after --ratio 0.3.
6. Stable Diffusion prompt -> image (benchmarks/sd15_cpu.py's measurement on the GPU): the SD-1.5 architecture
   (random weights) at 512x512 with classifier-free guidance (7.5), dense vs its UNet pruned to half the
   MACs (magnitude criterion: latency depends on widths only), diffusers' StableDiffusionPipeline in PyTorch
   eager, fp32 and fp16, each component timed (text encoder, UNet over the steps, VAE decode, the rest);
   the torch-free runtime too where ONNX Runtime has CUDA (the lent machines have its CPU build: skipped there).
Timing: warm-up, torch.cuda.synchronize around every timed region, median and p90 of --runs.
TensorRT is not installed on the lent machines; its tests (tests/test_tensorrt.py) run where it is.

    python benchmarks/gpu_check.py --smoke --out /tmp/smoke   # every step on a tiny model, CPU or GPU

``--smoke`` runs the same code on the "tiny-attn" architecture (step 6: "tiny-sd", exported and sampled by the
runtime on ONNX Runtime's CPU provider) with two steps and a few images, on the
CPU when there is no GPU (CUDA graphs are then skipped), so a mistake in this script shows up in the
test suite (tests/test_gpu_check.py) instead of in the one call on the lent machine.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import diffprune
from diffprune.sources.architectures import DEFAULT_SCHEDULER
from diffprune.sources.unet import build_unet, versions


def timed(fn, runs, warmup=2, sync=True):
    sync = sync and torch.cuda.is_available()
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        if sync:
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        out.append(time.perf_counter() - started)
    return {"median_ms": statistics.median(out) * 1e3, "p90_ms": float(np.percentile(out, 90)) * 1e3,
            "min_ms": min(out) * 1e3}


def ddim_loop(forward, scheduler, x):
    for t in scheduler.timesteps:  # t: a 0-d tensor on the CPU
        x = scheduler.step(forward(x, t), t, x).prev_sample
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def graphed_forward(unet, shape):
    """Capture one UNet forward for a fixed input shape (B, C, H, W) as a CUDA graph; replay per step."""
    batch = shape[0]
    static_x = torch.randn(*shape, device="cuda")
    static_t = torch.full((batch,), 500, device="cuda", dtype=torch.long)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            unet(static_x, static_t)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_out = unet(static_x, static_t).sample

    def forward(x, t):
        static_x.copy_(x)
        static_t.fill_(int(t))
        graph.replay()
        return static_out.clone()

    return forward


def conditional_prune(device: str, smoke: bool) -> dict:
    """Step 5: Diff-Pruning a text-conditioned UNet with real prompts through its text encoder."""
    from diffprune.sources.text import build_text_encoder

    arch, images, timesteps = ("tiny-sd", 2, 2) if smoke else ("sd15", 4, 10)
    unet = build_unet(arch).to(device)
    prompts = ["a photograph of an astronaut riding a horse", "a watercolour of a lighthouse at dawn",
               "a close-up of a red fox in the snow", "an isometric drawing of a small city"]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    _, report = diffprune.prune(unet, method="diff-pruning", ratio=0.3, data=f"generate:{images}", prompts=prompts,
                                text_encoder=build_text_encoder(arch), num_images=images, micro_batch=images,
                                max_timesteps=timesteps, progress=False)
    row = {"arch": arch, "device": device, "seconds": time.perf_counter() - started,
           "timesteps": len(report.timesteps_used),
           "importance_s_per_timestep": report.importance_seconds / len(report.timesteps_used),
           "params": [report.params_before, report.params_after], "macs": [report.macs_before, report.macs_after],
           "no_gradient_groups": len(report.no_gradient_groups),
           "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}
    print("conditional prune", {k: v for k, v in row.items() if k != "params"}, flush=True)
    del unet
    return row


def sd_pipeline(device: str, smoke: bool, steps: int, runs: int, tmp: Path) -> dict:
    """Step 6: prompt -> uint8 image with guidance, dense vs pruned (target 0.5 MACs), per component."""
    from diffprune.evaluation.benchmark import torch_pipeline_case

    arch = "tiny-sd" if smoke else "sd15"
    prompt = "a photo of an astronaut riding a horse on mars"
    started = time.perf_counter()
    pruned, report = diffprune.prune(build_unet(arch).to(device), method="magnitude", target_macs=0.5, progress=False)
    diffprune.save(pruned.cpu(), tmp / "pruned-pipeline", pipeline=f"arch:{arch}")  # the UNet in unet/, arch's other parts
    del pruned
    row = {"arch": arch, "prompt": prompt, "guidance": 7.5, "steps": steps, "batch": 1,
           "macs": [report.macs_before, report.macs_after], "params": [report.params_before, report.params_after],
           "prune_s": time.perf_counter() - started, "eager": {}}
    dtypes = ("fp32", "fp16") if device == "cuda" else ("fp32",)
    for dtype in dtypes:
        for name, src in (("dense", f"arch:{arch}"), ("pruned", str(tmp / "pruned-pipeline"))):
            case = torch_pipeline_case(src, 1, steps, device, prompt, 7.5, dtype=dtype)
            results = [case.run() for _ in range(1 + runs)][1:]  # the first run warms up (cuDNN autotuning)
            row["eager"][f"{name}-{dtype}"] = {
                "e2e_ms": statistics.median(r[0] for r in results) * 1e3,
                "parts_ms": {k: statistics.median(r[2][k] for r in results) * 1e3 for k in results[0][2]}}
            if device == "cuda":
                row["eager"][f"{name}-{dtype}"]["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
                torch.cuda.reset_peak_memory_stats()
            del case
            print("sd pipeline", name, dtype, round(row["eager"][f"{name}-{dtype}"]["e2e_ms"], 1), flush=True)
        row.setdefault("speedup_eager", {})[dtype] = (row["eager"][f"dense-{dtype}"]["e2e_ms"]
                                                      / row["eager"][f"pruned-{dtype}"]["e2e_ms"])
    # The torch-free runtime: where ONNX Runtime has CUDA, or (--smoke) on its CPU provider, so the path is tested.
    import onnxruntime

    backend = "ort-cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else ("ort-cpu" if smoke else None)
    if backend is None:
        row["runtime"] = "skipped: this ONNX Runtime has no CUDA provider (install onnxruntime-gpu to measure it)"
        return row
    from diffprune.export import export_pipeline
    from diffprune.runtime.bench import pipeline_case
    from diffprune.runtime.pipeline import Pipeline

    row["runtime"] = {"backend": backend}
    for name, src in (("dense", f"arch:{arch}"), ("pruned", str(tmp / "pruned-pipeline"))):
        out = tmp / f"{name}-onnx"
        export_pipeline(src, out, batch=(1, 1, 1), progress=None)
        with Pipeline(out, backend) as pipe:
            case = pipeline_case(name, pipe, prompt, steps, 1, guidance=7.5)
            results = [case.run() for _ in range(1 + runs)][1:]
        row["runtime"][name] = {"e2e_ms": statistics.median(r[0] for r in results) * 1e3,
                                "parts_ms": {k: statistics.median(r[2][k] for r in results) * 1e3 for k in results[0][2]}}
    row["runtime"]["speedup"] = row["runtime"]["dense"]["e2e_ms"] / row["runtime"]["pruned"]["e2e_ms"]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 steps, 1 run: checks the script itself")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        raise SystemExit("gpu_check.py needs a CUDA GPU (use --smoke to check the script on a CPU).")
    device = "cuda" if cuda else "cpu"
    # Sizes: the paper's CIFAR-10 setting on the GPU; seconds-long on a CPU with --smoke.
    arch, batches, images, timesteps, ft_steps, ft_batch = (
        ("tiny-attn", (1, 2), 4, 2, 2, 4) if args.smoke else ("ddpm-cifar10-32", (1, 64), 64, 20, 60, 128))
    if args.smoke:
        args.runs, args.steps = 1, 2
    torch.backends.cudnn.benchmark = True
    result = {"gpu": torch.cuda.get_device_name(0) if cuda else None,
              "capability": torch.cuda.get_device_capability(0) if cuda else None, "smoke": args.smoke, "arch": arch,
              "versions": versions(), "platform": platform.platform(), "steps": args.steps, "runs": args.runs}
    dense = build_unet(arch).to(device)
    c, size = dense.config.in_channels, dense.config.sample_size

    started = time.perf_counter()
    pruned, report = diffprune.prune(dense, method="diff-pruning", ratio=0.3, data="builtin:digits", num_images=images,
                                     micro_batch=images, max_timesteps=timesteps, progress=False)
    result["prune"] = {"device": device, "seconds": time.perf_counter() - started,
                       "timesteps": len(report.timesteps_used),
                       "importance_s_per_timestep": report.importance_seconds / len(report.timesteps_used),
                       "params": [report.params_before, report.params_after],
                       "macs": [report.macs_before, report.macs_after]}
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config({k: v for k, v in DEFAULT_SCHEDULER.items() if not k.startswith("_")})
    scheduler.set_timesteps(args.steps)
    kinds = ("unet-eager", "e2e-eager") + (("e2e-cudagraph",) if cuda else ())
    rows = {}
    for batch in batches:
        for name, model in (("dense", dense), ("pruned", pruned)):
            model = model.eval()
            x = torch.randn(batch, c, size, size, device=device)
            t = torch.full((batch,), 500, device=device, dtype=torch.long)
            with torch.no_grad():
                rows[f"{name}-b{batch}-unet-eager"] = timed(lambda: model(x, t), args.runs * 5)
                rows[f"{name}-b{batch}-e2e-eager"] = timed(
                    lambda: ddim_loop(lambda a, s: model(a, s.to(device).expand(batch)).sample, scheduler, x.clone()),
                    args.runs)
                if cuda:
                    forward = graphed_forward(model, tuple(x.shape))
                    rows[f"{name}-b{batch}-e2e-cudagraph"] = timed(lambda: ddim_loop(forward, scheduler, x.clone()),
                                                                   args.runs)
            print(name, batch, {k: round(v["median_ms"], 2) for k, v in rows.items() if k.startswith(f"{name}-b{batch}")},
                  flush=True)
    result["torch"] = rows
    for batch in batches:
        for kind in kinds:
            d, p = rows[f"dense-b{batch}-{kind}"]["median_ms"], rows[f"pruned-b{batch}-{kind}"]["median_ms"]
            result.setdefault("speedup", {})[f"b{batch}-{kind}"] = d / p

    with tempfile.TemporaryDirectory() as tmp:
        # Fine-tuning steps/s of the pruned model (bf16 autocast on the GPU).
        from diffprune.training.finetune import finetune

        folder = diffprune.save(pruned.cpu(), Path(tmp) / "pruned")
        ft = finetune(folder, Path(tmp) / "ft", data="builtin:digits", steps=ft_steps, batch_size=ft_batch,
                      warmup_steps=min(10, ft_steps), mixed_precision="bf16" if cuda else "no", checkpoint_every=0,
                      progress=False, device=device)
        result["finetune"] = {"device": device, "steps_per_s": ft.steps_per_s, "final_loss": ft.final_loss,
                              "batch": ft_batch, "steps": ft_steps, "note": "includes warm-up steps"}
        pruned = pruned.to(device)

    with tempfile.TemporaryDirectory() as tmp:
        from diffprune.export import to_onnx
        from diffprune.runtime import Sampler, make_scheduler, open_runner

        ort_rows = {}
        for name, model in (("dense", dense), ("pruned", pruned)):
            export = to_onnx(model.cpu(), Path(tmp) / name, batch=(1, 8, 64))
            ort_rows[name] = {"validation_max_abs": export.model_json["validation"]["max_abs_error"]}
            with open_runner(export.out_dir, "ort-cpu") as runner:
                sampler = Sampler(runner, make_scheduler("ddim", runner.scheduler_config))
                ort_rows[name]["e2e_b1_ms"] = timed(lambda: sampler.generate(1, steps=args.steps), 3, warmup=1, sync=False)
        result["onnxruntime_cpu"] = ort_rows
    result["conditional_prune"] = conditional_prune(device, args.smoke)
    with tempfile.TemporaryDirectory() as tmp:
        result["sd_pipeline"] = sd_pipeline(device, args.smoke, 2 if args.smoke else 25, args.runs if args.smoke else 3,
                                            Path(tmp))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_results.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result.get("speedup"), indent=1))


if __name__ == "__main__":
    main()
