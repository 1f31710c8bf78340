"""Structural pruning of a diffusers UNet2DModel or UNet2DConditionModel: the public ``prune`` function.

Layers (as in Torch-Pruning): a dependency graph finds the groups of coupled channels; a criterion
(diffprune.pruning.importance) scores each group's channels; this module chooses how many to keep and
removes the rest, then makes diffusers' cached widths consistent.

Couplings the dependency graph does not know and this module adds: attention heads stay equal in
width (or go whole, ``prune_heads``); GEGLU's projection (one Linear whose output is chunked into a
value and a gate half) loses the same positions from both halves; widths fed by the model's inputs
(cross-attention to_k/to_v read the text embedding, SDXL's add_embedding reads pooled text and time
ids) are never pruned.
"""

import copy
import dataclasses
import gc
import math
import time
from dataclasses import asdict, dataclass, field

from . import _distributed
from ..data.images import check_resize
from ..errors import DiffPruneError
from .calibration import GUIDANCE_SCALE, build_calibration, check_guidance, device_of
from .importance import CRITERIA, DEFAULT_METHOD
from .importance._gradients import TIMESTEP_WEIGHTS

DEFAULT_TARGET_MACS = 0.5  # the paper's headline: about half the MACs


@dataclass
class PruneReport:
    method: str
    ratio: float
    target_macs: float | None
    thr: float
    round_to: int
    seed: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    layer_widths: dict  # conv/linear name -> [dense out width, pruned out width]
    timesteps_used: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    calibration: str = ""
    conditioning: dict = field(default_factory=dict)  # what the UNet was fed (diffprune.sources.conditioning)
    no_gradient_groups: list = field(default_factory=list)  # groups ranked by magnitude: their gradient was all zero
    resize: str = "bilinear"  # how calibration images of another size were brought to the model's
    seconds: float = 0.0
    importance_seconds: float = 0.0
    processes: int = 1  # processes that shared the calibration images (accelerate launch / torchrun)
    guidance_scale: float | None = None  # classifier-free guidance of generate:N with prompts; None: not drawn so
    latency: dict = field(default_factory=dict)  # pruned to a latency: target, predicted and measured (LatencyTarget.record)
    uncond_fraction: float = 0.0  # share of the calibration captions replaced by the empty prompt
    score_norm: str = "group"  # gradient criteria: how scores of coupled layers are combined (importance._gradients)
    timestep_weight: str = "loss"  # gradient criteria: each timestep's gradient as is (loss) or over its loss (log)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self, pruned: tuple = ("the UNet",)) -> str:
        """The report as a markdown table and lines. ``pruned``: what the run pruned, as the conditioning line
        names it (``("the UNet", "the VAE decoder")`` when ``prune --components unet,decoder`` pruned both)."""
        def row(label, before, after, unit):
            return f"| {label:<6} | {before / unit:>9.2f} | {after / unit:>9.2f} | {after / max(before, 1):>6.1%} |"

        lines = [
            "|        |     dense |    pruned |   kept |",
            "|--------|-----------|-----------|--------|",
            row("params", self.params_before, self.params_after, 1e6) + "  (M)",
            row("MACs", self.macs_before, self.macs_after, 1e9) + "  (G)",
        ]
        lines.append(f"method {self.method}, ratio {self.ratio:.3f}, round_to {self.round_to}, {self.seconds:.1f} s")
        if self.timesteps_used:
            t = self.timesteps_used
            shared = f", images shared by {self.processes} processes" if self.processes > 1 else ""
            lines.append(f"importance from {len(t)} timesteps (t = {t[0]}..{t[-1]}), thr {self.thr}{shared}")
        c = self.conditioning
        if c.get("kind", "none") != "none":
            text = f" ({c['text_inputs']})" if c.get("text_width") else ""
            what = (f"only {pruned[0]} is pruned" if len(pruned) == 1
                    else f"{', '.join(pruned[:-1])} and {pruned[-1]} are pruned, the other components are not")
            lines.append(f"conditioning: {c['kind']}{text}; {what}")
        if self.latency:
            lat = self.latency
            measured = (f", measured {lat['measured_ms']:.4g} ms ({lat['measured_speedup']:.2f}x)"
                        if "measured_ms" in lat else "")
            lines.append(f"latency on {lat['backend']} (batch {lat['batch']}): target {lat['budget_ms']:.4g} ms, dense "
                         f"{lat['dense_ms']:.4g} ms, predicted {lat['predicted_ms']:.4g} ms{measured}")
        if self.no_gradient_groups:
            lines.append(f"{len(self.no_gradient_groups)} channel groups got no gradient and were ranked by weight magnitude")
        return "\n".join(lines)


