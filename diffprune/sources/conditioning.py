"""What a UNet is conditioned on, and the inputs that stand for that conditioning.

One description covers every UNet diffprune prunes; the unconditional pixel ``UNet2DModel`` is the
case with no conditioning at all:

    UNet2DModel                      (sample, timestep)
    UNet2DModel, num_class_embeds    + class_labels (B,)                      class-conditional DDPM
    UNet2DConditionModel             + encoder_hidden_states (B, 77, D)        Stable Diffusion 1.x/2.x
    ... addition_embed_type text_time + added_cond_kwargs: text_embeds (B, P),  SDXL
                                        time_ids (B, 6)

Text inputs come from the pipeline's frozen text encoder (diffprune.sources.text) applied to the captions or
prompts: ``inputs(..., text=encoded)``. Without a text encoder, the *empty-prompt stand-in* is used:
zeros of the text encoder's shape, 77 tokens (CLIP's context length, what the SD pipelines pad every
prompt to). Zeros are not what CLIP gives for "": with them cross-attention sees constant keys and
zero values, so its projections get no gradient and Diff-Pruning ranks those channels by weight
magnitude instead (diffprune.pruning.pruner says so in the report). SDXL's ``time_ids`` are the pipeline's defaults for
an uncropped image at the latent size times the VAE factor 8:
(original height, original width, crop top, crop left, target height, target width).
Class labels are drawn uniformly from ``range(num_class_embeds)`` with the run's seed, or given.
"""

from dataclasses import asdict, dataclass

from ..errors import DiffPruneError

TEXT_TOKENS = 77  # CLIP's context length; SD pipelines pad every prompt to it
VAE_SCALE = 8  # latent -> pixel factor of the SD/SDXL VAEs (2 ** (len(vae block_out_channels) - 1))
TIME_IDS = 6  # SDXL's micro-conditioning: original size (2), crop corner (2), target size (2)
MODEL_CLASSES = ("UNet2DModel", "UNet2DConditionModel")


