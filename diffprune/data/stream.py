"""Fine-tuning data read from disk batch by batch, for data sets that do not fit in memory.

Sources: webdataset-style tar shards (a ``.tar``, a folder holding ``*.tar``, or a glob such as
``shards/*.tar``; the members of one example share a key, the member name up to its first dot:
``000123.png`` + ``000123.txt`` caption + optional ``000123.cls`` class label, as webdataset writes
them), an image folder (captions in same-stem ``.txt`` files) or a ``.jsonl`` of
``{"image", "text", "label"}`` lines, read with the standard library's ``tarfile`` and PIL only.

Order: epochs; in epoch e the shards come in a permutation seeded with (seed, e), and the examples of
shard i in a permutation seeded with (seed, e, i) (read by offset, so no shuffle buffer holds state).
An image folder or a JSONL is one shard. Only the current shard's index (names and offsets) is in
memory. The position in that order, ``(epoch, shard, offset)`` with the seed and the shard count, is the
whole state: it goes into every fine-tuning checkpoint, and a resumed run continues from it, reading
exactly what the uninterrupted run read.
"""

import glob
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .images import IMAGE_SUFFIXES, _folder_files, _read_image, jsonl_rows
from ..errors import DiffPruneError

TEXT_EXTENSIONS = ("txt", "caption")  # webdataset's caption members
LABEL_EXTENSION = "cls"  # webdataset's class-label member: the integer as text


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def is_shards(spec) -> bool:
    """Whether ``spec`` names tar shards (which are always streamed)."""
    if not isinstance(spec, (str, Path)) or str(spec).startswith(("builtin:", "generate:")):
        return False
    path = Path(spec)
    if path.suffix == ".tar" and (path.is_file() or _has_magic(str(spec))):
        return True
    return path.is_dir() and any(path.glob("*.tar"))


@dataclass
class Batch:
    """Decoded examples: images (list of (H, W[, C]) arrays), captions and labels (None where absent),
    and where each came from (for messages)."""

    images: list
    captions: list
    labels: list
    names: list


class _FileShard:
    """An image folder or a JSONL: one shard of (image path, caption or caption file, label) rows."""

    def __init__(self, name: str, rows: list):
        self.name, self._rows = name, rows

    def index(self) -> list:
        return self._rows

    def read(self, row):
        image, caption, label = row
        if isinstance(caption, Path):  # a folder's same-stem .txt, read only when its image is
            caption = caption.read_text(encoding="utf-8").strip() if caption.is_file() else None
        return _read_image(image), caption, label, str(image)


class _TarShard:
    """A tar of webdataset-style members, indexed (key -> member offsets) when first read."""

    def __init__(self, path: Path):
        self.path, self.name = path, path.name
        self._index = None

    def index(self) -> list:
        if self._index is None:
            self._index = self._build_index()
        return self._index

    def _build_index(self) -> list:
        examples = {}  # key -> {"image": (offset, size, name), "text": ..., "label": ...}, in member order
        try:
            with tarfile.open(self.path, mode="r:") as tar:  # uncompressed: members are read by offset
                for member in tar:
                    if not member.isfile():
                        continue
                    folder, _, base = member.name.rpartition("/")
                    stem, dot, ext = base.partition(".")
                    if not dot:
                        continue
                    key, ext = f"{folder}/{stem}" if folder else stem, ext.lower()
                    role = ("image" if "." + ext in IMAGE_SUFFIXES else "text" if ext in TEXT_EXTENSIONS
                            else "label" if ext == LABEL_EXTENSION else None)
                    if role is not None:
                        examples.setdefault(key, {})[role] = (member.offset_data, member.size, member.name)
        except (tarfile.TarError, OSError) as e:
            raise DiffPruneError(
                f"Could not read the tar shard {str(self.path)!r}: {e}. Shards are uncompressed tar files (.tar, not "
                ".tar.gz) whose members are NAME.png (or .jpg, ...) with NAME.txt captions and optional NAME.cls "
                "labels, as webdataset writes them.") from None
        return [entry for entry in examples.values() if "image" in entry]  # metadata-only keys are skipped

    def _member(self, f, entry, role):
        offset, size, _ = entry[role]
        f.seek(offset)
        return f.read(size)

    def read(self, entry):
        with open(self.path, "rb") as f:
            where = f"{entry['image'][2]} in {self.path}"
            image = _read_image(io.BytesIO(self._member(f, entry, "image")), where=where)
            caption = self._member(f, entry, "text").decode("utf-8").strip() if "text" in entry else None
            label = None
            if "label" in entry:
                text = self._member(f, entry, "label").decode("utf-8").strip()
                try:
                    label = int(text)
                except ValueError:
                    raise DiffPruneError(f"{entry['label'][2]} in {self.path} holds {text[:40]!r}, not an integer class "
                                         "label; a .cls member is the label as text (e.g. 7).") from None
        return image, caption, label, where


