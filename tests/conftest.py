import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Caches (OpenVINO IR, TensorRT engines) go to a temporary folder, not the user's home."""
    old = os.environ.get("DIFFPRUNE_CACHE")
    os.environ["DIFFPRUNE_CACHE"] = str(tmp_path_factory.mktemp("diffprune-cache"))
    yield
    if old is None:
        os.environ.pop("DIFFPRUNE_CACHE", None)
    else:
        os.environ["DIFFPRUNE_CACHE"] = old


@pytest.fixture(scope="session")
def tiny():
    from diffprune.sources.unet import build_unet

    return build_unet("tiny")


@pytest.fixture(scope="session")
def tiny_attn():
    from diffprune.sources.unet import build_unet

    return build_unet("tiny-attn")


@pytest.fixture
def inputs():
    def make(model, batch=2, seed=0):
        g = torch.Generator().manual_seed(seed)
        c, s = model.config.in_channels, model.config.sample_size
        return torch.randn(batch, c, s, s, generator=g), torch.tensor([3, 517][:batch] + [100] * max(0, batch - 2))

    return make


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny):
    """The tiny UNet exported once per session (TorchScript exporter: 1 s instead of 8)."""
    from diffprune.export import to_onnx

    out = tmp_path_factory.mktemp("tiny-export") / "onnx"
    to_onnx(tiny, out, batch=(1, 2, 4), exporter="torchscript")
    return out


@pytest.fixture
def broken_exports(tiny_export, tmp_path):
    """Copies of the tiny export broken as users break them: a corrupt graph, a model.json that lies."""
    import json
    import shutil

    corrupt, mismatched = tmp_path / "corrupt", tmp_path / "mismatched"
    shutil.copytree(tiny_export, corrupt)
    (corrupt / "model.onnx").write_bytes(b"garbage")
    shutil.copytree(tiny_export, mismatched)
    meta = json.loads((mismatched / "model.json").read_text())
    meta["inputs"][0]["shape"] = ["batch", 1, 32, 32]
    (mismatched / "model.json").write_text(json.dumps(meta))
    return {"corrupt": corrupt, "mismatched": mismatched, "mismatched_meta": meta}


@pytest.fixture(scope="session")
def captioned_digits(tmp_path_factory):
    """``make(long_last=False)``: a folder of 8 digits as PNGs with same-stem captions ("a handwritten digit
    seven"), and the same as pairs.jsonl with labels; with ``long_last`` the last caption runs past 77 tokens."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    words = "zero one two three four five six seven eight nine".split()

    def make(long_last: bool = False):
        folder = tmp_path_factory.mktemp("captioned")
        with np.load(Path(__file__).parents[1] / "diffprune/assets/digits.npz") as z:
            images, labels = z["images"][:8], z["labels"][:8]
        rows = []
        for i, (image, label) in enumerate(zip(images, labels)):
            caption = f"a handwritten digit {words[label]}" + (", very neat" * 40 if long_last and i == 7 else "")
            Image.fromarray(image).save(folder / f"{i}.png")
            (folder / f"{i}.txt").write_text(caption + "\n")
            rows.append({"image": f"{i}.png", "text": caption, "label": int(label)})
        (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return folder

    return make


@pytest.fixture(scope="session")
def pruned_conditional_folders(tmp_path_factory):
    """tiny-class and tiny-sd pruned to half their channels (magnitude), each saved as a pruned folder."""
    import diffprune
    from diffprune.sources.unet import build_unet

    out = {}
    for arch in ("tiny-class", "tiny-sd"):
        model, report = diffprune.prune(build_unet(arch), method="magnitude", ratio=0.5, progress=False)
        out[arch] = diffprune.save(model, tmp_path_factory.mktemp(arch) / "pruned", info={"pruning": report.to_dict()})
    return out
