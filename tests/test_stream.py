"""Streamed fine-tuning data: tar shards, folders and JSONL read batch by batch in seeded epochs, the position
saved in checkpoints, and resumed runs that end with the weights of an uninterrupted one."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import diffprune
from diffprune import DiffPruneError
from diffprune.training.checkpoints import latest_checkpoint
from diffprune.training.finetune import finetune
from diffprune.data.stream import Stream, is_shards

FAST = dict(batch_size=2, warmup_steps=1, log_every=1, progress=False)
WORDS = "zero one two three four five six seven eight nine".split()


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """8 digits in 3 webdataset-style shards (3, 3, 2 examples): NNN.png + NNN.txt + NNN.cls, plus a
    metadata-only key that must be skipped. Returns (folder, {key: (image, caption, label)})."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("shards")
    with np.load(Path(diffprune.__file__).parent / "assets/digits.npz") as z:
        images, labels = z["images"][:8], z["labels"][:8]
    truth = {}
    for s, keys in enumerate(([0, 1, 2], [3, 4, 5], [6, 7])):
        with tarfile.open(folder / f"train-{s:03d}.tar", "w") as tar:
            for i in keys:
                png = io.BytesIO()
                Image.fromarray(images[i]).save(png, format="PNG")
                caption = f"a handwritten digit {WORDS[labels[i]]}"
                _add(tar, f"{i:03d}.png", png.getvalue())
                _add(tar, f"{i:03d}.txt", caption.encode())
                _add(tar, f"{i:03d}.cls", str(int(labels[i])).encode())
                truth[f"{i:03d}"] = (images[i], caption, int(labels[i]))
            _add(tar, "meta.json", b"{}")
    return folder, truth


def test_every_example_once_per_epoch_in_a_seeded_order(shards):
    folder, truth = shards
    assert is_shards(folder) and is_shards(str(folder / "*.tar")) and is_shards(folder / "train-000.tar")
    stream = Stream(folder, seed=3)
    epochs = [[e["image"][2] for _, e in stream.take(8)] for _ in range(3)]
    for names in epochs:
        assert sorted(names) == sorted(f"{k}.png" for k in truth)  # each once, metadata-only keys skipped
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    assert [e["image"][2] for _, e in Stream(folder, seed=3).take(8)] == epochs[0]  # and by the seed alone
    assert [e["image"][2] for _, e in Stream(folder, seed=4).take(8)] != epochs[0]


def test_members_are_read_with_their_caption_and_label(shards):
    folder, truth = shards
    batch = Stream.read(Stream(str(folder / "*.tar"), seed=0).take(8))
    for image, caption, label, name in zip(batch.images, batch.captions, batch.labels, batch.names):
        key = name.split(".")[0]
        np.testing.assert_array_equal(image, truth[key][0])
        assert (caption, label) == truth[key][1:]


def test_a_restored_position_continues_where_the_saved_one_was(shards):
    folder, _ = shards
    straight = Stream(folder, seed=1)
    first = straight.take(5)
    state = json.loads(json.dumps(straight.state()))  # as a checkpoint's state.json holds it
    resumed = Stream(folder, seed=1)
    resumed.restore(state)
    assert [e for _, e in resumed.take(11)] == [e for _, e in straight.take(11)]  # across the epoch boundary
    assert state["epoch"] == 0 and first


def test_folder_and_jsonl_stream_like_they_load(captioned_digits):
    folder = captioned_digits()
    for spec in (folder, folder / "pairs.jsonl"):
        batch = Stream.read(Stream(spec, seed=0).take(8))
        assert sorted(batch.captions) == sorted(p.read_text().strip() for p in folder.glob("*.txt"))


@pytest.fixture(scope="module")
def pruned(pruned_conditional_folders):
    return pruned_conditional_folders


@pytest.fixture(scope="module")
def parts():
    from diffprune.sources.vae import build_vae
    from diffprune.sources.text import build_text_encoder

    return dict(text_encoder=build_text_encoder("tiny-sd"), vae=build_vae("tiny"), resize="pad")


