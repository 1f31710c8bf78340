"""``diffprune export``: a shell over :func:`diffprune.export.export_pipeline` (pipelines) and
:func:`diffprune.export.to_onnx` (a UNet alone)."""

import argparse
import textwrap

from ._common import TOOLCHAIN, count, missing_note, require

NAME = "export"
NEEDS = TOOLCHAIN + ("onnx",)


def register(subparsers):
    p = subparsers.add_parser(
        NAME, help="export a pipeline (text encoders, UNet, VAE decoder) or a UNet to validated ONNX (fp32 or fp16)"
                   + missing_note(*NEEDS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            A pipeline SRC (a Stable Diffusion / SDXL / LDM / class-conditional pipeline folder, whose unet/ may
            be pruned, or arch:tiny-sd, arch:sd15, arch:tiny-sdxl, arch:tiny-class, ...) becomes OUT_DIR/pipeline.json
            + one folder per component (text_encoder[_2]/, unet/, vae_decoder/ or vq_decoder/, tokenizer[_2]/),
            which `diffprune sample` runs without torch. The UNet's batch range is doubled for classifier-free
            guidance; the VAE decoder stays float32 under --fp16 (SD's VAE overflows fp16) unless --vae-fp16.
            A pixel UNet (or --unet-only) becomes OUT_DIR/model.onnx + model.json: inputs sample (B, C, H, W)
            and timestep (B,) float32 [+ the UNet's conditioning]; output out_sample. B is dynamic.
            Validation is part of export: onnx.checker, shape inference, then ONNX Runtime vs torch at
            several batch sizes and timesteps (fp32 max-abs <= 1e-4; fp16 relative <= 1e-2, no NaN/Inf).
            If any component fails, nothing is written and the command exits non-zero.""")
        + missing_note(*NEEDS),
        epilog="examples:\n  diffprune export cifar-pruned cifar-pruned-onnx --fp16 --max-batch 64 --triton triton-repo\n"
               "  diffprune export sd15-pruned-pipeline sd15-onnx --fp16 --max-batch 4",
    )
    p.add_argument("src", metavar="SRC", help="model folder, hub id or arch:NAME")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (written atomically)")
    p.add_argument("--fp16", action="store_true", help="float16 graph (norms and softmax stay float32; I/O stays float32)")
    p.add_argument("--opset", type=count, default=18, help="ONNX opset (default 18)")
    p.add_argument("--min-batch", type=count, default=1, help="smallest batch (default 1)")
    p.add_argument("--opt-batch", type=count, default=None, help="batch TensorRT optimises for (default 8, within min..max)")
    p.add_argument("--max-batch", type=count, default=64, help="largest batch (default 64)")
    p.add_argument("--dynamic-hw", action="store_true", help="dynamic height and width (default: fixed at the model's sample size)")
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"],
                   help="torch.export-based (default) or the legacy TorchScript exporter")
    p.add_argument("--slim", action="store_true", help="clean the graph with onnxslim (needs onnxslim)")
    p.add_argument("--weights", default="external", choices=["external", "inline"],
                   help="external (default): tensors in model.onnx.data, which ONNX Runtime loads without a "
                        "protobuf copy (about 40%% less peak memory); inline: one self-contained model.onnx")
    p.add_argument("--fuse-attention", action=argparse.BooleanOptionalAction, default=True,
                   help="fp32 UNets with attention and external weights (default on): export at opset >= 23 and "
                        "also write model.ort.onnx, the graph ONNX Runtime's CPU provider (ort-cpu) runs, attention "
                        "fused into MultiHeadAttention "
                        "(FlashAttention: no heads x S x S score matrices; SD-1.5 at 512x512 peaks GBs lower); "
                        "OpenVINO and TensorRT read model.onnx. --no-fuse-attention: model.onnx alone, at --opset")
    p.add_argument("--triton", metavar="REPO", help="also write a Triton model repository here")
    p.add_argument("--unet-only", action="store_true", help="export only the UNet (OUT_DIR/model.onnx), even of a pipeline")
    p.add_argument("--pipeline", action="store_true", help="write the pipeline layout even for a pixel UNet")
    p.add_argument("--vae-fp16", action="store_true",
                   help="with --fp16, also the VAE/VQ decoder in float16 (validated; SD's VAE overflows fp16)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="default guidance scale written to pipeline.json (default: SD 7.5, SDXL 5.0, others 1)")
    p.add_argument("--step-cache", action="store_true",
                   help="also export the UNet's shallow graph for step caching (DeepCache, Ma et al. CVPR 2024): the "
                        "full graph then also outputs the deep feature the shallow one reuses; sample with "
                        "--cache-interval N")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(func=run)
    return p


def _is_pipeline(args) -> bool:
    """The pipeline layout unless --unet-only; --pipeline forces it; else the source decides
    (diffprune.sources.resolve.exports_as_pipeline)."""
    from diffprune.sources.resolve import exports_as_pipeline

    if args.unet_only:
        return False
    return bool(args.pipeline) or exports_as_pipeline(str(args.src))


def run(args) -> int:
    require(*NEEDS)
    from diffprune.errors import DiffPruneError
    from diffprune.export import export_pipeline, to_onnx

    opt = args.opt_batch if args.opt_batch is not None else max(args.min_batch, min(8, args.max_batch))
    if _is_pipeline(args):
        unsupported = [flag for flag, on in (("--dynamic-hw", args.dynamic_hw), ("--slim", args.slim)) if on]
        if unsupported:
            raise DiffPruneError(f"{', '.join(unsupported)} apply to a single UNet export; a pipeline's components "
                                 "have fixed sizes. Drop them, or add --unet-only.")
        if args.vae_fp16 and not args.fp16:
            raise DiffPruneError("--vae-fp16 needs --fp16 (it keeps the decoder in float16 too).")
        record = export_pipeline(args.src, args.out_dir, dtype="fp16" if args.fp16 else "fp32",
                                 vae_dtype="fp16" if args.vae_fp16 else "fp32", opset=args.opset,
                                 batch=(args.min_batch, opt, args.max_batch), exporter=args.exporter,
                                 weights=args.weights, guidance_scale=args.guidance_scale, overwrite=args.overwrite,
                                 fuse_attention=args.fuse_attention, step_cache=int(args.step_cache))
        print(f"pipeline ({record['kind']}): {args.out_dir}/pipeline.json, {record['export_seconds']:.1f} s")
        if args.triton:
            from diffprune.export import write_pipeline_repository

            write_pipeline_repository(args.triton, args.out_dir, overwrite=args.overwrite)
            print(f"Triton model repository: {args.triton}")
        return 0
    result = to_onnx(args.src, args.out_dir, dtype="fp16" if args.fp16 else "fp32", opset=args.opset,
                     batch=(args.min_batch, opt, args.max_batch), dynamic_hw=args.dynamic_hw,
                     exporter=args.exporter, slim=args.slim, triton=args.triton, weights=args.weights,
                     overwrite=args.overwrite, fuse_attention=args.fuse_attention, step_cache=int(args.step_cache))
    meta = result.model_json
    v = meta["validation"]
    print(f"exported {' + '.join(str(f) for f in result.files)} ({meta['dtype']}, {result.megabytes:.1f} MB, batch {meta['batch']['min']}..{meta['batch']['max']}, "
          f"{result.seconds:.1f} s)")
    print(f"validated against torch on ONNX Runtime CPU at batch {', '.join(str(c['batch']) for c in v['cases'])}: "
          f"max-abs {v['max_abs_error']:.2e}, relative {v['max_rel_error']:.2e} (allowed {v['tolerance']})")
    if meta.get("step_cache"):
        print(f"step caching: shallow UNet graph in {args.out_dir}/shallow ({meta['step_cache']['feature']} "
              f"{meta['step_cache']['feature_shape']}); sample with --cache-interval N")
    if args.triton:
        print(f"Triton model repository: {args.triton}")
    return 0
