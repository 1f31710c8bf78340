"""Images for calibration and fine-tuning, scaled to [-1, 1] and to the model's size and channels.

Sources: ``builtin:digits`` (10,000 MNIST digits shipped in the package, MIT licensed), a ``.npy`` or
``.npz`` array of images, a folder of image files, or ``generate:N`` (handled by the caller, which
owns the model that draws the samples).
"""

from pathlib import Path

import numpy as np

from .errors import DiffPruneError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# How images of another size reach the model's: bilinear (stretch to the size), pad (black borders,
# no interpolation: e.g. 28x28 digits for a 32x32 model trained on padded digits), center-crop (scale
# the shorter side to the size, then crop the middle: the usual diffusion training transform).
RESIZE_MODES = ("bilinear", "pad", "center-crop")
ASSETS = Path(__file__).parent / "assets"


def _as_nhwc(array: np.ndarray, where: str) -> np.ndarray:
    """Accept (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}; return (N, H, W, C)."""
    if array.ndim == 3:
        return array[..., None]
    if array.ndim == 4:
        if array.shape[-1] in (1, 3):
            return array
        if array.shape[1] in (1, 3):
            return array.transpose(0, 2, 3, 1)
    raise DiffPruneError(
        f"{where} holds an array of shape {tuple(array.shape)}; images must be (N, H, W), (N, H, W, C) "
        "or (N, C, H, W) with 1 or 3 channels. Re-save the array in one of these layouts."
    )