def check_options(method, ratio=None, target_macs=None, thr=0.05, round_to=8, data=None, max_timesteps=None,
                  num_images=64, micro_batch=16):
    """Raise DiffPruneError for any out-of-range option (cheap: run it before loading models)."""
    if method not in CRITERIA:
        raise DiffPruneError(f"Unknown method {method!r}. Allowed: {', '.join(CRITERIA)}.")
    if ratio is not None and target_macs is not None:
        raise DiffPruneError(
            f"Both ratio ({ratio}) and target_macs ({target_macs}) were given; they are two ways to say how "
            "much to prune. Give one: ratio = fraction of channels removed per layer, target_macs = "
            "fraction of the dense MACs to keep."
        )
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise DiffPruneError(f"ratio {ratio} is out of range; allowed: 0 <= ratio < 1 (fraction of channels removed).")
    if target_macs is not None and not 0.0 < target_macs <= 1.0:
        raise DiffPruneError(
            f"target_macs {target_macs} is out of range; allowed: 0 < target_macs <= 1 (fraction of the "
            "dense MACs to keep, e.g. 0.5)."
        )
    if not 0.0 <= thr < 1.0:
        raise DiffPruneError(f"thr {thr} is out of range; allowed: 0 <= thr < 1 (0 = use every timestep; paper: 0.05).")
    if not isinstance(round_to, int) or round_to < 1:
        raise DiffPruneError(f"round_to {round_to!r} is invalid; allowed: an integer >= 1 (8 suits tensor cores, 1 = no rounding).")
    for label, value in (("num_images", num_images), ("micro_batch", micro_batch)):
        if not isinstance(value, int) or value < 1:
            raise DiffPruneError(f"{label} {value!r} is invalid; allowed: an integer >= 1.")
    if max_timesteps is not None and max_timesteps < 1:
        raise DiffPruneError(f"max_timesteps {max_timesteps} is invalid; allowed: an integer >= 1, or none for no cap.")
    if CRITERIA[method].needs_data and data is None:
        raise DiffPruneError(
            f"Method {method!r} scores channels with gradients of the denoising loss and needs "
            "calibration images: pass data= (CLI --data) as an image folder (captions in same-stem .txt files), "
            "a .jsonl of image-caption pairs, a .npy/.npz file, builtin:digits, or generate:N to draw N samples "
            "from the model itself. "
            "magnitude and random need no data."
        )


def _unet_inputs(model):
    from ..sources.unet import example_inputs

    return example_inputs(model, device=device_of(model))


def _heads_kept(heads: int, ratio: float) -> int:
    """Whole attention heads kept at ``ratio`` (at least one): what ``_Planner.apply`` keeps and ``kept_at`` reports."""
    return max(1, int(heads * (1 - ratio) + 0.5))


