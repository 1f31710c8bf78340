"""Every fine-tuning option in one documented object (as transformers' ``TrainingArguments``): ``FinetuneConfig``.

``diffprune.finetune(src, out, FinetuneConfig(steps=2000, kd_weight=1, teacher=...))`` and the keyword form
``diffprune.finetune(src, out, steps=2000, ...)`` are the same call; the CLI builds one from its flags. The
options are checked together before any work (one clear error naming the option, the value and what is
allowed), and written into the fine-tuned model's record.
"""

import dataclasses
from dataclasses import dataclass

from ..errors import DiffPruneError

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
LR_SCHEDULES = ("constant_with_warmup", "cosine", "linear")
PIXEL_LOSSES = ("l2", "l1")


@dataclass
class FinetuneConfig:
    """Fine-tuning options and their defaults (the keywords of :func:`diffprune.finetune`)."""

    # What to train on: builtin:digits, an image folder (captions in same-stem .txt files), a .npy/.npz, a JSONL,
    # tar shards, or generate:N (N samples drawn from the teacher, else the model itself).
    data: object = "builtin:digits"
    num_images: int | None = None  # use this many images of in-memory data (None: all)
    resize: str = "bilinear"  # how images of another size reach the model's: bilinear, pad or center-crop
    stream: bool = False  # read the data batch by batch from disk (folders, JSONL; shards always stream)
    prompts: list | None = None  # text models with generate:N: the prompts the samples are drawn with
    guidance_scale: float | None = None  # classifier-free guidance those samples are drawn with (default 7.5)
    caption_dropout: float = 0.1  # fraction of captions replaced by the empty prompt (keeps guidance working)
    precompute: bool = False  # encode latents and text embeddings once before training, not every batch

    # The optimisation: AdamW (betas 0.9/0.999, eps 1e-8) with warm-up, clipping, accumulation and EMA weights.
    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # images per optimizer step, over all processes
    lr: float = 2e-4
    warmup_steps: int = 100
    lr_schedule: str = "constant_with_warmup"  # or cosine, linear (diffusers' schedules)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    grad_accum: int = 1  # micro-batches per optimizer step
    ema_decay: float = 0.9999  # the saved model is the EMA one (0 = no EMA)
    mixed_precision: str = "auto"  # auto (bf16 where the GPU has it, else fp16; fp32 on the CPU), no, bf16, fp16
    seed: int = 0  # batches, noise and timesteps of step k on rank r come from (seed, k, r)
    device: str = "auto"  # auto (cuda if available), cpu, cuda
    threads: int | None = None  # torch CPU threads (None: the cores this process may use; diffprune.threads)

    # Distillation from the dense model.
    teacher: object = None  # a model source: the dense model the student learns from
    kd_weight: float = 0.0  # weight of the output distillation term (the teacher's prediction on the same input)
    feature_kd_weight: float = 0.0  # weight of BK-SDM's block-output term (learned 1x1 maps where widths differ)
    pixel_loss: str = "l2"  # decoder distillation (diffprune.training.decoder): l2 or l1 between the images

    # Checkpoints for exact resume (safetensors + JSON, in OUT.ckpt unless checkpoint_dir), deleted once OUT is written.
    checkpoint_every: int = 500  # steps between checkpoints (0 = none by count)
    checkpoint_minutes: float = 10.0  # also after this many minutes, so an early stop has something to resume (0 = off)
    checkpoint_dir: object = None
    resume: bool = False  # continue from the latest checkpoint, loss history included
    log_every: int = 10  # steps between loss.csv rows

    @classmethod
    def of(cls, config: "FinetuneConfig | None" = None, **options) -> "FinetuneConfig":
        """``config`` (default: the defaults) with ``options`` set, checked."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise DiffPruneError(f"Unknown fine-tuning option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                                 f"allowed: {', '.join(sorted(names))} (diffprune.training.config.FinetuneConfig).")
        if config is not None and not isinstance(config, cls):
            raise DiffPruneError(f"config must be a FinetuneConfig, not a {type(config).__name__}; or pass the options "
                                 "as keywords.")
        return dataclasses.replace(config or cls(), **options).checked()

    def checked(self) -> "FinetuneConfig":
        """A copy with prompts as a list and the guidance resolved, or a clear error for a bad combination."""
        from ..data.images import check_resize
        from ..pruning.calibration import check_guidance

        prompts = self.prompts
        generating = isinstance(self.data, str) and self.data.startswith("generate:")
        if prompts is not None:
            prompts = [prompts] if isinstance(prompts, str) else list(prompts)
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise DiffPruneError(f"prompts must be a non-empty list of strings; got {prompts[:3]!r}.")
            if not generating:
                raise DiffPruneError("prompts (--prompts) go with --data generate:N, the prompts the training samples are "
                                     "drawn with; image data brings its own captions (same-stem .txt files, a JSONL's "
                                     "\"text\", tar shards' NAME.txt).")
        self._check_numbers()
        guidance = check_guidance(self.guidance_scale, self.data, prompts)  # None unless samples are drawn with prompts
        check_resize(self.resize)
        return dataclasses.replace(self, prompts=prompts, guidance_scale=guidance)

    def _check_numbers(self) -> None:
        if not 0 <= self.caption_dropout <= 1:
            raise DiffPruneError(f"caption_dropout {self.caption_dropout} is out of range; allowed 0 <= p <= 1 (0.1 is usual: "
                                 "one caption in ten replaced by the empty prompt, so classifier-free guidance keeps working).")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise DiffPruneError(f"steps {self.steps!r} is invalid; allowed: an integer >= 1.")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise DiffPruneError(f"batch_size {self.batch_size} and grad_accum {self.grad_accum} must be >= 1.")
        if not self.lr > 0:
            raise DiffPruneError(f"lr {self.lr} must be positive (2e-4 is a good start for DDPM UNets).")
        if self.kd_weight < 0:
            raise DiffPruneError(f"kd_weight {self.kd_weight} must be >= 0.")
        if self.kd_weight > 0 and self.teacher is None:
            raise DiffPruneError("kd_weight > 0 distils from a teacher, but no teacher was given: pass teacher= "
                                 "(CLI --teacher) with the dense model, or set kd_weight to 0.")
        if self.feature_kd_weight < 0:
            raise DiffPruneError(f"feature_kd_weight {self.feature_kd_weight} must be >= 0 (0 = off; BK-SDM uses 1).")
        if self.feature_kd_weight > 0 and self.teacher is None:
            raise DiffPruneError("feature_kd_weight > 0 distils the teacher's block outputs, but no teacher was given: pass "
                                 "teacher= (CLI --teacher) with the dense model, or set feature_kd_weight to 0.")
        if self.pixel_loss not in PIXEL_LOSSES:
            raise DiffPruneError(f"pixel_loss {self.pixel_loss!r} is unknown; allowed: {', '.join(PIXEL_LOSSES)} (the "
                                 "decoder distillation's error between the student's and the dense decoder's images).")
        from ..threads import check_threads

        check_threads(self.threads)
        if self.mixed_precision not in MIXED_PRECISION:
            raise DiffPruneError(f"mixed_precision {self.mixed_precision!r} is unknown; allowed: {', '.join(MIXED_PRECISION)}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise DiffPruneError(f"lr_schedule {self.lr_schedule!r} is unknown; allowed: {', '.join(LR_SCHEDULES)}.")
        if not 0 <= self.ema_decay < 1:
            raise DiffPruneError(f"ema_decay {self.ema_decay} is out of range; allowed 0 <= decay < 1 (0 disables EMA).")
        if self.checkpoint_every < 0:
            raise DiffPruneError(f"checkpoint_every {self.checkpoint_every} must be >= 0 (0 = only at the end).")
        if not self.checkpoint_minutes >= 0:
            raise DiffPruneError(f"checkpoint_minutes {self.checkpoint_minutes} must be >= 0 (0 = no time-based "
                                 "checkpoints; default 10).")
