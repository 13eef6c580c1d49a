"""``webdataset``: tar shards in the layout of LAION-AI/CLIP_benchmark's webdatasets (``clip_benchmark/
webdataset_builder.py``, read by ``datasets/builder.py:build_wds_dataset``), streamed::

    root/
        classnames.txt                  one class name per line (optional)
        test/                           the split
            nshards.txt                 the number of shards N (optional: else every *.tar, in numeric order)
            0.tar 1.tar ... N-1.tar     members <key>.webp|png|jpg|jpeg and <key>.cls (the label as text)

``root`` may also be the split folder itself, or a single ``.tar``. Members are grouped into samples by key as
webdataset does (the name up to the first dot of its base name); the image is the first of ``webp, png, jpg,
jpeg, 0.webp`` present. Sample keys (``s0000000``...) are the sample ids.

CLIP_benchmark's ImageNet-family shards number their labels by the set's own classes (``0..199`` for
ImageNet-R/-A, ``0..112`` for ObjectNet). ``family=`` applies robustsig's conventions for them: ImageNet-R/-A
labels become ImageNet-1k indices with ``class_indices`` their 200 classes; ObjectNet labels stay ``0..112``
with the ``class_map`` read from ``mappings=`` (the ObjectNet download's ``mappings/`` folder).
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from robustsig._contents import digest_files
from robustsig.data._layout import examples, layout_error, require_dir
from robustsig.data.base import ImageSource, log
from robustsig.data.classes import imagenet_classnames, subset_indices
from robustsig.data.objectnet import read_objectnet_mappings
from robustsig.errors import CorruptImageError, DataError, InputError

IMAGE_KEYS = ("webp", "png", "jpg", "jpeg", "0.webp")
FAMILIES = ("imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet")
_EXPECTED = ("CLIP_benchmark's webdataset layout: <root>/<split>/0.tar, 1.tar, ... (members <key>.webp|png|jpg "
             "and <key>.cls) with optional <root>/<split>/nshards.txt and <root>/classnames.txt")
_KEY = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")  # webdataset's base_plus_ext


def split_key(name: str) -> tuple[str | None, str]:
    """``("dir/s0000001", "0.webp")`` for ``"dir/s0000001.0.webp"``; ``(None, "")`` when there is no extension."""
    match = _KEY.match(name)
    return (match.group(1), match.group(2).lower()) if match else (None, "")


def _numeric_order(path: Path) -> tuple[int, int | str]:
    """Shards ``2.tar`` before ``10.tar`` (string order would put ``10`` first), named ones after, by name."""
    return (0, int(path.stem)) if path.stem.isdigit() else (1, path.name)


def find_shards(root: Path, split: str) -> tuple[list[Path], Path]:
    """The shard files, in order, and the folder holding the dataset's metadata (``classnames.txt``)."""
    if root.is_file():
        if not root.name.endswith(".tar"):
            raise layout_error("webdataset", root, "not a .tar shard", _EXPECTED)
        return [root], root.parent
    folder = root / split if (root / split).is_dir() else root
    meta = root if folder != root else root.parent
    count_file = folder / "nshards.txt"
    if count_file.is_file():
        text = count_file.read_text().strip()
        if not text.isdigit():
            raise layout_error("webdataset", count_file, f"{text!r} is not a shard count", _EXPECTED)
        shards = [folder / f"{n}.tar" for n in range(int(text))]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise layout_error("webdataset", folder, f"nshards.txt says {text} shards but "
                               f"{examples(missing)} are missing", _EXPECTED)
    else:
        shards = sorted(folder.glob("*.tar"), key=_numeric_order)
    if not shards:
        raise layout_error("webdataset", folder, "no .tar shards", _EXPECTED)
    return shards, meta