class _Planner:
    """Scores every prunable group once on the dense model, then prunes copies at any ratio.

    ``inputs(model)`` gives the keyword inputs that trace it (default: a UNet's example inputs), ``ignored`` the
    modules whose output channels stay (default: the UNet's conv_out, the image's channels); the VAE decoder
    (diffprune.pruning.decoder) passes its own."""

    def __init__(self, model, criterion, round_to, prune_heads, inputs=None, ignored=None):
        import torch
        import torch_pruning as tp
        from diffusers.models.activations import GEGLU
        from diffusers.models.attention_processor import Attention

        from .importance.magnitude import MagnitudeImportance

        self.inputs = inputs or _unet_inputs
        self.round_to = round_to
        self.prune_heads = prune_heads
        self.dense = model
        self.names = {m: n for n, m in model.named_modules()}
        self.ignored = [model.conv_out] if ignored is None else list(ignored)  # the image's channels; never pruned
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=self.inputs(model))
        heads, kept_inputs = {}, set()
        for attn in (m for m in model.modules() if isinstance(m, Attention)):
            for linear in (attn.to_q, attn.to_k, attn.to_v):
                heads[linear] = attn
            if attn.is_cross_attention:  # to_k/to_v read encoder_hidden_states: the text encoder's width
                kept_inputs.update((attn.to_k, attn.to_v))
        if getattr(model, "add_embedding", None) is not None:  # SDXL: pooled text + time ids, fixed widths
            kept_inputs.add(model.add_embedding.linear_1)
        # GEGLU.proj's output is chunked into (value, gate): channel i and i + width/2 are one unit.
        halved = {m.proj for m in model.modules() if isinstance(m, GEGLU)}
        fallback = MagnitudeImportance()
        self.no_signal = []
        # name of root module -> (importance per channel, channel groups, attention module or None, halves)
        self.plan = {}
        # name of root module -> (Conv2d/Linear whose output width it sets, those whose input width it sets):
        # what a latency table (diffprune.latency) charges each group's width to
        self.layers = {}
        # Conv2d/Linear name -> {group: input channels of it that the group sets}: a layer fed a concatenation
        # (an up block's skip + upsampled path) has its input width set by two groups, in these parts
        self.in_parts = {}
        with torch.no_grad():
            for group in graph.get_all_groups(ignored_layers=self.ignored, root_module_types=[torch.nn.Conv2d, torch.nn.Linear]):
                root = group[0].dep.target.module
                groups, attn, halves = 1, None, 1
                if any(dep.target.module in kept_inputs and graph.is_in_channel_pruning_fn(dep.handler) for dep, _ in group):
                    continue  # would change a width the model's inputs fix
                for dep, _ in group:
                    target = dep.target.module
                    if not graph.is_out_channel_pruning_fn(dep.handler):
                        continue
                    if isinstance(target, torch.nn.GroupNorm):
                        groups = math.lcm(groups, target.num_groups)
                    if target in heads:
                        attn = heads[target]
                        groups = math.lcm(groups, attn.heads)
                    if target in halved:
                        if target is not root:
                            raise RuntimeError(f"GEGLU projection {self.names[target]} is coupled to {self.names[root]}; "
                                               "its halves could not be kept aligned")
                        halves = 2
                        groups = math.lcm(groups, 2)
                imp = criterion(group)
                if imp is None:  # a group with no weights the criterion can score
                    continue
                if not torch.isfinite(imp).all() or not imp.abs().sum() > 0:
                    # No gradient reached these weights (e.g. cross-attention fed the zero empty-prompt
                    # stand-in: constant keys, zero values); rank them by magnitude rather than by index.
                    self.no_signal.append(self.names[root])
                    imp = fallback(group)
                self.plan[self.names[root]] = (imp.detach().float().cpu(), groups, self.names.get(attn), halves)
                self.layers[self.names[root]] = tuple(
                    sorted({self.names[dep.target.module] for dep, _ in group if which(dep.handler)
                            and isinstance(dep.target.module, (torch.nn.Conv2d, torch.nn.Linear))})
                    for which in (graph.is_out_channel_pruning_fn, graph.is_in_channel_pruning_fn))
                for dep, idxs in group:
                    target = dep.target.module
                    if graph.is_in_channel_pruning_fn(dep.handler) and isinstance(target, (torch.nn.Conv2d, torch.nn.Linear)):
                        parts = self.in_parts.setdefault(self.names[target], {}).setdefault(self.names[root], set())
                        parts.update(int(i) for i in idxs)
        self.in_parts = {layer: {g: len(idx) for g, idx in parts.items()} for layer, parts in self.in_parts.items()}

    def steps(self) -> dict:
        """Group name -> (channel groups, channels per group, step): the per-group count a group may keep is a
        multiple of ``step`` up to ``per`` (or ``per`` itself), as :func:`keep_count` rounds it."""
        out = {}
        for name, (imp, groups, _, halves) in self.plan.items():
            per = imp.numel() // groups
            step = self.round_to * halves // math.gcd(self.round_to * halves, groups)
            out[name] = (groups, per, min(step, per))
        return out

    def kept_at(self, ratio: float) -> tuple:
        """What ``apply(ratio)`` keeps, without building it: per group the channels kept per channel-group (or the
        heads kept, where whole heads go). Two ratios with the same value give the same model."""
        from ..sources.structure import keep_count

        modules = dict(self.dense.named_modules())
        out = []
        for name, (imp, groups, attn_name, halves) in self.plan.items():
            attn = modules[attn_name] if attn_name else None
            if attn is not None and self.prune_heads and attn.heads > 1:
                out.append(("heads", _heads_kept(attn.heads, ratio)))
            else:
                out.append(keep_count(imp.numel(), groups, ratio, self.round_to * halves))
        return tuple(out)

    def apply(self, ratio: float = 0.0, keep: dict | None = None):
        """A pruned deep copy of the dense model at ``ratio``, or with ``keep`` (group name -> channels kept per
        channel-group, e.g. chosen under a latency budget by diffprune.latency.knapsack) where given."""
        import torch
        import torch_pruning as tp

        from ..sources.structure import keep_count, sync_attributes

        model = copy.deepcopy(self.dense)
        for p in model.parameters():
            p.grad = None
        if ratio <= 0 and not keep:
            return model
        modules = dict(model.named_modules())
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=self.inputs(model))
        for name, (imp, groups, attn_name, halves) in self.plan.items():
            root = modules[name]
            width = imp.numel()
            per = width // groups
            by_group = imp.view(groups, per)  # (groups, per): GroupNorm groups / heads are contiguous blocks
            attn = modules[attn_name] if attn_name else None
            if keep is not None:
                n = min(per, int(keep.get(name, per)))
                if n >= per:
                    continue
                drop = torch.argsort(by_group.mean(0))[: per - n]
                idxs = (drop[None, :] + per * torch.arange(groups)[:, None]).flatten()
            elif attn is not None and self.prune_heads and attn.heads > 1:
                # Remove whole heads: rank heads by mean importance, keep the best ones in full.
                head_imp = imp.view(attn.heads, -1).mean(1)
                keep_heads = _heads_kept(attn.heads, ratio)
                drop = torch.argsort(head_imp)[: attn.heads - keep_heads]
                head_dim = width // attn.heads
                idxs = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in drop.tolist()]) if len(drop) else torch.tensor([], dtype=torch.long)
                attn.heads = keep_heads
            else:
                # round_to applies to the width after GEGLU's chunk: each half a multiple of it.
                kept = keep_count(width, groups, ratio, self.round_to * halves)
                if kept >= per:
                    continue
                # The same positions leave every group, so the groups stay equal in size.
                drop = torch.argsort(by_group.mean(0))[: per - kept]
                idxs = (drop[None, :] + per * torch.arange(groups)[:, None]).flatten()
            if len(idxs) == 0:
                continue
            handler = graph.get_pruner_of_module(root).prune_out_channels
            graph.get_pruning_group(root, handler, sorted(idxs.tolist())).prune()
        sync_attributes(model)
        with torch.no_grad():
            model(**self.inputs(model))  # fails loudly here, not later, if inconsistent
        return model