def test_resume_of_a_streamed_run_ends_with_the_same_weights(pruned, parts, shards, tmp_path):
    folder, _ = shards
    # 5 steps of 2 examples: 10 of 8, so the run crosses into the second epoch after the checkpoint of step 4.
    common = dict(data=str(folder), steps=5, checkpoint_every=2, ema_decay=0.99, caption_dropout=0.3, **parts, **FAST)
    finetune(pruned["tiny-sd"], tmp_path / "straight", **common)
    with pytest.raises(ZeroDivisionError):
        finetune(pruned["tiny-sd"], tmp_path / "crashed", callback=lambda s, _: 1 / 0 if s == 5 else None, **common)
    ckpt = latest_checkpoint(tmp_path / "crashed.ckpt")
    data = json.loads((ckpt / "state.json").read_text())["data"]
    # 8 examples read in 4 steps: the whole first epoch, so the next batch starts epoch 1 at its first shard.
    assert (data["epoch"], data["shard"], data["offset"], data["seed"], data["shards"]) == (1, 0, 0, 0, 3)
    report = finetune(pruned["tiny-sd"], tmp_path / "crashed", resume=True, **common)
    assert report.resumed_from == 4
    a, b = diffprune.load(tmp_path / "straight").state_dict(), diffprune.load(tmp_path / "crashed").state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    info = json.loads((tmp_path / "straight" / "pruning.json").read_text())["finetune"]
    assert info["stream"] is True and info["num_images"] is None


def test_class_model_sees_the_labels_in_stream_order(pruned, shards, tmp_path):
    from diffprune.sources.loader import load_source

    from test_finetune_conditional import Recorder

    folder, _ = shards
    student = load_source(pruned["tiny-class"])[0]
    seen = Recorder(student)
    finetune(student, tmp_path / "ft", data=str(folder / "*.tar"), steps=3, ema_decay=0, **FAST)
    labels = torch.cat([c["class_labels"] for c in seen.calls]).tolist()  # (3 steps * 2,)
    expected = Stream.read(Stream(str(folder / "*.tar"), seed=0).take(6)).labels
    assert labels == expected


def test_a_folder_streams_for_an_unconditional_model(captioned_digits, tmp_path):
    from diffprune.sources.unet import build_unet

    model, _ = diffprune.prune(build_unet("tiny"), method="magnitude", ratio=0.5, progress=False)
    report = finetune(model, tmp_path / "ft", data=str(captioned_digits()), stream=True, steps=2, ema_decay=0, **FAST)
    assert report.steps == 2 and np.isfinite(report.final_loss)


def test_resume_with_other_data_or_mode_is_refused(pruned, shards, tmp_path):
    folder, _ = shards
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for name in ("train-000.tar", "train-001.tar"):
        (fewer / name).write_bytes((folder / name).read_bytes())
    common = dict(steps=3, checkpoint_every=2, ema_decay=0, **FAST)
    with pytest.raises(ZeroDivisionError):
        finetune(pruned["tiny-class"], tmp_path / "a", data=str(folder), callback=lambda s, _: 1 / 0 if s == 3 else None,
                 **common)
    with pytest.raises(DiffPruneError, match="the data or --seed changed"):
        finetune(pruned["tiny-class"], tmp_path / "a", data=str(fewer), resume=True, checkpoint_dir=tmp_path / "a.ckpt",
                 **common)
    with pytest.raises(DiffPruneError, match="written by a run that streamed its data"):
        finetune(pruned["tiny-class"], tmp_path / "a", data="builtin:digits", resume=True, **common)


def test_bad_stream_inputs_are_clear_errors(pruned, shards, tmp_path):
    folder, _ = shards
    gz = tmp_path / "gz"
    gz.mkdir()
    (gz / "x.tar").write_bytes(b"\x1f\x8b" + b"\0" * 600)  # not an uncompressed tar
    bad_cls = tmp_path / "badcls"
    bad_cls.mkdir()
    with tarfile.open(bad_cls / "s.tar", "w") as tar, tarfile.open(folder / "train-000.tar") as src:
        _add(tar, "000.png", src.extractfile("000.png").read())
        _add(tar, "000.cls", b"seven")
    cases = [
        (dict(data="builtin:digits", stream=True), "are in memory already"),
        (dict(data=str(folder), precompute=True), "--precompute encodes the whole data set"),
        (dict(data=str(folder), num_images=4), "--num-images picks a subset"),
        (dict(data=str(tmp_path / "none" / "*.tar")), "matches no .tar shard"),
        (dict(data=str(gz)), "Could not read the tar shard"),
        (dict(data=str(bad_cls)), "not an integer class label"),
    ]
    for i, (kwargs, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with pytest.raises(DiffPruneError, match=message):
            finetune(pruned["tiny-class"], out, steps=1, **{**FAST, **kwargs})
        assert not out.exists(), message
