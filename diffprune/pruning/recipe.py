"""One recipe from a model source to a saved pruned model: load -> prune -> save with its pruning.json record.

``diffprune prune``, the demo and select's sweep all go through it, so a pruned folder records the same things
whichever made it: the source (as ``load_source`` describes it) and the :class:`PruneReport` (less its per-layer
table: pruning.json's ``widths`` holds the pruned widths, config.json the dense ones).
"""

from dataclasses import dataclass
from pathlib import Path

from .pruner import PruneReport


@dataclass
class Pruned:
    """A pruned UNet with what is needed to save it: its report, noise schedule, and the source it came from
    (``src`` as given, whose pipeline's other components a saved pipeline folder carries)."""

    model: object
    report: PruneReport
    scheduler_config: dict
    source: dict
    src: object
    threads: dict | None = None  # the torch threads and wait policy it was pruned with (diffprune.threads)

    def record(self) -> dict:
        """pruning.json's part that says what made the model."""
        report = {k: v for k, v in self.report.to_dict().items() if k != "layer_widths"}
        return {"source": self.source, "pruning": {**report, **({"threads": self.threads["threads"],
                                                                   "thread_policy": self.threads} if self.threads else {})}}

    def save(self, out, overwrite: bool = False) -> Path:
        """Write the pruned model at ``out`` (atomically; a pipeline folder when the source is a pipeline)."""
        from ..sources.checkpoint import save

        return save(self.model, out, info=self.record(), scheduler_config=self.scheduler_config, overwrite=overwrite,
                    pipeline=self.src)


def prune_source(src, device="cpu", check=None, threads: int | None = None, **options) -> Pruned:
    """Load ``src`` (any model source: diffprune.sources.resolve) on ``device`` and prune it with ``options``
    (the keywords of :func:`diffprune.prune`). The source's text encoder and VAE are passed on, loaded only if
    the calibration needs them. ``check(model)``, when given, may refuse the loaded model before any work.
    ``threads``: torch CPU threads (default: the cores this process may use), under diffprune.threads' policy."""
    from ..sources.loader import FromSource, load_source
    from ..threads import apply_thread_policy
    from .pruner import prune

    thread_policy = apply_thread_policy(threads)

    model, scheduler_config, source = load_source(src, device=device)
    if check is not None:
        check(model)
    options.setdefault("text_encoder", FromSource(src, "text_encoder", device))
    options.setdefault("vae", FromSource(src, "vae", device))
    pruned, report = prune(model, scheduler_config=scheduler_config, **options)
    return Pruned(pruned, report, scheduler_config, source, src, thread_policy)