def prune(unet, method: str = DEFAULT_METHOD, ratio: float | None = None, target_macs: float | None = None,
          data=None, thr: float = 0.05, round_to: int = 8, seed: int = 0, scheduler_config: dict | None = None,
          num_images: int = 64, micro_batch: int = 16, prune_heads: bool = False, max_timesteps: int | None = None,
          progress: bool = True, resize: str = "bilinear", class_labels=None, text_encoder=None, vae=None,
          prompts=None, guidance_scale: float | None = None, latency=None, uncond_fraction: float = 0.0,
          score_norm: str | None = None, timestep_weight: str = "loss"):
    """Prune a diffusers ``UNet2DModel`` or ``UNet2DConditionModel``; return ``(pruned_model, PruneReport)``.

    ``method``: diff-pruning (paper), taylor, magnitude, random or reinit (random structure, fresh
    weights). Give ``ratio`` (fraction of channels removed per layer) or ``target_macs`` (fraction of
    dense MACs to keep; default 0.5, the ratio is searched). ``data`` feeds the gradient criteria:
    ``builtin:digits``, a folder, a .npy/.npz, or ``generate:N``; ``num_images`` of it are used, in
    micro-batches of ``micro_batch``, brought to the model's size by ``resize`` (bilinear, pad or
    center-crop; see diffprune.data.images); ``max_timesteps`` caps the timesteps summed. Widths stay multiples of ``round_to`` and GroupNorm groups and
    attention heads stay equal. The input model is not modified.

    Conditional UNets are fed their conditioning (diffprune.sources.conditioning): class-conditional ones
    ``class_labels`` (ints cycled over the calibration images; default: drawn uniformly with ``seed``),
    labels stored with the data (builtin:digits, an .npz's ``labels``, a JSONL's ``"label"``) or drawn
    uniformly with ``seed``; text-conditioned ones the captions of the data (same-stem .txt files, a
    JSONL's ``"text"``) through ``text_encoder`` (diffprune.sources.text.TextEncoder, frozen, run once), with
    images encoded to latents by ``vae`` (diffprune.sources.vae); ``data="generate:N"`` with ``prompts`` (a
    list of str) draws the calibration latents from the model with those prompts, with classifier-free
    guidance ``guidance_scale`` (default GUIDANCE_SCALE, 7.5, recorded in the report). Without a text
    encoder, text inputs are the empty-prompt stand-in (zeros; SDXL's default time ids), which gives
    cross-attention no gradient. ``text_encoder`` and ``vae`` may be ``diffprune.sources.loader.FromSource``
    loaders, loaded only when needed. Params and MACs are counted with the default inputs.

    ``latency`` (a :class:`diffprune.latency.LatencyTarget`) prunes to a latency on a backend instead: the widths
    of each group are chosen under the latency table's prediction (diffprune.latency.knapsack), the pruned model is
    exported and timed there, and the report's ``latency`` records target, prediction and measurement.
    For text-conditioned models ``uncond_fraction`` of the calibration captions are replaced by the empty
    prompt (the unconditional branch that classifier-free guidance samples with). ``score_norm`` (gradient
    criteria): ``group`` averages the coupled layers' Taylor scores as they are (the reference), ``layer``
    normalises each layer's scores first, ``none`` leaves them comparable across groups, which a latency target's
    knapsack then ranks as they are (diffprune.pruning.importance._gradients.taylor_scorer). Default (None):
    ``none`` with a latency target, ``group`` otherwise — measured on the digits DDPM at the same latency budget,
    3 seeds: FID 176 / SSIM 0.79 ranked as they are, 434 / 0.57 normalised (benchmarks/results/criteria).
    ``timestep_weight`` (gradient criteria): ``loss`` sums each timestep's gradient as it is (the paper's Eq. 9,
    where the low-noise timesteps' large losses dominate), ``log`` divides it by that timestep's loss.

    Inside an initialised torch.distributed group (``accelerate launch``, torchrun) each rank takes a share
    of the calibration images and the gradients and losses are summed over the ranks
    (diffprune.pruning.importance._gradients.accumulate_gradients): every rank returns the model one process would.
    """
    import torch

    from ..sources.conditioning import conditioning
    from ..sources.architectures import DEFAULT_SCHEDULER
    from ..sources.unet import count_macs_params

    check_options(method, ratio, target_macs, thr, round_to, data, max_timesteps, num_images, micro_batch)
    check_resize(resize)
    if timestep_weight not in TIMESTEP_WEIGHTS:
        raise DiffPruneError(f"timestep_weight {timestep_weight!r} is unknown; allowed: {', '.join(TIMESTEP_WEIGHTS)} "
                             "(loss: each timestep's gradient as it is, the paper's; log: divided by its loss, so "
                             "every timestep weighs alike).")
    if not (isinstance(uncond_fraction, (int, float)) and 0 <= uncond_fraction <= 1):
        raise DiffPruneError(f"uncond_fraction {uncond_fraction!r} is out of range; allowed 0 <= f <= 1 (the share of "
                             "calibration captions replaced by the empty prompt; 0.1 matches the usual caption dropout).")
    cond = conditioning(unet)
    if uncond_fraction and not (cond.text_width and CRITERIA[method].needs_data and isinstance(data, (str, type(None)))
                                and not str(data).startswith("generate:")):
        raise DiffPruneError(f"uncond_fraction {uncond_fraction:g} replaces calibration captions by the empty prompt: it "
                             "applies to a text-conditioned model pruned by diff-pruning or taylor on captioned data "
                             f"(this is {method} on a {cond.kind}-conditioned model, data {str(data)[:60]!r}). Leave it at 0.")
    if class_labels is not None:
        class_labels = cond.check_labels(class_labels)
    if prompts is not None:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise DiffPruneError(f"prompts must be a non-empty list of strings; got {prompts[:3]!r}.")
    guidance_scale = check_guidance(guidance_scale, data, prompts)
    if not CRITERIA[method].needs_data:
        guidance_scale = None  # nothing is drawn: magnitude, random and reinit read no data
    if latency is not None:
        if ratio is not None or target_macs is not None or prune_heads:
            raise DiffPruneError(
                f"A latency target chooses every group's width itself; it cannot be combined with ratio ({ratio}), "
                f"target_macs ({target_macs}) or prune_heads ({prune_heads}). Give the latency target alone.")
        latency.check()
    elif ratio is None and target_macs is None:
        target_macs = DEFAULT_TARGET_MACS
    started = time.perf_counter()
    if score_norm is None:  # a latency target compares groups: it needs scores that compare across them
        score_norm = "none" if latency is not None else "group"
    criterion = CRITERIA[method](thr=thr, score_norm=score_norm) if CRITERIA[method].needs_data else CRITERIA[method](thr=thr)
    scheduler_config = scheduler_config or dict(DEFAULT_SCHEDULER)
    dense = copy.deepcopy(unet).eval()
    text_tokens = _text_tokens(text_encoder) if cond.text_width else None
    if text_tokens is not None:  # the pipeline tokenizer's length: MACs and the stand-in text use it
        cond = dataclasses.replace(cond, text_tokens=text_tokens)
    macs0, params0 = count_macs_params(dense, text_tokens=text_tokens)

    log = None
    importance_started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if criterion.needs_data:
            calib, text_inputs = build_calibration(data, dense, scheduler_config, num_images, micro_batch, seed,
                                                   progress, resize, class_labels, text_encoder, vae, prompts,
                                                   guidance_scale or GUIDANCE_SCALE, text_tokens=text_tokens,
                                                   uncond_fraction=uncond_fraction)
            cond = dataclasses.replace(cond, text_inputs=text_inputs)
            calib.max_timesteps = max_timesteps
            calib.timestep_weight = timestep_weight
            with torch.enable_grad():
                log = criterion.prepare(dense, calib)
        planner = _Planner(dense, criterion, round_to, prune_heads)
    importance_seconds = time.perf_counter() - importance_started

    if latency is not None:
        choice, table = latency.choose(planner, scheduler_config, None, text_tokens, progress,
                                       comparable=criterion.needs_data and score_norm == "none")
        model = planner.apply(keep=choice.keep)
        steps = planner.steps()
        ratio = 1.0 - sum(choice.keep[g] * v[0] for g, v in steps.items()) / sum(v[0] * v[1] for v in steps.values())
    elif ratio is None:
        ratio, model, macs1 = _search_ratio(planner, target_macs * macs0, text_tokens)
    else:
        model = planner.apply(ratio)
        macs1 = None
    if getattr(criterion, "reinitialise", False):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in model.modules():
                if hasattr(m, "reset_parameters") and m is not model:
                    m.reset_parameters()
    for p in model.parameters():
        p.grad = None
    macs1, params1 = count_macs_params(model, text_tokens=text_tokens)
    dense_widths = {n: _out_width(m) for n, m in dense.named_modules() if _out_width(m) is not None}
    layer_widths = {n: [dense_widths[n], _out_width(m)] for n, m in model.named_modules() if n in dense_widths}
    report = PruneReport(
        method=method, ratio=round(float(ratio), 6), target_macs=target_macs, thr=thr if method == "diff-pruning" else 0.0,
        round_to=round_to, seed=seed, params_before=params0, params_after=params1, macs_before=macs0,
        macs_after=macs1, layer_widths=layer_widths,
        timesteps_used=list(log.timesteps) if log else [], losses=[round(x, 6) for x in log.losses] if log else [],
        calibration=calib.description if criterion.needs_data else "", resize=resize,
        conditioning=cond.to_dict(), no_gradient_groups=list(planner.no_signal),
        seconds=time.perf_counter() - started,
        importance_seconds=importance_seconds, processes=_distributed.world()[1], guidance_scale=guidance_scale,
        uncond_fraction=uncond_fraction, score_norm=score_norm if criterion.needs_data else "group",
        timestep_weight=timestep_weight if criterion.needs_data else "loss",
    )
    if latency is not None:
        report.latency = latency.record(choice, table, model.eval(), scheduler_config, None, text_tokens)
    return model.eval(), report


