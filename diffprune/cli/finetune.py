"""``diffprune finetune``: a shell over :func:`diffprune.training.finetune.finetune`."""

import argparse
import json
import textwrap

from diffprune.data.images import RESIZE_MODES

from ._common import TOOLCHAIN, add_threads_argument, count, count_or_zero, missing_note, require

NAME = "finetune"
NEEDS = TOOLCHAIN + ("accelerate",)


def register(subparsers):
    p = subparsers.add_parser(
        NAME, help="fine-tune a pruned model (EMA, AMP, distillation, resume, multi-GPU via accelerate)" + missing_note(*NEEDS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Fine-tune SRC (a pruned folder, a diffusers folder, a hub id or arch:NAME) and save the EMA
            weights to OUT in the safe format, with loss.csv and finetune.json. Checkpoints (weights, EMA,
            optimizer, schedule, step, loss history; safetensors + JSON) go to OUT.ckpt every --checkpoint-every
            steps and every --checkpoint-minutes; after a crash or Ctrl-C the same command with --resume
            continues from the latest one and ends with the same weights and loss.csv as an uninterrupted
            run. OUT.ckpt is deleted once OUT is written.
            Several GPUs or nodes: accelerate launch --multi_gpu -m diffprune finetune ...
            --component decoder: SRC is a pipeline whose VAE/VQ decoder `diffprune prune --components decoder`
            pruned; it learns the dense decoder of --teacher (the dense pipeline) on the encoder's latents of
            --data (or generate:N, latents the teacher's UNet draws): --pixel-loss l2/l1 between the two
            images, plus --feature-kd-weight at the mid and up blocks. OUT is the pipeline with the
            fine-tuned decoder; checkpoints and --resume as above (one process).""")
        + missing_note(*NEEDS),
        epilog=textwrap.dedent("""\
            examples:
              diffprune finetune cifar-pruned cifar-ft --data ./cifar_images --steps 100000 --teacher google/ddpm-cifar10-32 --kd-weight 1
              accelerate launch --multi_gpu --num_processes 8 -m diffprune finetune cifar-pruned cifar-ft --data ./cifar_images --steps 100000"""),
    )
    p.add_argument("src", metavar="SRC", help="model to fine-tune: a pruned folder, a diffusers folder, a hub id or arch:NAME")
    p.add_argument("out", metavar="OUT", help="output folder for the EMA weights (written atomically)")
    p.add_argument("--data", default="builtin:digits",
                   help="folder (captions in same-stem .txt files), .npy/.npz (labels in 'labels'), .jsonl of "
                        '{"image", "text", "label"} lines, tar shards (streamed, see --stream), builtin:digits '
                        "(default, with labels) or generate:N")
    p.add_argument("--steps", type=count, default=1000, help="optimizer steps (default 1000; the paper: 100K for CIFAR-10)")
    p.add_argument("--batch-size", type=count, default=64, help="global batch per optimizer step (default 64)")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default 2e-4)")
    p.add_argument("--warmup-steps", type=count_or_zero, default=100, help="linear warm-up steps (default 100)")
    p.add_argument("--lr-schedule", default="constant_with_warmup", choices=["constant_with_warmup", "cosine", "linear"],
                   help="learning-rate schedule after the warm-up (default constant_with_warmup)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (default 1; 0 = off)")
    p.add_argument("--grad-accum", type=count, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--ema-decay", type=float, default=0.9999, help="EMA decay with warm-up (default 0.9999; 0 = off)")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16", "fp16"],
                   help="auto: bf16 on CUDA where supported, fp16 otherwise, fp32 on CPU")
    p.add_argument("--teacher", help="dense model to distil from (same sources as SRC)")
    p.add_argument("--kd-weight", type=float, default=0.0, help="weight of the teacher-matching loss (default 0)")
    p.add_argument("--feature-kd-weight", type=float, default=0.0,
                   help="weight of feature distillation at every down/mid/up block output (BK-SDM), through learned "
                        "1x1 maps where the pruned widths differ from the teacher's (default 0 = off; needs --teacher)")
    p.add_argument("--component", default="unet", choices=["unet", "decoder"],
                   help="what to train: the UNet (default) or the pipeline's pruned VAE/VQ decoder, distilled from "
                        "--teacher's decoder")
    p.add_argument("--pixel-loss", default="l2", choices=["l2", "l1"],
                   help="--component decoder: the error between the student's and the teacher's images (default l2)")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="text-conditioned models with --data generate:N: one prompt per line, cycled over the N samples "
                        "drawn from the teacher with classifier-free guidance (--guidance-scale) and kept as their captions")
    p.add_argument("--guidance-scale", type=float, default=None, metavar="SCALE",
                   help="classifier-free guidance the generate:N samples are drawn with when --prompts are given "
                        "(default 7.5; builtin:digits-text wants 1.5); recorded in finetune's record")
    p.add_argument("--pipeline", help="pipeline folder or arch:NAME whose frozen text_encoder/ + tokenizer/ and vae/ a "
                                       "text-conditioned model is trained with (default: SRC's, else --teacher's)")
    p.add_argument("--caption-dropout", type=float, default=0.1,
                   help="fraction of captions replaced by the empty prompt, so classifier-free guidance keeps working "
                        "(default 0.1)")
    p.add_argument("--stream", action="store_true",
                   help="read a folder or .jsonl from disk batch by batch, in seeded epochs, instead of loading it (for "
                        "data that does not fit in memory); tar shards (a .tar, a folder of *.tar, or a glob such as "
                        "'shards/*.tar': NAME.png + NAME.txt [+ NAME.cls] members) are always streamed")
    p.add_argument("--precompute", action="store_true",
                   help="encode the VAE latents and text embeddings once before training, not every batch")
    p.add_argument("--resize", default="bilinear", choices=RESIZE_MODES,
                   help="how images of another size reach the model's: bilinear (default; stretch), pad (black "
                        "borders, e.g. 28x28 digits for a model trained on them padded to 32x32), center-crop "
                        "(shorter side to the size, then the middle); a warning is printed whenever images are resized")
    p.add_argument("--num-images", type=count, default=None, help="use a seeded subset of the data")
    p.add_argument("--checkpoint-every", type=count_or_zero, default=500,
                   help="steps between checkpoints (default 500; 0 = none by steps)")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0,
                   help="also checkpoint when this many minutes have passed since the last checkpoint, so that a run "
                        "stopped early has something to --resume (default 10; 0 = off)")
    p.add_argument("--checkpoint-dir", help="where checkpoints go (default OUT.ckpt)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in OUT.ckpt (or --checkpoint-dir), with the same options")
    p.add_argument("--log-every", type=count, default=10, help="steps between loss-log rows (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batches, noise and timesteps (default 0)")
    add_threads_argument(p)
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    require(*NEEDS)
    from diffprune.sources.loader import FromSource
    from diffprune.sources.text import read_prompts
    from diffprune.training.config import FinetuneConfig
    from diffprune.training.finetune import finetune

    config = FinetuneConfig.of(
        data=args.data, resize=args.resize, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=args.warmup_steps, lr_schedule=args.lr_schedule, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, grad_accum=args.grad_accum, ema_decay=args.ema_decay,
        mixed_precision=args.mixed_precision, teacher=args.teacher, kd_weight=args.kd_weight, num_images=args.num_images,
        checkpoint_every=args.checkpoint_every, checkpoint_dir=args.checkpoint_dir,
        checkpoint_minutes=args.checkpoint_minutes, resume=args.resume, log_every=args.log_every, seed=args.seed,
        device=args.device, caption_dropout=args.caption_dropout, precompute=args.precompute, stream=args.stream,
        feature_kd_weight=args.feature_kd_weight, prompts=read_prompts(args.prompts) if args.prompts else None,
        guidance_scale=args.guidance_scale, pixel_loss=args.pixel_loss, threads=args.threads,
    )
    try:
        if args.component == "decoder":
            from diffprune.training.decoder import finetune_decoder

            report = finetune_decoder(args.src, args.out, config, overwrite=args.overwrite, progress=not args.quiet)
            resumed = f" (resumed from step {report.resumed_from})" if report.resumed_from is not None else ""
            print(f"fine-tuned the decoder {report.steps} steps{resumed} in {report.seconds:.1f} s "
                  f"({report.steps_per_s:.2f} steps/s); final loss {report.final_loss:.6f}")
            print(f"saved {args.out} (the pipeline, its decoder's EMA weights and record in its pruning.json)")
            return 0
        report = finetune(
            args.src, args.out, config, overwrite=args.overwrite, progress=not args.quiet,
            text_encoder=FromSource(args.pipeline, "text_encoder") if args.pipeline else None,
            vae=FromSource(args.pipeline, "vae") if args.pipeline else None,
        )
    except KeyboardInterrupt:
        _interrupted(args)
        return 130
    from accelerate import PartialState

    if PartialState().is_main_process:
        resumed = ""
        if report.resumed_from is not None:
            resumed = f" ({report.steps_this_run} in this run, resumed from step {report.resumed_from})"
        print(f"fine-tuned {report.steps} steps{resumed} in {report.seconds:.1f} s ({report.steps_per_s:.2f} steps/s, "
              f"{report.world_size} process(es), {report.mixed_precision}); final loss {report.final_loss:.4f}")
        print(f"saved {args.out} (EMA weights, loss.csv, finetune.json)")
    return 0


def _interrupted(args) -> None:
    """Ctrl-C: OUT was not written, but the checkpoints stay; say how to continue from them."""
    import os
    import shlex
    import sys

    if os.environ.get("RANK", "0") != "0":  # several processes: the first one says it
        return
    from diffprune.training.checkpoints import checkpoint_folder, latest_checkpoint

    folder = checkpoint_folder(args.out, args.checkpoint_dir)
    latest = latest_checkpoint(folder) if folder.is_dir() else None
    if latest is None:
        print(f"diffprune finetune: interrupted before the first checkpoint (every {args.checkpoint_every} steps and "
              f"every {args.checkpoint_minutes:g} minutes); {args.out} was not written and there is nothing to resume: "
              "run the command again to start over.", file=sys.stderr)
        return
    argv = list(getattr(args, "argv", None) or ["finetune", args.src, args.out])
    if "--resume" not in argv:
        argv.append("--resume")
    step = json.loads((latest / "state.json").read_text())["step"]
    print(f"diffprune finetune: interrupted; {args.out} was not written (no partial output), and the checkpoint of "
          f"step {step} of {args.steps} is kept in {folder}. Continue from it with:\n  diffprune {shlex.join(argv)}",
          file=sys.stderr)
