import numpy as np
import pytest
import torch

from diffprune import DiffPruneError
from diffprune.data import load_images


def test_builtin_digits_are_scaled_and_resized():
    x = load_images("builtin:digits", (16, 16), 1, limit=5)
    assert x.shape == (5, 1, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.9 and x.max() > 0.5


def test_grey_images_feed_rgb_models():
    assert load_images("builtin:digits", (8, 8), 3, limit=2).shape == (2, 3, 8, 8)


def test_npy_and_npz(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "a.npy", arr)
    np.savez(tmp_path / "b.npz", images=arr.transpose(0, 2, 3, 1))
    a = load_images(str(tmp_path / "a.npy"), (8, 8), 3)
    b = load_images(str(tmp_path / "b.npz"), (8, 8), 3)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0, 0, 0, 0], torch.tensor(arr[0, 0, 0, 0] / 127.5 - 1.0, dtype=torch.float32))


def test_image_folder(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((10, 12, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    x = load_images(str(tmp_path), (8, 8), 3)
    assert x.shape == (3, 3, 8, 8)


def test_empty_folder_unreadable_image_and_wrong_channels(tmp_path):
    with pytest.raises(DiffPruneError, match="holds no images"):
        load_images(str(tmp_path), (8, 8), 3)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DiffPruneError, match="broken.png"):
        load_images(str(tmp_path), (8, 8), 3)
    np.save(tmp_path / "rgb.npy", np.zeros((2, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(DiffPruneError, match="3-channel images but the model takes 1"):
        load_images(str(tmp_path / "rgb.npy"), (8, 8), 1)


def test_missing_path_and_bad_spec(tmp_path):
    with pytest.raises(DiffPruneError, match="does not exist"):
        load_images(str(tmp_path / "nope"), (8, 8), 1)
    with pytest.raises(DiffPruneError, match="builtin:digits"):
        load_images("builtin:cifar", (8, 8), 1)
