"""One SD-1.5-architecture UNet call on this CPU (guidance batch 2, 77 text tokens): peak memory and time with and
without attention fused for ONNX Runtime's CPU provider (export/attention.py), and on OpenVINO (f32, and bf16 as
requested: it runs bf16 only on CPUs with bf16 units).

The UNet is arch:sd15 (859.5M params) with random weights: time and memory do not depend on weight values.

    python benchmarks/attention_cpu.py export WORK [--size 512] [--which fused|plain]  # WORK/unet-fused, unet-plain
    python benchmarks/attention_cpu.py validate WORK                       # both graphs vs torch; OpenVINO IR
    python benchmarks/attention_cpu.py measure WORK CONFIG... [--runs 2]   # each CONFIG in its own process
    python benchmarks/attention_cpu.py ops WORK                            # one attention node alone: memory
    python benchmarks/attention_cpu.py report WORK                         # -> benchmarks/results/attention/

Configurations (measure): ort-plain (the opset-18 export of --no-fuse-attention, the graph before this change:
MatMul + Softmax + MatMul), ort-attention (the fused export's portable model.onnx on ONNX Runtime: one ONNX
Attention node per attention), ort-fused (model.ort.onnx: com.microsoft.MultiHeadAttention, what ort-cpu runs
now), openvino-f32 and openvino-bf16 (the fused export's model.onnx, the IR cached in WORK/cache by a first
unmeasured load), torch-eager (the diffusers UNet itself). Each runs in a fresh process: load, 1 warm-up call,
``--runs`` timed calls; peak RSS is the process's VmHWM, "before" the same with the libraries imported. Outputs
are compared with ort-plain's (saved in WORK). Run export and each measure group alone on the machine.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from diffprune.runtime.host import cpu_name as cpu_model  # the one reader of the CPU's name

RESULTS = Path(__file__).resolve().parent / "results" / "attention"
CONFIGS = ("ort-plain", "ort-attention", "ort-fused", "openvino-f32", "openvino-bf16", "torch-eager")
TOKENS = 77


def cpu_flags() -> list:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma", "avx_vnni"))
    return []


def rss_mib(key="VmHWM") -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(size: int):
    from diffprune.sources.unet import build_unet

    unet = build_unet("sd15")
    if size != 512:
        unet.register_to_config(sample_size=size // 8)
    return unet


def _deferred_validation(path, torch_model, dtype, batches, *args, **kwargs):
    """Stands in for export/validate.py's validate during the export stage: structural checks only. At SD-1.5
    size tracing, saving and validating both graphs take over 5 minutes on this CPU, longer than one exclusive
    piece; the validate stage runs the same comparison with torch afterwards."""
    from diffprune.export.validate import structural_checks

    return {**structural_checks(Path(path)), "passed": None, "deferred": "benchmarks/attention_cpu.py validate",
            "max_abs_error": None, "cases": [{"batch": b} for b in batches]}


def export(work: Path, size: int, which: str):
    import diffprune.export.onnx as onnx_export
    from diffprune.export import export_unet
    from diffprune.sources.architectures import SD_SCHEDULER

    onnx_export.validate = _deferred_validation
    unet = build(size)
    for name, fuse in (("unet-fused", True), ("unet-plain", False)):
        if which not in ("both", name.split("-")[1]) or (work / name).is_dir():
            continue
        t = time.perf_counter()
        result = export_unet(unet, work / name, SD_SCHEDULER, {"source": "arch:sd15", "weights": "random (seed 0)"},
                             batch=(1, 2, 2), validate_batches=[2], fuse_attention=fuse)
        meta = result.model_json
        print(json.dumps({"export": name, "seconds": round(time.perf_counter() - t, 1), "opset": meta["opset"],
                          "ort_cpu": {k: v for k, v in (meta["ort_cpu"] or {}).items() if k != "validation"}}),
              flush=True)


def validate(work: Path):
    """Each graph against the diffusers UNet at batch 2 (export/validate.py's check, fp32 max-abs <= 1e-4), and the
    OpenVINO IR converted once (cached in WORK/cache, so that the measured loads read it)."""
    from diffprune.export.onnx import _wrapper, unet_feeds
    from diffprune.export.validate import validate as check
    from diffprune.sources.conditioning import conditioning

    meta = json.loads((work / "unet-fused" / "model.json").read_text())
    unet = build(meta["sample_size"][0] * 8)
    wrapper, cond = _wrapper(unet.float().eval()), conditioning(unet)
    done = work / "validation.json"
    reports = json.loads(done.read_text()) if done.is_file() else {}  # a graph per piece, if time runs out
    for name, graph in (("unet-plain", "model.onnx"), ("unet-fused", "model.onnx"), ("unet-fused", "model.ort.onnx")):
        if (work / name / graph).is_file() and f"{name}/{graph}" not in reports:
            t = time.perf_counter()
            r = check(work / name / graph, wrapper, "fp32", [2], conditioning=unet_feeds(cond, meta["sample_size"]))
            reports[f"{name}/{graph}"] = {"max_abs_error": r["max_abs_error"], "passed": r["passed"],
                                          "tolerance": r["tolerance"], "seconds": round(time.perf_counter() - t, 1)}
            print(json.dumps({f"{name}/{graph}": reports[f"{name}/{graph}"]}), flush=True)
            done.write_text(json.dumps(reports, indent=1))
    os.environ["DIFFPRUNE_CACHE"] = str(work / "cache")
    from diffprune.runtime import open_runner

    t = time.perf_counter()
    with open_runner(work / "unet-fused", "openvino@f32"):
        pass
    print(json.dumps({"openvino_ir_conversion_s": round(time.perf_counter() - t, 1)}), flush=True)


def feeds(size: int):
    import numpy as np

    rng = np.random.default_rng(0)
    s = size // 8
    return {"sample": rng.standard_normal((2, 4, s, s)).astype(np.float32),
            "timestep": np.array([999.0, 999.0], dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((2, TOKENS, 768)).astype(np.float32)}


def worker(work: Path, config: str, runs: int, threads: int):
    """One configuration in this process; prints one JSON line."""
    import numpy as np

    os.environ["DIFFPRUNE_CACHE"] = str(work / "cache")
    meta = json.loads((work / "unet-fused" / "model.json").read_text())
    size = meta["sample_size"][0] * 8
    x = feeds(size)
    info = {}
    if config == "torch-eager":
        import torch

        torch.set_num_threads(threads)
        before = rss_mib("VmRSS")
        t = time.perf_counter()
        unet = build(size)
        load_s = time.perf_counter() - t

        def call():
            with torch.no_grad():
                return unet(torch.from_numpy(x["sample"]), torch.from_numpy(x["timestep"]),
                            encoder_hidden_states=torch.from_numpy(x["encoder_hidden_states"])).sample.numpy()
        info["torch"] = torch.__version__
    else:
        from diffprune.runtime import open_runner
        from diffprune.runtime.runners.onnxruntime import OnnxRuntimeRunner

        before = rss_mib("VmRSS")
        t = time.perf_counter()
        if config == "ort-plain":
            runner = open_runner(work / "unet-plain", "ort-cpu", threads=threads)
        elif config == "ort-attention":  # the fused export's portable graph, as ort-cpu read it before this change
            runner = OnnxRuntimeRunner(work / "unet-fused", {**meta, "ort_cpu": None}, device="cpu", threads=threads)
        elif config == "ort-fused":
            runner = open_runner(work / "unet-fused", "ort-cpu", threads=threads)
        else:
            runner = open_runner(work / "unet-fused", f"openvino@{config.split('-')[1]}", threads=threads)
        runner.open()
        load_s = time.perf_counter() - t
        info = {k: v for k, v in getattr(runner, "info", {}).items() if isinstance(v, (str, int, float))}
        if hasattr(runner, "graph_path"):
            info["graph"] = runner.graph_path.name

        def call():
            return runner.run_feeds(x)["out_sample"]
    out = call()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t)
    ref_path = work / "out_ort-plain.npy"
    if config == "ort-plain":
        np.save(ref_path, out)
    diff = float(np.abs(out - np.load(ref_path)).max()) if ref_path.is_file() else None
    print(json.dumps({"config": config, "size": size, "batch": 2, "threads": threads, "runs": runs,
                      "load_s": round(load_s, 2), "call_s": [round(s, 3) for s in times],
                      "median_s": round(statistics.median(times), 3), "rss_before_mib": round(before),
                      "peak_mib": round(rss_mib()), "max_abs_vs_ort_plain": diff, **info}), flush=True)


def op_worker(op: str):
    """One attention of SD-1.5's first block alone (B 2, 8 heads, 4096 tokens, head size 40) as a one-node graph:
    ONNX ``Attention`` (opset 23) or ``com.microsoft.MultiHeadAttention``; prints the peak RSS it adds (memory only,
    no timing: it runs anywhere)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    b, heads, tokens, size = 2, 8, 4096, 40
    shape = [b, tokens, heads * size]  # (B, S, N*H): both ops take 3-D inputs with the number of heads
    if op == "Attention":
        node = helper.make_node("Attention", ["q", "k", "v"], ["o"], q_num_heads=heads, kv_num_heads=heads)
        opsets = [helper.make_opsetid("", 23)]
    else:
        node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft", num_heads=heads)
        opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    graph = helper.make_graph([node], "attention", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "qkv"],
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, shape)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=opsets).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = {n: rng.standard_normal(shape).astype(np.float32) for n in "qkv"}
    before = rss_mib()
    session.run(None, x)
    print(json.dumps({"op": op, "shape_bsd": shape, "heads": heads, "scores_mib": b * heads * tokens * tokens * 4 / 2**20,
                      "peak_before_run_mib": round(before), "peak_mib": round(rss_mib()),
                      "added_mib": round(rss_mib() - before), "onnx": onnx.__version__}), flush=True)


