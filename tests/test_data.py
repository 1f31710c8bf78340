import numpy as np
import pytest
import torch

from diffprune import DiffPruneError
from diffprune.data.images import load_images


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


def test_pad_keeps_the_digits_as_drawn_with_black_borders():
    seen = []
    plain = load_images("builtin:digits", (28, 28), 1, limit=3, warn=seen.append)
    padded = load_images("builtin:digits", (32, 32), 1, limit=3, resize="pad", warn=seen.append)
    assert padded.shape == (3, 1, 32, 32) and not seen  # nothing interpolated, so no warning
    torch.testing.assert_close(padded[:, :, 2:30, 2:30], plain)
    assert (padded[:, :, :2] == -1).all() and (padded[:, :, :, 30:] == -1).all()
    with pytest.raises(DiffPruneError, match="larger than the model's 16x16; --resize pad only adds borders"):
        load_images("builtin:digits", (16, 16), 1, limit=1, resize="pad")


def test_bilinear_resizing_warns_once_and_center_crop_keeps_the_aspect_ratio():
    seen = []
    load_images("builtin:digits", (32, 32), 1, limit=4, warn=seen.append)
    assert len(seen) == 1 and "4 of 28x28 images resized to 32x32 (bilinear)" in seen[0] and "--resize pad" in seen[0]
    wide = np.zeros((1, 10, 20), np.uint8)
    wide[:, :, 5:15] = 255  # a white band in the middle half of a 10x20 image
    seen.clear()
    x = load_images(wide, (10, 10), 1, resize="center-crop", warn=seen.append)
    assert x.shape == (1, 1, 10, 10) and (x == 1).all() and not seen  # cropped, not scaled
    x = load_images(wide, (5, 5), 1, resize="center-crop", warn=seen.append)  # halved, then cropped
    assert x.shape == (1, 1, 5, 5) and x[0, 0, 2, 2] > 0.9 and len(seen) == 1 and "(center-crop)" in seen[0]
    with pytest.raises(DiffPruneError, match="--resize 'nearest' is unknown; allowed: bilinear, pad, center-crop"):
        load_images("builtin:digits", (8, 8), 1, resize="nearest")


def test_prune_records_the_layout(tiny):
    import diffprune

    _, report = diffprune.prune(tiny, method="diff-pruning", ratio=0.3, data="builtin:digits", num_images=2,
                                max_timesteps=1, resize="center-crop", progress=False)
    assert report.to_dict()["resize"] == "center-crop"


def test_written_files_get_ordinary_permissions(tmp_path):
    import os

    from diffprune._io import atomic_write_bytes, quiet

    from diffprune.runtime.image import save_png

    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "report.json", b"{}")
        save_png(tmp_path / "grid.png", np.zeros((4, 4, 1), np.uint8))  # what `sample` and `demo` write
    finally:
        os.umask(umask)
    for name in ("report.json", "grid.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert quiet(True) is None and quiet(False) is True  # tqdm: off when asked, else off on non-terminals
