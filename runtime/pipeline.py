"""Prompt -> uint8 images for an exported pipeline (pipeline.json), torch-free.

The steps are diffusers' StableDiffusionPipeline / StableDiffusionXLPipeline / LDMPipeline, on the
runtime's runners and numpy schedulers:

  1. tokenize (runtime/text.py, CLIP BPE on ``tokenizers``); a prompt over the tokenizer's limit (77) is
     cut there, as diffusers does, with a :class:`PromptTruncated` warning naming the prompts
  2. text encoder(s) on one doubled batch [negative prompts; prompts] (classifier-free guidance, Ho & Salimans
     2022, arXiv 2207.12598); SDXL: both encoders' hidden states concatenated, text_embeds pooled from
     text_encoder_2, time_ids (original size, crop, target size); a missing negative prompt is zeros there
     when the pipeline says ``force_zeros_for_empty_prompt``, as diffusers does
  3. starting latents: image i from ``default_rng([seed, i])`` (runtime/sampler.py's convention), times the
     scheduler's ``init_noise_sigma``; ``noise=`` replaces the draw (it is diffusers' ``latents=`` argument)
  4. per step: ``scale_model_input``, the UNet on [x; x] with [uncond; cond] conditioning, then
     eps = eps_u + g (eps_c - eps_u) (Eq. 6 of Ho & Salimans; g <= 1 runs the prompts alone, as diffusers'
     ``do_classifier_free_guidance = g > 1``), then the scheduler's step
     With ``cache_interval`` N > 1 (step caching, DeepCache): the full UNet at steps 0, N, 2N, ..., keeping its
     deep feature, and the export's shallow UNet graph on it between (runtime/sampler.py's ``StepCache``)
  5. decode latents / scaling_factor (+ shift_factor) with the VAE (or VQ) decoder; clip to [-1, 1], uint8.
     Pixel-space pipelines (pixel, class-conditional without a VAE, text-to-image-pixel: builtin:digits-text) have
     no decoder: the UNet's samples are the images, clipped and mapped to uint8 as runtime/sampler.py does

Same seed -> same image at any batch size (for one backend): every random draw is per image.
"""

import time
import warnings
from pathlib import Path

import numpy as np

from .errors import DiffPruneError
from .formats import TEXT_KINDS, check_text_fits, is_pipeline, read_pipeline_json, scheduler_name  # noqa: F401 (is_pipeline re-exported)
from .sampler import StepCache, initial_noise, step_noise, step_rngs, to_uint8


class PromptTruncated(UserWarning):
    """A prompt was longer than the tokenizer's limit and was cut, as diffusers cuts it."""


def _as_list(value, n: int, what: str) -> list:
    values = [value] * n if value is None or isinstance(value, str) else list(value)
    if len(values) != n:
        raise DiffPruneError(f"{len(values)} {what}s given for {n} images; give one, or one per image.")
    return values


