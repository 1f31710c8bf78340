"""The width manifest: a readable record of every layer's width, and the diffusers attributes that
cache widths kept consistent with the weights.

A pruned model is stored as the dense diffusers config plus this manifest (as timm stores pruned
networks), so it is rebuilt from JSON and safetensors alone, with no pickled modules.
"""

import math

import torch.nn as nn

from ..errors import DiffPruneError


def _attention_cls():
    from diffusers.models.attention_processor import Attention

    return Attention


def _width_types():
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    return ResnetBlock2D, Downsample2D, Upsample2D


def sync_attributes(model) -> None:
    """Make every attribute that caches a width agree with the (pruned) weights.

    torch-pruning resizes the weights of Conv2d/Linear/GroupNorm/LayerNorm/Embedding; diffusers blocks
    also remember widths (ResnetBlock2D in/out channels, Down/Upsample2D channels checked in forward,
    Attention inner_dim and heads, Transformer2DModel and BasicTransformerBlock widths). The attention
    scale follows the new head width (dim_head ** -0.5), which is what diffusers' SDPA processor
    (AttnProcessor2_0) computes from the tensors anyway; setting it keeps the classic processor, which
    reads ``attn.scale``, in agreement.
    """
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    Attention = _attention_cls()
    ResnetBlock2D, Downsample2D, Upsample2D = _width_types()
    for module in model.modules():
        if isinstance(module, ResnetBlock2D):
            module.in_channels = module.conv1.in_channels
            module.out_channels = module.conv2.out_channels
        elif isinstance(module, (Downsample2D, Upsample2D)) and getattr(module, "conv", None) is not None:
            conv = module.conv
            if isinstance(conv, nn.Conv2d):
                module.channels, module.out_channels = conv.in_channels, conv.out_channels
        elif isinstance(module, Attention):
            inner = module.to_q.out_features
            if inner % module.heads:
                raise RuntimeError(f"attention width {inner} is not divisible by its {module.heads} heads")
            module.inner_dim = inner
            module.inner_kv_dim = module.to_k.out_features
            module.query_dim = module.to_q.in_features
            module.out_dim = module.to_out[0].out_features
            module.sliceable_head_dim = module.heads
            if module.scale_qk:
                module.scale = (inner // module.heads) ** -0.5
        elif isinstance(module, Transformer2DModel) and getattr(module, "proj_in", None) is not None:
            proj_in, proj_out = module.proj_in, module.proj_out
            module.in_channels = getattr(proj_in, "in_channels", getattr(proj_in, "in_features", None))
            module.inner_dim = getattr(proj_in, "out_channels", getattr(proj_in, "out_features", None))
            module.out_channels = getattr(proj_out, "out_channels", getattr(proj_out, "out_features", None))
        elif isinstance(module, BasicTransformerBlock):
            module.dim = module.attn1.to_q.in_features


def widths(model) -> dict:
    """Every width-bearing module's widths, by qualified name (the manifest saved in pruning.json)."""
    Attention = _attention_cls()
    ResnetBlock2D, Downsample2D, Upsample2D = _width_types()
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = {"in_channels": m.in_channels, "out_channels": m.out_channels}
        elif isinstance(m, nn.Linear):
            out[name] = {"in_features": m.in_features, "out_features": m.out_features}
        elif isinstance(m, nn.GroupNorm):
            out[name] = {"num_groups": m.num_groups, "num_channels": m.num_channels}
        elif isinstance(m, nn.LayerNorm):
            out[name] = {"normalized_shape": list(m.normalized_shape)}
        elif isinstance(m, nn.Embedding):
            out[name] = {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim}
        elif isinstance(m, Attention):
            out[name] = {"heads": m.heads}
    return out


def apply_widths(model, manifest: dict) -> None:
    """Resize a dense model built from config to the widths in ``manifest`` (weights left empty).

    The weights are loaded afterwards; every shape is checked against them there.
    """
    import torch

    Attention = _attention_cls()
    modules = dict(model.named_modules())
    unknown = sorted(set(manifest) - set(modules))
    if unknown:
        raise DiffPruneError(
            f"pruning.json names layers the model does not have ({', '.join(unknown[:3])}"
            f"{' ...' if len(unknown) > 3 else ''}). The manifest belongs to another architecture than "
            "config.json: re-create the pruned model, or restore the matching config.json."
        )

    def empty(*shape, like):
        return nn.Parameter(torch.empty(*shape, dtype=like.dtype, device=like.device))

    for name, spec in manifest.items():
        m = modules[name]
        try:
            if isinstance(m, nn.Conv2d):
                m.in_channels, m.out_channels = int(spec["in_channels"]), int(spec["out_channels"])
                m.weight = empty(m.out_channels, m.in_channels // m.groups, *m.kernel_size, like=m.weight)
                if m.bias is not None:
                    m.bias = empty(m.out_channels, like=m.bias)
            elif isinstance(m, nn.Linear):
                m.in_features, m.out_features = int(spec["in_features"]), int(spec["out_features"])
                m.weight = empty(m.out_features, m.in_features, like=m.weight)
                if m.bias is not None:
                    m.bias = empty(m.out_features, like=m.bias)
            elif isinstance(m, nn.GroupNorm):
                m.num_groups, m.num_channels = int(spec["num_groups"]), int(spec["num_channels"])
                if m.num_channels % m.num_groups:
                    raise ValueError(f"{m.num_channels} channels in {m.num_groups} groups")
                if m.affine:
                    m.weight, m.bias = empty(m.num_channels, like=m.weight), empty(m.num_channels, like=m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.normalized_shape = tuple(int(x) for x in spec["normalized_shape"])
                if m.weight is not None:
                    m.weight = empty(*m.normalized_shape, like=m.weight)
                if m.bias is not None:
                    m.bias = empty(*m.normalized_shape, like=m.bias)
            elif isinstance(m, nn.Embedding):
                m.num_embeddings, m.embedding_dim = int(spec["num_embeddings"]), int(spec["embedding_dim"])
                m.weight = empty(m.num_embeddings, m.embedding_dim, like=m.weight)
            elif isinstance(m, Attention):
                m.heads = int(spec["heads"])
            else:
                raise ValueError(f"a {type(m).__name__} carries no widths")
        except (KeyError, TypeError, ValueError) as e:
            raise DiffPruneError(
                f"pruning.json's entry for layer {name!r} ({spec}) is invalid: {e}. The manifest is "
                "corrupt; re-create the pruned model."
            ) from None
    try:
        sync_attributes(model)
    except RuntimeError as e:
        raise DiffPruneError(f"pruning.json describes an inconsistent model: {e}. Re-create the pruned model.") from None


def load_checked_weights(model, weights) -> dict:
    """The safetensors state of ``weights`` (a path), every name and shape checked against ``model`` (built to
    the manifest's widths by :func:`apply_widths`) first; a clear error for a missing, corrupt or foreign file."""
    from pathlib import Path

    from safetensors import SafetensorError, safe_open

    weights = Path(weights)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if not weights.is_file():
        raise DiffPruneError(f"{str(weights.parent)!r} has no {weights.name}. The folder is incomplete; re-create it.")
    try:
        with safe_open(str(weights), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            missing = sorted(set(expected) - set(found))
            extra = sorted(set(found) - set(expected))
            wrong = [(k, expected[k], found[k]) for k in expected if k in found and expected[k] != found[k]]
            if missing or extra or wrong:
                detail = "; ".join(
                    [f"missing {', '.join(missing[:3])}" if missing else "",
                     f"unexpected {', '.join(extra[:3])}" if extra else "",
                     ", ".join(f"{k}: widths say {e}, file has {g}" for k, e, g in wrong[:3])]
                ).strip("; ")
                raise DiffPruneError(
                    f"The weights in {str(weights)!r} do not fit the widths in pruning.json ({detail}). "
                    "The files come from different models; restore the folder as it was written."
                )
            return {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise DiffPruneError(
            f"{str(weights)!r} is not a readable safetensors file ({e}); it is truncated or corrupt. "
            "Re-create or re-download the model."
        ) from None


def keep_count(width: int, groups: int, ratio: float, round_to: int) -> int:
    """Channels to keep per channel-group so the layer keeps ``~(1 - ratio)`` of ``width``.

    ``groups`` equal-sized channel groups (GroupNorm groups, attention heads) must stay equal, and the
    whole width a multiple of ``round_to`` (tensor cores want multiples of 8): the per-group count
    moves in steps of ``round_to / gcd(round_to, groups)``, rounded to the nearest step, at least one.
    """
    per = width // groups
    step = round_to // math.gcd(round_to, groups)
    if ratio <= 0 or per <= step:
        return per
    keep = int(per * (1.0 - ratio) / step + 0.5) * step
    return min(per, max(step, keep))
