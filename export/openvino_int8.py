"""INT8 post-training quantization of an export for OpenVINO, with NNCF, kept only if it holds.

Calibration data are the model's own sampling trajectories: the (sample, timestep) pairs the UNet
sees while the float32 export generates ``n`` images with ``steps`` DDIM steps, so every noise
level the deployed sampler visits is represented. NNCF's post-training quantization
(``nncf.quantize``, transformer preset for the attention blocks) then picks the INT8 ranges.

Validation is part of the step, as for export: from the same seeds, the INT8 model's images are
compared with the float32 model's (SSIM), and one UNet call of each is timed on this machine. An
INT8 model below ``min_ssim`` (default 0.95) or not faster is an error and nothing is written; the
report says which and by how much. Output: an OpenVINO IR folder (model.xml, model.bin) with a
model.json that ``open_runner(..., "openvino")`` reads like an export.

Needs openvino and nncf (``pip install "diffprune[int8]"``); no torch.
"""

import json
import time
from pathlib import Path

import numpy as np

from diffprune._io import atomic_dir, check_writable
from diffprune.errors import DiffPruneError
from diffprune.runtime.formats import MODEL_JSON, OPENVINO_FORMAT

FORMAT = OPENVINO_FORMAT  # the name this module has exported


def _imports():
    try:
        import nncf
        import openvino as ov
    except ImportError as e:
        raise DiffPruneError(
            f"INT8 quantization needs openvino and nncf ({e.name} is not installed): pip install 'diffprune[int8]'."
        ) from None
    return ov, nncf


class _Recorder:
    """Wraps a runner; keeps a copy of every (sample, timestep) the sampler feeds it."""

    def __init__(self, runner):
        self.runner = runner
        self.items = []

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def __call__(self, sample, timestep):
        self.items.append({"sample": sample.copy(), "timestep": timestep.copy()})
        return self.runner(sample, timestep)


