"""Images for calibration and fine-tuning, scaled to [-1, 1] and to the model's size and channels.

Sources: ``builtin:digits`` (10,000 MNIST digits shipped in the package, MIT licensed), a ``.npy`` or
``.npz`` array of images, a folder of image files, or ``generate:N`` (handled by the caller, which
owns the model that draws the samples).
"""

from pathlib import Path

import numpy as np

from .errors import DiffPruneError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
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


def load_images(spec, size: tuple, channels: int, limit: int | None = None, seed: int = 0):
    """Return a float32 torch tensor (N, channels, H, W) in [-1, 1].

    ``spec`` is ``builtin:digits``, a path to a .npy/.npz file or an image folder, or an array.
    ``limit`` keeps a seeded random subset of that many images.
    """
    import torch
    import torch.nn.functional as F

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
    batch = []
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
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
        batch.append(x.clamp(-1, 1))
    return torch.cat(batch)