def _out_width(m):
    import torch.nn as nn

    if isinstance(m, nn.Conv2d):
        return m.out_channels
    if isinstance(m, nn.Linear):
        return m.out_features
    return None


def _text_tokens(text_encoder) -> int | None:
    """The text length of the pipeline a text encoder (a TextEncoder, or a FromSource loader) belongs to; None
    (CLIP's 77) when there is none."""
    if text_encoder is None:
        return None
    if hasattr(text_encoder, "text_tokens"):  # FromSource: from the tokenizer's settings, no weights loaded
        return text_encoder.text_tokens()
    return getattr(text_encoder, "max_length", None)


def _search_ratio(planner, macs_budget: float, text_tokens: int | None = None, count=None):
    """Smallest ratio whose pruned model has at most ``macs_budget`` MACs (bisection; MACs fall
    stepwise as the ratio grows, because widths move in whole channel steps). ``count(model)`` gives the
    MACs (default: a UNet's, with ``text_tokens``)."""
    from ..sources.unet import count_macs_params

    if count is None:
        def count(model):
            return count_macs_params(model, text_tokens=text_tokens)[0]

    lo, hi = 0.0, 0.95
    best = planner.apply(hi)
    best_macs = count(best)
    if best_macs > macs_budget:
        raise DiffPruneError(
            f"Even removing 95% of the channels leaves {best_macs / 1e9:.3g}G MACs, above the target "
            f"{macs_budget / 1e9:.3g}G. Choose a larger target_macs or a smaller round_to."
        )
    best_ratio = hi
    # Widths move in whole steps, so most of the late midpoints keep what an end already keeps: those are decided
    # from the end's MACs without building the model again (a deep copy and a traced graph: minutes at SD size).
    over, best_kept = set(), planner.kept_at(hi)  # what keeps too much; what the best model keeps
    for _ in range(12):  # 0.95 / 2**12: finer than any width step
        mid = (lo + hi) / 2
        kept = planner.kept_at(mid)
        if kept == best_kept:
            hi, best_ratio = mid, mid  # the same model as the best one
            continue
        if kept in over:
            lo = mid
            continue
        model = planner.apply(mid)
        macs = count(model)
        if macs <= macs_budget:
            hi, best, best_ratio, best_macs, best_kept = mid, model, mid, macs, kept
        else:
            lo = mid
            over.add(kept)
        del model
        # The copies sit in reference cycles (torch-pruning's graph). Without a collection each step the
        # SD-1.5 UNet's search reached 23 GB and swapped on a 24 GB machine; with it, 19.5 GB at most.
        gc.collect()
    return best_ratio, best, best_macs
