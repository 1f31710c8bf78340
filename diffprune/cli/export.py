"""``diffprune export``: a shell over :func:`diffprune.export.to_onnx`."""

import argparse
import textwrap

from ._common import TOOLCHAIN, missing_note, require

NAME = "export"
NEEDS = TOOLCHAIN + ("onnx",)


def register(subparsers):
    p = subparsers.add_parser(
        NAME, help="export a UNet to validated ONNX (fp32 or fp16), optionally a Triton repository" + missing_note(*NEEDS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Export SRC (any model `prune` accepts, pruned or dense) to OUT_DIR/model.onnx + model.json.
            Inputs: sample (B, C, H, W) float32 and timestep (B,) float32; output: out_sample. B is dynamic.
            Validation is part of export: onnx.checker, shape inference, then ONNX Runtime vs torch at
            several batch sizes and timesteps (fp32 max-abs <= 1e-4; fp16 relative <= 1e-2, no NaN/Inf).
            If it fails, nothing is written and the command exits non-zero.""")
        + missing_note(*NEEDS),
        epilog="example:\n  diffprune export cifar-pruned cifar-pruned-onnx --fp16 --max-batch 64 --triton triton-repo",
    )
    p.add_argument("src", metavar="SRC", help="model folder, hub id or arch:NAME")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (written atomically)")
    p.add_argument("--fp16", action="store_true", help="float16 graph (norms and softmax stay float32; I/O stays float32)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--min-batch", type=int, default=1, help="smallest batch (default 1)")
    p.add_argument("--opt-batch", type=int, default=None, help="batch TensorRT optimises for (default 8, within min..max)")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch (default 64)")
    p.add_argument("--dynamic-hw", action="store_true", help="dynamic height and width (default: fixed at the model's sample size)")
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"],
                   help="torch.export-based (default) or the legacy TorchScript exporter")
    p.add_argument("--slim", action="store_true", help="clean the graph with onnxslim (needs onnxslim)")
    p.add_argument("--weights", default="external", choices=["external", "inline"],
                   help="external (default): tensors in model.onnx.data, which ONNX Runtime loads without a "
                        "protobuf copy (about 40%% less peak memory); inline: one self-contained model.onnx")
    p.add_argument("--triton", metavar="REPO", help="also write a Triton model repository here")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    require(*NEEDS)
    from diffprune.export import to_onnx

    opt = args.opt_batch if args.opt_batch is not None else max(args.min_batch, min(8, args.max_batch))
    result = to_onnx(args.src, args.out_dir, dtype="fp16" if args.fp16 else "fp32", opset=args.opset,
                     batch=(args.min_batch, opt, args.max_batch), dynamic_hw=args.dynamic_hw,
                     exporter=args.exporter, slim=args.slim, triton=args.triton, weights=args.weights,
                     overwrite=args.overwrite)
    meta = result.model_json
    v = meta["validation"]
    print(f"exported {' + '.join(str(f) for f in result.files)} ({meta['dtype']}, {result.megabytes:.1f} MB, batch {meta['batch']['min']}..{meta['batch']['max']}, "
          f"{result.seconds:.1f} s)")
    print(f"validated against torch on ONNX Runtime CPU at batch {', '.join(str(c['batch']) for c in v['cases'])}: "
          f"max-abs {v['max_abs_error']:.2e}, relative {v['max_rel_error']:.2e} (allowed {v['tolerance']})")
    if args.triton:
        print(f"Triton model repository: {args.triton}")
    return 0