class Pipeline:
    """An exported pipeline on one backend. ``with Pipeline(folder) as pipe: images = pipe.generate("a cat")``.

    ``backend``/``threads`` as for :func:`open_runner`, for every component alike. After ``generate``,
    ``last_timing`` holds seconds per component (text encoders, UNet, decoder), the sampler's own part
    (tokenizing, noise, scheduler steps, guidance, uint8), the total, and the UNet calls.
    """

    def __init__(self, folder, backend: str = "auto", threads: int | None = None):
        self.folder = Path(folder)
        self.spec = read_pipeline_json(self.folder)
        self.kind = self.spec["kind"]
        self.backend, self.threads = backend, threads
        self.runners, self.tokenizers = {}, {}
        self.scheduler_config = dict(self.spec.get("scheduler") or {})
        self.guidance = dict(self.spec.get("guidance") or {})
        self.latent = self.spec.get("latent")
        self.decoder = next((n for n in ("vae_decoder", "vq_decoder") if n in self.spec["components"]), None)
        self.last_timing, self.notes = {}, []
        self.auto = None  # with backend "auto": what was measured and chosen (runtime/auto.py)

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def open(self, runners: dict | None = None):
        """Open every component on the backend; ``runners`` (component name -> an open Runner) replaces that
        for the components it names: a Triton Python-backend model passes runners that call the component models
        over BLS (export/triton_pipeline.py), so the loop below runs inside the server unchanged."""
        from .runners import open_runner
        from .text import ClipTokenizer

        opens_any = any(name not in (runners or {}) for name in self.spec["components"])
        if self.backend == "auto" and opens_any:  # one choice for every component, measured on the UNet (it runs every step)
            from .runners import choose_auto

            self.auto = choose_auto(self.folder, threads=self.threads)
            self.backend = self.auto["chosen"]
        try:
            for name, sub in self.spec["components"].items():
                given = (runners or {}).get(name)
                self.runners[name] = given if given is not None else open_runner(
                    self.folder / sub, self.backend, threads=self.threads).open()
            for name, runner in self.runners.items():
                # once per image: their pooled memory is given back after each call instead of held beside the UNet's
                if name not in ("unet", "unet_shallow") and name not in (runners or {}):
                    runner.release_after_call = True
            for encoder in ("text_encoder", "text_encoder_2"):
                if encoder in self.runners:
                    sub = (self.spec.get("tokenizers") or {}).get(encoder, encoder.replace("text_encoder", "tokenizer"))
                    self.tokenizers[encoder] = ClipTokenizer.from_folder(self.folder / sub, embedded=True)
        except BaseException:
            self.close()
            raise
        unet = self.runners["unet"]
        wanted = {"text-to-image": {"encoder_hidden_states"}, "text-to-image-pixel": {"encoder_hidden_states"},
                  "text-to-image-xl": {"encoder_hidden_states", "text_embeds", "time_ids"},
                  "class-conditional": {"class_labels"}}.get(self.kind, set())
        if set(unet.conditioning) != wanted:
            self.close()
            raise DiffPruneError(
                f"The UNet in {str(self.folder)!r} takes {', '.join(unet.conditioning) or 'no conditioning'}, but the "
                f"pipeline is {self.kind}, whose UNet takes {', '.join(sorted(wanted)) or 'none'}. The export is "
                "inconsistent: re-run `diffprune export`.")
        try:
            check_text_fits({name: r.meta for name, r in self.runners.items()}, self.folder)
        except DiffPruneError:
            self.close()
            raise
        return self

    def close(self):
        for runner in self.runners.values():
            runner.close()
        self.runners = {}

    # -- conditioning -----------------------------------------------------------------------------------

    def _tokens(self, encoder: str, prompts: list) -> np.ndarray:
        tokens = self.tokenizers[encoder](prompts)
        if tokens.truncated:
            tok = self.tokenizers[encoder]
            first = {}  # one row per distinct prompt
            for i in tokens.truncated:
                first.setdefault(prompts[i], i)
            note = (f"{len(first)} prompt(s) longer than {tok.max_length} tokens were truncated, as CLIP (and diffusers) "
                    f"truncate them; what the model reads ends at "
                    + "; ".join(repr("..." + tok.decode(tokens.ids[i])[-40:]) for i in list(first.values())[:3]) + ".")
            if note not in self.notes:
                self.notes.append(note)
                warnings.warn(note, PromptTruncated, stacklevel=3)
        return tokens.ids  # (B, L) int64, L the tokenizer's max_length

    def _encode(self, encoder: str, prompts: list) -> dict:
        runner = self.runners[encoder]
        return _infer_in_chunks(runner, {"input_ids": self._tokens(encoder, prompts)})

    def conditioning(self, prompts: list, negatives: list, cfg: bool) -> dict:
        """The UNet's conditioning inputs for the (doubled, with ``cfg``) batch, rows [uncond; cond]."""
        b = len(prompts)
        if self.kind in ("text-to-image", "text-to-image-pixel"):
            texts = ([n if n is not None else "" for n in negatives] if cfg else []) + prompts
            return {"encoder_hidden_states": self._encode("text_encoder", texts)["hidden_states"]}  # (2B, L, D)
        # SDXL: both encoders; a negative left as None is zeros where the pipeline forces them (diffusers'
        # force_zeros_for_empty_prompt, default True), else the empty prompt.
        zeros = cfg and all(n is None for n in negatives) and bool((self.spec.get("xl") or {}).get(
            "force_zeros_for_empty_prompt", True))
        texts = prompts if (zeros or not cfg) else [n if n is not None else "" for n in negatives] + prompts
        first = self._encode("text_encoder", texts)
        second = self._encode("text_encoder_2", texts)
        hidden = np.concatenate([first["hidden_states"], second["hidden_states"]], axis=-1)  # (B', L, D1 + D2)
        pooled = second["text_embeds"]  # (B', P)
        if zeros:
            hidden = np.concatenate([np.zeros_like(hidden), hidden])
            pooled = np.concatenate([np.zeros_like(pooled), pooled])
        h, w = self.image_size
        time_ids = (self.spec.get("xl") or {}).get("add_time_ids") or [h, w, 0, 0, h, w]
        rows = 2 * b if cfg else b
        return {"encoder_hidden_states": hidden.astype(np.float32, copy=False),
                "text_embeds": pooled.astype(np.float32, copy=False),
                "time_ids": np.tile(np.asarray(time_ids, np.float32), (rows, 1))}  # (2B, 6)

    @property
    def image_size(self) -> tuple:
        size = (self.spec.get("image") or {}).get("size")
        if size:
            return tuple(size)
        unet = self.runners["unet"]
        factor = (self.latent or {}).get("vae_factor", 8) if self.decoder else 1
        return tuple(int(s) * factor for s in unet.sample_size)

    # -- sampling ---------------------------------------------------------------------------------------

    def generate(self, prompt=None, n: int | None = None, negative_prompt=None, guidance: float | None = None,
                 steps: int = 50, scheduler: str | None = None, seed: int = 0, batch: int | None = None,
                 noise: np.ndarray | None = None, class_labels=None, eta: float = 0.0, output: str = "uint8",
                 cache_interval: int = 1):
        """Images for ``prompt`` (a string for all ``n`` images, or one per image): uint8 (N, H, W, C), or float32
        (N, C, H, W) in [-1, 1] with ``output="float"``.

        ``negative_prompt`` (one, or one per image; default the pipeline's), ``guidance`` (default the
        pipeline's, 7.5 for Stable Diffusion; <= 1 turns guidance off), ``scheduler`` (ddim, ddpm,
        dpm-solver++, euler; default the pipeline's own class), ``batch`` images per UNet call (doubled with
        guidance), ``noise`` (N, C, h, w) standard normal starting latents in place of the seeded draw (scaled
        by init_noise_sigma, as diffusers scales its ``latents=``), ``class_labels`` for class-conditional UNets,
        ``cache_interval`` N > 1: the whole UNet every N-th step, its shallow graph between (an export made with
        step caching; the shallow graph opens on first use, as component "unet_shallow").
        """
        from .schedulers import make_scheduler

        if not self.runners:
            raise DiffPruneError("The pipeline is not open; use `with Pipeline(folder) as pipe:` (or call open()).")
        if cache_interval != 1 and "unet_shallow" not in self.runners:
            from .runners import open_shallow

            self.runners["unet_shallow"] = open_shallow(self.runners["unet"], cache_interval)
        elif cache_interval != 1:
            from .formats import read_step_cache

            read_step_cache(self.runners["unet"].folder, self.runners["unet"].meta, cache_interval)  # checks N
        started = time.perf_counter()
        before = {name: r.seconds for name, r in self.runners.items()}
        shallow_calls = self.runners["unet_shallow"].calls if "unet_shallow" in self.runners else 0
        calls_before = self.runners["unet"].calls
        text = self.kind in TEXT_KINDS
        # 1. what to generate
        if text:
            if prompt is None:
                raise DiffPruneError(f"This is a {self.kind} pipeline: give a prompt (--prompt \"a photo of a cat\").")
            prompts = [prompt] * (1 if n is None else n) if isinstance(prompt, str) else list(prompt)
            if n is not None and n < 1:  # n=0 is an error, not "one image"
                raise DiffPruneError(f"n {n} must be at least 1.")
            n = len(prompts)
            prompts = _as_list(prompts, n, "prompt")
            if any(not isinstance(p, str) for p in prompts):
                raise DiffPruneError("Prompts must be strings.")
        else:
            if prompt is not None or negative_prompt is not None:
                raise DiffPruneError(f"This is a {self.kind} pipeline, which takes no prompt (its UNet has no text "
                                     "conditioning); leave --prompt and --negative-prompt out, or export a "
                                     "text-to-image pipeline.")
            if n is None:
                n = len(class_labels) if class_labels is not None and not np.isscalar(class_labels) else 1
            prompts = [None] * n
        if n < 1:
            raise DiffPruneError(f"n {n} must be at least 1.")
        g = float(self.guidance.get("scale", 7.5 if text else 1.0) if guidance is None else guidance)
        if not np.isfinite(g) or g < 0:
            raise DiffPruneError(f"Guidance scale {guidance} is not allowed; give a number >= 0 (7.5 is Stable "
                                 "Diffusion's default; <= 1 turns classifier-free guidance off).")
        cfg = g > 1.0
        if cfg and not text:
            raise DiffPruneError(f"Guidance scale {g} needs a text-conditioned pipeline; this {self.kind} pipeline "
                                 "samples without classifier-free guidance: use a scale of 1.")
        default_negative = self.guidance.get("negative_prompt") or None
        negatives = _as_list(default_negative if negative_prompt is None else negative_prompt, n, "negative prompt")
        labels = None
        if self.kind == "class-conditional":
            if class_labels is None:
                raise DiffPruneError("This is a class-conditional pipeline: give class labels (--class-label 3).")
            labels = np.asarray([int(class_labels)] * n if np.isscalar(class_labels) else list(class_labels), np.int64)
            classes = self.spec.get("num_classes")
            if labels.shape != (n,) or (classes and (labels.min() < 0 or labels.max() >= classes)):
                raise DiffPruneError(f"class_labels {labels.tolist()} must be one per image (n={n}), each in "
                                     f"0..{(classes or 0) - 1}.")
        elif class_labels is not None:
            raise DiffPruneError(f"class_labels apply to class-conditional pipelines; this one is {self.kind}.")
        # 2. scheduler, batch
        name = scheduler or scheduler_name(self.scheduler_config)
        kwargs = {"eta": eta} if name == "ddim" else {}
        if eta and name != "ddim":
            raise DiffPruneError(f"eta applies to the ddim scheduler only, not {name}.")
        sched = make_scheduler(name, self.scheduler_config, **kwargs)
        sched.set_timesteps(steps)  # first: Euler's init_noise_sigma depends on the timesteps
        unet = self.runners["unet"]
        lo, hi = unet.batch_range
        mult = 2 if cfg else 1
        most = hi // mult
        if most < 1:
            raise DiffPruneError(f"The UNet's batch range {lo}..{hi} cannot hold the doubled batch guidance needs; "
                                 "re-export with a larger --max-batch.")
        batch = max(1, min(n, most)) if batch is None else batch
        if not 1 <= batch <= most:
            raise DiffPruneError(f"batch {batch} is outside 1..{most}: the UNet takes at most {hi} samples per call"
                                 + (" and guidance doubles the batch" if cfg else "") + ".")
        shape = (unet.in_channels, *unet.sample_size)
        if noise is not None:
            noise = np.asarray(noise, dtype=np.float32)
            if noise.shape != (n, *shape):
                raise DiffPruneError(f"noise has shape {noise.shape}; expected {(n, *shape)} (N, C, h, w).")
        out = []
        for start in range(0, n, batch):
            idx = list(range(start, min(start + batch, n)))
            pad = max(0, -(-lo // mult) - len(idx))  # a short last batch below the UNet's minimum: pad, then drop
            rows = idx + [idx[-1]] * pad
            x = noise[rows] * np.float32(sched.init_noise_sigma) if noise is not None else \
                initial_noise(shape, rows, seed, sched.init_noise_sigma)
            cond = self.conditioning([prompts[i] for i in rows], [negatives[i] for i in rows], cfg) if text else {}
            if labels is not None:
                cond = {"class_labels": labels[rows]}
            x = self._denoise(sched, steps, x, cond, g if cfg else None, step_rngs(idx, seed, pad), cache_interval)
            out.append(self.decode(x)[: len(idx)])
        images = np.concatenate(out)
        total = time.perf_counter() - started
        spent = {name: r.seconds - before[name] for name, r in self.runners.items()}
        text_s = sum(v for k, v in spent.items() if k.startswith("text_encoder"))
        decoder_s = spent.get(self.decoder, 0.0) if self.decoder else 0.0
        unet_s = spent["unet"] + spent.get("unet_shallow", 0.0)
        shallow = self.runners.get("unet_shallow")
        self.last_timing = {"total_s": total, "text_encoder_s": text_s, "unet_s": unet_s, "decoder_s": decoder_s,
                            "sampler_s": total - text_s - unet_s - decoder_s,
                            "unet_calls": unet.calls - calls_before + ((shallow.calls - shallow_calls) if shallow else 0),
                            "unet_shallow_s": spent.get("unet_shallow", 0.0), "cache_interval": cache_interval,
                            "guidance": g, "scheduler": name, "steps": steps}
        return images if output == "float" else to_uint8(images)

    def _denoise(self, sched, steps: int, x: np.ndarray, cond: dict, guidance, rngs, cache_interval: int = 1) -> np.ndarray:
        unet = self.runners["unet"]
        sched.set_timesteps(steps)
        # The UNet's pooled memory goes back after its last call, before the decoder runs (StepCache's steps)
        cached = StepCache(unet, self.runners.get("unet_shallow"), cache_interval, steps=len(sched.timesteps))
        for k, t in enumerate(sched.timesteps):
            x_in = sched.scale_model_input(x, t)  # (B, C, h, w)
            if guidance is not None:
                x_in = np.concatenate([x_in, x_in])  # (2B, C, h, w): [uncond; cond]
            eps = cached(k, x_in, np.full((len(x_in),), float(t), np.float32), **cond)
            if guidance is not None:
                eps_u, eps_c = np.split(eps, 2)
                eps = eps_u + np.float32(guidance) * (eps_c - eps_u)
            if not np.isfinite(eps).all():
                raise DiffPruneError(
                    f"The UNet produced NaN/Inf at step {k + 1} of {steps} (timestep {float(t):g}) on backend "
                    f"{unet.backend}. With an fp16 export this is overflow: use the fp32 export, or keep more ops "
                    "in fp32. No images were written.")
            x = sched.step(eps, t, x, noise=step_noise(rngs, x.shape[1:]) if sched.needs_noise else None).prev_sample
        return x

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """(B, C, h, w) latents -> (B, 3, H, W) float32 about [-1, 1] (the pixel UNet's sample as it is)."""
        if self.decoder is None:
            return latents
        latent = self.latent or {}
        z = latents / np.float32(latent.get("scaling_factor") or 1.0)
        if latent.get("shift_factor") is not None:
            z = z + np.float32(latent["shift_factor"])
        return _infer_in_chunks(self.runners[self.decoder], {"latent_sample": z.astype(np.float32)})["sample"]


def _infer_in_chunks(runner, feeds: dict) -> dict:
    """``runner.infer`` over a batch larger than the component takes (chunks of its maximum), or smaller than
    its minimum (padded with the last row, then dropped)."""
    lo, hi = runner.batch_range
    b = len(next(iter(feeds.values())))
    parts = []
    for start in range(0, b, hi):
        chunk = {k: v[start:start + hi] for k, v in feeds.items()}
        m = len(next(iter(chunk.values())))
        if m < lo:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], lo - m, axis=0)]) for k, v in chunk.items()}
        parts.append({k: v[:m] for k, v in runner.infer(chunk).items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
