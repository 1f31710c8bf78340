"""numpy schedulers, one file each, configured from a diffusers scheduler config (dict)."""

from ..errors import DiffPruneError
from ..formats import SCHEDULER_VARIANTS, scheduler_variant
from .ddim import DDIMScheduler, SchedulerOutput
from .ddpm import DDPMScheduler
from .dpm_solver import DPMSolverMultistepScheduler
from .euler import EulerDiscreteScheduler

SCHEDULERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "dpm-solver++": DPMSolverMultistepScheduler,
              "euler": EulerDiscreteScheduler}
# the named variants (runtime/formats.py): euler-karras, dpm-solver++-karras
SCHEDULERS.update({name: SCHEDULERS[base] for name, (base, _) in SCHEDULER_VARIANTS.items()})


def make_scheduler(name: str, config: dict, **kwargs):
    """``name`` is ddim, ddpm, dpm-solver++, euler, or a variant (euler-karras, dpm-solver++-karras: Karras
    sigmas); ``config`` the diffusers scheduler config saved with the model."""
    if name not in SCHEDULERS:
        raise DiffPruneError(f"Unknown scheduler {name!r}; allowed: {', '.join(SCHEDULERS)}.")
    base, config = scheduler_variant(name, config)
    scheduler = SCHEDULERS[base](config, **kwargs)
    scheduler.name = name
    return scheduler


__all__ = ["SCHEDULERS", "make_scheduler", "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
           "EulerDiscreteScheduler", "SchedulerOutput"]
