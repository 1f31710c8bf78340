"""diffprune.runtime: torch-free sampling of exported models on ONNX Runtime, OpenVINO or TensorRT.

numpy, plus onnxruntime, openvino or tensorrt imported lazily inside their runner (runners/). Never
torch, nor anything from diffprune's torch side (diffprune/, export/): a test imports every module here
with torch made unimportable. The artifact files' names, format strings and readers (model.json,
engine.json, pipeline.json, deploy.json, pruning.json) live in formats.py, which export/ and diffprune/
import too.
"""

from .errors import DiffPruneError
from .pipeline import Pipeline
from .runners import BACKENDS, open_runner
from .sampler import Sampler
from .schedulers import SCHEDULERS, make_scheduler

__all__ = ["BACKENDS", "DiffPruneError", "Pipeline", "SCHEDULERS", "Sampler", "make_scheduler", "open_runner"]
