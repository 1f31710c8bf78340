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


# A pixel-space text-to-image pipeline (tests/test_pixel_text.py, tests/test_triton_pipeline.py).
PIXEL_TEXT_UNET = dict(
    sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=16, attention_head_dim=2, norm_num_groups=8)


def write_pixel_text_pipeline(folder, tokens: int = 32, positions: int = 32):
    """A StableDiffusionPipeline folder without vae/, its UNet on 1-channel 8x8 pixels, its tokenizer padding to
    ``tokens`` and its CLIP text encoder (16 wide) with ``positions`` positions: seeded random weights."""
    import json

    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffprune.runtime.text import ClipTokenizer

    torch.manual_seed(0)
    UNet2DConditionModel(**PIXEL_TEXT_UNET).save_pretrained(folder / "unet")
    config = CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=positions, initializer_factor=10.0)
    CLIPTextModel(config).save_pretrained(folder / "text_encoder")
    ClipTokenizer(max_length=tokens).save(folder / "tokenizer")
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_config(folder / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDIMScheduler"], "_diffprune_guidance_scale": 2.0}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="session")
def pixel_text(tmp_path_factory):
    """(the pipeline folder, its export) with a 32-position tokenizer, exported once."""
    from diffprune.export import export_pipeline

    root = tmp_path_factory.mktemp("pixel-text")
    folder = write_pixel_text_pipeline(root / "pipe")
    export_pipeline(folder, root / "export", batch=(1, 2, 2), validate_batches=[1], progress=None)
    return folder, root / "export"
