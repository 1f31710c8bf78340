"""Fine-tuning pruned (or dense) UNets: AdamW with warm-up, gradient clipping and accumulation, EMA
weights (the saved model is the EMA one), bf16/fp16 autocast on CUDA, optional distillation from the
dense teacher, checkpoints in safetensors + JSON, exact resume, and multi-GPU / multi-node through
Hugging Face accelerate (``accelerate launch -m diffprune finetune ...``).

Conditional UNets are trained on their conditioning (diffprune.sources.conditioning): class-conditional
ones on the data's class labels; text-conditioned ones (Stable Diffusion-like, latent) on the VAE
latents of the images (posterior mean times the VAE's scaling factor, Rombach et al. 2022, Sec. 3)
and the frozen text encoder's embeddings of their captions, each caption replaced by the empty
prompt with probability ``caption_dropout`` so that classifier-free guidance (Ho & Salimans 2022,
Sec. 3.2: the unconditional model is the same network fed the empty prompt) still works after
fine-tuning. The VAE and text encoder are frozen and never saved with the UNet. The teacher is fed
exactly the student's conditioning, dropped captions included.

Determinism: the batch, noise, timesteps and caption dropout of step k on rank r come from a
generator seeded with (seed, k, r), so a run resumed from a checkpoint draws exactly what the
uninterrupted run drew and ends with the same weights: the data position is the step, which the
checkpoint holds, and no data-loader state needs saving.
"""

import contextlib
import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._io import check_writable
from ..errors import DiffPruneError
from .checkpoints import (checkpoint_folder, latest_checkpoint, load_checkpoint, remove_checkpoints, restore_data,
                          save_checkpoint, saved_losses, time_for_checkpoint)
from .config import FinetuneConfig
from .examples import (Examples, StreamedExamples, check_stream, conditional_examples, frozen_parts, generated_examples,
                       pick_part)


@dataclass
class FinetuneReport:
    steps: int
    final_loss: float
    losses: list = field(default_factory=list)  # [step, loss, lr] every log_every steps
    seconds: float = 0.0
    steps_per_s: float = 0.0
    world_size: int = 1
    ranks_identical: bool | None = None
    resumed_from: int | None = None
    mixed_precision: str = "no"
    device: str = "cpu"
    steps_this_run: int | None = None  # steps minus resumed_from: what this run trained (steps_per_s is over them)

    def to_dict(self):
        return asdict(self)


def _mixed_precision(choice: str, device: str) -> str:
    import torch

    if device == "cpu":
        if choice in ("bf16", "fp16"):
            raise DiffPruneError(f"mixed_precision {choice} needs a CUDA GPU; on the CPU training runs in fp32 (use auto or no).")
        return "no"
    if choice == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return choice


# ---------------------------------------------------------------- checkpoints (safetensors + JSON)


# ---------------------------------------------------------------- conditional data


def _check_teacher(cond, teacher_cond):
    if (cond.kind, cond.num_classes, cond.text_width, cond.pooled_width) != (
            teacher_cond.kind, teacher_cond.num_classes, teacher_cond.text_width, teacher_cond.pooled_width):
        raise DiffPruneError(
            f"The teacher is conditioned on {teacher_cond.kind} (classes {teacher_cond.num_classes}, text width "
            f"{teacher_cond.text_width}), the student on {cond.kind} (classes {cond.num_classes}, text width "
            f"{cond.text_width}); distillation feeds both the same inputs. Use the dense model the student was pruned from.")


# ---------------------------------------------------------------- training

def _targets(scheduler_config):
    from ..pruning.importance._gradients import _targets as targets

    return targets(scheduler_config)