def _load_array(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                key = "images" if "images" in z.files else (z.files[0] if len(z.files) == 1 else None)
                if key is None:
                    raise DiffPruneError(
                        f"{str(path)!r} holds arrays {z.files}; diffprune reads the one named 'images' "
                        "(or the only array). Re-save it with np.savez(path, images=...)."
                    )
                return z[key]
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DiffPruneError(
            f"Could not read images from {str(path)!r} ({e}). The file is corrupt or not a numpy "
            "array; object arrays are refused because loading them would need pickle."
        ) from None


def _load_folder(folder: Path, limit: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DiffPruneError(
            f"The folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}). "
            "Point --data at a folder of image files, a .npy/.npz array, or builtin:digits."
        )
    images = []
    for path in files[:limit]:
        try:
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB" if im.mode not in ("L", "I;16") else "L")))
        except (UnidentifiedImageError, OSError) as e:
            raise DiffPruneError(f"Could not read the image {str(path)!r}: {e}. Remove or replace it.") from None
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        # Mixed sizes are resized one by one below; keep them in a list until then.
        return images
    return np.stack(images)


def describe(spec) -> str:
    return spec if isinstance(spec, str) else f"array {tuple(np.shape(spec))}"


def check_resize(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise DiffPruneError(f"--resize {resize!r} is unknown; allowed: {', '.join(RESIZE_MODES)}. Use pad when the "
                             "model was trained on padded images, center-crop for photos of other aspect ratios.")


def _fit(x, size: tuple, resize: str, where: str):
    """(1, C, h, w) in [-1, 1] -> (1, C, H, W) by ``resize``; returns (tensor, whether it was interpolated)."""
    import torch.nn.functional as F

    (h, w), (H, W) = x.shape[-2:], size
    if (h, w) == (H, W):
        return x, False
    if resize == "bilinear":
        return F.interpolate(x, size=(H, W), mode="bilinear", antialias=True, align_corners=False), True
    if resize == "pad":
        if h > H or w > W:
            raise DiffPruneError(
                f"Data {where} has {h}x{w} images, larger than the model's {H}x{W}; --resize pad only adds "
                "borders. Use --resize center-crop or bilinear, or images no larger than the model's size."
            )
        top, left = (H - h) // 2, (W - w) // 2
        return F.pad(x, (left, W - w - left, top, H - h - top), value=-1.0), False  # -1 = black
    scale = max(H / h, W / w)  # center-crop: the shorter side to the size, then the middle
    interpolated = scale != 1
    if interpolated:
        x = F.interpolate(x, size=(max(H, round(h * scale)), max(W, round(w * scale))), mode="bilinear",
                          antialias=True, align_corners=False)
    top, left = (x.shape[-2] - H) // 2, (x.shape[-1] - W) // 2
    return x[..., top:top + H, left:left + W], interpolated


def load_images(spec, size: tuple, channels: int, limit: int | None = None, seed: int = 0,
                resize: str = "bilinear", warn=None):
    """Return a float32 torch tensor (N, channels, H, W) in [-1, 1].

    ``spec`` is ``builtin:digits``, a path to a .npy/.npz file or an image folder, or an array.
    ``limit`` keeps a seeded random subset of that many images. Images of another size are brought
    to ``size`` by ``resize`` (see RESIZE_MODES); when any is interpolated, ``warn`` (default: print
    to stderr) gets one line saying so, since a model sees another distribution than the one it
    was trained on when the layout differs.
    """
    import sys

    import torch

    check_resize(resize)

    if isinstance(spec, (np.ndarray,)) or hasattr(spec, "numpy"):
        raw, where = np.asarray(spec), "the given array"
    elif spec == "builtin:digits":
        raw, where = _load_array(ASSETS / "digits.npz"), "builtin:digits"
    elif isinstance(spec, str) and spec.startswith("builtin:"):
        raise DiffPruneError(f"Unknown built-in data set {spec!r}; the one shipped is builtin:digits.")
    else:
        path = Path(spec)
        where = repr(str(path))
        if path.is_dir():
            raw = _load_folder(path, None)
        elif path.is_file() and path.suffix in (".npy", ".npz"):
            raw = _load_array(path)
        elif path.is_file():
            raise DiffPruneError(
                f"Data {str(path)!r} is a {path.suffix or 'suffix-less'} file; diffprune reads .npy/.npz "
                "arrays, image folders, builtin:digits or generate:N."
            )
        else:
            raise DiffPruneError(
                f"Data {str(path)!r} does not exist. Give an image folder, a .npy/.npz file, "
                "builtin:digits, or generate:N to draw N calibration samples from the model itself."
            )

    items = list(raw) if isinstance(raw, list) else None
    count = len(items) if items is not None else len(raw)
    if count == 0:
        raise DiffPruneError(f"Data {where} holds no images.")
    order = np.arange(count)
    if limit is not None and limit < count:
        order = np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))
    batch, interpolated = [], {}
    for i in order:
        img = _as_nhwc(np.asarray(items[i] if items is not None else raw[i])[None], where)[0]  # (H, W, C)
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None]  # (1, C, H, W)
        if img.dtype == np.uint8 or x.max() > 1.5:
            x = x / 127.5 - 1.0
        elif x.min() >= 0:
            x = x * 2.0 - 1.0
        if x.shape[1] != channels:
            if x.shape[1] == 1 and channels == 3:
                x = x.expand(-1, 3, -1, -1)  # grey to RGB: replicate
            else:
                raise DiffPruneError(
                    f"Data {where} has {x.shape[1]}-channel images but the model takes {channels} "
                    "channels. Use images with the model's channel count (grey images are accepted "
                    "for RGB models and replicated)."
                )
        shape = tuple(x.shape[-2:])
        x, changed = _fit(x, tuple(size), resize, where)
        if changed:
            interpolated[shape] = interpolated.get(shape, 0) + 1
        batch.append(x.clamp(-1, 1))
    if interpolated:
        sizes = ", ".join(f"{n} of {h}x{w}" for (h, w), n in interpolated.items())
        (warn or (lambda m: print(m, file=sys.stderr)))(
            f"diffprune: warning: {sizes} images resized to {size[0]}x{size[1]} ({resize}); if the model was trained "
            "on images laid out otherwise (e.g. digits padded to 32x32), choose --resize pad or center-crop.")
    return torch.cat(batch)
