"""Images for calibration and fine-tuning, scaled to [-1, 1] and to the model's size and channels, with
the captions and class labels that come with them.

Sources: ``builtin:digits`` (10,000 MNIST digits shipped in the package, MIT licensed, with their
labels), a ``.npy`` or ``.npz`` array of images (an .npz may hold ``labels`` beside ``images``), a
folder of image files (each caption in a same-stem ``.txt`` beside its image: ``cat.png`` +
``cat.txt``), a ``.jsonl`` file of ``{"image": path, "text": caption}`` lines (paths relative to the
file; an optional ``"label"``), or ``generate:N`` (handled by the caller, which owns the model that
draws the samples).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DiffPruneError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# How images of another size reach the model's: bilinear (stretch to the size), pad (black borders,
# no interpolation: e.g. 28x28 digits for a 32x32 model trained on padded digits), center-crop (scale
# the shorter side to the size, then crop the middle: the usual diffusion training transform).
RESIZE_MODES = ("bilinear", "pad", "center-crop")
ASSETS = Path(__file__).resolve().parents[1] / "assets"


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


def _load_array(path: Path, labels: bool = False):
    """The images of a .npy/.npz; with ``labels``, ``(images, labels or None)``."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                key = "images" if "images" in z.files else (z.files[0] if len(z.files) == 1 else None)
                if key is None:
                    raise DiffPruneError(
                        f"{str(path)!r} holds arrays {z.files}; diffprune reads the one named 'images' "
                        "(or the only array). Re-save it with np.savez(path, images=...)."
                    )
                if labels:
                    return z[key], (z["labels"] if "labels" in z.files else None)
                return z[key]
        array = np.load(path, allow_pickle=False)
        return (array, None) if labels else array
    except (ValueError, OSError, EOFError) as e:
        raise DiffPruneError(
            f"Could not read images from {str(path)!r} ({e}). The file is corrupt or not a numpy "
            "array; object arrays are refused because loading them would need pickle."
        ) from None


