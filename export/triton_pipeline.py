"""The server-side sampling loop of a Triton model repository: a Python-backend model (this file, copied as
``REPO/pipeline/1/model.py`` by :func:`diffprune.export.triton.write_pipeline_repository`) that runs the
denoising loop and calls the component models (text_encoder, unet, vae_decoder, ...) of the same repository
through Triton's BLS API (``pb_utils.InferenceRequest(...).exec()``), the layout of NVIDIA's Stable Diffusion
tutorial (Triton Popular_Models_Guide/StableDiffusion: a "pipeline" model calling the encoder, UNet and VAE
models). A client sends a prompt and gets uint8 images.

The loop is diffprune.runtime's own (:class:`diffprune.runtime.pipeline.Pipeline`: CLIP tokenizer, numpy
schedulers, guidance, noise per image), opened with :class:`TritonComponent` runners instead of local ONNX
Runtime sessions; so the Python backend needs ``pip install diffprune`` (the runtime: numpy, tokenizers; no
torch) and nothing else. ``1/pipeline/`` beside this file holds pipeline.json, the tokenizer folders and each
component's model.json (what the runners check inputs against); the weights live in the component models.

Inputs (all optional but PROMPT for text pipelines; one request is one batch of images):
    PROMPT           TYPE_STRING [-1]   one prompt, or one per image
    NEGATIVE_PROMPT  TYPE_STRING [-1]   one, or one per image (default the pipeline's)
    N                TYPE_INT32  [1]    images (default: one per prompt, else 1)
    CLASS_LABELS     TYPE_INT64  [-1]   class-conditional pipelines
    STEPS            TYPE_INT32  [1]    default 50
    GUIDANCE         TYPE_FP32   [1]    default the pipeline's
    SEED             TYPE_INT64  [1]    default 0; image i draws from default_rng([seed, i])
    SCHEDULER        TYPE_STRING [1]    ddim, ddpm, dpm-solver++, euler (default the pipeline's)
Output: IMAGES TYPE_UINT8 [-1, H, W, C].

Not run against a Triton server here: tests load this file with a stand-in ``triton_python_backend_utils``
whose InferenceRequest runs the component ONNX files of the repository on ONNX Runtime.
"""

import json
from pathlib import Path

try:
    import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend
except ImportError:  # importing this module outside the server (the package, its tests); tests inject a stand-in
    pb_utils = None

from diffprune.runtime.errors import DiffPruneError
from diffprune.runtime.formats import ENGINE_JSON, read_engine_json, read_model_json
from diffprune.runtime.pipeline import Pipeline
from diffprune.runtime.runners.base import Runner

PIPELINE_FOLDER = "pipeline"  # beside model.py: pipeline.json, tokenizers, the components' model.json


class TritonComponent(Runner):
    """A component model of the repository, called over BLS; checked against its model.json as every runner is."""

    backend = "triton-bls"

    def __init__(self, folder, meta: dict, model_name: str):
        super().__init__(folder, meta)
        self.model_name = model_name

    def open(self):
        return self

    def run_feeds(self, feeds: dict) -> dict:
        # A per-sample scalar (timestep, class_labels: shape (B,)) is declared [1] in the component's
        # config.pbtxt (export/triton.py), so it travels as (B, 1) and Triton reshapes it back.
        inputs = [pb_utils.Tensor(name, value.reshape(-1, 1) if value.ndim == 1 else value)
                  for name, value in feeds.items()]
        request = pb_utils.InferenceRequest(model_name=self.model_name, requested_output_names=list(self.outputs),
                                            inputs=inputs)
        response = request.exec()
        if response.has_error():
            raise DiffPruneError(f"The Triton model {self.model_name!r} failed: {response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in self.outputs}


def _meta(folder: Path) -> dict:
    """A component's model.json, or a TensorRT build's engine.json as the runners read it (its profile's batch)."""
    if (folder / ENGINE_JSON).is_file():
        meta = read_engine_json(folder)
        return {**meta["model"], "batch": meta["profile"]["batch"]}
    return read_model_json(folder)


def _input(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _strings(request, name: str):
    values = _input(request, name)
    if values is None:
        return None
    texts = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.reshape(-1)]
    return texts[0] if len(texts) == 1 else texts


def _scalar(request, name: str, kind):
    values = _input(request, name)
    return None if values is None else kind(values.reshape(-1)[0])


class TritonPythonModel:
    """Triton's Python-backend interface: initialize, execute (a list of requests), finalize."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        prefix = params.get("component_prefix", "")
        folder = Path(args["model_repository"]) / str(args["model_version"]) / PIPELINE_FOLDER
        self.pipe = Pipeline(folder)
        runners = {name: TritonComponent(folder / sub, _meta(folder / sub), prefix + name)
                   for name, sub in self.pipe.spec["components"].items()}
        self.pipe.open(runners=runners)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                steps = _scalar(request, "STEPS", int)
                seed = _scalar(request, "SEED", int)
                labels = _input(request, "CLASS_LABELS")
                images = self.pipe.generate(
                    _strings(request, "PROMPT"), n=_scalar(request, "N", int),
                    negative_prompt=_strings(request, "NEGATIVE_PROMPT"), guidance=_scalar(request, "GUIDANCE", float),
                    steps=50 if steps is None else steps, seed=0 if seed is None else seed,
                    scheduler=_strings(request, "SCHEDULER"),
                    class_labels=None if labels is None else labels.reshape(-1).tolist())  # (N, H, W, C) uint8
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("IMAGES", images)]))
            except DiffPruneError as e:  # the user's error, as the client should read it
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e))))
        return responses

    def finalize(self):
        self.pipe.close()


__all__ = ["TritonComponent", "TritonPythonModel", "PIPELINE_FOLDER"]
