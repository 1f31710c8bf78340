"""What selection writes: select.md (the report), select.png (quality against latency) and the deploy.json
record of each choice.
"""

import os
from pathlib import Path

from ..runtime.formats import DEPLOY_FORMAT
from .decide import Row, chosen_names, pareto


def deploy_record(row: Row, budget_ms: float, per: str, out: Path) -> dict:
    """deploy.json for the configuration ``row``, chosen under ``budget_ms``, as `diffprune sample` and
    `diffprune bench` read it (:mod:`diffprune.runtime.deploy`)."""
    from ..evaluation.benchmark import installed_versions

    return {
        "format": DEPLOY_FORMAT,
        "artifact": _portable(Path(row.artifact), out),
        "backend": row.backend, "scheduler": row.scheduler, "steps": row.steps, "batch": row.batch,
        "cache_interval": row.cache_interval,
        "guidance": row.guidance, "model": row.model, "budget_ms": budget_ms, "per": per,
        "latency_ms": {"measured": row.measured_ms, "predicted": row.predicted_ms},
        "quality": {"ssim_vs_dense": row.ssim, "psnr_db": row.psnr_db, "fid": row.fid},
        "made_by": {"tool": "diffprune select", "versions": installed_versions()},
    }


def _portable(artifact: Path, out: Path) -> str:
    """Relative to the report folder when the artifact sits beside it (the .work folder), so the two can
    move together; absolute otherwise."""
    artifact, base = artifact.resolve(), out.resolve()
    rel = os.path.relpath(artifact, base)
    return rel if artifact.is_relative_to(base.parent) else str(artifact)


def _fmt(v, digits=1):
    return "" if v is None else f"{v:.{digits}f}"


def report(result: dict, rows) -> str:
    """select.md: per budget the joint choice beside the naive ones, then the measured configurations."""
    per = result["per"]
    ref = result["reference"]
    lines = [f"# Selection over {len(rows)} configurations (latency per {per})", "",
             f"Quality: SSIM vs dense at {ref['scheduler']} x{ref['steps']} on {ref['backend']} from the same "
             f"{result['n']} seeds. Latency predicted for all from one probe per model/backend/batch, measured end to "
             f"end (median of {result['runs']} alternating runs) for the Pareto front and every choice below.", "",
             (f"FID in the feature space of {result['features']} against "
              f"{result['fid_reference'] or 'the dense reference images'}; " if result["features"] else "")
             + f"choices rank by {result['rank'].upper()}.", "",
             *([f"Backend chosen by `--backend auto` on the dense export: {result['auto']['reason']}.", ""]
               if result.get("auto") else []),
             "| budget ms | which | configuration | SSIM | FID | latency ms (measured) |", "|---|---|---|---|---|---|"]
    by_name = {r.name: r for r in rows}
    for budget, entry in result["decisions"].items():
        for label in ("joint", "dense, fewer steps", "pruned, default steps"):
            d = entry.get(label)
            if d is None:
                continue
            r = by_name.get(d["choice"]) if d["choice"] else None
            lines.append(f"| {budget} | {label} | {r.name if r else 'nothing fits'} | {_fmt(r and r.ssim, 4)} | "
                         f"{_fmt(r and r.fid, 2)} | {_fmt(r and r.measured_ms)} |")
    err = result["prediction_error"]
    if err["n"]:
        lines += ["", f"Prediction error over {err['n']} measured configurations: median {err['median_abs']:.1%}, "
                      f"largest {err['max_abs']:.1%}."]
    lines += ["", "## Measured configurations (Pareto front of the measured ones marked)", "",
              "| configuration | params (M) | MACs (M) | SSIM | PSNR dB | FID | predicted ms | measured ms | front |",
              "|---|---|---|---|---|---|---|---|---|"]
    front = set(result["pareto_measured"])
    for r in sorted((r for r in rows if r.measured), key=lambda r: r.measured_ms):
        lines.append(f"| {r.name} | {(r.params or 0) / 1e6:.2f} | {(r.macs or 0) / 1e6:.1f} | {_fmt(r.ssim, 4)} | "
                     f"{_fmt(r.psnr_db, 2)} | {_fmt(r.fid, 2)} | {_fmt(r.predicted_ms)} | {_fmt(r.measured_ms)} | "
                     f"{'yes' if r.name in front else ''} |")
    lines += ["", result["message"]]
    return "\n".join(lines) + "\n"


def plot(rows, decisions, budgets, per, path, rank: str = "ssim") -> bool:
    """Quality against latency: every configuration (predicted, small), the measured ones (large), the
    budget lines and the choices (stars)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = sorted({r.model for r in rows}, key=lambda m: (m != "dense", m))
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    markers = dict(zip(sorted({r.scheduler for r in rows}), "osD^v"))
    chosen = chosen_names({k: {"joint": v["joint"]} for k, v in decisions.items()})
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in rows:
        ax.scatter(r.latency_ms, r.quality, s=60 if r.measured else 12, marker=markers[r.scheduler],
                   color=colours[r.model], alpha=1.0 if r.measured else 0.35, edgecolors="none")
    front = sorted((r for r in rows if r.measured and r.name in pareto([x for x in rows if x.measured])),
                   key=lambda r: r.latency_ms)
    ax.plot([r.latency_ms for r in front], [r.quality for r in front], color="tab:gray", lw=1, alpha=0.6)
    for r in rows:
        if r.name in chosen:
            ax.scatter(r.latency_ms, r.quality, s=220, marker="*", color="tab:red", zorder=5)
            ax.annotate(f"{r.model}, {r.backend}, {r.scheduler} x{r.steps}", (r.latency_ms, r.quality),
                        textcoords="offset points", xytext=(6, -10), fontsize=7)
    for b in budgets:
        ax.axvline(b, color="tab:red", linestyle="--", lw=0.8)
    for m in models:
        ax.scatter([], [], color=colours[m], label=m)
    for s, mk in markers.items():
        ax.scatter([], [], color="black", marker=mk, label=s)
    ax.set_xscale("log")
    ax.set_xlabel(f"end-to-end latency, ms per {per} (large: measured, small: predicted; dashed: budgets)")
    if rank == "fid":
        ax.set_ylabel("FID (higher up = lower FID = better)")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{-v:g}"))
    else:
        ax.set_ylabel("SSIM vs dense reference")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
