"""``diffprune build``: a shell over :func:`diffprune.export.build_engine` (TensorRT), and
:func:`diffprune.export.build_pipeline` for a pipeline export (one engine per component)."""

from ._common import count, missing_note, require

NAME = "build"
# torch names the GPU the engine is built for; onnx checks the export. tensorrt itself is checked
# by build_engine, after the export, with its own advice.
NEEDS = ("torch", "onnx")


def _note() -> str:
    return missing_note(*NEEDS) or missing_note("tensorrt", reason="the tensorrt package is not installed")


def register(subparsers):
    note = _note()
    p = subparsers.add_parser(
        NAME, help="build a TensorRT engine from an ONNX export" + note,
        description="Build OUT/model.plan + engine.json from an ONNX export folder with the TensorRT Python API "
                    "(strongly typed, one optimization profile over the export's batch range, timing cache reused). "
                    "A pipeline export (pipeline.json) gets one engine per component in OUT/<component>/, the UNet's "
                    "and text encoders' profiles over the doubled guidance batch. "
                    "Needs an NVIDIA GPU and the tensorrt package (pip install 'diffprune[gpu]')." + note,
    )
    p.add_argument("onnx_dir", metavar="ONNX_DIR", help="folder written by `diffprune export`")
    p.add_argument("--out", help="engine folder (default: ONNX_DIR-trt)")
    p.add_argument("--workspace-gb", type=float, default=4.0, help="builder workspace limit in GiB (default 4)")
    p.add_argument("--opt-level", type=int, default=3, help="builder optimization level 0..5 (default 3)")
    p.add_argument("--timing-cache", help="timing cache file, loaded if present and saved after the build")
    p.add_argument("--hardware-compatible", action="store_true", help="engine runs on any Ampere+ GPU (slower)")
    p.add_argument("--version-compatible", action="store_true", help="engine loads in newer TensorRT versions")
    p.add_argument("--batch", type=count, nargs=3, metavar=("MIN", "OPT", "MAX"),
                   help="images per call for the profiles (default: the export's range; doubled for guided components)")
    p.add_argument("--print-profiles", action="store_true",
                   help="print the optimization profiles (input shapes) and exit; needs no TensorRT")
    p.add_argument("--triton", metavar="REPO", help="also add the engine to a Triton model repository")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from diffprune.runtime.formats import is_pipeline

    require(*NEEDS)
    from diffprune.export import build_engine, build_pipeline, engine_profiles, write_repository

    if args.print_profiles:
        for component, shapes in engine_profiles(args.onnx_dir, args.batch).items():
            for name, (lo, opt, hi) in shapes.items():
                print(f"{component}.{name}: min {list(lo)} opt {list(opt)} max {list(hi)}")
        return 0
    pipeline = is_pipeline(args.onnx_dir)
    options = dict(workspace_gb=args.workspace_gb, optimization_level=args.opt_level, timing_cache=args.timing_cache,
                   hardware_compatible=args.hardware_compatible, version_compatible=args.version_compatible)
    if pipeline:
        out = build_pipeline(args.onnx_dir, args.out, batch=args.batch, overwrite=args.overwrite, **options)
        print(f"built one engine per component in {out}/ (pipeline.json lists them)")
        if args.triton:
            from diffprune.export import write_pipeline_repository

            write_pipeline_repository(args.triton, out, overwrite=args.overwrite)
            print(f"Triton model repository: {args.triton}")
        return 0
    out = build_engine(args.onnx_dir, args.out, batch=args.batch, overwrite=args.overwrite, **options)
    print(f"built {out}/model.plan")
    if args.triton:
        write_repository(args.triton, out, overwrite=args.overwrite)
        print(f"Triton model repository: {args.triton}")
    return 0
