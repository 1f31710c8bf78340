"""Evaluating one model as deployed: images from the torch-free runtime, SSIM/PSNR against the dense model
from the same seeds and FID with a feature network (``diffprune eval`` is a shell over :func:`evaluate`);
and :func:`as_artifact`, which turns a model source into the export the runtime runs.

ONNX exports and engines are evaluated without torch; a model folder is exported first, and FID against
reference images loads them, both of which need the toolchain.
"""

import io
import tempfile
from pathlib import Path

from .._io import atomic_write_bytes
from ..errors import DiffPruneError
from ..runtime.formats import ENGINE_JSON, MODEL_JSON


def is_artifact(src) -> bool:
    """True for an ONNX export or engine folder, which the torch-free runtime runs as it is."""
    path = Path(str(src))
    return path.is_dir() and ((path / MODEL_JSON).is_file() or (path / ENGINE_JSON).is_file())


def as_artifact(src, export_dir: Path, batches, log, step_cache: int = 0) -> Path:
    """An ONNX export or engine folder for ``src``: ``src`` itself when it is one, else ``export_dir``, which a
    model source is exported to (once; an existing ``export_dir`` is reused). ``batches``: the export's batch
    range, as :func:`diffprune.export.to_onnx` takes it; ``step_cache`` as it takes it (the shallow graph of
    step caching)."""
    if is_artifact(src):
        return Path(str(src))
    if not export_dir.exists():
        from ..export import to_onnx

        log(f"exporting {src} -> {export_dir}")
        to_onnx(src, export_dir, batch=batches, step_cache=step_cache)
    return export_dir


def is_statistics(reference) -> bool:
    """A .npz of precomputed statistics (keys mu and sigma), which FID reads without torch."""
    import numpy as np

    path = Path(str(reference))
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return "mu" in z.files and "sigma" in z.files
    except Exception:  # not a readable .npz: metrics reports it
        return False


def check_options(reference, features) -> None:
    """Refuse FID against a reference without the feature network it is measured in."""
    from .metrics import INCEPTION_HELP

    if reference and not features:
        raise DiffPruneError(f"FID against {reference!r} needs a feature network. {INCEPTION_HELP}")


def evaluate(model, dense=None, n: int = 64, steps: int = 50, scheduler: str = "ddim", batch: int = 8, seed: int = 0,
             backend: str = "auto", reference=None, features=None, save_stats=None, log=print) -> dict:
    """Generate ``n`` images from ``model`` (and ``dense``, from the same seeds) with the torch-free runtime.

    Returns ``{"n", "steps", "scheduler", "backend"}`` (the backend that ran, never "auto"), with
    ``"consistency"`` (SSIM, PSNR vs ``dense``) when ``dense`` is given and ``"fid"`` when ``reference``
    (image folder, .npy/.npz of images, builtin:digits, or a .npz of statistics mu, sigma) and ``features``
    (an ONNX feature network) are. ``save_stats``: write the generated images' feature statistics (.npz)
    there. ``model`` and ``dense``: model sources (exported first, into a temporary folder), ONNX exports
    or engines.
    """
    check_options(reference, features)
    import numpy as np

    from ..runtime import Sampler, make_scheduler, open_runner
    from ..runtime.runners import resolve_backend
    from .metrics import OnnxFeatures, consistency, feature_statistics, fid

    images, auto = {}, None
    with tempfile.TemporaryDirectory(prefix="diffprune-eval-") as work:
        for role, src in (("model", model), ("dense", dense)):
            if src is None:
                continue
            artifact = as_artifact(src, Path(work) / f"{role}-onnx", batch, log=lambda m: None)
            if backend == "auto":  # measured on the model, then the same backend for the dense model
                from ..runtime.runners import choose_auto

                auto = choose_auto(artifact, log=log)
            backend = resolve_backend(auto["chosen"] if auto else backend)  # recorded as what ran, not as "auto"
            with open_runner(artifact, backend) as runner:
                sampler = Sampler(runner, make_scheduler(scheduler, runner.scheduler_config))
                images[role] = sampler.generate(n, seed=seed, steps=steps, batch=batch)
    result = {"n": n, "steps": steps, "scheduler": scheduler, "backend": backend}
    if auto:
        result["auto"] = {k: auto[k] for k in ("chosen", "reason", "trials", "cached")}
    if "dense" in images:
        result["consistency"] = consistency(images["model"], images["dense"])
        log(f"consistency with the dense model (same seeds): SSIM {result['consistency']['ssim']:.4f}, "
            f"PSNR {result['consistency']['psnr_db']:.2f} dB over {n} images")
    if features:
        network = OnnxFeatures(features)
        if reference:
            result["fid"] = fid(images["model"], reference, network)
            log(f"FID vs {reference}: {result['fid']['fid']:.3f} ({n} images, {result['fid']['dims']}-d features)")
        if save_stats:
            mu, sigma = feature_statistics(network(images["model"]))
            buffer = io.BytesIO()  # written whole or not at all, as every output
            np.savez(buffer, mu=mu, sigma=sigma)
            atomic_write_bytes(save_stats, buffer.getvalue())
            log(f"saved feature statistics of the generated images to {save_stats}")
    return result
