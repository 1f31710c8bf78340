"""diffprune.runtime: torch-free sampling on ONNX Runtime / TensorRT.

numpy, plus onnxruntime or tensorrt imported lazily inside their runner. Never torch, nor anything
from diffprune's torch side (diffprune/, export/): a test imports every module here with torch
made unimportable.
"""

from .errors import DiffPruneError
from .pipeline import Pipeline
from .runners import BACKENDS, open_runner
from .sampler import Sampler
from .schedulers import SCHEDULERS, make_scheduler

__all__ = ["BACKENDS", "DiffPruneError", "Pipeline", "SCHEDULERS", "Sampler", "make_scheduler", "open_runner"]
