"""Quality metrics for pruned diffusion models.

- SSIM and PSNR between pruned and dense images generated from the same initial noise and scheduler:
  the paper's "consistency" (Fang et al. 2023, Table 2: SSIM 0.932 on CIFAR-10).
- Fréchet distance between feature Gaussians (Heusel et al. 2017, Eq. 6), for FID with any feature
  network: Inception where the user has its weights, or a network suited to the domain.

Images are uint8 arrays (N, H, W, C) from any backend; everything here is numpy.
"""

from pathlib import Path

import numpy as np

from ..errors import DiffPruneError


def _check_pair(a: np.ndarray, b: np.ndarray):
    if a.shape != b.shape:
        raise DiffPruneError(f"Image sets differ in shape: {a.shape} vs {b.shape}; compare images generated "
                             "at the same size and count.")
    if a.ndim != 4:
        raise DiffPruneError(f"Expected images (N, H, W, C), got shape {a.shape}.")


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Per-image PSNR in dB (inf for identical images)."""
    _check_pair(a, b)
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(data_range**2 / mse)


def _gaussian_filter(x: np.ndarray, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """'valid' separable Gaussian filtering over axes 1, 2 of (N, H, W, C)."""
    k = np.exp(-0.5 * ((np.arange(size) - size // 2) / sigma) ** 2)
    k /= k.sum()
    h, w = x.shape[1] - size + 1, x.shape[2] - size + 1
    y = sum(k[i] * x[:, i:i + h] for i in range(size))
    return sum(k[i] * y[:, :, i:i + w] for i in range(size))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004, Eq. 13): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
    averaged over pixels and channels. Images smaller than the window use a window of their size."""
    _check_pair(a, b)
    size = min(11, a.shape[1], a.shape[2])
    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _gaussian_filter(x, size), _gaussian_filter(y, size)
    sxx = _gaussian_filter(x * x, size) - mx * mx
    syy = _gaussian_filter(y * y, size) - my * my
    sxy = _gaussian_filter(x * y, size) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.reshape(len(a), -1).mean(1)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with the trace of the matrix square root taken
    from the eigenvalues of sqrt(S1) S2 sqrt(S1) (symmetric, so numerically stable)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise DiffPruneError(f"Feature statistics differ in size: {mu1.shape} vs {mu2.shape}; use one feature network for both.")
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    trace_sqrt = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def feature_statistics(features: np.ndarray):
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise DiffPruneError(f"Need at least 2 feature vectors (N, D) for statistics, got shape {features.shape}.")
    return features.mean(0), np.cov(features, rowvar=False)


def consistency(pruned: np.ndarray, dense: np.ndarray) -> dict:
    """SSIM and PSNR of pruned vs dense images from the same noise, as mean and per-image lists."""
    s, p = ssim(pruned, dense), psnr(pruned, dense)
    finite = p[np.isfinite(p)]
    return {"ssim": float(s.mean()), "psnr_db": float(finite.mean()) if len(finite) else float("inf"),
            "n": int(len(s))}


# Feature networks shipped with the package. digits-features: a classifier trained on the embedded
# MNIST subset (97.5 % held-out accuracy; benchmarks/train_digits_classifier.py), its 64-d penultimate layer.
BUILTIN_FEATURES = {"builtin:digits-features": str(Path(__file__).resolve().parents[1] / "assets" / "digits-classifier" / "model.onnx")}


