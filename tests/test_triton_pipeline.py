"""The Triton repository of a pipeline export carries the server-side loop model (Python backend, BLS), as
NVIDIA's Stable Diffusion tutorial lays it out: its config.pbtxt parses, and its model.py, loaded with a
stand-in ``triton_python_backend_utils`` whose InferenceRequest runs the repository's component ONNX files on
ONNX Runtime (as Triton would, reshaping per-sample scalars), turns a prompt into the same images the runtime
makes. No Triton server runs here."""

import importlib.util
import sys
import types

import numpy as np
import pytest

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from test_export import _parse_pbtxt  # noqa: E402


def fake_pb_utils(repo, configs: dict, log: list):
    """A stand-in for Triton's Python-backend utilities: Tensor, InferenceRequest (BLS; runs
    REPO/<model>/1/model.onnx, applying each input's config.pbtxt reshape), InferenceResponse, TritonError."""
    pb = types.ModuleType("triton_python_backend_utils")
    sessions = {}

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, np.asarray(array)

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class TritonError:
        def __init__(self, message):
            self._message = message

        def message(self):
            return self._message

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self._error = output_tensors, error

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs):
            self.model_name, self.outputs, self.inputs = model_name, requested_output_names, inputs

        def exec(self):
            config = configs.get(self.model_name)
            if config is None:
                return InferenceResponse([], TritonError(f"model {self.model_name} is not in the repository"))
            if self.model_name not in sessions:
                sessions[self.model_name] = ort.InferenceSession(str(repo / self.model_name / "1" / "model.onnx"),
                                                                 providers=["CPUExecutionProvider"])
            declared = {i["name"]: i for i in config["input"]}
            feeds = {}
            for t in self.inputs:
                spec, value = declared[t.name()], t.as_numpy()
                assert list(value.shape[1:]) == [d if d > 0 else n for d, n in zip(spec["dims"], value.shape[1:])], \
                    (self.model_name, t.name(), value.shape, spec["dims"])  # what Triton checks
                assert value.shape[0] <= config["max_batch_size"]
                if "reshape" in spec:
                    value = value.reshape(value.shape[0], *spec["reshape"]["shape"])
                feeds[t.name()] = value
            log.append((self.model_name, len(next(iter(feeds.values())))))
            out = sessions[self.model_name].run(self.outputs, feeds)
            return InferenceResponse([Tensor(n, v) for n, v in zip(self.outputs, out)])

    def get_input_tensor_by_name(request, name):
        return next((t for t in request.inputs if t.name() == name), None)

    def get_output_tensor_by_name(response, name):
        return next((t for t in response.output_tensors if t.name() == name), None)

    pb.Tensor, pb.TritonError, pb.InferenceResponse, pb.InferenceRequest = Tensor, TritonError, InferenceResponse, \
        InferenceRequest
    pb.get_input_tensor_by_name, pb.get_output_tensor_by_name = get_input_tensor_by_name, get_output_tensor_by_name
    return pb


@pytest.fixture
def repository(pixel_text, tmp_path):
    from diffprune.export import write_pipeline_repository

    _, out = pixel_text
    models = write_pipeline_repository(tmp_path / "repo", out, prefix="digits_")
    return tmp_path / "repo", models, out


def test_the_loop_models_config_parses(repository):
    repo, models, _ = repository
    assert sorted(p.name for p in repo.iterdir()) == ["digits_pipeline", "digits_text_encoder", "digits_unet"]
    assert models["pipeline"] == repo / "digits_pipeline"
    config = _parse_pbtxt((repo / "digits_pipeline" / "config.pbtxt").read_text())
    assert config["name"] == "digits_pipeline" and config["backend"] == "python" and config["max_batch_size"] == 0
    inputs = {i["name"]: i for i in config["input"]}
    assert inputs["PROMPT"] == {"name": "PROMPT", "data_type": "TYPE_STRING", "dims": [-1], "optional": "false"}
    assert inputs["STEPS"]["data_type"] == "TYPE_INT32" and inputs["SEED"]["optional"] == "true"
    assert config["output"] == [{"name": "IMAGES", "data_type": "TYPE_UINT8", "dims": [-1, 8, 8, 1]}]
    assert config["parameters"] == [{"key": "component_prefix", "value": {"string_value": "digits_"}}]
    version = repo / "digits_pipeline" / "1"
    assert (version / "model.py").is_file() and (version / "pipeline" / "pipeline.json").is_file()
    assert (version / "pipeline" / "tokenizer" / "tokenizer_config.json").is_file()
    assert not list(version.rglob("*.onnx*"))  # the weights live in the component models only
    compile((version / "model.py").read_text(), "model.py", "exec")


def test_the_loop_model_turns_a_prompt_into_the_runtimes_images(repository, monkeypatch):
    import json

    from diffprune.runtime.pipeline import Pipeline

    repo, _, out = repository
    configs = {p.name: _parse_pbtxt((p / "config.pbtxt").read_text()) for p in repo.iterdir()}
    log = []
    pb = fake_pb_utils(repo, configs, log)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location("triton_loop_model", repo / "digits_pipeline" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.pb_utils is pb

    model = module.TritonPythonModel()
    # Triton hands the model its config as JSON, parameters as a map: what config.pbtxt says
    params = {p["key"]: p["value"] for p in configs["digits_pipeline"]["parameters"]}
    model.initialize({"model_config": json.dumps({"parameters": params}),
                      "model_repository": str(repo / "digits_pipeline"), "model_version": "1"})
    prompts = np.array([b"a handwritten digit seven", b"the number 3"], dtype=object)
    request = types.SimpleNamespace(inputs=[pb.Tensor("PROMPT", prompts), pb.Tensor("STEPS", np.array([3], np.int32)),
                                            pb.Tensor("SEED", np.array([5], np.int64)),
                                            pb.Tensor("SCHEDULER", np.array([b"ddim"], dtype=object))])
    bad = types.SimpleNamespace(inputs=[pb.Tensor("STEPS", np.array([3], np.int32))])  # no prompt
    ok, refused = model.execute([request, bad])
    model.finalize()
    assert not ok.has_error()
    images = pb.get_output_tensor_by_name(ok, "IMAGES").as_numpy()
    assert refused.has_error() and "give a prompt" in refused.error().message()
    # text encoder once for [uncond; cond], then the UNet once per step on the doubled batch (guidance 2.0)
    assert log == [("digits_text_encoder", 4)] + [("digits_unet", 4)] * 3
    with Pipeline(out, "ort-cpu") as pipe:
        expected = pipe.generate(["a handwritten digit seven", "the number 3"], steps=3, seed=5, scheduler="ddim")
    assert images.dtype == np.uint8 and images.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(images, expected)
