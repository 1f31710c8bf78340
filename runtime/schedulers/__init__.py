"""numpy schedulers, one file each, configured from a diffusers scheduler config (dict)."""

from ..errors import DiffPruneError
from .ddim import DDIMScheduler, SchedulerOutput
from .ddpm import DDPMScheduler
from .dpm_solver import DPMSolverMultistepScheduler
from .euler import EulerDiscreteScheduler

SCHEDULERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "dpm-solver++": DPMSolverMultistepScheduler,
              "euler": EulerDiscreteScheduler}


def make_scheduler(name: str, config: dict, **kwargs):
    """``name`` is ddim, ddpm, dpm-solver++ or euler; ``config`` the diffusers scheduler config saved with the model."""
    if name not in SCHEDULERS:
        raise DiffPruneError(f"Unknown scheduler {name!r}; allowed: {', '.join(SCHEDULERS)}.")
    return SCHEDULERS[name](config, **kwargs)


__all__ = ["SCHEDULERS", "make_scheduler", "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
           "EulerDiscreteScheduler", "SchedulerOutput"]