def finetune(model_or_folder, out, config: FinetuneConfig | None = None, *, text_encoder=None, vae=None,
             overwrite: bool = False, progress: bool = True, callback=None, **options) -> FinetuneReport:
    """Fine-tune ``model_or_folder`` on ``data`` for ``steps`` optimizer steps; save the EMA model to ``out``.

    The options are a :class:`~diffprune.training.config.FinetuneConfig` (``config``), or its fields as keywords
    (``options``, which override ``config``'s); ``text_encoder`` and ``vae`` (frozen modules or
    ``FromSource``), ``overwrite``, ``progress`` and ``callback`` are what a run uses, not what it trains.

    ``data``: builtin:digits, an image folder, a .npy/.npz, or generate:N (N samples from the teacher,
    or from the model itself without one, drawn as pruning draws them: every class in turn for
    class-conditional models, ``prompts`` (a list of str, required for text models) with classifier-free
    guidance, then kept as the samples' captions). ``teacher`` + ``kd_weight``: the student also matches the
    teacher's prediction on the same noisy input; ``feature_kd_weight`` adds BK-SDM's feature term, the
    error at every down/mid/up block output through learned 1x1 maps where the widths differ
    (diffprune.training.feature_kd; the maps are checkpointed but not saved with the model). Checkpoints go to ``checkpoint_dir`` (default
    OUT.ckpt) every ``checkpoint_every`` steps and, so that an early stop has something to resume, whenever
    ``checkpoint_minutes`` have passed since the last one (0 = off); ``resume=True`` continues from the
    latest one, loss history included. Once OUT is written the checkpoints are deleted. ``guidance_scale``:
    the classifier-free guidance generate:N draws text models' samples with (default 7.5, as pruning).
    ``callback(step, loss)`` is called after every step (raise inside it to stop). Images of another
    size reach the model's by ``resize`` (bilinear, pad or center-crop; see diffprune.data.images).

    Conditional models: class-conditional ones take the data's labels (builtin:digits, an .npz's
    ``labels``, a JSONL's ``"label"``); text-conditioned ones the data's captions (same-stem .txt
    files, a JSONL's ``"text"``) through ``text_encoder`` (diffprune.sources.text.TextEncoder) and images
    through ``vae`` (AutoencoderKL), both frozen; either may be a ``diffprune.sources.loader.FromSource``
    and defaults to the source's own, else the teacher's (a pipeline folder or arch:NAME).
    ``caption_dropout``: the fraction of captions replaced by the empty prompt (default 0.1).
    ``precompute``: encode the latents and text embeddings once before training instead of every batch.

    ``stream``: read the data from disk batch by batch (diffprune.data.stream) instead of loading it: an image
    folder or a JSONL; tar shards (a .tar, a folder of them, a glob) are always streamed. Streamed data is
    read in seeded epochs (each example once per epoch) rather than drawn with replacement; its position
    (epoch, shard, offset, seed) is saved in every checkpoint, so a resumed run still ends with the same
    weights as an uninterrupted one.
    """
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from .._io import ProgressLines, quiet
    from ..sources.resolve import pipeline_source
    from ..sources.checkpoint import read_info, save
    from ..data.images import load_images
    from ..sources.conditioning import conditioning
    from ..sources.loader import FromSource, load_source
    from ..sources.unet import versions
    from ..data.stream import is_shards

    from .. import threads
    from ..threads import apply_thread_policy

    c = FinetuneConfig.of(config, **options)
    thread_policy = apply_thread_policy(c.threads)  # yielding waits where torch is not loaded yet (the CLI)
    out = Path(out)
    checkpoint_dir = checkpoint_folder(out, c.checkpoint_dir)
    device = c.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = _mixed_precision(c.mixed_precision, "cpu" if device == "cpu" else "cuda")
    accelerator = Accelerator(mixed_precision=precision, cpu=device == "cpu")
    if accelerator.is_main_process:
        check_writable(out, overwrite)
    torch.manual_seed(c.seed)  # module initialisation, if any, is seeded too

    streaming = bool(c.stream) or is_shards(c.data)
    if streaming:
        check_stream(c.data, c.precompute, c.num_images)
    student, scheduler_config, source = load_source(model_or_folder, device="cpu")
    cond = conditioning(student)
    student = student.float().train()
    teacher_model = None
    if c.teacher is not None:
        teacher_model, _, teacher_source = load_source(c.teacher, device="cpu")
        _check_teacher(cond, conditioning(teacher_model))
        teacher_model = teacher_model.float().eval().requires_grad_(False).to(accelerator.device)
    cfg = student.config
    size = (cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    streamed = examples = None
    # An unconditional latent DDPM (an LDM pipeline's UNet over its VQModel) needs its autoencoder too.
    latent_vae = pick_part("vae", vae, model_or_folder, c.teacher, accelerator.device) if cond.kind == "none" else None
    if streaming:
        text_encoder, vae = (None, None) if cond.kind == "none" and latent_vae is None else frozen_parts(
            c.data, student, cond, pick_part("text_encoder", text_encoder, model_or_folder, c.teacher, accelerator.device),
            pick_part("vae", vae, model_or_folder, c.teacher, accelerator.device), accelerator.device)
        streamed = StreamedExamples(c.data, c.seed, student, cond, size, c.resize, text_encoder, vae, accelerator.device)
    elif isinstance(c.data, str) and c.data.startswith("generate:"):
        examples, text_encoder = generated_examples(
            c.data, teacher_model or student, student, cond,
            pick_part("text_encoder", text_encoder, model_or_folder, c.teacher, accelerator.device),
            pick_part("vae", vae, model_or_folder, c.teacher, accelerator.device), c.prompts, scheduler_config, c.seed, c.precompute,
            progress and accelerator.is_main_process, accelerator.device, c.guidance_scale)
        vae = None
    elif cond.kind != "none" or latent_vae is not None:
        examples, text_encoder, vae = conditional_examples(
            c.data, student, cond, pick_part("text_encoder", text_encoder, model_or_folder, c.teacher, accelerator.device),
            pick_part("vae", vae, model_or_folder, c.teacher, accelerator.device), c.caption_dropout, c.precompute,
            c.num_images, c.seed, c.resize, accelerator.device)
    else:
        examples = Examples(cond, size, load_images(c.data, size, cfg.in_channels, limit=c.num_images, seed=c.seed, resize=c.resize),
                             device=accelerator.device)
    alphas_cumprod, prediction, num_train = _targets(scheduler_config)
    alphas_cumprod = alphas_cumprod.to(accelerator.device)

    projector = taps = None
    if c.feature_kd_weight > 0:
        from . import feature_kd

        projector = feature_kd.projections(student, teacher_model, c.seed).to(accelerator.device)
        taps = feature_kd.Tap(student), feature_kd.Tap(teacher_model)
    trainable = list(student.parameters()) + (list(projector.parameters()) if projector is not None else [])
    optimizer = torch.optim.AdamW(trainable, lr=c.lr, betas=(0.9, 0.999), weight_decay=c.weight_decay, eps=1e-8)
    lr_scheduler = get_scheduler(c.lr_schedule, optimizer, num_warmup_steps=c.warmup_steps, num_training_steps=c.steps)
    if projector is not None and any(True for _ in projector.parameters()):
        # Prepared like the student, so that several processes average the maps' gradients too.
        student, projector, optimizer = accelerator.prepare(student, projector, optimizer)
    else:
        student, optimizer = accelerator.prepare(student, optimizer)
    unwrapped = accelerator.unwrap_model(student)
    unwrapped_projector = accelerator.unwrap_model(projector) if projector is not None else None
    ema = EMAModel(unwrapped.parameters(), decay=c.ema_decay, use_ema_warmup=True, power=3 / 4) if c.ema_decay > 0 else None
    if ema is not None:
        ema.to(accelerator.device)

    start_step, resumed_from, losses = 0, None, []
    if c.resume:
        path = latest_checkpoint(checkpoint_dir)
        if path is None:
            raise DiffPruneError(f"--resume found no checkpoint in {str(checkpoint_dir)!r}. Start without --resume, "
                                 "or point --checkpoint-dir at the earlier run's checkpoints.")
        start_step = resumed_from = load_checkpoint(path, unwrapped, ema, optimizer, lr_scheduler, unwrapped_projector)
        restore_data(path, streamed)
        losses = saved_losses(path, start_step)
        if start_step >= c.steps:
            raise DiffPruneError(f"The checkpoint {str(path)!r} is at step {start_step}, and this run asks for {c.steps} "
                                 "steps: nothing is left to train. Give --c.steps above it, or start without --c.resume.")
        if accelerator.is_main_process:
            import sys

            print(f"fine-tune: resuming from step {start_step} of {c.steps} (checkpoint {path}); {c.steps - start_step} "
                  f"steps to go", file=sys.stderr, flush=True)
    config = {"data": str(c.data), "resize": c.resize, "steps": c.steps, "batch_size": c.batch_size, "lr": c.lr, "warmup_steps": c.warmup_steps,
              "lr_schedule": c.lr_schedule, "weight_decay": c.weight_decay, "grad_clip": c.grad_clip, "grad_accum": c.grad_accum,
              "ema_decay": c.ema_decay, "mixed_precision": precision, "kd_weight": c.kd_weight, "seed": c.seed,
              "teacher": str(c.teacher) if c.teacher is not None else None,
              "num_images": len(examples) if examples is not None else None, "stream": streaming,
              "conditioning": cond.kind, "feature_kd_weight": c.feature_kd_weight}
    if projector is not None:
        config["feature_kd"] = {"blocks": taps[0].names, "projected": [
            name for name, m in zip(taps[0].names, unwrapped_projector.maps) if not isinstance(m, torch.nn.Identity)]}
    latent_note = (f"{type(vae).__name__} (scaling_factor {vae.config.scaling_factor}), frozen, not saved"
                   if vae is not None and not isinstance(vae, FromSource) else None)
    if cond.text_width:
        generated = isinstance(c.data, str) and c.data.startswith("generate:")
        config.update(caption_dropout=c.caption_dropout, precompute=c.precompute, text_encoder=text_encoder.source or "given",
                      vae=latent_note or ("none (samples drawn as the UNet's own inputs)" if generated else "none (pixel space)"))
    elif latent_vae is not None:
        config.update(vae=latent_note or "none (samples drawn as the UNet's own inputs)")
    if c.prompts is not None:
        config["generate"] = {"from": "teacher" if teacher_model is not None else "the model itself",
                              "prompts": len(c.prompts), "guidance_scale": c.guidance_scale}

    rank, world = accelerator.process_index, accelerator.num_processes
    per_rank = max(1, c.batch_size // world)
    last_loss = float("nan")
    bar = tqdm(range(start_step, c.steps), initial=start_step, total=c.steps, desc="fine-tune",
               disable=quiet(progress and accelerator.is_main_process))
    lines = ProgressLines("fine-tune: step", c.steps, enabled=progress and accelerator.is_main_process, start=start_step)
    started = last_saved = time.perf_counter()
    try:
        for step in bar:
            threads.tick()  # the share policy follows the machine's load
            step_loss = step_feature = 0.0
            for micro in range(c.grad_accum):
                g = torch.Generator().manual_seed(_stream(c.seed, step, rank, micro))
                if streamed is not None:
                    # The stream's next global micro-batch, in order; this rank reads its own rows of it.
                    batch = streamed.next(per_rank * world, rank * per_rank, per_rank)
                    idx = torch.arange(per_rank)
                else:
                    batch = examples
                    idx = torch.randint(0, len(examples), (per_rank,), generator=g)
                x0 = batch.clean(idx)  # (B, C, H, W): pixels, or latents for latent models
                noise = torch.randn(x0.shape, generator=g).to(x0.device)
                t = torch.randint(0, num_train, (per_rank,), generator=g).to(x0.device)
                extra = batch.conditioning(idx, g, c.caption_dropout)  # the student's and the teacher's alike
                a = alphas_cumprod[t].view(-1, 1, 1, 1)
                xt = a.sqrt() * x0 + (1 - a).sqrt() * noise  # q(x_t | x_0)
                target = {"epsilon": noise, "sample": x0, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0}[prediction]
                sync = micro == c.grad_accum - 1
                with contextlib.ExitStack() as context:
                    if not sync and world > 1:
                        for module in (student, projector):
                            if module is not None:
                                context.enter_context(accelerator.no_sync(module))
                    with accelerator.autocast():
                        pred = student(xt, t, **extra).sample
                        loss = F.mse_loss(pred.float(), target)
                        if teacher_model is not None and (c.kd_weight > 0 or projector is not None):
                            with torch.no_grad():
                                teacher_pred = teacher_model(xt, t, **extra).sample.float()
                            if c.kd_weight > 0:
                                loss = loss + c.kd_weight * F.mse_loss(pred.float(), teacher_pred)
                            if projector is not None:  # the taps hold this forward's block outputs
                                feature = feature_kd.loss(projector(taps[0].take()), taps[1].take())
                                loss = loss + c.feature_kd_weight * feature
                                step_feature += feature.item() / c.grad_accum
                    accelerator.backward(loss / c.grad_accum)
                step_loss += loss.item() / c.grad_accum
            if c.grad_clip > 0:
                accelerator.clip_grad_norm_(trainable, c.grad_clip)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(unwrapped.parameters())
            if not math.isfinite(step_loss):
                raise DiffPruneError(f"The loss became {step_loss} at step {step + 1}; lower c.lr (now {c.lr}) or use c.mixed_precision no.")
            last_loss = step_loss
            done = step + 1
            if done % c.log_every == 0 or done == c.steps:
                losses.append([done, round(step_loss, 6), lr_scheduler.get_last_lr()[0]]
                              + ([round(step_feature, 6)] if projector is not None else []))
            elapsed = time.perf_counter() - started
            bar.set_postfix(loss=f"{step_loss:.4f}", steps_per_s=f"{(done - start_step) / max(elapsed, 1e-9):.2f}")
            lines.update(done, f", loss {step_loss:.4f}")
            if done < c.steps and (c.checkpoint_every and done % c.checkpoint_every == 0
                                 or time_for_checkpoint(last_saved, c.checkpoint_minutes, accelerator)):
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    save_checkpoint(checkpoint_dir, done, unwrapped, ema, optimizer, lr_scheduler, config,
                                    data_state=streamed.stream.state() if streamed is not None else None,
                                    projector=unwrapped_projector, losses=losses)
                last_saved = time.perf_counter()
            if callback is not None:
                callback(done, step_loss)
    finally:
        for tap in taps or ():  # hooks off the student, which may be the caller's own module
            tap.close()
    bar.close()
    seconds = time.perf_counter() - started

    accelerator.wait_for_everyone()
    identical = None
    if world > 1:
        checksum = torch.stack([p.detach().double().sum() for p in unwrapped.parameters()]).sum().view(1)
        gathered = accelerator.gather(checksum)
        identical = bool((gathered == gathered[0]).all())
    report = FinetuneReport(steps=c.steps, final_loss=last_loss, losses=losses, seconds=seconds,
                            steps_per_s=(c.steps - start_step) / max(seconds, 1e-9), world_size=world,
                            ranks_identical=identical, resumed_from=resumed_from, mixed_precision=precision,
                            device=str(accelerator.device), steps_this_run=c.steps - start_step)
    if accelerator.is_main_process:
        import copy

        final = copy.deepcopy(unwrapped).float().eval()
        if ema is not None:
            ema.copy_to(final.parameters())
        info = {}
        if source.get("format") == "diffprune":
            info = {k: v for k, v in read_info(source["source"]).items() if k not in ("widths", "params", "macs", "versions", "dtype", "format")}
        info.setdefault("source", source)
        info["finetune"] = {**config, **{k: v for k, v in report.to_dict().items() if k != "losses"}, "versions": versions(),
                            "threads": thread_policy["threads"], "thread_policy": thread_policy}
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["step", "loss", "lr"] + (["feature_kd"] if projector is not None else []))
        writer.writerows(losses)
        # A UNet of a pipeline is saved as a pipeline, its other parts from wherever they came from.
        carried = (model_or_folder, c.teacher, getattr(text_encoder, "src", None), getattr(vae, "src", None))
        save(final, out, info=info, scheduler_config=scheduler_config, overwrite=overwrite or c.resume,
             extra_files={"loss.csv": text.getvalue(), "finetune.json": json.dumps(report.to_dict(), indent=1)},
             pipeline=next((src for src in carried if pipeline_source(src)), None))
        remove_checkpoints(checkpoint_dir)  # OUT is complete: nothing is left to c.resume
    accelerator.wait_for_everyone()
    return report


def _stream(seed: int, step: int, rank: int, micro: int) -> int:
    """A distinct, reproducible generator seed for each (seed, step, rank, micro-batch)."""
    return (((seed * 1_000_003 + step) * 1_009 + rank) * 101 + micro) % (2**63)
