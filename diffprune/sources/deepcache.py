"""Step caching on diffusers UNets: DeepCache (Ma, Fang, Wang, CVPR 2024, arXiv 2312.00858), in torch.

A UNet's deep features change slowly from one denoising step to the next (the paper's Fig. 2), so DeepCache
runs the whole UNet only every N-th step and, in between, only its shallow path (Sec. 3.2, Eq. 6):

  full step     conv_in -> down blocks -> mid -> up blocks -> conv_out, keeping F = the output of the up block
                at the cache branch (the deep feature entering the last ``blocks`` up blocks)
  shallow step  conv_in -> the first ``blocks`` down blocks (their skip outputs) -> the last ``blocks`` up blocks
                on the kept F -> conv_out; everything deeper is skipped

``blocks=1`` (the default) caches at the shallowest branch, as the paper does for Stable Diffusion: the
shallow step runs conv_in, the first down block, the last up block and conv_out.

The two paths are the UNet's own ``forward`` (embeddings, conditioning and all) on shallow copies of the model
that share its weights: the full copy's cache-branch block hands its output to the caller; the shallow copy's
deeper blocks are stand-ins that pass their input through (the cache-branch one returns F), and carry the
block's number of skip connections so the up blocks still pick their own. export/onnx.py exports both copies
(the full graph with F as a second output, the shallow graph with F as an input); :func:`deepcache` runs a
UNet cached in torch, the reference the runtime's cached sampling is checked against.
"""

import contextlib
import copy

import torch

from ..errors import DiffPruneError


# The blocks below reach the kept feature through closures (``put``, ``get``), not a dict attribute: torch.export
# restores module attributes from copies after tracing, which would cut a shared dict loose.

class _Tap(torch.nn.Module):
    """The cache-branch block of the full copy: runs the block, hands its output to ``put``."""

    def __init__(self, block, put):
        super().__init__()
        self.block, self.put = block, put
        self.__dict__["resnets"] = block.resnets  # diffusers takes len(resnets) skips; not registered twice
        if hasattr(block, "has_cross_attention"):
            self.has_cross_attention = block.has_cross_attention

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        self.put(out)  # (B, C_f, H_f, W_f)
        return out


class _Skipped(torch.nn.Module):
    """A skipped block: its input passes through (a down block also returns ``skips`` copies as its skip outputs,
    which only skipped up blocks consume); with ``get``, the output is the kept feature instead."""

    def __init__(self, skips: int, down: bool = False, get=None):
        super().__init__()
        self.skips, self.down, self.get = skips, down, get
        self.__dict__["resnets"] = [None] * skips  # len() is all diffusers reads of it

    def forward(self, hidden_states, *args, **kwargs):
        if self.down:
            return hidden_states, (hidden_states,) * self.skips
        return self.get() if self.get is not None else hidden_states


def _copy_with(unet, **lists):
    """A shallow copy of ``unet`` sharing its weights, with the block lists (down_blocks, up_blocks, mid_block)
    given replaced."""
    twin = copy.copy(unet)
    twin._modules = dict(unet._modules)
    for name, value in lists.items():
        twin._modules[name] = torch.nn.ModuleList(value) if isinstance(value, list) else value
    return twin


class DeepCache:
    """``unet`` split for step caching at the branch ``blocks`` deep. ``full(...)`` -> (the UNet's output,
    feature); ``shallow(feature, ...)`` -> the UNet's output from the shallow path; both take the UNet's own
    arguments. ``full_unet`` / ``shallow_unet`` are the two weight-sharing copies (export/onnx.py exports them)."""

    def __init__(self, unet, blocks: int = 1):
        downs, ups = list(unet.down_blocks), list(unet.up_blocks)
        if not isinstance(blocks, int) or not 1 <= blocks < len(ups) or len(downs) != len(ups):
            raise DiffPruneError(
                f"Cache branch {blocks!r} is not possible on this UNet with {len(downs)} down and {len(ups)} up blocks; "
                f"allowed 1..{len(ups) - 1} (1: keep only the outermost block, DeepCache's choice for Stable Diffusion).")
        if any(hasattr(b, "skip_conv") for b in downs + ups):
            raise DiffPruneError("This UNet has skip-connection blocks (AttnSkipDownBlock2D, ...), whose extra skip "
                                 "path step caching does not carry; cache a UNet without them.")
        self.blocks = blocks
        self.store = store = {}  # "feature": the deep feature, between a block of one copy and the caller

        def put(feature):
            store["feature"] = feature

        def get():
            return store["feature"]

        branch = len(ups) - blocks - 1  # the up block whose output is cached
        self.full_unet = _copy_with(unet, up_blocks=ups[:branch] + [_Tap(ups[branch], put)] + ups[branch + 1:])

        def skips(block):
            return len(block.resnets) + (1 if getattr(block, "downsamplers", None) else 0)

        self.shallow_unet = _copy_with(
            unet,
            down_blocks=downs[:blocks] + [_Skipped(skips(b), down=True) for b in downs[blocks:]],
            mid_block=_Skipped(0) if unet.mid_block is not None else None,
            up_blocks=[_Skipped(len(b.resnets)) for b in ups[:branch]]
            + [_Skipped(len(ups[branch].resnets), get=get)] + ups[branch + 1:])

    def full(self, *args, **kwargs):
        self.store.clear()
        out = self.full_unet(*args, **kwargs)
        return out, self.store.pop("feature")

    def shallow(self, feature, *args, **kwargs):
        self.store["feature"] = feature
        try:
            return self.shallow_unet(*args, **kwargs)
        finally:
            self.store.clear()


@contextlib.contextmanager
def deepcache(unet, interval: int, blocks: int = 1):
    """Within the block, ``unet``'s forward caches: its call i runs the full UNet when i % ``interval`` == 0 (keeping
    the deep feature) and the shallow path on the kept feature otherwise. A diffusers pipeline calls its UNet once
    per step (guidance doubles the batch, not the calls), so the pipeline samples with DeepCache's uniform schedule
    unchanged: full steps 0, N, 2N, ... Yields the :class:`DeepCache`; ``interval=1`` is the plain UNet."""
    if not isinstance(interval, int) or interval < 1:
        raise DiffPruneError(f"cache interval {interval!r} is not allowed; give an integer >= 1 (1: no caching).")
    cache = DeepCache(unet, blocks)
    calls, kept = [0], {}

    def forward(*args, **kwargs):
        i = calls[0]
        calls[0] += 1
        if i % interval == 0:
            out, kept["feature"] = cache.full(*args, **kwargs)
            return out
        return cache.shallow(kept["feature"], *args, **kwargs)

    unet.forward = forward  # an instance attribute: nn.Module.__call__ finds it first
    try:
        yield cache
    finally:
        del unet.forward
