"""What fine-tuning trains on: batches of clean samples (pixels, or latents of latent models) with the
conditioning they are denoised under, held in memory (``Examples``: images, captioned or labelled data,
``generate:N`` samples) or streamed from disk (``StreamedExamples``), and the frozen text encoder and VAE
that turn captions and images into the UNet's inputs."""

from ..errors import DiffPruneError


class Examples:
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


def frozen_parts(data, student, cond, text_encoder, vae, device, need_vae=True):
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


def conditional_examples(data, student, cond, text_encoder, vae, caption_dropout, precompute, num_images, seed, resize,
                          device):
    """Load ``data`` with what a conditional ``student`` needs; a clear error for what is missing."""
    from ..data.images import load_calibration
    from ..data.latents import pixel_size
    from ..sources.unet import sample_size

    size = sample_size(student)
    text_encoder, vae = frozen_parts(data, student, cond, text_encoder, vae, device)
    if vae is not None:
        found = load_calibration(data, pixel_size(student, vae), vae.config.in_channels, limit=num_images, seed=seed,
                                 resize=resize)
    else:
        found = load_calibration(data, size, student.config.in_channels, limit=num_images, seed=seed, resize=resize)
    if cond.text_width:
        found.require_captions(data, "fine-tuned")
    return Examples(cond, size, found.images, labels=_labels(found, data, cond),
                     captions=found.captions if cond.text_width else None, text_encoder=text_encoder, vae=vae,
                     precompute=precompute, device=device), text_encoder, vae


def generated_examples(data, model, student, cond, text_encoder, vae, prompts, scheduler_config, seed, precompute,
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
    text_encoder, _ = frozen_parts(data, student, cond, text_encoder, vae, device, need_vae=False)
    classes = list(range(cond.num_classes)) if cond.num_classes else None  # cycled: every class alike
    was_training = model.training
    samples, inputs, _ = generate_samples(model.to(device).eval(), scheduler_config, count, seed=seed, progress=progress,
                                          class_labels=classes, text_encoder=text_encoder, prompts=prompts, latent=latent,
                                          guidance_scale=guidance_scale)
    model.train(was_training)
    labels = inputs["class_labels"].tolist() if cond.num_classes else None
    captions = [prompts[i % len(prompts)] for i in range(count)] if cond.text_width else None
    # The samples are what the UNet denoises (latents for latent models): no VAE between them and it.
    return Examples(cond, sample_size(student), samples, labels=labels, captions=captions, text_encoder=text_encoder,
                     vae=None, precompute=precompute, device=device), text_encoder


class StreamedExamples:
    """Batches read from disk as training goes (diffprune.data.stream), each an :class:`Examples` with its
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

    def next(self, total: int, first: int, count: int) -> "Examples":
        """Take the next ``total`` examples of the stream; decode rows [first, first + count) of them."""
        from ..data.images import CalibrationData, _convert, describe
        from ..data.stream import Stream

        batch = Stream.read(self.stream.take(total)[first:first + count])
        images = _convert(batch.images, describe(self.data), self.pixels, self.channels, None, self.seed, self.resize,
                          self._warn_once)[0]
        found = CalibrationData(images=images, captions=batch.captions, labels=batch.labels, files=batch.names)
        if self.cond.text_width:
            found.require_captions(self.data, "fine-tuned")
        return Examples(self.cond, self.size, images, labels=_labels(found, self.data, self.cond),
                         captions=found.captions if self.cond.text_width else None, text_encoder=self.text_encoder,
                         vae=self.vae, device=self.device)


def pick_part(part, given, src, teacher, device):
    """A frozen pipeline part: the one given, else SRC's (a pipeline folder, arch:NAME), else the teacher's."""
    from ..sources.loader import FromSource

    if given is not None:
        return given
    for source in (src, teacher):
        if source is not None and FromSource(source, part).available():
            return FromSource(source, part, device)
    return None


def check_stream(data, precompute, num_images):
    if isinstance(data, str) and data.startswith("generate:"):
        raise DiffPruneError(f"Data {data!r} is drawn into memory and cannot be streamed; leave out --stream.")
    if precompute:
        raise DiffPruneError("--precompute encodes the whole data set once before training, which streamed data "
                             f"({data!r}) does not allow: its batches are encoded as they are read. Leave out one of them.")
    if num_images is not None:
        raise DiffPruneError(f"--num-images picks a subset of data held in memory; streamed data ({data!r}) is read "
                             "whole, in seeded epochs. Leave out --num-images, or give a smaller folder or fewer shards.")
