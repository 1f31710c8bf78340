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
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._io import atomic_dir, check_writable
from ..errors import DiffPruneError

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
LR_SCHEDULES = ("constant_with_warmup", "cosine", "linear")


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


def _check(steps, batch_size, lr, grad_accum, kd_weight, teacher, mixed_precision, lr_schedule, ema_decay, checkpoint_every,
           caption_dropout=0.0, feature_kd_weight=0.0, checkpoint_minutes=0.0):
    if not 0 <= caption_dropout <= 1:
        raise DiffPruneError(f"caption_dropout {caption_dropout} is out of range; allowed 0 <= p <= 1 (0.1 is usual: "
                             "one caption in ten replaced by the empty prompt, so classifier-free guidance keeps working).")
    if not isinstance(steps, int) or steps < 1:
        raise DiffPruneError(f"steps {steps!r} is invalid; allowed: an integer >= 1.")
    if batch_size < 1 or grad_accum < 1:
        raise DiffPruneError(f"batch_size {batch_size} and grad_accum {grad_accum} must be >= 1.")
    if not lr > 0:
        raise DiffPruneError(f"lr {lr} must be positive (2e-4 is a good start for DDPM UNets).")
    if kd_weight < 0:
        raise DiffPruneError(f"kd_weight {kd_weight} must be >= 0.")
    if kd_weight > 0 and teacher is None:
        raise DiffPruneError("kd_weight > 0 distils from a teacher, but no teacher was given: pass teacher= "
                             "(CLI --teacher) with the dense model, or set kd_weight to 0.")
    if feature_kd_weight < 0:
        raise DiffPruneError(f"feature_kd_weight {feature_kd_weight} must be >= 0 (0 = off; BK-SDM uses 1).")
    if feature_kd_weight > 0 and teacher is None:
        raise DiffPruneError("feature_kd_weight > 0 distils the teacher's block outputs, but no teacher was given: pass "
                             "teacher= (CLI --teacher) with the dense model, or set feature_kd_weight to 0.")
    if mixed_precision not in MIXED_PRECISION:
        raise DiffPruneError(f"mixed_precision {mixed_precision!r} is unknown; allowed: {', '.join(MIXED_PRECISION)}.")
    if lr_schedule not in LR_SCHEDULES:
        raise DiffPruneError(f"lr_schedule {lr_schedule!r} is unknown; allowed: {', '.join(LR_SCHEDULES)}.")
    if not 0 <= ema_decay < 1:
        raise DiffPruneError(f"ema_decay {ema_decay} is out of range; allowed 0 <= decay < 1 (0 disables EMA).")
    if checkpoint_every < 0:
        raise DiffPruneError(f"checkpoint_every {checkpoint_every} must be >= 0 (0 = only at the end).")
    if not checkpoint_minutes >= 0:
        raise DiffPruneError(f"checkpoint_minutes {checkpoint_minutes} must be >= 0 (0 = no time-based checkpoints; "
                             "default 10).")


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

def _optimizer_tensors(optimizer):
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if hasattr(value, "shape"):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer, tensors, meta):
    state = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: Path, step, model, ema, optimizer, lr_scheduler, config: dict, keep: int = 2,
                    data_state: dict | None = None, projector=None, losses: list | None = None):
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{step:08d}"
    with atomic_dir(target, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        if ema is not None:
            save_file({f"{i}": p.detach().cpu().contiguous() for i, p in enumerate(ema.shadow_params)}, str(tmp / "ema.safetensors"))
        if projector is not None:  # feature distillation's 1x1 maps train too, and the optimizer holds their state
            save_file({k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()},
                      str(tmp / "feature_kd.safetensors"))
        tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        ema_meta = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"} if ema is not None else None
        (tmp / "state.json").write_text(json.dumps({
            "step": step, "optimizer": opt_meta, "lr_scheduler": lr_scheduler.state_dict(), "ema": ema_meta,
            # Randomness is derived from (seed, step, rank): the seed and step are the whole RNG state.
            "rng": {"seed": config["seed"], "derived_from": "(seed, step, rank)"}, "config": config,
            # Streamed data: where the next batch starts (diffprune.data.stream.Stream.state); None for data in memory.
            "data": data_state,
            # loss.csv's rows so far: a resumed run writes the whole history, not only its own steps.
            "losses": losses,
        }, indent=1, default=str))
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(folder: Path):
    steps = sorted(p for p in Path(folder).glob("step-*") if (p / "state.json").is_file())
    return steps[-1] if steps else None


def checkpoint_folder(out, checkpoint_dir=None) -> Path:
    """Where the checkpoints of a run writing ``out`` go: ``checkpoint_dir``, else OUT.ckpt beside it."""
    out = Path(out)
    return Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.name + ".ckpt")