@dataclass(frozen=True)
class Conditioning:
    model_class: str
    num_classes: int | None = None  # class_labels in range(num_classes)
    text_width: int | None = None  # encoder_hidden_states' last dim (the text encoder's width)
    text_tokens: int = TEXT_TOKENS
    added: str | None = None  # "text_time" for SDXL
    pooled_width: int | None = None  # SDXL text_embeds width (the pooled text embedding)
    text_inputs: str = "none"  # what the text inputs were: "none", "empty-prompt zeros", or the text encoder used

    @property
    def kind(self) -> str:
        parts = [p for p, on in (("class", self.num_classes), ("text", self.text_width),
                                 ("text_time", self.added)) if on]
        return "+".join(parts) or "none"

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    def check_labels(self, labels) -> list:
        """``labels`` as a list of ints, each in range(num_classes); a DiffPruneError otherwise."""
        if not self.num_classes:
            raise DiffPruneError(
                "class_labels were given, but the model has no class embedding (num_class_embeds is not set); "
                "leave them out for this model.")
        labels = list(labels)
        allowed = f"the model has num_class_embeds = {self.num_classes}, so labels are integers 0..{self.num_classes - 1}"
        if not labels:
            raise DiffPruneError(f"class_labels is empty; give at least one label ({allowed}).")
        bad = [x for x in labels if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < self.num_classes]
        if bad:
            raise DiffPruneError(f"class label{'s' if len(bad) > 1 else ''} {bad[:5]} out of range; {allowed}.")
        return labels

    def inputs(self, batch: int, size: tuple, device="cpu", class_labels=None, generator=None, text=None) -> dict:
        """Keyword inputs of the UNet beyond ``sample`` and ``timestep``, for ``batch`` samples of
        latent/pixel ``size`` (H, W). ``class_labels`` (list of ints) cycle over the batch; without
        them labels are drawn uniformly with ``generator`` (or all 0 when there is none). ``text``
        (diffprune.sources.text.Encoded, one row per sample) gives the text inputs; without it, zeros."""
        import torch

        out = {}
        if self.num_classes:
            if class_labels is not None:
                labels = torch.tensor(self.check_labels(class_labels), dtype=torch.long)
                labels = labels.repeat((batch + len(labels) - 1) // len(labels))[:batch]
            elif generator is not None:
                labels = torch.randint(self.num_classes, (batch,), generator=generator)
            else:
                labels = torch.zeros(batch, dtype=torch.long)
            out["class_labels"] = labels.to(device)
        if self.text_width:
            if text is not None and text.encoder_hidden_states.shape[0] != batch:
                raise ValueError(f"{text.encoder_hidden_states.shape[0]} text embeddings for {batch} samples")
            out["encoder_hidden_states"] = (torch.zeros(batch, self.text_tokens, self.text_width, device=device)  # (B, L, D)
                                            if text is None else text.encoder_hidden_states.to(device))
        if self.added == "text_time":
            h, w = size
            time_ids = torch.tensor([h * VAE_SCALE, w * VAE_SCALE, 0, 0, h * VAE_SCALE, w * VAE_SCALE], dtype=torch.float32)
            out["added_cond_kwargs"] = {
                "text_embeds": (torch.zeros(batch, self.pooled_width, device=device)  # (B, P)
                                if text is None else text.text_embeds.to(device)),
                "time_ids": time_ids.repeat(batch, 1).to(device),  # (B, 6)
            }
        return out


def slice_inputs(inputs: dict, start: int, stop: int) -> dict:
    """The micro-batch [start, stop) of ``inputs`` (nested dicts of batch-first tensors)."""
    return {k: slice_inputs(v, start, stop) if isinstance(v, dict) else v[start:stop] for k, v in inputs.items()}


def concat_inputs(a: dict, b: dict) -> dict:
    """``a`` and ``b`` (nested dicts of batch-first tensors) stacked along the batch."""
    import torch

    return {k: concat_inputs(v, b[k]) if isinstance(v, dict) else torch.cat([v, b[k]]) for k, v in a.items()}


def inputs_to(inputs: dict, device) -> dict:
    """``inputs`` (nested dicts of tensors) moved to ``device``."""
    return {k: inputs_to(v, device) if isinstance(v, dict) else v.to(device) for k, v in inputs.items()}


def conditioning(model_or_config) -> Conditioning:
    """Read what a diffusers UNet (or its config dict) is conditioned on; refuse what diffprune does
    not feed yet, naming the setting."""
    cfg = getattr(model_or_config, "config", model_or_config)
    get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    cls = get("_class_name") or ("UNet2DModel" if isinstance(model_or_config, dict) else type(model_or_config).__name__)
    if cls not in MODEL_CLASSES:
        raise DiffPruneError(
            f"The model is a {cls!r}; diffprune prunes {' and '.join(MODEL_CLASSES)} (pixel and latent DDPMs, "
            "class-conditional UNets, Stable Diffusion 1.x/2.x and SDXL UNets). Point to one of those.")

    def unsupported(key, value, allowed):
        if value not in allowed:
            raise DiffPruneError(
                f"The {cls}'s config has {key} = {value!r}, which diffprune does not feed yet; supported: "
                f"{', '.join(repr(a) for a in allowed)}.")

    unsupported("class_embed_type", get("class_embed_type"), (None,))
    num_classes = get("num_class_embeds")
    if cls == "UNet2DModel":
        return Conditioning(model_class=cls, num_classes=num_classes)
    for key in ("encoder_hid_dim_type", "time_cond_proj_dim"):
        unsupported(key, get(key), (None,))
    unsupported("addition_embed_type", get("addition_embed_type"), (None, "text_time"))
    width = get("cross_attention_dim")
    if isinstance(width, (list, tuple)):
        if len(set(width)) != 1:
            raise DiffPruneError(f"The {cls}'s cross_attention_dim differs per block ({list(width)}); diffprune "
                                 "feeds one text embedding to every block and needs one width.")
        width = width[0]
    added, pooled = get("addition_embed_type"), None
    if added == "text_time":
        pooled = get("projection_class_embeddings_input_dim") - TIME_IDS * get("addition_time_embed_dim")
    return Conditioning(model_class=cls, num_classes=num_classes, text_width=width, added=added,
                        pooled_width=pooled, text_inputs="empty-prompt zeros")
