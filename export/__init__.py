"""diffprune.export: UNets to validated ONNX (fp32/fp16), TensorRT engines and Triton repositories.

torch-side: this package imports torch; diffprune.runtime (which never does) reads what it writes.
"""

from .onnx import ExportResult, to_onnx, weights_sha256
from .tensorrt import build_engine
from .triton import write_repository
from .validate import check_batch, verify_export

__all__ = ["ExportResult", "to_onnx", "build_engine", "write_repository", "weights_sha256", "verify_export", "check_batch"]
