import json
import os

import pytest
import torch

import diffprune
from diffprune import DiffPruneError
from diffprune._io import atomic_dir
from diffprune.sources.checkpoint import WEIGHTS
from diffprune.sources.loader import load_source


@pytest.fixture(scope="module")
def pruned_attn():
    from diffprune.sources.unet import build_unet

    return diffprune.prune(build_unet("tiny-attn"), method="magnitude", ratio=0.4, progress=False)


@pytest.fixture
def saved(pruned_attn, tmp_path):
    model, report = pruned_attn
    return diffprune.save(model, tmp_path / "pruned", info={"pruning": report.to_dict()})


def test_save_load_is_bit_identical(pruned_attn, saved, inputs):
    model, _ = pruned_attn
    loaded = diffprune.load(saved)
    x, t = inputs(model)
    with torch.no_grad():
        assert torch.equal(model(x, t).sample, loaded(x, t).sample)
    for (ka, a), (kb, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert ka == kb and torch.equal(a, b)


def test_folder_holds_only_json_and_safetensors(saved):
    names = sorted(os.listdir(saved))
    assert names == ["config.json", WEIGHTS, "pruning.json", "scheduler_config.json"]
    info = json.loads((saved / "pruning.json").read_text())
    for key in ("widths", "params", "macs", "versions", "pruning", "format"):
        assert key in info
    assert info["pruning"]["method"] == "magnitude" and info["pruning"]["ratio"] == 0.4
    assert info["versions"]["torch"] == torch.__version__
    assert info["widths"]["conv_in"]["out_channels"] % 8 == 0


def test_pruned_folder_loads_as_a_model_source(saved, pruned_attn):
    model, scheduler, source = load_source(str(saved))
    assert source["format"] == "diffprune"
    assert scheduler["num_train_timesteps"] == 1000
    assert model.conv_in.out_channels == pruned_attn[0].conv_in.out_channels


def test_dense_diffusers_folder_loads(tiny, tmp_path, inputs):
    tiny.save_pretrained(tmp_path / "dense")
    model, _, source = load_source(str(tmp_path / "dense"))
    assert source["format"] == "diffusers"
    x, t = inputs(tiny)
    with torch.no_grad():
        assert torch.equal(model(x, t).sample, tiny(x, t).sample)


def test_truncated_weights_are_refused(saved):
    path = saved / WEIGHTS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DiffPruneError, match="truncated or corrupt"):
        diffprune.load(saved)


def test_widths_that_do_not_fit_the_weights_are_refused(saved):
    info = json.loads((saved / "pruning.json").read_text())
    info["widths"]["conv_in"]["out_channels"] += 8
    (saved / "pruning.json").write_text(json.dumps(info))
    with pytest.raises(DiffPruneError, match="do not fit the widths"):
        diffprune.load(saved)


def test_manifest_of_another_architecture_is_refused(saved):
    info = json.loads((saved / "pruning.json").read_text())
    info["widths"]["down_blocks.7.resnets.0.conv1"] = {"in_channels": 8, "out_channels": 8}
    (saved / "pruning.json").write_text(json.dumps(info))
    with pytest.raises(DiffPruneError, match="layers the model does not have"):
        diffprune.load(saved)


def test_config_of_another_model_class_is_refused(saved):
    config = json.loads((saved / "config.json").read_text())
    config["_class_name"] = "UNet3DConditionModel"  # a video UNet: not one diffprune prunes
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(DiffPruneError, match="UNet3DConditionModel"):
        diffprune.load(saved)


def test_corrupt_json_is_refused(saved):
    (saved / "pruning.json").write_text('{"widths": {')
    with pytest.raises(DiffPruneError, match="not valid JSON"):
        diffprune.load(saved)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(DiffPruneError, match="does not exist"):
        diffprune.load(tmp_path / "nothing")


def test_existing_output_needs_overwrite(pruned_attn, saved):
    with pytest.raises(DiffPruneError, match="already exists"):
        diffprune.save(pruned_attn[0], saved)
    diffprune.save(pruned_attn[0], saved, overwrite=True)
    assert diffprune.load(saved) is not None


def test_a_crash_leaves_no_artifact(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert not out.exists()
    assert os.listdir(tmp_path) == []