class WebImageDataset(ImageSource, IterableDataset):
    """Streams ``(image, label)`` from tar shards; ``keyed()`` streams ``(key, image, label)`` for stores.

    A sample whose image cannot be decoded (or that has none) comes as ``(None, label)`` in the default mode,
    like :class:`~robustsig.data.base.ImageDataset`. With several DataLoader workers each reads its own shards.

    Args:
        shards: the tar files, in order.
        label_map: replaces a shard label ``k`` by ``label_map[k]`` (e.g. ImageNet-R position -> ImageNet index).
        **source: see :class:`~robustsig.data.base.ImageSource`.
    """

    def __init__(self, shards: list[Path], *, label_map: list[int] | None = None, **source: Any) -> None:
        super().__init__(**source)
        self.shards = [Path(s) for s in shards]
        self.label_map = label_map
        self._length: int | None = None

    def __repr__(self) -> str:
        return f"WebImageDataset(root={self.root!r}, {len(self.shards)} shards, {len(self.classnames)} classes)"

    def shard(self, rank: int, world_size: int) -> WebImageDataset:
        """The part of the dataset that process ``rank`` of ``world_size`` reads (every ``world_size``-th shard)."""
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is not in 0..{world_size - 1}")
        part = copy.copy(self)
        part.shards = self.shards[rank::world_size]
        part._length = None
        return part

    def __len__(self) -> int:
        """The number of samples with an image member, counted from the tar headers once (no image is read)."""
        if self._length is None:
            self._length = sum(len(self._keys_with_image(shard)) for shard in self.shards)
        return self._length

    @staticmethod
    def _keys_with_image(shard: Path) -> set[str]:
        try:
            with tarfile.open(shard, mode="r:") as tar:
                names = [split_key(m.name) for m in tar if m.isfile()]
        except (OSError, tarfile.TarError) as error:
            raise DataError(f"webdataset: cannot read shard {shard}: {error}") from error
        return {key for key, ext in names if key is not None and ext in IMAGE_KEYS}

    def _label(self, sample: dict[str, bytes], where: str) -> int:
        if "cls" not in sample:
            return -1
        text = sample["cls"].decode("utf-8", "replace").strip()
        if not re.fullmatch(r"-?\d+", text):
            raise DataError(f"webdataset: {where}.cls holds {text!r}, not an integer class number")
        label = int(text)
        if self.label_map is not None and label >= 0:
            if label >= len(self.label_map):
                raise DataError(f"webdataset: {where}.cls is {label} but the set has {len(self.label_map)} classes")
            label = self.label_map[label]
        return label

    def _decode_sample(self, key: str, sample: dict[str, bytes], shard: Path) -> tuple[str, Any, int]:
        where = f"{shard}:{key}"
        label = self._label(sample, where)
        ext = next((e for e in IMAGE_KEYS if e in sample), None)
        try:
            if ext is None:
                raise CorruptImageError(where, f"no image member ({', '.join(IMAGE_KEYS)})")
            return key, self.decode(io.BytesIO(sample[ext]), name=f"{where}.{ext}"), label
        except CorruptImageError as error:
            self._corrupt(error)
            return key, None, label

    def _read_shard(self, shard: Path) -> Iterator[tuple[str, Any, int]]:
        key, sample = None, {}
        try:
            with tarfile.open(shard, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    prefix, ext = split_key(member.name)
                    if prefix is None:
                        continue
                    if prefix != key or ext in sample:
                        if sample:
                            yield self._decode_sample(key, sample, shard)
                        key, sample = prefix, {}
                    sample[ext] = tar.extractfile(member).read()
        except (OSError, tarfile.TarError) as error:
            if self.strict:
                raise DataError(f"webdataset: shard {shard} is damaged: {error}") from error
            log.warning("webdataset: shard %s is damaged after key %s (%s); skipping its rest", shard, key, error)
            return
        if sample:
            yield self._decode_sample(key, sample, shard)

    def _my_shards(self) -> list[Path]:
        worker = get_worker_info()
        return self.shards if worker is None else self.shards[worker.id::worker.num_workers]

    def samples_with_keys(self) -> Iterator[tuple[str, Any, int]]:
        """``(key, image_or_None, label)`` for the shards of this process (all of them outside a DataLoader)."""
        for shard in self._my_shards():
            yield from self._read_shard(shard)

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        for _, image, label in self.samples_with_keys():
            yield image, label

    def keyed(self) -> KeyedStream:
        """This dataset as a stream of ``(key, image, label)`` (for :func:`~robustsig.data.base.image_loader`)."""
        return KeyedStream(self)

    def describe(self) -> dict[str, Any]:
        """Kind, size, classes, a digest of the shard names and sizes, and of the shards' contents (each shard
        is read once, then vouched for by its stamp: :mod:`robustsig._contents`), so a changed shard set or a
        shard rewritten in place never reuses a stale store, and a copy of the shards reuses it."""
        digest = hashlib.blake2b(digest_size=16)
        contents = hashlib.blake2b(digest_size=16)
        shards = [str(shard) for shard in self.shards]
        digests, _ = digest_files(shards, self.root, progress_label="hash shards")
        for shard, content in zip(self.shards, digests):
            digest.update(f"{shard.name}\t{shard.stat().st_size}\n".encode())
            contents.update(f"{shard.name}\t{content}\n".encode())
        return self.with_limits({"kind": self.kind, "num_samples": len(self), "num_classes": len(self.classnames),
                                 "num_shards": len(self.shards), "files_digest": digest.hexdigest(),
                                 "contents_digest": contents.hexdigest()})


class KeyedStream(IterableDataset):
    """A :class:`WebImageDataset` yielding ``(key, image, label)``."""

    def __init__(self, dataset: WebImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[tuple[str, Any, int]]:
        return self.dataset.samples_with_keys()


def _read_classnames(meta: Path) -> list[str]:
    path = meta / "classnames.txt"
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []


def open_webdataset(root: str | os.PathLike, *, split: str = "test", family: str | None = None,
                    mappings: str | os.PathLike | None = None,
                    transform: Callable[[Image.Image], Any] | None = None, strict: bool = False) -> WebImageDataset:
    """Tar shards in CLIP_benchmark's layout, streamed (see the module notes).

    Args:
        root: the dataset folder (holding ``<split>/``), the split folder, or one ``.tar``.
        split: the split folder name (CLIP_benchmark writes ``test``).
        family: which ImageNet-family set the shards hold (one of :data:`FAMILIES`), to label and score it as
            :func:`robustsig.open_dataset` does for the folder form; ``None``: a generic labelled set.
        mappings: ObjectNet's ``mappings/`` folder (needed with ``family="objectnet"``).
        transform, strict: see :class:`~robustsig.data.base.ImageSource`.
    """
    kind = "webdataset"
    path = Path(root).expanduser()
    path = path.resolve() if path.is_file() else require_dir(path, kind, _EXPECTED)
    shards, meta = find_shards(path, split)
    classnames = _read_classnames(meta)
    options: dict[str, Any] = {"classnames": classnames}
    if family is not None and family not in FAMILIES:
        raise InputError(f"unknown family {family!r}; choose one of: {', '.join(FAMILIES)}")
    if family in ("imagenet", "imagenet-v2", "imagenet-sketch"):
        options = {"classnames": imagenet_classnames(), "class_indices": range(1000)}
    elif family in ("imagenet-r", "imagenet-a"):
        indices = subset_indices(family)
        options = {"classnames": imagenet_classnames(), "class_indices": indices, "label_map": indices}
    elif family == "objectnet":
        if mappings is None:
            raise InputError("family='objectnet' needs mappings= (the ObjectNet download's mappings/ folder)")
        classes = read_objectnet_mappings(require_dir(mappings, kind, "ObjectNet's mappings/ folder"))
        options = {"classnames": classes.names, "class_map": classes.imagenet_ids}
    expected = {"imagenet-r": 200, "imagenet-a": 200, "objectnet": 113}.get(family or "", 1000 if family else None)
    if expected and classnames and len(classnames) != expected:
        raise layout_error(kind, meta / "classnames.txt", f"{len(classnames)} class names for {family}",
                           f"{expected} (the shards of CLIP_benchmark's wds_{family})")
    return WebImageDataset(shards, transform=transform, strict=strict, kind=kind, root=meta, **options)