def _shards(spec) -> list:
    path = Path(spec)
    if _has_magic(str(spec)):
        tars = sorted(Path(p) for p in glob.glob(str(spec)) if p.endswith(".tar"))
        if not tars:
            raise DiffPruneError(f"Data {str(spec)!r} matches no .tar shard. Give a folder of .tar shards, one .tar, a "
                                 "glob such as shards/*.tar, an image folder or a .jsonl.")
        return [_TarShard(p) for p in tars]
    if path.is_file() and path.suffix == ".tar":
        return [_TarShard(path)]
    if path.is_dir() and any(path.glob("*.tar")):
        return [_TarShard(p) for p in sorted(path.glob("*.tar"))]
    if path.is_dir():
        files = _folder_files(path)
        return [_FileShard(str(path), [(f, f.with_suffix(".txt"), None) for f in files])]
    if path.is_file() and path.suffix == ".jsonl":
        return [_FileShard(str(path), jsonl_rows(path))]
    raise DiffPruneError(
        f"Data {str(spec)!r} cannot be streamed: streaming reads tar shards (a .tar, a folder of them, or a glob "
        "such as shards/*.tar), an image folder or a .jsonl of image-caption lines. Arrays (.npy/.npz, "
        "builtin:digits) and generate:N are in memory already: leave out --stream.")


class Stream:
    """Examples of ``spec`` in the seeded epoch order of the module docstring, from a position that
    :meth:`state` saves and :meth:`restore` returns to."""

    def __init__(self, spec, seed: int = 0):
        self.spec, self.seed = str(spec), seed
        self.shards = _shards(spec)
        self.epoch = self.shard = self.offset = 0
        self._order = None  # (epoch, shard position) -> the current shard's entries in this epoch's order

    def _shard_order(self, epoch):
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))

    def _current(self):
        key = (self.epoch, self.shard)
        if self._order is None or self._order[0] != key:
            i = int(self._shard_order(self.epoch)[self.shard])
            entries = self.shards[i].index()
            perm = np.random.default_rng([self.seed, self.epoch, i]).permutation(len(entries))
            self._order = (key, self.shards[i], [entries[j] for j in perm])
        return self._order[1], self._order[2]

    def take(self, count: int) -> list:
        """The next ``count`` examples as (shard, entry) references, advancing the position (epochs wrap)."""
        out, empty = [], 0
        while len(out) < count:
            shard, entries = self._current()
            got = entries[self.offset:self.offset + count - len(out)]
            out.extend((shard, e) for e in got)
            self.offset += len(got)
            empty = 0 if got else empty + 1
            if empty > len(self.shards):
                raise DiffPruneError(f"Data {self.spec!r} holds no examples: no shard has an image member "
                                     "(NAME.png, NAME.jpg, ... beside NAME.txt).")
            if self.offset >= len(entries):
                self.shard, self.offset = self.shard + 1, 0
                if self.shard == len(self.shards):
                    self.epoch, self.shard = self.epoch + 1, 0
        return out

    @staticmethod
    def read(refs) -> Batch:
        """Decode the examples ``refs`` (from :meth:`take`)."""
        batch = Batch([], [], [], [])
        for shard, entry in refs:
            image, caption, label, name = shard.read(entry)
            batch.images.append(image)
            batch.captions.append(caption)
            batch.labels.append(label)
            batch.names.append(name)
        return batch

    def state(self) -> dict:
        i = int(self._shard_order(self.epoch)[self.shard])
        return {"spec": self.spec, "seed": self.seed, "shards": len(self.shards), "epoch": self.epoch,
                "shard": self.shard, "shard_name": self.shards[i].name, "offset": self.offset,
                "order": "shards permuted with (seed, epoch), examples of shard i with (seed, epoch, i)"}

    def restore(self, state: dict) -> None:
        """Continue from a position :meth:`state` returned; a clear error when the data changed since."""
        try:
            epoch, shard, offset = int(state["epoch"]), int(state["shard"]), int(state["offset"])
            same = state["seed"] == self.seed and state["shards"] == len(self.shards)
            same = same and self.shards[int(self._shard_order(epoch)[shard])].name == state["shard_name"]
        except (KeyError, TypeError, ValueError, IndexError):
            same = False
        if not same:
            raise DiffPruneError(
                f"The checkpoint's data position ({state}) does not fit the data {self.spec!r} ({len(self.shards)} "
                f"shards, seed {self.seed}): the data or --seed changed since it was written, so a resumed run would "
                "not read what the interrupted one would have. Resume with the same data and seed, or start afresh.")
        self.epoch, self.shard, self.offset = epoch, shard, offset
        if self.offset > len(self._current()[1]):
            raise DiffPruneError(f"The checkpoint's data position is past the end of shard {state['shard_name']!r}: "
                                 "the shard changed since it was written. Resume with the same data, or start afresh.")
