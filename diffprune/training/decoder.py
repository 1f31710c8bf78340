"""Fine-tuning a pruned VAE/VQ decoder by distillation from the dense one: ``finetune_decoder``.

The student is the pruned decoder of a pipeline (``diffprune prune --components decoder``), the teacher the
dense pipeline's. Both decode the same latents - the teacher's encoder's posterior means of the training images,
or latents the teacher pipeline's UNet draws (``generate:N``) - and the student learns the teacher's images:
the pixel error (``pixel_loss`` l2 or l1) and, with ``feature_kd_weight``, BK-SDM's feature term at the output of
the decoder's mid block and every up block, through learned 1x1 maps where the pruned widths differ
(diffprune.training.feature_kd). No noise, no timesteps: the decoder is a deterministic map, and the distillation
target is exact (Hinton et al. 2015's soft targets become the teacher's own images).

Options are a :class:`~diffprune.training.config.FinetuneConfig` (the UNet's fine-tuning fields; ``kd_weight``,
``prompts``, ``caption_dropout`` and ``stream`` do not apply). As the UNet's fine-tuning: AdamW with warm-up and
clipping, EMA weights (the saved decoder is the EMA one), checkpoints in safetensors + JSON (OUT.ckpt) with exact
resume - the batch of step k is drawn by a generator seeded with (seed, k), so a resumed run ends with the same
weights as an uninterrupted one. One process, float32.
"""

import csv
import io
import time
from pathlib import Path

from .._io import check_writable
from ..errors import DiffPruneError
from .checkpoints import (checkpoint_folder, latest_checkpoint, load_checkpoint, remove_checkpoints, save_checkpoint,
                          saved_losses)
from .config import FinetuneConfig

NOT_FOR_DECODERS = ("kd_weight", "prompts", "stream")  # UNet fine-tuning options a decoder run refuses when set


class _Finetuned:
    """The fine-tuned autoencoder in the form diffprune.pruning.recipe.save_pipeline writes."""

    def __init__(self, model, folder: str, record: dict):
        self.model, self.folder, self._record = model, folder, record

    def record(self) -> dict:
        return self._record


def _autoencoder(src, role: str, device):
    from ..sources.loader import FromSource

    part = FromSource(src, "vae", device)
    if not part.available():
        raise DiffPruneError(f"The {role} {str(src)!r} has no decoder: decoder fine-tuning takes pipelines with a vae/ "
                             "or vqvae/ (the student pruned by `diffprune prune --components decoder`, the teacher the "
                             "dense pipeline it came from) or arch:NAME of a latent pipeline.")
    return part.load()


def _pipeline_folder(src):
    from ..sources.resolve import resolve

    source = resolve(src)
    return source.pipeline_dir


def _batch(n: int, size: int, seed: int, step: int):
    import torch

    # (seed, step) is the whole randomness of a step: a resumed run draws what the uninterrupted one drew.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n, (size,), generator=generator)