class OnnxFeatures:
    """A feature network in an ONNX file: uint8 images (N, H, W, C) -> features (N, D).

    The network takes float32 (N, C, H, W) in [0, 1] at the size its input declares; images are
    resized (bilinear) and grey images replicated to RGB when it wants 3 channels. Any network
    works: the standard FID Inception-v3 converted to ONNX, or one suited to the domain (for digits,
    a small classifier's penultimate layer gives a far more meaningful FID than Inception does).
    """

    def __init__(self, path, batch: int = 64, output: str | None = None):
        from pathlib import Path

        from ..runtime.runners.onnxruntime import import_onnxruntime

        path = Path(BUILTIN_FEATURES.get(str(path), path))
        if not path.is_file():
            raise DiffPruneError(f"Feature network {str(path)!r} does not exist. Give an ONNX file mapping images "
                                 "(N, C, H, W) in [0, 1] to features (N, D).")
        ort = import_onnxruntime()
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT's own exception types
            raise DiffPruneError(f"ONNX Runtime cannot load the feature network {str(path)!r}: {str(e).splitlines()[0]}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.channels, self.size = inp.shape[1], tuple(inp.shape[2:4])
        self.batch = batch
        names = [o.name for o in self.session.get_outputs()]
        if output is not None and output not in names:
            raise DiffPruneError(f"The feature network {str(path)!r} has no output {output!r}; its outputs: {', '.join(names)}.")
        self.outputs = [output] if output is not None else None  # None: the first output

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = []
        for start in range(0, len(images), self.batch):
            chunk = images[start:start + self.batch]
            resized = []
            for img in chunk:
                pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
                if all(isinstance(s, int) for s in self.size) and pil.size != self.size[::-1]:
                    pil = pil.resize(self.size[::-1], Image.BILINEAR)
                arr = np.asarray(pil, dtype=np.float32) / 255.0
                arr = arr[..., None] if arr.ndim == 2 else arr
                if self.channels == 3 and arr.shape[-1] == 1:
                    arr = np.repeat(arr, 3, axis=-1)
                resized.append(arr.transpose(2, 0, 1))
            feats = self.session.run(self.outputs, {self.input_name: np.stack(resized).astype(np.float32)})[0]
            out.append(feats.reshape(len(chunk), -1))
        return np.concatenate(out)


def digit_confidence(images: np.ndarray, threshold: float = 0.9) -> dict:
    """How recognisable generated digits are, by the shipped classifier (97.5 % held-out accuracy):
    the share of images whose top class has softmax probability >= ``threshold``, the mean top
    probability, and how many distinct classes the confident ones cover: the classifier is also sure
    of some noise images (16 % of uniform noise above 0.9), always of one class, so a collapsed or
    broken generator shows in the coverage. Real held-out digits: 0.928 / 0.975 / 10 classes."""
    logits = OnnxFeatures("builtin:digits-features", output="logits")(images).astype(np.float64)  # (N, 10)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top = p.max(1)
    confident = top >= threshold
    return {"confident_share": float(confident.mean()), "mean_confidence": float(top.mean()),
            "classes_covered": int(len(set(p.argmax(1)[confident].tolist()))), "threshold": threshold, "n": int(len(images))}


def reference_statistics(reference, features, size=None, channels=None):
    """(mu, sigma) of a reference set: a .npz of precomputed statistics (keys mu, sigma), or images
    (folder, .npy/.npz of images, builtin:digits) passed through ``features``."""
    from pathlib import Path

    path = Path(str(reference))
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if "mu" in z.files and "sigma" in z.files:
                return z["mu"], z["sigma"]
    from ..data.images import load_images

    tensor = load_images(reference, size, channels)  # (N, C, H, W) in [-1, 1]
    images = ((tensor.numpy().clip(-1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)
    return feature_statistics(features(images))


def fid(images: np.ndarray, reference, features) -> dict:
    """FID of uint8 ``images`` against ``reference`` (statistics .npz or images) under ``features``."""
    mu_r, sigma_r = reference_statistics(reference, features, images.shape[1:3], images.shape[3])
    mu_g, sigma_g = feature_statistics(features(images))
    return {"fid": frechet_distance(mu_g, sigma_g, mu_r, sigma_r), "n": int(len(images)), "dims": int(len(mu_g))}


INCEPTION_HELP = (
    "The standard FID uses Inception-v3 with the 'pt_inception-2015-12-05' weights, which diffprune does not ship "
    "or download. Convert them to ONNX once (e.g. from pytorch-fid's FIDInceptionA/E model, input (N, 3, 299, 299) "
    "in [0, 1], output the 2048-d pool features) and pass the file with --features; or pass any feature network "
    "suited to your images."
)