def ops(work: Path):
    with open(work / "ops.jsonl", "w") as log:
        for op in ("Attention", "MultiHeadAttention"):
            out = subprocess.run([sys.executable, __file__, "_op", str(work), op], capture_output=True, text=True,
                                 check=True)
            line = out.stdout.strip().splitlines()[-1]
            print(line, flush=True)
            log.write(line + "\n")


def measure(work: Path, configs, runs: int, threads: int):
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": str(threads)}
    with open(work / "measure.jsonl", "a") as log:
        for config in configs:
            print("+", config, flush=True)
            out = subprocess.run([sys.executable, __file__, "_worker", str(work), config, "--runs", str(runs),
                                  "--threads", str(threads)], env=env, capture_output=True, text=True)
            line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
            if out.returncode or not line.startswith("{"):
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{config} failed (exit {out.returncode})")
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()  # kept if a later configuration runs past the piece's time limit


def report(work: Path, out_dir: Path):
    rows = {}
    for line in (work / "measure.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["config"]] = row  # the latest run of each configuration
    exports = {n: json.loads((work / n / "model.json").read_text()) for n in ("unet-fused", "unet-plain")
               if (work / n / "model.json").is_file()}
    host = {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "platform": platform.platform()}
    import onnxruntime
    import openvino

    result = {"host": host, "versions": {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__},
              "commands": COMMANDS, "rows": [rows[c] for c in CONFIGS if c in rows],
              "exports": {n: {"opset": m["opset"], "ort_cpu": {k: v for k, v in (m.get("ort_cpu") or {}).items()
                                                               if k != "validation"},
                              "export_seconds_without_validation": m["export_seconds"]} for n, m in exports.items()},
              "validation_vs_torch_batch2": json.loads((work / "validation.json").read_text())
              if (work / "validation.json").is_file() else None,
              "ops": [json.loads(x) for x in (work / "ops.jsonl").read_text().splitlines()]
              if (work / "ops.jsonl").is_file() else []}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "attention.json").write_text(json.dumps(result, indent=1))
    base = rows.get("ort-plain")
    lines = [f"# One SD-1.5-architecture UNet call, batch 2 (guidance), {result['rows'][0]['size']}x{result['rows'][0]['size']} "
             "image (latents /8), this CPU", "",
             f"Host: {host['cpu']}, {host['cores']} cores, flags {' '.join(host['cpu_flags']) or '-'} (no avx512_bf16 / "
             f"amx: no bf16 units); {host['platform']}; onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}.",
             "Each configuration in its own process: load, 1 warm-up call, then timed calls; peak = VmHWM of the process.", "",
             "| configuration | graph | load s | call median s | calls s | peak RSS MiB | vs ort-plain peak | speed vs ort-plain | max-abs vs ort-plain |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in CONFIGS:
        r = rows.get(c)
        if not r:
            continue
        graph = r.get("graph") or ("model.onnx (IR)" if c.startswith("openvino") else "torch")
        if c.startswith("openvino"):
            graph += f", ran {r.get('precision', '?')}"
        peak = f"{r['peak_mib'] / base['peak_mib']:.2f}x" if base else "-"
        speed = f"{base['median_s'] / r['median_s']:.2f}x" if base else "-"
        diff = "-" if r["max_abs_vs_ort_plain"] is None else f"{r['max_abs_vs_ort_plain']:.1e}"
        lines.append(f"| {c} | {graph} | {r['load_s']} | {r['median_s']} | {', '.join(map(str, r['call_s']))} | "
                     f"{r['peak_mib']} | {peak} | {speed} | {diff} |")
    lines += ["", "Reading it: peak is the whole process (weights 3.3 GiB included). openvino-bf16 asks for bf16; "
              "without bf16 units (no avx512_bf16 / amx) the CPU plugin runs f32 (its 'ran' column), so the two OpenVINO "
              "rows are the same computation and their time difference is run-to-run spread (each has 2 calls). "
              "Absolute times are those of this shared VM when measured; compare rows, measured back to back.",
              "", "Exports (validation against torch deferred to the validate stage, see below):", ""]
    for n, m in result["exports"].items():
        lines.append(f"- {n}: opset {m['opset']}"
                     + (f"; model.ort.onnx: {m['ort_cpu'].get('fused')} attentions fused, {m['ort_cpu'].get('left')} left, "
                        f"{m['ort_cpu'].get('group_norms_as_instance_norm')} group norms as instance norm" if m["ort_cpu"] else "")
                     + f"; export without validation {m['export_seconds_without_validation']} s")
    lines += ["", "Each graph vs the diffusers UNet in torch, batch 2, ONNX Runtime CPU (validate stage):", ""]
    for g, r in (result["validation_vs_torch_batch2"] or {}).items():
        lines.append(f"- {g}: max-abs {r['max_abs_error']:.1e} (allowed {r['tolerance']}, passed {r['passed']})")
    if result["ops"]:
        lines += ["", "One SD-1.5 self-attention alone (B 2, 8 heads, 4096 tokens, head size 40; its scores are "
                  f"{result['ops'][0]['scores_mib']:.0f} MiB of float32), a one-node graph on ONNX Runtime CPU "
                  "(memory only):", ""]
        lines += [f"- {o['op']}: peak RSS +{o['added_mib']} MiB over the loaded session" for o in result["ops"]]
    lines += ["", "Commands:", "", *[f"    {c}" for c in COMMANDS], ""]
    (out_dir / "attention.md").write_text("\n".join(lines))
    print("\n".join(lines))


COMMANDS = [
    "python benchmarks/attention_cpu.py export WORK --which fused",
    "python benchmarks/attention_cpu.py export WORK --which plain",
    "python benchmarks/attention_cpu.py validate WORK",
    "python benchmarks/attention_cpu.py measure WORK ort-plain ort-attention ort-fused",
    "python benchmarks/attention_cpu.py measure WORK openvino-f32 openvino-bf16",
    "python benchmarks/attention_cpu.py measure WORK torch-eager",
    "python benchmarks/attention_cpu.py ops WORK",
    "python benchmarks/attention_cpu.py report WORK",
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=["export", "validate", "measure", "ops", "report", "_worker", "_op"])
    p.add_argument("work", type=Path, help="folder for the exports (about 7 GB at 512x512)")
    p.add_argument("configs", nargs="*", help=f"measure: any of {', '.join(CONFIGS)}")
    p.add_argument("--size", type=int, default=512, help="image size (latents size/8; default 512)")
    p.add_argument("--which", choices=["both", "fused", "plain"], default="both", help="export: which graph")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.stage == "export":
        export(a.work, a.size, a.which)
    elif a.stage == "validate":
        validate(a.work)
    elif a.stage == "measure":
        bad = [c for c in a.configs if c not in CONFIGS]
        if bad or not a.configs:
            p.error(f"configurations {bad or 'none'}; allowed: {', '.join(CONFIGS)}")
        measure(a.work, a.configs, a.runs, a.threads)
    elif a.stage == "_worker":
        worker(a.work, a.configs[0], a.runs, a.threads)
    elif a.stage == "ops":
        ops(a.work)
    elif a.stage == "_op":
        op_worker(a.configs[0])
    else:
        report(a.work, a.out)


if __name__ == "__main__":
    main()