def remove_checkpoints(folder: Path) -> None:
    """Delete the checkpoints (step-*) in ``folder``, and the folder once empty: after the model is safely
    written they only take space. Anything else a user keeps there stays."""
    folder = Path(folder)
    for path in folder.glob("step-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.rmdir()  # only if empty


def load_checkpoint(path: Path, model, ema, optimizer, lr_scheduler, projector=None) -> int:
    from safetensors.torch import load_file

    try:
        state = json.loads((path / "state.json").read_text())
        model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
        if ema is not None and (path / "ema.safetensors").is_file():
            shadow = load_file(str(path / "ema.safetensors"))
            for i, p in enumerate(ema.shadow_params):
                p.copy_(shadow[str(i)])
            for key, value in (state["ema"] or {}).items():
                setattr(ema, key, value)
        if projector is not None:
            projector.load_state_dict(load_file(str(path / "feature_kd.safetensors")), strict=True)
        _load_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise DiffPruneError(
            f"Cannot resume from {str(path)!r}: {type(e).__name__}: {str(e).splitlines()[0]}. The checkpoint is "
            "damaged or from another model; delete it to resume from the one before, or start without --resume."
        ) from None
    return int(state["step"])


# ---------------------------------------------------------------- conditional data

class _Examples:
    """The training set and the conditioning that goes with each example.

    ``samples`` (N, C, H, W): pixels for pixel models; for latent (text-conditioned) models the VAE
    latents when precomputed, else the pixels, encoded batch by batch by the frozen ``vae``.
    ``labels`` (N,) long: class labels. ``captions``: one per example; with ``precompute`` their
    embeddings are computed once (``table``, one row per distinct caption, the empty prompt last).
    """

    def __init__(self, cond, size, samples, labels=None, captions=None, text_encoder=None, vae=None,
                 precompute=False, device="cpu"):
        import torch

        self.cond, self.size, self.device = cond, size, device
        self.vae = vae
        self.samples = samples
        if vae is not None and precompute:
            from ..sources.vae import encode

            self.samples, self.vae = encode(vae, samples), None
        self.samples = self.samples.to(device)
        self.labels = None if labels is None else torch.tensor(labels, dtype=torch.long, device=device)
        self.captions, self.text_encoder, self.table = captions, text_encoder, None
        if captions is not None and precompute:
            distinct = sorted(set(captions))
            row = {c: i for i, c in enumerate(distinct)}
            self.rows = torch.tensor([row[c] for c in captions], dtype=torch.long, device=device)
            self.table = text_encoder(distinct + [""], device=device)  # the empty prompt is the last row
            self.table.encoder_hidden_states = self.table.encoder_hidden_states.to(device)
            if self.table.text_embeds is not None:
                self.table.text_embeds = self.table.text_embeds.to(device)

    def __len__(self):
        return self.samples.shape[0]

    def clean(self, idx):
        """x_0 of the examples ``idx``: (B, C, H, W), latents for latent models."""
        x0 = self.samples[idx.to(self.samples.device)]
        if self.vae is not None:
            from ..sources.vae import encode

            x0 = encode(self.vae, x0).to(self.device)
        return x0

    def conditioning(self, idx, generator, caption_dropout: float) -> dict:
        """The UNet's keyword inputs for the examples ``idx``; draws the caption dropout from ``generator``
        (after the batch, noise and timesteps, so unconditional runs draw what they always drew)."""
        import torch

        from ..sources.text import Encoded

        text = None
        if self.captions is not None:
            drop = torch.rand(len(idx), generator=generator) < caption_dropout  # (B,) True: the empty prompt
            if self.table is not None:
                rows = torch.where(drop.to(self.rows.device), len(self.table.encoder_hidden_states) - 1,
                                   self.rows[idx.to(self.rows.device)])
                pooled = self.table.text_embeds
                text = Encoded(self.table.encoder_hidden_states[rows], None if pooled is None else pooled[rows])
            else:
                text = self.text_encoder(["" if d else self.captions[i] for i, d in zip(idx.tolist(), drop.tolist())],
                                         device=self.device)
        out = self.cond.inputs(len(idx), self.size, device=self.device, text=text)
        if self.labels is not None:
            out["class_labels"] = self.labels[idx.to(self.labels.device)]
        return out


def _frozen_parts(data, student, cond, text_encoder, vae, device, need_vae=True):
    """(text encoder, VAE) a conditional ``student`` is trained with, loaded, frozen and on ``device``; a clear
    error for what is missing. The VAE is None for pixel models, and when ``need_vae`` is False (samples
    drawn from a model are latents already)."""
    from ..data.latents import is_latent, require_vae
    from ..sources.loader import FromSource

    latent = is_latent(student, cond, vae)
    if cond.text_width:
        if isinstance(text_encoder, FromSource):
            text_encoder = text_encoder.load()
        if text_encoder is None:
            raise DiffPruneError(
                f"This {cond.model_class} is text-conditioned and no text encoder was given to encode the captions: a "
                "bare UNet folder carries none. Give a pipeline folder (with text_encoder/ and tokenizer/) as SRC or "
                "--pipeline, or text_encoder= in Python (diffprune.sources.text.build_text_encoder / load_text_encoder).")
        text_encoder.check_fits(cond)
        for _, model in text_encoder.parts:
            model.to(device).eval().requires_grad_(False)
    else:
        text_encoder = None
    vae = require_vae(data, cond, vae).to(device).eval().requires_grad_(False) if latent and need_vae else None
    return text_encoder, vae


def _labels(found, data, cond):
    """The class labels of ``found`` (diffprune.data.images.CalibrationData), checked; None for other models."""
    from ..data.images import describe

    if not cond.num_classes:
        return None
    if found.labels is None or any(x is None for x in found.labels):
        raise DiffPruneError(
            f"Data {describe(data)!r} has no class label for every image, and this {cond.model_class} is "
            f"class-conditional (num_class_embeds = {cond.num_classes}). Give labelled data: builtin:digits, an "
            ".npz with a 'labels' array beside 'images', a .jsonl with a \"label\" on every line, or tar shards "
            "with a NAME.cls beside every image.")
    try:
        return cond.check_labels([int(x) if hasattr(x, "__index__") else x for x in found.labels])
    except DiffPruneError as e:
        raise DiffPruneError(f"Data {describe(data)!r} holds class labels the model cannot take: {e}") from None


def _conditional_examples(data, student, cond, text_encoder, vae, caption_dropout, precompute, num_images, seed, resize,
                          device):
    """Load ``data`` with what a conditional ``student`` needs; a clear error for what is missing."""
    from ..data.images import load_calibration
    from ..data.latents import pixel_size
    from ..sources.unet import sample_size

    size = sample_size(student)
    text_encoder, vae = _frozen_parts(data, student, cond, text_encoder, vae, device)
    if vae is not None:
        found = load_calibration(data, pixel_size(student, vae), vae.config.in_channels, limit=num_images, seed=seed,
                                 resize=resize)
    else:
        found = load_calibration(data, size, student.config.in_channels, limit=num_images, seed=seed, resize=resize)
    if cond.text_width:
        found.require_captions(data, "fine-tuned")
    return _Examples(cond, size, found.images, labels=_labels(found, data, cond),
                     captions=found.captions if cond.text_width else None, text_encoder=text_encoder, vae=vae,
                     precompute=precompute, device=device), text_encoder, vae


def _generated_examples(data, model, student, cond, text_encoder, vae, prompts, scheduler_config, seed, precompute,
                        progress, device, guidance_scale=None):
    """``generate:N``: N samples drawn from ``model`` (the teacher, else the student) by pruning's generate path
    (diffprune.pruning.calibration.generate_samples), and the conditioning they were drawn under, which the student is then
    trained on: every class in turn for class-conditional models; for text models the ``prompts`` (cycled,
    drawn with classifier-free guidance) as their captions, dropped like any caption."""
    from ..data.latents import is_latent
    from ..sources.unet import sample_size
    from ..pruning.calibration import generate_count, generate_samples

    count = generate_count(data)
    if cond.text_width and not prompts:
        raise DiffPruneError(
            f"Data {data!r}: this {cond.model_class} is text-conditioned, and samples drawn without prompts are all "
            "unconditional, which would train only the empty prompt. Give --prompts FILE (prompts= in Python), one "
            "prompt per line, cycled over the samples and kept as their captions.")
    if prompts and not cond.text_width:
        raise DiffPruneError(f"prompts were given, but this {cond.model_class} reads no text (conditioning: "
                             f"{cond.kind}); leave them out.")
    latent = is_latent(student, cond, vae)
    text_encoder, _ = _frozen_parts(data, student, cond, text_encoder, vae, device, need_vae=False)
    classes = list(range(cond.num_classes)) if cond.num_classes else None  # cycled: every class alike
    was_training = model.training
    samples, inputs, _ = generate_samples(model.to(device).eval(), scheduler_config, count, seed=seed, progress=progress,
                                          class_labels=classes, text_encoder=text_encoder, prompts=prompts, latent=latent,
                                          guidance_scale=guidance_scale)
    model.train(was_training)
    labels = inputs["class_labels"].tolist() if cond.num_classes else None
    captions = [prompts[i % len(prompts)] for i in range(count)] if cond.text_width else None
    # The samples are what the UNet denoises (latents for latent models): no VAE between them and it.
    return _Examples(cond, sample_size(student), samples, labels=labels, captions=captions, text_encoder=text_encoder,
                     vae=None, precompute=precompute, device=device), text_encoder


class _StreamedExamples:
    """Batches read from disk as training goes (diffprune.data.stream), each an :class:`_Examples` with its
    conditioning. Every rank walks the same global order; each decodes only its own rows of a batch."""

    def __init__(self, data, seed, student, cond, size, resize, text_encoder=None, vae=None, device="cpu"):
        from ..data.latents import pixel_size
        from ..data.stream import Stream

        self.stream = Stream(data, seed=seed)
        self.data, self.seed, self.cond, self.size, self.resize, self.device = data, seed, cond, size, resize, device
        self.text_encoder, self.vae = text_encoder, vae
        self.pixels = pixel_size(student, vae) if vae is not None else size
        self.channels = vae.config.in_channels if vae is not None else student.config.in_channels
        self._warned = False

    def _warn_once(self, message):
        import sys

        if not self._warned:  # every batch would say it again
            self._warned = True
            print(message, file=sys.stderr)

    def next(self, total: int, first: int, count: int) -> "_Examples":
        """Take the next ``total`` examples of the stream; decode rows [first, first + count) of them."""
        from ..data.images import CalibrationData, _convert, describe
        from ..data.stream import Stream

        batch = Stream.read(self.stream.take(total)[first:first + count])
        images = _convert(batch.images, describe(self.data), self.pixels, self.channels, None, self.seed, self.resize,
                          self._warn_once)[0]
        found = CalibrationData(images=images, captions=batch.captions, labels=batch.labels, files=batch.names)
        if self.cond.text_width:
            found.require_captions(self.data, "fine-tuned")
        return _Examples(self.cond, self.size, images, labels=_labels(found, self.data, self.cond),
                         captions=found.captions if self.cond.text_width else None, text_encoder=self.text_encoder,
                         vae=self.vae, device=self.device)


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


def finetune(model_or_folder, out, data="builtin:digits", steps: int = 1000, batch_size: int = 64, lr: float = 2e-4,
             warmup_steps: int = 100, lr_schedule: str = "constant_with_warmup", weight_decay: float = 0.0,
             grad_clip: float = 1.0, grad_accum: int = 1, ema_decay: float = 0.9999, mixed_precision: str = "auto",
             teacher=None, kd_weight: float = 0.0, num_images: int | None = None, checkpoint_every: int = 500,
             checkpoint_dir=None, resume: bool = False, log_every: int = 10, seed: int = 0, device: str = "auto",
             overwrite: bool = False, progress: bool = True, callback=None, resize: str = "bilinear",
             text_encoder=None, vae=None, caption_dropout: float = 0.1, precompute: bool = False,
             stream: bool = False, feature_kd_weight: float = 0.0, prompts=None, checkpoint_minutes: float = 10.0,
             guidance_scale: float | None = None) -> FinetuneReport:
    """Fine-tune ``model_or_folder`` on ``data`` for ``steps`` optimizer steps; save the EMA model to ``out``.

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
    from ..data.images import check_resize, load_images
    from ..sources.conditioning import conditioning
    from ..sources.loader import FromSource, load_source
    from ..sources.unet import versions
    from ..data.stream import is_shards

    if prompts is not None:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise DiffPruneError(f"prompts must be a non-empty list of strings; got {prompts[:3]!r}.")
        if not (isinstance(data, str) and data.startswith("generate:")):
            raise DiffPruneError("prompts (--prompts) go with --data generate:N, the prompts the training samples are "
                                 "drawn with; image data brings its own captions (same-stem .txt files, a JSONL's "
                                 "\"text\", tar shards' NAME.txt).")
    _check(steps, batch_size, lr, grad_accum, kd_weight, teacher, mixed_precision, lr_schedule, ema_decay, checkpoint_every,
           caption_dropout, feature_kd_weight, checkpoint_minutes)
    from ..pruning.calibration import check_guidance

    guidance_scale = check_guidance(guidance_scale, data, prompts)  # None unless samples are drawn with prompts
    check_resize(resize)
    out = Path(out)
    checkpoint_dir = checkpoint_folder(out, checkpoint_dir)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = _mixed_precision(mixed_precision, "cpu" if device == "cpu" else "cuda")
    accelerator = Accelerator(mixed_precision=precision, cpu=device == "cpu")
    if accelerator.is_main_process:
        check_writable(out, overwrite)
    torch.manual_seed(seed)  # module initialisation, if any, is seeded too

    streaming = bool(stream) or is_shards(data)
    if streaming:
        _check_stream(data, precompute, num_images)
    student, scheduler_config, source = load_source(model_or_folder, device="cpu")
    cond = conditioning(student)
    student = student.float().train()
    teacher_model = None
    if teacher is not None:
        teacher_model, _, teacher_source = load_source(teacher, device="cpu")
        _check_teacher(cond, conditioning(teacher_model))
        teacher_model = teacher_model.float().eval().requires_grad_(False).to(accelerator.device)
    cfg = student.config
    size = (cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    streamed = examples = None
    # An unconditional latent DDPM (an LDM pipeline's UNet over its VQModel) needs its autoencoder too.
    latent_vae = _pick("vae", vae, model_or_folder, teacher, accelerator.device) if cond.kind == "none" else None
    if streaming:
        text_encoder, vae = (None, None) if cond.kind == "none" and latent_vae is None else _frozen_parts(
            data, student, cond, _pick("text_encoder", text_encoder, model_or_folder, teacher, accelerator.device),
            _pick("vae", vae, model_or_folder, teacher, accelerator.device), accelerator.device)
        streamed = _StreamedExamples(data, seed, student, cond, size, resize, text_encoder, vae, accelerator.device)
    elif isinstance(data, str) and data.startswith("generate:"):
        examples, text_encoder = _generated_examples(
            data, teacher_model or student, student, cond,
            _pick("text_encoder", text_encoder, model_or_folder, teacher, accelerator.device),
            _pick("vae", vae, model_or_folder, teacher, accelerator.device), prompts, scheduler_config, seed, precompute,
            progress and accelerator.is_main_process, accelerator.device, guidance_scale)
        vae = None
    elif cond.kind != "none" or latent_vae is not None:
        examples, text_encoder, vae = _conditional_examples(
            data, student, cond, _pick("text_encoder", text_encoder, model_or_folder, teacher, accelerator.device),
            _pick("vae", vae, model_or_folder, teacher, accelerator.device), caption_dropout, precompute,
            num_images, seed, resize, accelerator.device)
    else:
        examples = _Examples(cond, size, load_images(data, size, cfg.in_channels, limit=num_images, seed=seed, resize=resize),
                             device=accelerator.device)
    alphas_cumprod, prediction, num_train = _targets(scheduler_config)
    alphas_cumprod = alphas_cumprod.to(accelerator.device)

    projector = taps = None
    if feature_kd_weight > 0:
        from . import feature_kd

        projector = feature_kd.projections(student, teacher_model, seed).to(accelerator.device)
        taps = feature_kd.Tap(student), feature_kd.Tap(teacher_model)
    trainable = list(student.parameters()) + (list(projector.parameters()) if projector is not None else [])
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, eps=1e-8)
    lr_scheduler = get_scheduler(lr_schedule, optimizer, num_warmup_steps=warmup_steps, num_training_steps=steps)
    if projector is not None and any(True for _ in projector.parameters()):
        # Prepared like the student, so that several processes average the maps' gradients too.
        student, projector, optimizer = accelerator.prepare(student, projector, optimizer)
    else:
        student, optimizer = accelerator.prepare(student, optimizer)
    unwrapped = accelerator.unwrap_model(student)
    unwrapped_projector = accelerator.unwrap_model(projector) if projector is not None else None
    ema = EMAModel(unwrapped.parameters(), decay=ema_decay, use_ema_warmup=True, power=3 / 4) if ema_decay > 0 else None
    if ema is not None:
        ema.to(accelerator.device)

    start_step, resumed_from, losses = 0, None, []
    if resume:
        path = latest_checkpoint(checkpoint_dir)
        if path is None:
            raise DiffPruneError(f"--resume found no checkpoint in {str(checkpoint_dir)!r}. Start without --resume, "
                                 "or point --checkpoint-dir at the earlier run's checkpoints.")
        start_step = resumed_from = load_checkpoint(path, unwrapped, ema, optimizer, lr_scheduler, unwrapped_projector)
        _restore_data(path, streamed)
        losses = _saved_losses(path, start_step)
        if start_step >= steps:
            raise DiffPruneError(f"The checkpoint {str(path)!r} is at step {start_step}, and this run asks for {steps} "
                                 "steps: nothing is left to train. Give --steps above it, or start without --resume.")
        if accelerator.is_main_process:
            import sys

            print(f"fine-tune: resuming from step {start_step} of {steps} (checkpoint {path}); {steps - start_step} "
                  f"steps to go", file=sys.stderr, flush=True)
    config = {"data": str(data), "resize": resize, "steps": steps, "batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps,
              "lr_schedule": lr_schedule, "weight_decay": weight_decay, "grad_clip": grad_clip, "grad_accum": grad_accum,
              "ema_decay": ema_decay, "mixed_precision": precision, "kd_weight": kd_weight, "seed": seed,
              "teacher": str(teacher) if teacher is not None else None,
              "num_images": len(examples) if examples is not None else None, "stream": streaming,
              "conditioning": cond.kind, "feature_kd_weight": feature_kd_weight}
    if projector is not None:
        config["feature_kd"] = {"blocks": taps[0].names, "projected": [
            name for name, m in zip(taps[0].names, unwrapped_projector.maps) if not isinstance(m, torch.nn.Identity)]}
    latent_note = (f"{type(vae).__name__} (scaling_factor {vae.config.scaling_factor}), frozen, not saved"
                   if vae is not None and not isinstance(vae, FromSource) else None)
    if cond.text_width:
        generated = isinstance(data, str) and data.startswith("generate:")
        config.update(caption_dropout=caption_dropout, precompute=precompute, text_encoder=text_encoder.source or "given",
                      vae=latent_note or ("none (samples drawn as the UNet's own inputs)" if generated else "none (pixel space)"))
    elif latent_vae is not None:
        config.update(vae=latent_note or "none (samples drawn as the UNet's own inputs)")
    if prompts is not None:
        config["generate"] = {"from": "teacher" if teacher_model is not None else "the model itself",
                              "prompts": len(prompts), "guidance_scale": guidance_scale}

    rank, world = accelerator.process_index, accelerator.num_processes
    per_rank = max(1, batch_size // world)
    last_loss = float("nan")
    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, desc="fine-tune",
               disable=quiet(progress and accelerator.is_main_process))
    lines = ProgressLines("fine-tune: step", steps, enabled=progress and accelerator.is_main_process, start=start_step)
    started = last_saved = time.perf_counter()
    try:
        for step in bar:
            step_loss = step_feature = 0.0
            for micro in range(grad_accum):
                g = torch.Generator().manual_seed(_stream(seed, step, rank, micro))
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
                extra = batch.conditioning(idx, g, caption_dropout)  # the student's and the teacher's alike
                a = alphas_cumprod[t].view(-1, 1, 1, 1)
                xt = a.sqrt() * x0 + (1 - a).sqrt() * noise  # q(x_t | x_0)
                target = {"epsilon": noise, "sample": x0, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0}[prediction]
                sync = micro == grad_accum - 1
                with contextlib.ExitStack() as context:
                    if not sync and world > 1:
                        for module in (student, projector):
                            if module is not None:
                                context.enter_context(accelerator.no_sync(module))
                    with accelerator.autocast():
                        pred = student(xt, t, **extra).sample
                        loss = F.mse_loss(pred.float(), target)
                        if teacher_model is not None and (kd_weight > 0 or projector is not None):
                            with torch.no_grad():
                                teacher_pred = teacher_model(xt, t, **extra).sample.float()
                            if kd_weight > 0:
                                loss = loss + kd_weight * F.mse_loss(pred.float(), teacher_pred)
                            if projector is not None:  # the taps hold this forward's block outputs
                                feature = feature_kd.loss(projector(taps[0].take()), taps[1].take())
                                loss = loss + feature_kd_weight * feature
                                step_feature += feature.item() / grad_accum
                    accelerator.backward(loss / grad_accum)
                step_loss += loss.item() / grad_accum
            if grad_clip > 0:
                accelerator.clip_grad_norm_(trainable, grad_clip)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(unwrapped.parameters())
            if not math.isfinite(step_loss):
                raise DiffPruneError(f"The loss became {step_loss} at step {step + 1}; lower lr (now {lr}) or use mixed_precision no.")
            last_loss = step_loss
            done = step + 1
            if done % log_every == 0 or done == steps:
                losses.append([done, round(step_loss, 6), lr_scheduler.get_last_lr()[0]]
                              + ([round(step_feature, 6)] if projector is not None else []))
            elapsed = time.perf_counter() - started
            bar.set_postfix(loss=f"{step_loss:.4f}", steps_per_s=f"{(done - start_step) / max(elapsed, 1e-9):.2f}")
            lines.update(done, f", loss {step_loss:.4f}")
            if done < steps and (checkpoint_every and done % checkpoint_every == 0
                                 or _time_for_checkpoint(last_saved, checkpoint_minutes, accelerator)):
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
    report = FinetuneReport(steps=steps, final_loss=last_loss, losses=losses, seconds=seconds,
                            steps_per_s=(steps - start_step) / max(seconds, 1e-9), world_size=world,
                            ranks_identical=identical, resumed_from=resumed_from, mixed_precision=precision,
                            device=str(accelerator.device), steps_this_run=steps - start_step)
    if accelerator.is_main_process:
        import copy

        final = copy.deepcopy(unwrapped).float().eval()
        if ema is not None:
            ema.copy_to(final.parameters())
        info = {}
        if source.get("format") == "diffprune":
            info = {k: v for k, v in read_info(source["source"]).items() if k not in ("widths", "params", "macs", "versions", "dtype", "format")}
        info.setdefault("source", source)
        info["finetune"] = {**config, **{k: v for k, v in report.to_dict().items() if k != "losses"}, "versions": versions()}
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["step", "loss", "lr"] + (["feature_kd"] if projector is not None else []))
        writer.writerows(losses)
        # A UNet of a pipeline is saved as a pipeline, its other parts from wherever they came from.
        carried = (model_or_folder, teacher, getattr(text_encoder, "src", None), getattr(vae, "src", None))
        save(final, out, info=info, scheduler_config=scheduler_config, overwrite=overwrite or resume,
             extra_files={"loss.csv": text.getvalue(), "finetune.json": json.dumps(report.to_dict(), indent=1)},
             pipeline=next((src for src in carried if pipeline_source(src)), None))
        remove_checkpoints(checkpoint_dir)  # OUT is complete: nothing is left to resume
    accelerator.wait_for_everyone()
    return report


def _time_for_checkpoint(last_saved: float, minutes: float, accelerator) -> bool:
    """Whether ``minutes`` have passed since the last checkpoint, decided by the first process and shared, so
    that every process reaches the checkpoint's barrier together (clocks and paces differ)."""
    if not minutes:
        return False
    due = time.perf_counter() - last_saved >= 60 * minutes
    if accelerator.num_processes > 1:
        import torch
        from accelerate.utils import broadcast

        due = bool(broadcast(torch.tensor([int(due)], device=accelerator.device), from_process=0).item())
    return due


def _saved_losses(path, step: int) -> list:
    """The loss.csv rows a checkpoint holds (up to its step), so a resumed run's loss.csv is whole."""
    import sys

    saved = json.loads((Path(path) / "state.json").read_text()).get("losses")
    if saved is None:
        print(f"fine-tune: warning: the checkpoint {str(path)!r} holds no loss history (written by an older diffprune); "
              f"loss.csv will start after step {step}.", file=sys.stderr)
        return []
    return [row for row in saved if row[0] <= step]


def _pick(part, given, src, teacher, device):
    """A frozen pipeline part: the one given, else SRC's (a pipeline folder, arch:NAME), else the teacher's."""
    from ..sources.loader import FromSource

    if given is not None:
        return given
    for source in (src, teacher):
        if source is not None and FromSource(source, part).available():
            return FromSource(source, part, device)
    return None


def _check_stream(data, precompute, num_images):
    if isinstance(data, str) and data.startswith("generate:"):
        raise DiffPruneError(f"Data {data!r} is drawn into memory and cannot be streamed; leave out --stream.")
    if precompute:
        raise DiffPruneError("--precompute encodes the whole data set once before training, which streamed data "
                             f"({data!r}) does not allow: its batches are encoded as they are read. Leave out one of them.")
    if num_images is not None:
        raise DiffPruneError(f"--num-images picks a subset of data held in memory; streamed data ({data!r}) is read "
                             "whole, in seeded epochs. Leave out --num-images, or give a smaller folder or fewer shards.")


def _restore_data(path, streamed) -> None:
    """Put the stream back where the checkpoint ``path`` left it; refuse a checkpoint of the other kind."""
    saved = json.loads((Path(path) / "state.json").read_text()).get("data")
    if streamed is None and saved is not None:
        raise DiffPruneError(f"The checkpoint {str(path)!r} was written by a run that streamed its data; resume it with "
                             "--stream (stream=True) and the same data, or start afresh.")
    if streamed is not None:
        if saved is None:
            raise DiffPruneError(f"The checkpoint {str(path)!r} was written by a run that held its data in memory; "
                                 "resume it without --stream, or start afresh.")
        streamed.stream.restore(saved)


def _stream(seed: int, step: int, rank: int, micro: int) -> int:
    """A distinct, reproducible generator seed for each (seed, step, rank, micro-batch)."""
    return (((seed * 1_000_003 + step) * 1_009 + rank) * 101 + micro) % (2**63)
