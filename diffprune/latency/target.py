"""A latency target for :func:`diffprune.prune`: the backend, the target (milliseconds or a speedup over dense),
the table to predict with, and the measurement of the pruned model that pruning.json records."""

from dataclasses import asdict, dataclass

from ..errors import DiffPruneError
from .knapsack import MIN_FRACTION, choose_widths


@dataclass
class LatencyTarget:
    """Prune to a latency on ``backend`` instead of to a MAC fraction.

    ``target_ms``: one UNet call at ``batch`` in milliseconds; or ``speedup``: the dense call's measured time
    divided by it. ``table``: a latency table file (``diffprune profile``) to reuse; else one is measured now,
    or read from the cache. ``measure``: export and time the pruned model (recorded in pruning.json)."""

    backend: str
    target_ms: float | None = None
    speedup: float | None = None
    table: str | None = None
    batch: int = 1
    threads: int | None = None
    min_fraction: float = MIN_FRACTION
    measure: bool = True

    def check(self) -> None:
        """Bad options -> DiffPruneError (cheap: run before loading a model)."""
        from ..runtime.runners import parse_backend

        if (self.target_ms is None) == (self.speedup is None):
            raise DiffPruneError(
                f"A latency target takes one of target_ms ({self.target_ms}) and speedup ({self.speedup}): "
                "milliseconds of one UNet call, or the dense call's time divided by a factor, e.g. --target-speedup 2.")
        for label, value, least in (("target_ms", self.target_ms, 0.0), ("speedup", self.speedup, 1.0)):
            if value is not None and not value > least:
                raise DiffPruneError(f"{label} {value} is out of range; allowed: a number above {least:g}.")
        if self.backend in (None, "", "auto"):
            raise DiffPruneError(
                f"A latency target needs the backend it is measured on, explicitly; got {self.backend!r}. Give "
                "--backend ort-cpu, openvino@f32, openvino, ort-cuda, ... (the one you will deploy on).")
        parse_backend(self.backend)
        if not isinstance(self.batch, int) or self.batch < 1:
            raise DiffPruneError(f"latency batch {self.batch!r} is invalid; allowed: a whole number >= 1.")
        if not 0.0 < self.min_fraction <= 1.0:
            raise DiffPruneError(f"min_fraction {self.min_fraction} is out of range; allowed: 0 < f <= 1.")
        if self.table is not None:
            from ..runtime.formats import read_latency_table

            read_latency_table(self.table)

    def choose(self, planner, scheduler_config=None, source=None, text_tokens=None, progress=True, comparable=False):
        """(Choice, table): the widths of ``planner``'s groups under the target, with the table predicting it.
        ``comparable``: the planner's scores compare across groups (un-normalised Taylor), so the knapsack ranks
        them as they are instead of normalising each group to mean 1."""
        from ..runtime.formats import read_latency_table
        from .profile import check_table, table_for

        if self.table is not None:
            table = read_latency_table(self.table)
            check_table(table, planner.dense, self.backend, self.batch)
        else:
            table = table_for(planner, self.backend, self.batch, self.threads, scheduler_config, source, text_tokens,
                              progress=progress)
        budget = self.target_ms if self.target_ms is not None else table["dense_ms"] / self.speedup
        scores = {g: imp.view(groups, -1).mean(0).tolist() for g, (imp, groups, _, _) in planner.plan.items()}
        return choose_widths(table, planner.steps(), scores, budget, self.min_fraction, normalise=not comparable), table

    def record(self, choice, table, model=None, scheduler_config=None, source=None, text_tokens=None) -> dict:
        """pruning.json's ``latency``: the target, the prediction, and (``measure``) the pruned model's time."""
        from .profile import measure

        out = {**{k: v for k, v in asdict(self).items() if k not in ("table", "measure")},
               "table": self.table, "table_key": table["key"], "host": table["host"]["cpu"],
               "precision": table.get("precision"), "dense_ms": round(table["dense_ms"], 3),
               "budget_ms": round(self.target_ms if self.target_ms is not None else table["dense_ms"] / self.speedup, 3),
               "predicted_ms": round(choice.predicted_ms, 3), "floor_ms": round(choice.floor_ms, 3),
               "retained_importance": round(choice.retained, 4), "keep": choice.keep}
        if self.measure and model is not None:
            ms, info = measure(model, self.backend, self.batch, self.threads, scheduler_config, source, text_tokens)
            out.update(measured_ms=round(ms, 3), measured_speedup=round(table["dense_ms"] / ms, 3),
                       measured_precision=info.get("precision"))
        return out
