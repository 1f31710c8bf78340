"""``diffprune quantize``: a shell over :func:`diffprune.export.openvino_int8.quantize_int8` (NNCF, OpenVINO)."""

import argparse
import textwrap

from ._common import count, missing_note, require

NAME = "quantize"
NEEDS = ("openvino", "nncf")
INSTALL = "pip install 'diffprune[int8]'"


def register(subparsers):
    note = missing_note(*NEEDS, install=INSTALL, reason=f"needs openvino and nncf, {INSTALL}")
    p = subparsers.add_parser(
        NAME, help="INT8 post-training quantization for OpenVINO (NNCF), kept only if it holds" + note,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Quantize a float32 ONNX export to INT8 for OpenVINO with NNCF, calibrated on the model's own
            sampling trajectories (the UNet inputs of --n images x --steps DDIM steps). Validation is part
            of it: from the same seeds the INT8 images are compared with the float32 ones (SSIM) and one
            UNet call is timed in INT8, float32 and OpenVINO's default precision (bf16 on CPUs with bf16
            units); below --min-ssim, or not faster than both, it is an error and nothing is written. OUT is an OpenVINO IR folder (model.xml, model.bin, model.json) that `sample`,
            `bench`, `eval` and `select` run with --backend openvino. Torch-free.""") + note,
        epilog="example:\n  diffprune quantize cifar-pruned-onnx cifar-pruned-int8 --n 8 --steps 50",
    )
    p.add_argument("export", metavar="EXPORT", help="float32 ONNX export folder (from `diffprune export`)")
    p.add_argument("out", metavar="OUT", help="IR folder to write (atomically)")
    p.add_argument("--n", type=count, default=16, help="sampling trajectories for calibration and validation (default 16)")
    p.add_argument("--steps", type=count, default=50, help="DDIM steps per trajectory (default 50)")
    p.add_argument("--subset-size", type=count, default=None, help="calibration inputs NNCF uses (default: all, n x steps)")
    p.add_argument("--batch", type=count, default=1, help="the batch the INT8 model is fixed to (default 1)")
    p.add_argument("--min-ssim", type=float, default=0.95, help="refuse below this SSIM vs float32 (default 0.95)")
    p.add_argument("--threads", type=count, default=None, help="CPU threads for OpenVINO")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration trajectories (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    require(*NEEDS, install=INSTALL, why="`diffprune quantize`", what="OpenVINO and NNCF")
    from diffprune.export.openvino_int8 import quantize_int8

    record = quantize_int8(args.export, args.out, n=args.n, steps=args.steps, subset_size=args.subset_size,
                           batch=args.batch, min_ssim=args.min_ssim, seed=args.seed, threads=args.threads,
                           overwrite=args.overwrite)
    v = record["validation"]
    print(f"wrote {args.out} (INT8 OpenVINO IR): SSIM {v['ssim_vs_fp32']:.4f} vs float32; UNet call {v['int8_unet_ms']:.1f} ms, "
          f"{v['unet_speedup']:.2f}x the faster of float32 and {v['default_precision']}; {record['seconds']} s")
    return 0