def finetune_decoder(src, out, config: FinetuneConfig | None = None, *, overwrite: bool = False,
                     progress: bool = True, callback=None, **options):
    """Distil the decoder of the pipeline ``src`` (pruned) from the teacher's (``teacher``, the dense pipeline) for
    ``steps`` optimizer steps; write the pipeline ``src`` with the fine-tuned decoder to ``out``. Returns a
    :class:`~diffprune.training.finetune.FinetuneReport`. ``callback(step, loss)`` after every step."""
    import torch
    import torch.nn.functional as F
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from .._io import quiet
    from ..pruning.decoder import _decode_modules, decoder_latents, generated_latents
    from ..pruning.recipe import save_pipeline
    from ..sources.vae import read_decoder_pruning
    from .finetune import FinetuneReport

    c = FinetuneConfig.of(config, **options)
    used = [name for name in NOT_FOR_DECODERS if getattr(c, name) not in (None, 0, 0.0, False)]
    if used:
        raise DiffPruneError(f"{', '.join(used)} {'is' if len(used) == 1 else 'are'} a UNet fine-tuning option; a decoder "
                             "learns the dense decoder's images (pixel_loss, feature_kd_weight). Leave "
                             f"{'it' if len(used) == 1 else 'them'} out.")
    if c.teacher is None:
        raise DiffPruneError("Decoder fine-tuning distils from the dense decoder, and no teacher was given: pass "
                             "teacher= (CLI --teacher) with the dense pipeline the decoder was pruned from.")
    out = Path(out)
    check_writable(out, overwrite)
    folder = _pipeline_folder(src)
    if folder is None:
        raise DiffPruneError(f"{str(src)!r} is not a pipeline folder; give the one `diffprune prune --components decoder` "
                             "wrote.")
    device = "cuda" if c.device == "auto" and torch.cuda.is_available() else ("cpu" if c.device == "auto" else c.device)
    checkpoint_dir = checkpoint_folder(out, c.checkpoint_dir)
    student = _autoencoder(src, "student", device).float()
    teacher = _autoencoder(c.teacher, "teacher", device).float().eval().requires_grad_(False)
    if type(student) is not type(teacher) or student.config.latent_channels != teacher.config.latent_channels:
        raise DiffPruneError(f"The student is a {type(student).__name__} of {student.config.latent_channels} latent "
                             f"channels, the teacher a {type(teacher).__name__} of {teacher.config.latent_channels}; "
                             "distillation feeds both the same latents. Use the dense pipeline the student came from.")
    subfolder = "vae" if (folder / "vae").is_dir() else "vqvae"
    pruning = read_decoder_pruning(folder / subfolder)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed)
        if isinstance(c.data, str) and c.data.startswith("generate:"):
            from ..pruning.calibration import generate_count
            from ..sources.loader import FromSource, load_source

            unet, scheduler_config, _ = load_source(c.teacher, device=device)
            text = FromSource(c.teacher, "text_encoder", device)
            latents, description = generated_latents(unet, scheduler_config, teacher, generate_count(c.data), c.seed,
                                                     progress, text_encoder=text.load() if text.available() else None)
            del unet
        else:
            latents, description = decoder_latents(teacher, c.data, c.num_images, c.seed, c.resize)
    latents = latents.to(device)
    params = [p for m in _decode_modules(student) for p in m.parameters()]
    student.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    student.train()

    projector = taps = None
    if c.feature_kd_weight > 0:
        from . import feature_kd

        taps = feature_kd.Tap(student.decoder), feature_kd.Tap(teacher.decoder)
        with torch.no_grad():
            student.decode(latents[:1])
            teacher.decode(latents[:1])
        widths = ([x.shape[1] for x in taps[0].take()], [x.shape[1] for x in taps[1].take()])
        projector = feature_kd.projections(student.decoder, teacher.decoder, c.seed, stage_widths=widths).to(device)
    trainable = params + (list(projector.parameters()) if projector is not None else [])
    optimizer = torch.optim.AdamW(trainable, lr=c.lr, betas=(0.9, 0.999), weight_decay=c.weight_decay, eps=1e-8)
    lr_scheduler = get_scheduler(c.lr_schedule, optimizer, num_warmup_steps=c.warmup_steps, num_training_steps=c.steps)
    ema = EMAModel(params, decay=c.ema_decay, use_ema_warmup=True, power=3 / 4) if c.ema_decay > 0 else None

    record_config = {"component": "decoder", "data": str(c.data), "calibration": description,
                     "num_latents": int(latents.shape[0]), "steps": c.steps, "batch_size": c.batch_size, "lr": c.lr,
                     "warmup_steps": c.warmup_steps, "lr_schedule": c.lr_schedule, "weight_decay": c.weight_decay,
                     "grad_clip": c.grad_clip, "grad_accum": c.grad_accum, "ema_decay": c.ema_decay,
                     "pixel_loss": c.pixel_loss, "feature_kd_weight": c.feature_kd_weight, "seed": c.seed,
                     "teacher": str(c.teacher), "device": device}
    start_step, resumed_from, losses = 0, None, []
    if c.resume:
        path = latest_checkpoint(checkpoint_dir)
        if path is None:
            raise DiffPruneError(f"resume found no checkpoint in {str(checkpoint_dir)!r}. Start without --resume, or "
                                 "point --checkpoint-dir at the earlier run's checkpoints.")
        start_step = resumed_from = load_checkpoint(path, student, ema, optimizer, lr_scheduler, projector)
        losses = saved_losses(path, start_step)
        if start_step >= c.steps:
            raise DiffPruneError(f"The checkpoint {str(path)!r} is at step {start_step}, and this run asks for {c.steps} "
                                 "steps: nothing is left to train. Give more steps, or start without --resume.")
    pixel = F.mse_loss if c.pixel_loss == "l2" else F.l1_loss
    micro = max(1, c.batch_size // c.grad_accum)
    bar = tqdm(range(start_step, c.steps), desc="fine-tune decoder", disable=quiet(progress), initial=start_step,
               total=c.steps)
    last_saved = time.perf_counter()
    loss_value = float("nan")
    train_started = time.perf_counter()
    for step in bar:
        idx = _batch(latents.shape[0], micro * c.grad_accum, c.seed, step)
        loss_value = 0.0
        for k in range(c.grad_accum):
            z = latents[idx[k * micro:(k + 1) * micro]]  # (b, C, h, w)
            with torch.no_grad():
                target = teacher.decode(z).sample  # (b, 3, H, W)
                teacher_features = taps[1].take() if taps else None
            pred = student.decode(z).sample
            loss = pixel(pred, target)
            if taps:
                loss = loss + c.feature_kd_weight * feature_kd.loss(projector(taps[0].take()), teacher_features)
            (loss / c.grad_accum).backward()
            loss_value += loss.item() / c.grad_accum
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, c.grad_clip)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        done = step + 1
        if done % c.log_every == 0 or done == c.steps:
            losses.append([done, round(loss_value, 8), lr_scheduler.get_last_lr()[0]])
        bar.set_postfix(loss=f"{loss_value:.5f}")
        due = c.checkpoint_minutes and time.perf_counter() - last_saved >= 60 * c.checkpoint_minutes
        if done < c.steps and ((c.checkpoint_every and done % c.checkpoint_every == 0) or due):
            save_checkpoint(checkpoint_dir, done, student, ema, optimizer, lr_scheduler, record_config,
                            projector=projector, losses=losses)
            last_saved = time.perf_counter()
        if callback is not None:
            callback(done, loss_value)
    bar.close()
    if taps:
        for tap in taps:
            tap.close()
    if ema is not None:
        ema.copy_to(params)
    student.eval().requires_grad_(False)
    seconds = time.perf_counter() - started
    trained = c.steps - start_step
    train_seconds = time.perf_counter() - train_started
    report = FinetuneReport(steps=c.steps, final_loss=loss_value, losses=losses, seconds=round(seconds, 2),
                            steps_per_s=round(trained / max(train_seconds, 1e-9), 3), resumed_from=resumed_from,
                            device=device, steps_this_run=trained)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["step", "loss", "lr"])
    writer.writerows(losses)
    kept = {k: v for k, v in (pruning or {}).items() if k not in ("format", "widths", "params", "versions", "model_class")}
    record = {**kept, "finetune": {"config": record_config, "report": report.to_dict(), "loss_csv": table.getvalue()}}
    save_pipeline(out, src, decoder=_Finetuned(student, subfolder, record), overwrite=overwrite)
    remove_checkpoints(checkpoint_dir)
    return report
