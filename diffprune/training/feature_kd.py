"""Feature distillation at the UNet's block outputs, for fine-tuning pruned students.

BK-SDM (Kim et al., "BK-SDM: A Lightweight, Fast, and Cheap Version of Stable Diffusion", 2023, Sec. 3.2,
Eq. 3) adds to the output-level distillation a feature-level term: the squared error between teacher and
student at the output of every stage (each down block, the mid block, each up block), summed over the
stages, and reports it matters for SD students. Its students lose whole blocks and keep the teacher's
widths, so it compares the outputs directly.

A channel-pruned student's block outputs are narrower than the teacher's (ratio 0.5 halves them: 64
channels against 128), so they cannot be compared as they are. Two ways out: compare only the teacher's
channels the student kept, or learn a map from the student's width to the teacher's. The first needs the
pruning's channel indices (not recorded, and absent for reinit students or ones pruned elsewhere) and holds
each student channel to one teacher channel; this module takes the second, FitNets' regressor (Romero et
al., "FitNets: Hints for Thin Deep Nets", ICLR 2015, Sec. 2.2): a 1x1 convolution per block from the
student's width to the teacher's, trained with the student and thrown away after (never saved with the
model). Where the widths already match (an unpruned block, a dense student) the comparison is direct,
as in BK-SDM, with nothing learned.
"""


def _blocks(unet) -> list:
    """(name, module) of each stage whose output is distilled: down blocks, mid block, up blocks."""
    # A VAE/VQ decoder (diffprune.training.decoder) has no down blocks: its mid and up blocks are distilled.
    blocks = [(f"down_blocks.{i}", b) for i, b in enumerate(getattr(unet, "down_blocks", ()))]
    if getattr(unet, "mid_block", None) is not None:
        blocks.append(("mid_block", unet.mid_block))
    blocks += [(f"up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks)]
    return blocks


class Tap:
    """Forward hooks keeping the output of every stage of ``unet`` (a down block's hidden state, not its
    skip outputs) from the last forward; :meth:`take` hands them over and empties the list."""

    def __init__(self, unet):
        self.names = [name for name, _ in _blocks(unet)]
        self._outputs = []
        self._handles = [block.register_forward_hook(self._keep) for _, block in _blocks(unet)]

    def _keep(self, module, args, output):
        self._outputs.append(output[0] if isinstance(output, tuple) else output)  # (B, C, h, w)

    def take(self) -> list:
        out, self._outputs = self._outputs, []
        return out

    def close(self):
        for handle in self._handles:
            handle.remove()


def widths(unet) -> list:
    """The channel count of each stage's output, from one forward at the model's default inputs."""
    import torch

    from ..sources.unet import example_inputs

    tap = Tap(unet)
    try:
        with torch.no_grad():
            unet(**example_inputs(unet, device=next(unet.parameters()).device))
        return [x.shape[1] for x in tap.take()]
    finally:
        tap.close()


def projections(student, teacher, seed: int = 0, stage_widths=None):
    """The 1x1 convolutions from each of ``student``'s stage widths to ``teacher``'s (nn.Identity where they
    match), as one module whose forward maps the list of student features; seeded, so every process builds
    the same ones. ``stage_widths``: (student's, teacher's) when already known (a decoder's, which
    :func:`widths` cannot trace)."""
    import torch
    import torch.nn as nn

    from ..errors import DiffPruneError

    s, t = stage_widths or (widths(student), widths(teacher))
    if len(s) != len(t):
        raise DiffPruneError(f"Feature distillation compares the outputs of every down, mid and up block, but the "
                             f"student has {len(s)} of them and the teacher {len(t)}. Use the dense model the student "
                             "was pruned from as the teacher, or feature_kd_weight 0.")

    class Projections(nn.Module):
        def __init__(self):
            super().__init__()
            self.maps = nn.ModuleList(nn.Identity() if a == b else nn.Conv2d(a, b, 1) for a, b in zip(s, t))

        def forward(self, features):
            return [m(f) for m, f in zip(self.maps, features)]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Projections()


def loss(projected: list, teacher: list):
    """BK-SDM's feature term: the mean squared error of each stage, summed over the stages."""
    import torch.nn.functional as F

    return sum(F.mse_loss(s.float(), t.float()) for s, t in zip(projected, teacher))