def _unet_ms(compiled, item, runs: int = 10) -> float:
    request = compiled.create_infer_request()
    request.infer(item)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        request.infer(item)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def quantize_int8(export_dir, out_dir, n: int = 16, steps: int = 50, subset_size: int | None = None, batch: int = 1,
                  min_ssim: float = 0.95, min_speedup: float = 1.0, seed: int = 0, threads: int | None = None, overwrite: bool = False,
                  log=print) -> dict:
    """Quantize the ONNX export ``export_dir`` to INT8 for OpenVINO; write ``out_dir`` if it holds.

    ``n`` images of ``steps`` DDIM steps give ``n / batch * steps`` calibration inputs, of which NNCF
    uses ``subset_size`` (default all). The result is kept only with SSIM >= ``min_ssim`` against the
    float32 images and a UNet call faster by more than ``min_speedup`` (0 keeps any) than both float32
    and OpenVINO's default precision (bf16 on CPUs with bf16 units), the model it would replace.
    Returns the quantization record (also in out_dir/model.json).
    """
    from diffprune.evaluation.metrics import consistency
    from diffprune.runtime import Sampler, make_scheduler, open_runner
    from diffprune.runtime.artifact import describe

    ov, nncf = _imports()
    if n < 1 or steps < 1 or (subset_size is not None and subset_size < 1):
        raise DiffPruneError(f"n ({n}), steps ({steps}) and subset_size ({subset_size}) must be at least 1.")
    if not 0 <= min_ssim <= 1:
        raise DiffPruneError(f"min_ssim {min_ssim} must lie in [0, 1] (0 keeps any result).")
    check_writable(out_dir, overwrite)
    kind, folder, meta = describe(export_dir)
    if kind != "onnx" or meta.get("dtype", "fp32") != "fp32":
        raise DiffPruneError(f"{str(export_dir)!r} is not a float32 ONNX export (it is {kind}, {meta.get('dtype')}); "
                             "quantize the fp32 export that `diffprune export` writes without --fp16.")

    started = time.perf_counter()
    with open_runner(folder, "openvino@f32", threads=threads, batch=batch) as runner:
        recorder = _Recorder(runner)
        scheduler = make_scheduler("ddim", runner.scheduler_config)
        reference = Sampler(recorder, scheduler).generate(n, seed=seed, steps=steps, batch=batch)
        fp32_compiled = runner.compiled
        log(f"[int8] {len(recorder.items)} calibration inputs from {n} sampling trajectories of {steps} steps")
        core = ov.Core()
        model = core.read_model(str(folder / meta.get("file", "model.onnx")))
        model.reshape({i.get_any_name(): [batch, *list(i.get_partial_shape())[1:]] for i in model.inputs})
        subset = min(subset_size or len(recorder.items), len(recorder.items))
        # The transformer preset smooths activation outliers (SmoothQuant) before choosing ranges; on the
        # digits model the plain CNN preset gave SSIM 0.12 against float32, this one 0.96.
        quantized = nncf.quantize(model, nncf.Dataset(recorder.items), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=subset)
        import openvino.properties as props
        import openvino.properties.hint as hints

        config = {hints.performance_mode: hints.PerformanceMode.LATENCY}
        if threads:
            config[props.inference_num_threads] = int(threads)
        int8_compiled = core.compile_model(quantized, "CPU", config)
        default_compiled = core.compile_model(model, "CPU", config)  # OpenVINO's own precision, same batch
        default_precision = default_compiled.get_property(hints.inference_precision).get_type_name()
        item = recorder.items[len(recorder.items) // 2]
        fp32_ms, default_ms, int8_ms = (_unet_ms(c, item) for c in (fp32_compiled, default_compiled, int8_compiled))
        baseline_ms = min(fp32_ms, default_ms)

    record = {"method": "nncf post-training quantization, INT8, transformer preset",
              "calibration": {"trajectories": n, "ddim_steps": steps, "inputs": len(recorder.items),
                              "subset_size": subset, "seed": seed, "batch": batch},
              "versions": {"openvino": ov.__version__, "nncf": nncf.__version__},
              "source_export": str(Path(folder).resolve())}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        ov.save_model(quantized, str(tmp / "model.xml"), compress_to_fp16=False)
        ir_meta = {
            **meta, "format": FORMAT, "file": "model.xml", "weights_file": "model.bin", "dtype": "int8",
            "batch": {"min": batch, "opt": batch, "max": batch},
            "inputs": [{**i, "shape": [batch, *i["shape"][1:]]} for i in meta["inputs"]],
            "outputs": [{**o, "shape": [batch, *o["shape"][1:]]} for o in meta.get("outputs", [])]}
        (tmp / MODEL_JSON).write_text(json.dumps({**ir_meta, "quantization": record}, indent=1))
        with open_runner(tmp, "openvino", threads=threads) as runner:
            int8_images = Sampler(runner, make_scheduler("ddim", runner.scheduler_config)).generate(
                n, seed=seed, steps=steps, batch=batch)
        quality = consistency(int8_images, reference)
        record["validation"] = {"ssim_vs_fp32": quality["ssim"], "psnr_db_vs_fp32": quality["psnr_db"],
                                "images": n, "ddim_steps": steps, "fp32_unet_ms": fp32_ms, "int8_unet_ms": int8_ms,
                                "default_precision": default_precision, "default_unet_ms": default_ms,
                                "unet_speedup": baseline_ms / int8_ms, "unet_speedup_vs_fp32": fp32_ms / int8_ms,
                                "min_ssim": min_ssim, "min_speedup": min_speedup}
        record["seconds"] = round(time.perf_counter() - started, 1)
        log(f"[int8] SSIM vs float32 {quality['ssim']:.4f} (needs >= {min_ssim}); one UNet call: float32 "
            f"{fp32_ms:.1f} ms, {default_precision} (OpenVINO's default) {default_ms:.1f} ms, INT8 {int8_ms:.1f} ms")
        if quality["ssim"] < min_ssim or (min_speedup and baseline_ms / int8_ms <= min_speedup):
            raise DiffPruneError(
                f"The INT8 model does not hold: SSIM {quality['ssim']:.4f} against the float32 model's images from "
                f"the same seeds (needs >= {min_ssim}), one UNet call {int8_ms:.1f} ms against {baseline_ms:.1f} ms for "
                f"the faster of float32 and {default_precision} (needs a speedup above {min_speedup:g}x). Nothing was written. Keep the float32 export (OpenVINO's default precision "
                "is often the better trade), or calibrate on more trajectories (--n, --steps)."
            )
        # again, now that the record holds the validation
        (tmp / MODEL_JSON).write_text(json.dumps({**ir_meta, "quantization": record}, indent=1))
    return record


__all__ = ["FORMAT", "quantize_int8"]
