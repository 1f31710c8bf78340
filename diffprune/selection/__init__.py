"""Choosing a deployment configuration under a latency budget: model x scheduler x steps x backend x batch.

    select.py   the orchestration, :func:`select`: models -> quality and latency -> choices -> report
    decide.py   the pure part: rows of numbers in, choices out (Pareto front, pick under a budget, naive
                choices), the latency model, the checks of a grid; unit-tested without timing anything
    measure.py  what feeds it: quality by sampling (or reused), latency probes, end-to-end verification
    sweep.py    the pruned (and fine-tuned) models a --sweep adds, exported
    report.py   select.md, select.png and each choice's deploy.json record
"""

from .decide import (LatencyModel, Row, check_grid, chosen_names, config_name, decide, make_rows, naive_families,
                     pareto, parse_reference, pick)
from .report import deploy_record, plot, report
from .select import select

__all__ = ["LatencyModel", "Row", "check_grid", "chosen_names", "config_name", "decide", "deploy_record", "make_rows",
           "naive_families", "pareto", "parse_reference", "pick", "plot", "report", "select"]
