import json

import numpy as np
import pytest

from diffprune import DiffPruneError
from diffprune.evaluation.metrics import consistency, frechet_distance, psnr, ssim


def test_frechet_distance_of_known_gaussians():
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    assert frechet_distance(mu1, np.eye(3), mu1, np.eye(3)) == pytest.approx(0, abs=1e-9)
    assert frechet_distance(mu1, np.eye(3), mu2, np.eye(3)) == pytest.approx(9.0)
    # Diagonal covariances: sum (sqrt(a) - sqrt(b))^2
    a, b = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    assert frechet_distance(mu1, a, mu1, b) == pytest.approx((1 - 2) ** 2 + 0 + (3 - 1) ** 2)


def test_frechet_distance_of_identical_sets_is_zero():
    x = np.random.default_rng(0).standard_normal((500, 8)) @ np.random.default_rng(1).standard_normal((8, 8))
    mu, cov = x.mean(0), np.cov(x, rowvar=False)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0, abs=1e-6)


def test_ssim_and_psnr_on_known_inputs():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert np.allclose(ssim(a, a), 1.0)
    assert np.isinf(psnr(a, a)).all()
    b = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    assert (ssim(a, b) < 1).all() and (ssim(a, b) > 0.9).all()
    noisy = np.clip(a + rng.normal(0, 60, a.shape), 0, 255).astype(np.uint8)
    assert (ssim(a, noisy) < ssim(a, b)).all()
    flat = np.full((1, 16, 16, 1), 100, np.uint8)
    assert psnr(flat, flat + 1)[0] == pytest.approx(10 * np.log10(255**2 / 1.0))
    c = consistency(b, a)
    assert 0.9 < c["ssim"] < 1 and c["n"] == 3


def test_mismatched_sets_are_refused():
    with pytest.raises(DiffPruneError, match="differ in shape"):
        ssim(np.zeros((2, 8, 8, 1), np.uint8), np.zeros((3, 8, 8, 1), np.uint8))


def _projection_net(path, channels=1, size=8, dims=6):
    """A tiny ONNX feature network: flatten, then a fixed random projection."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((channels * size * size, dims)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("MatMul", ["f", "w"], ["y"])],
        "proj", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", dims])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def test_fid_with_an_onnx_feature_network(tmp_path):
    from diffprune.data.images import load_images
    from diffprune.evaluation.metrics import OnnxFeatures, feature_statistics, fid

    features = OnnxFeatures(_projection_net(tmp_path / "f.onnx"))
    digits = ((load_images("builtin:digits", (8, 8), 1, limit=200).numpy() + 1) * 127.5).round().astype(np.uint8)
    digits = digits.transpose(0, 2, 3, 1)
    same = fid(digits, "builtin:digits", features)  # 200 digits vs all 10,000: close
    noise = np.random.default_rng(1).integers(0, 256, digits.shape, dtype=np.uint8)
    far = fid(noise, "builtin:digits", features)
    assert same["dims"] == 6 and 0 <= same["fid"] < far["fid"]
    mu, sigma = feature_statistics(features(digits))
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    assert fid(digits, str(tmp_path / "stats.npz"), features)["fid"] == pytest.approx(0, abs=1e-6)


def test_fid_without_features_says_how_to_get_them(tmp_path):
    from diffprune.cli import main

    assert main(["eval", str(tmp_path), "--reference", "builtin:digits"]) == 2


def test_digit_confidence_tells_digits_from_noise():
    from diffprune.data.images import ASSETS
    from diffprune.evaluation.metrics import OnnxFeatures, digit_confidence

    with np.load(ASSETS / "digits.npz") as z:
        real = z["images"][9000:, :, :, None]  # the classifier's held-out 1,000
    q = digit_confidence(real)
    # Pinned: the shipped classifier on its held-out digits (97.5 % accurate there).
    assert q["n"] == 1000 and q["classes_covered"] == 10
    assert q["confident_share"] == pytest.approx(0.928) and q["mean_confidence"] == pytest.approx(0.975, abs=1e-3)
    # The classifier is over-confident on some noise (16 % of 256 images above 0.9), but always on one
    # class: coverage is what tells a collapsed or broken generator apart.
    noise = digit_confidence(np.random.default_rng(0).integers(0, 256, (256, 28, 28, 1), dtype=np.uint8))
    assert noise["confident_share"] < 0.3 and noise["classes_covered"] <= 2
    with pytest.raises(DiffPruneError, match="no output 'probs'; its outputs: features, logits"):
        OnnxFeatures("builtin:digits-features", output="probs")


def test_evaluate_from_python_on_a_tiny_export(tmp_path, tiny_export):
    from diffprune.evaluation.evaluate import evaluate

    lines = []
    stats = tmp_path / "stats.npz"
    result = evaluate(tiny_export, dense=tiny_export, n=4, steps=2, batch=2, backend="ort-cpu",
                      features="builtin:digits-features", save_stats=stats, log=lines.append)
    assert (result["n"], result["steps"], result["scheduler"], result["backend"]) == (4, 2, "ddim", "ort-cpu")
    assert result["consistency"]["ssim"] == pytest.approx(1.0)  # the same model from the same seeds
    assert stats.is_file() and any("saved feature statistics" in line for line in lines)
    # FID of the same images against their own statistics: zero
    again = evaluate(tiny_export, n=4, steps=2, batch=2, backend="ort-cpu", reference=stats,
                     features="builtin:digits-features", log=lines.append)
    assert "consistency" not in again and again["fid"]["fid"] == pytest.approx(0, abs=1e-4)
    with pytest.raises(DiffPruneError, match="needs a feature network"):
        evaluate(tiny_export, reference=stats)
    # `diffprune eval` is a shell over it: the same numbers in its --json
    from diffprune.cli import main

    assert main(["eval", str(tiny_export), "--dense", str(tiny_export), "--n", "4", "--steps", "2", "--batch", "2",
                 "--backend", "ort-cpu", "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text()) == result
    # An existing --json is refused before any sampling, and replaced with --overwrite.
    (tmp_path / "eval.json").write_text("{}")
    for extra, code in (([], 2), (["--overwrite"], 0)):
        assert main(["eval", str(tiny_export), "--n", "2", "--steps", "1", "--batch", "2", "--backend", "ort-cpu",
                     "--json", str(tmp_path / "eval.json"), *extra]) == code
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == 2
