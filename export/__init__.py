"""diffprune.export: UNets and whole pipelines (text encoders, UNet, VAE/VQ decoder) to validated ONNX
(fp32/fp16), TensorRT engines and Triton repositories.

torch-side: this package imports torch; diffprune.runtime (which never does) reads what it writes.
"""

from .onnx import ExportResult, export_unet, to_onnx, weights_sha256
from .pipeline import export_pipeline, load_pipeline
from diffprune.sources.resolve import pipeline_kind
from .tensorrt import build_engine, build_pipeline, engine_profiles, pipeline_profiles
from .triton import write_pipeline_repository, write_repository
from .validate import check_batch, verify_export

__all__ = ["ExportResult", "to_onnx", "export_unet", "export_pipeline", "load_pipeline", "pipeline_kind",
           "build_engine", "build_pipeline", "engine_profiles", "pipeline_profiles", "write_repository", "write_pipeline_repository", "weights_sha256", "verify_export", "check_batch"]