def _read_image(path, where: str | None = None) -> np.ndarray:
    """An image file (a path, or a binary file object read from ``where``, e.g. a tar member) as (H, W[, C])."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB" if im.mode not in ("L", "I;16") else "L"))  # writable, for torch
    except (UnidentifiedImageError, OSError) as e:
        raise DiffPruneError(f"Could not read the image {where or str(path)!r}: {e}. Remove or replace it.") from None


def _folder_files(folder: Path) -> list:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DiffPruneError(
            f"The folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}). "
            "Point --data at a folder of image files, a .npy/.npz array, or builtin:digits."
        )
    return files


def _load_folder(folder: Path, limit: int | None, files=None) -> np.ndarray:
    images = [_read_image(path) for path in (files or _folder_files(folder))[:limit]]
    return _stack(images)


def _stack(images: list):
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


def _read_jsonl(path: Path):
    """Images, captions and labels (None where no line has one) of a JSONL file."""
    rows = jsonl_rows(path)
    images = [_read_image(image) for image, _, _ in rows]
    captions = [text for _, text, _ in rows]
    labels = [label for _, _, label in rows]
    return (_stack(images), captions if any(c is not None for c in captions) else None,
            labels if any(x is not None for x in labels) else None)


def jsonl_rows(path: Path) -> list:
    """(image path, caption or None, label or None) of every line of a JSONL file, checked, images not read."""
    rows = []
    lines = [(i, line) for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    if not lines:
        raise DiffPruneError(f"Data {str(path)!r} holds no lines; write one JSON object per line: "
                             '{"image": "cats/1.png", "text": "a photo of a cat"}.')
    for number, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DiffPruneError(f"Line {number} of {str(path)!r} is not JSON ({e}).") from None
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            raise DiffPruneError(f"Line {number} of {str(path)!r} has no \"image\" path; each line is "
                                 '{"image": "cats/1.png", "text": "a photo of a cat"} (an optional "label").')
        if "text" in row and not isinstance(row["text"], str):
            raise DiffPruneError(f"Line {number} of {str(path)!r}: \"text\" is a {type(row['text']).__name__}, "
                                 "not a string.")
        image = Path(row["image"]) if Path(row["image"]).is_absolute() else path.parent / row["image"]
        if not image.is_file():
            raise DiffPruneError(f"Line {number} of {str(path)!r} names the image {str(image)!r}, which does not "
                                 "exist (paths are relative to the JSONL file's folder).")
        rows.append((image, row.get("text"), row.get("label")))
    return rows


@dataclass
class CalibrationData:
    """Images (N, C, H, W) in [-1, 1] as a torch tensor and what came with them, aligned with them."""

    images: "object"
    captions: list | None = None  # one caption per image (None where an image has none), or None: no captions at all
    labels: list | None = None  # class labels (ints as stored), or None
    files: list | None = None  # the image files the captions belong to (folders and JSONL), for messages

    def require_captions(self, spec, purpose: str, alternative: str = "") -> None:
        """A clear error naming the first images without a caption; ``purpose`` says what the captions are
        for ("pruned", "fine-tuned"), ``alternative`` what else the caller accepts."""
        count = self.images.shape[0]
        missing = [i for i, c in enumerate(self.captions or [None] * count) if c is None]
        if missing:
            names = [self.files[i] if self.files else f"image {i}" for i in missing[:3]]
            raise DiffPruneError(
                f"Data {describe(spec)!r}: {len(missing)} of {count} images have no caption "
                f"({', '.join(names)}{', ...' if len(missing) > 3 else ''}). A text-conditioned UNet is {purpose} with "
                "the captions of its images: put each caption in a same-stem .txt beside its image (cat.png + "
                "cat.txt), or list {\"image\": ..., \"text\": ...} lines in a .jsonl" + (f"; {alternative}." if alternative else "."))


def load_calibration(spec, size: tuple, channels: int, limit: int | None = None, seed: int = 0,
                     resize: str = "bilinear", warn=None) -> CalibrationData:
    """Like :func:`load_images`, with the captions and labels of the chosen images (see the module
    docstring for where they come from)."""
    raw, where, captions, labels, files = _read(spec)
    images, order = _convert(raw, where, size, channels, limit, seed, resize, warn)
    pick = lambda xs: None if xs is None else [xs[i] for i in order]  # noqa: E731
    return CalibrationData(images=images, captions=pick(captions), labels=pick(labels), files=pick(files))


def _read(spec):
    """(raw images, where, captions, labels, files) of a data source."""
    if isinstance(spec, (np.ndarray,)) or hasattr(spec, "numpy"):
        return np.asarray(spec), "the given array", None, None, None
    if spec == "builtin:digits":
        raw, labels = _load_array(ASSETS / "digits.npz", labels=True)
        return raw, "builtin:digits", None, labels.tolist(), None
    if isinstance(spec, str) and spec.startswith("builtin:"):
        raise DiffPruneError(f"Unknown built-in data set {spec!r}; the one shipped is builtin:digits.")
    path = Path(spec)
    where = repr(str(path))
    if path.is_dir():
        files = _folder_files(path)
        captions = [p.with_suffix(".txt") for p in files]
        captions = ([c.read_text(encoding="utf-8").strip() if c.is_file() else None for c in captions]
                    if any(c.is_file() for c in captions) else None)
        return _load_folder(path, None, files), where, captions, None, [str(p) for p in files]
    if path.is_file() and path.suffix in (".npy", ".npz"):
        raw, labels = _load_array(path, labels=True)
        return raw, where, None, None if labels is None else labels.tolist(), None
    if path.is_file() and path.suffix == ".jsonl":
        raw, captions, labels = _read_jsonl(path)
        return raw, where, captions, labels, [f"line {i + 1} of {path}" for i in range(len(raw))]
    if path.is_file() and path.suffix == ".tar":
        raise DiffPruneError(
            f"Data {str(path)!r} is a tar shard; shards are read only by fine-tuning, which streams them "
            "(diffprune.data.stream). For pruning's calibration images give an image folder, a .jsonl, a .npy/.npz, "
            "builtin:digits or generate:N.")
    if path.is_file():
        raise DiffPruneError(
            f"Data {str(path)!r} is a {path.suffix or 'suffix-less'} file; diffprune reads .npy/.npz "
            "arrays, image folders, .jsonl image-caption lists, builtin:digits or generate:N."
        )
    raise DiffPruneError(
        f"Data {str(path)!r} does not exist. Give an image folder, a .npy/.npz file, a .jsonl of "
        "image-caption pairs, builtin:digits, or generate:N to draw N calibration samples from the model itself."
    )


def load_images(spec, size: tuple, channels: int, limit: int | None = None, seed: int = 0,
                resize: str = "bilinear", warn=None):
    """Return a float32 torch tensor (N, channels, H, W) in [-1, 1].

    ``spec`` is ``builtin:digits``, a path to a .npy/.npz file or an image folder, or an array.
    ``limit`` keeps a seeded random subset of that many images. Images of another size are brought
    to ``size`` by ``resize`` (see RESIZE_MODES); when any is interpolated, ``warn`` (default: print
    to stderr) gets one line saying so, since a model sees another distribution than the one it
    was trained on when the layout differs.
    """
    raw, where, *_ = _read(spec)
    return _convert(raw, where, size, channels, limit, seed, resize, warn)[0]


def _convert(raw, where, size, channels, limit, seed, resize, warn):
    """(images (N, channels, H, W) in [-1, 1], the indices of raw they are)."""
    import sys

    import torch

    check_resize(resize)
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
    return torch.cat(batch), order.tolist()
