"""PNG grids with numpy and zlib alone (the runtime carries no imaging library)."""

import struct
import zlib
from pathlib import Path

import numpy as np

from .files import atomic_write_bytes


def grid(images: np.ndarray, rows: int | None = None, pad: int = 2, value: int = 255) -> np.ndarray:
    """(N, H, W, C) uint8 -> one (rows*H', cols*W', C) image with ``pad`` pixels between tiles."""
    n, h, w, c = images.shape
    cols = int(np.ceil(n / rows)) if rows else int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), value, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        canvas[y:y + h, x:x + w] = images[i]
    return canvas


def encode_png(image: np.ndarray) -> bytes:
    """(H, W) or (H, W, 1|3) uint8 -> PNG bytes (8-bit grey or RGB, no filtering)."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    h, w = image.shape[:2]
    colour = 0 if image.ndim == 2 else 2
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))  # filter byte 0 per row

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def save_png(path, image: np.ndarray) -> Path:
    """Write atomically (temporary file, then rename)."""
    return atomic_write_bytes(path, encode_png(image))
