"""What every robustsig image dataset is: labelled images that decode to ``(image, label)``.

Map-style datasets (:class:`ImageDataset`) hold a list of ``(path, label)`` samples; streamed ones (WebDataset
shards) yield the same items. Both share :class:`ImageSource`: class names, the scoring rule that
:func:`robustsig.accuracy` applies (``class_indices`` or ``class_map``), the ``prepare`` hook and the decoding.

Corrupt or truncated files never crash a long extraction: in the default (non-strict) mode ``dataset[i]``
returns ``(None, label)`` for an image that cannot be decoded (and logs one warning naming the file), and
:func:`collate_skip_corrupt` drops such items from a batch while reporting which ids were skipped, so callers
count and list them. With ``strict=True`` the :class:`~robustsig.errors.CorruptImageError` is raised instead.
Files found but not listed as samples (an unreadable folder or file, a FIFO, a symbolic-link loop) are in
``.unlisted`` with the reason, and an extraction lists them in its store's skipped list.

High-bit-depth images decode to their 8-bit values: 16-bit grey (Pillow's ``I;16`` modes) and 32-bit integer
(``I``) pixels are read as 0..65535 and scaled by 255/65535 (a 16-bit PNG gives the pixels of its 8-bit twin);
floating-point (``F``) pixels as 0..1 when they all lie there, else as 0..255. Pixels outside those ranges, or not
finite, make the image undecodable (named, never clipped to white). 16-bit colour PNGs are read by Pillow as 8-bit
RGB(A) already.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from robustsig.data.listing import FileListing, list_files
from robustsig.errors import CorruptImageError, InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MAX_PIXELS = 64_000_000
"""The largest image decoded by default, in pixels (width x height; 8000 x 8000, whose RGB copy alone takes 192 MB
in each loader worker). Larger images are skipped and listed (or refused with ``strict``); the dataset option
``max_pixels`` raises the limit (up to Pillow's own refusal, from 179 million pixels). Pillow itself only warns
below that: a 13000 x 13000 PNG, 169 million pixels in 170 kB, was decoded whole (issue 21 measured a 2.2 GB peak)."""

log = logging.getLogger("robustsig.data")


def is_image_file(name: str) -> bool:
    """Whether a file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


_DEEP_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _deep_to_8_bit(image: Image.Image, name: str) -> Image.Image:
    """A 16/32-bit integer or floating-point grey image as 8-bit grey (see the module notes for the ranges)."""
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise CorruptImageError(name, f"{image.mode} pixels that are not finite")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode in _DEEP_INTEGER_MODES:
        if low < 0 or high > 65535:
            raise CorruptImageError(name, f"{image.mode} pixels in {low:g}..{high:g}, outside 0..65535 (16 bits); "
                                          "convert the image to 8 or 16 bits per channel")
        scale = 255.0 / 65535.0
    elif 0 <= low and high <= 1:
        scale = 255.0
    elif 0 <= low and high <= 255:
        scale = 1.0
    else:
        raise CorruptImageError(name, f"floating-point pixels in {low:g}..{high:g}, neither 0..1 nor 0..255; "
                                      "convert the image to 8 or 16 bits per channel")
    return Image.fromarray(np.rint(values * scale).astype(np.uint8))


def read_image(source: str | os.PathLike | IO[bytes], name: str | None = None,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image completely (a truncated file fails here, not later) and convert it to 8-bit RGB
    (high-bit-depth grey scaled, see the module notes).

    Args:
        source: a path, or a binary file object (a member of a tar shard).
        name: what to call the image in an error (defaults to the path).
        max_pixels: the largest image decoded (width x height), checked on the header before any pixel is.

    Raises:
        CorruptImageError: the file is missing, unreadable, truncated or not an image, has more than
            ``max_pixels`` pixels, or its high-bit-depth pixels lie outside the ranges it could be read in.
    """
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning (from 89 million pixels): max_pixels is the limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise CorruptImageError(name or str(source), f"{width} x {height} = {width * height:,} pixels, more "
                                        f"than the limit of {max_pixels:,} (a decompression bomb, or a photo far "
                                        "larger than any model's input); raise the dataset option max_pixels to "
                                        "read it")
            image.load()
            if image.mode in _DEEP_INTEGER_MODES or image.mode == "F":
                image = _deep_to_8_bit(image, name or str(source))
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise CorruptImageError(name or str(source), f"{type(error).__name__}: {error}") from error


def _check_class_indices(class_indices: Sequence[int] | None) -> list[int] | None:
    if class_indices is None:
        return None
    indices = [int(i) for i in class_indices]
    if not indices or min(indices) < 0 or len(set(indices)) != len(indices):
        raise InputError("class_indices must be distinct non-negative logit indices, at least one")
    return indices


def _check_class_map(class_map: Sequence[Sequence[int]] | None, classnames: Sequence[str]) -> list[list[int]] | None:
    if class_map is None:
        return None
    mapped = [[int(i) for i in ids] for ids in class_map]
    if any(not ids or min(ids) < 0 for ids in mapped):
        raise InputError("every class_map entry must list at least one non-negative logit index")
    if classnames and len(mapped) != len(classnames):
        raise InputError(f"class_map has {len(mapped)} entries but there are {len(classnames)} class names")
    return mapped


class ImageSource:
    """Shared state of map-style and streamed image datasets.

    Args:
        classnames: names of the labels (``label`` indexes them; ``-1`` means unknown).
        class_indices: the logit indices this set is scored on (``None``: all logits). Labels are then logit
            indices too: the prediction is the argmax over these columns (ImageNet-R/-A's 200 classes).
        class_map: for sets whose classes each stand for several logits (ObjectNet): entry ``k`` lists the
            logit indices of class ``k``; labels index the classes, and class ``k`` scores the max of its logits.
        transform: applied to the decoded (and prepared) PIL image, e.g. a classifier's ``preprocess``.
        strict: raise on a corrupt image instead of returning ``(None, label)``.
        kind: the dataset kind name (``"folder"``, ``"imagenet-r"``...), recorded in stores and reports.
        root: the folder it was read from.
    """

    def __init__(self, *, classnames: Sequence[str] = (), class_indices: Sequence[int] | None = None,
                 class_map: Sequence[Sequence[int]] | None = None,
                 transform: Callable[[Image.Image], Any] | None = None, strict: bool = False,
                 kind: str = "images", root: str | os.PathLike | None = None) -> None:
        self.classnames = list(classnames)
        self.class_map = _check_class_map(class_map, self.classnames)
        if self.class_map is not None and class_indices is None:
            class_indices = sorted({i for ids in self.class_map for i in ids})
        self.class_indices = _check_class_indices(class_indices)
        self.transform = transform
        self.strict = strict
        self.kind = kind
        self.root = None if root is None else str(root)

    def annotations(self) -> dict[str, Any]:
        """What the dataset says about its images beyond the files, as plain data: its class names and scoring
        rule (``class_indices``, ``class_map`` as read from its JSON file). A study step that scores or probes a
        store is keyed by it besides the store, so a changed class map re-scores the stores it applies to.

        >>> ImageSource(classnames=["cat", "dog"], class_map=[[281], [207]]).annotations()["class_map"]
        [[281], [207]]
        """
        return {"classnames": self.classnames, "class_indices": self.class_indices, "class_map": self.class_map}

    def prepare(self, image: Image.Image) -> Image.Image:
        """Dataset-specific fix-up of the decoded image before ``transform`` (ObjectNet crops its border)."""
        return image

    max_pixels: int = MAX_PIXELS
    """The largest image decoded (see :data:`MAX_PIXELS`); ``open_dataset(..., max_pixels=N)`` sets it."""

    def decode(self, source: str | os.PathLike | IO[bytes], name: str | None = None) -> Any:
        """Read, ``prepare`` and ``transform`` one image; raises :class:`CorruptImageError` on a bad file (one larger
        than :attr:`max_pixels` included)."""
        image = self.prepare(read_image(source, name, self.max_pixels))
        return self.transform(image) if self.transform is not None else image

    def with_limits(self, described: dict[str, Any]) -> dict[str, Any]:
        """A ``describe()`` result with the decoding limit when it is not the default (another limit decodes, or
        skips, other images: a store of one is not a store of the other); the default adds nothing, so the keys of
        stores made before the limit existed are unchanged."""
        if self.max_pixels != MAX_PIXELS:
            described["max_pixels"] = self.max_pixels
        return described

    def _corrupt(self, error: CorruptImageError) -> None:
        """Non-strict: log and go on (the caller yields ``(None, label)``); strict: raise."""
        if self.strict:
            raise error
        log.warning("skipping undecodable image (%s)", error)


class ImageDataset(ImageSource, Dataset):
    """A map-style dataset of image files with one integer label each.

    Args:
        samples: ``(path, label)`` pairs; ``label`` indexes ``classnames`` (or is ``-1`` when unknown).
        **source: see :class:`ImageSource` (``classnames``, ``class_indices``, ``class_map``, ``transform``,
            ``strict``, ``kind``, ``root``).

    >>> ds = ImageDataset([("a.jpg", 0)], classnames=["cat"], kind="folder")
    >>> len(ds), ds.targets
    (1, [0])
    """

    def __init__(self, samples: Sequence[tuple[str | os.PathLike, int]], *,
                 unlisted: Sequence[dict[str, str]] = (), **source: Any) -> None:
        super().__init__(**source)
        self.samples: list[tuple[str, int]] = [(str(path), int(label)) for path, label in samples]
        self.unlisted: list[dict[str, str]] = [dict(item) for item in unlisted]
        """Files and folders found but not listed as samples: ``{"path", "reason"}`` each."""

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kind={self.kind!r}, root={self.root!r}, {len(self)} images, "
                f"{len(self.classnames)} classes)")

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def load(self, index: int) -> tuple[Any, int]:
        """Decode sample ``index`` and apply ``prepare`` and ``transform``; raises on a corrupt file."""
        path, label = self.samples[index]
        return self.decode(path), label

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label, _ = self.fetch(index)
        return image, label

    def fetch(self, index: int) -> tuple[Any, int, str | None]:
        """``(image, label, None)``, or ``(None, label, reason)`` for an image that cannot be decoded (non-strict;
        strict raises): how an extraction lists each skipped image with the reason."""
        try:
            return (*self.load(index), None)
        except CorruptImageError as error:
            self._corrupt(error)
            return None, self.samples[index][1], error.reason or str(error)

    def listing(self) -> FileListing:
        """Every sample's name relative to the root, label and content digest (one ``stat`` per file; a file is
        read only when the stat cache cannot vouch for it: :mod:`robustsig._contents`)."""
        return list_files(self.samples, self.root, self.unlisted, kind=self.kind, num_classes=len(self.classnames),
                          settings=self.with_limits({}))

    def describe(self) -> dict[str, Any]:
        """What the dataset is, for manifests and store keys: kind, size, classes, ``files_digest`` (every sample's
        path relative to the root and label) and ``contents_digest`` (the same with the digest of every file's
        bytes, and the files left unlisted with the reasons); see :meth:`FileListing.describe
        <robustsig.data.listing.FileListing.describe>`.

        The guarantee: an image whose bytes changed since a store was made changes ``contents_digest``, so a store
        of the old image is never reused; a copy, a ``touch`` or a move of the folder keeps it. Where the folder
        lies is not part of it.
        """
        return self.listing().describe()


def _plain_id(value: Any) -> Any:
    """A sample id as a plain Python value: an int for indices, the string itself for shard keys."""
    return value if isinstance(value, str) else int(value)


def collate_skip_corrupt(batch: list[tuple[Any, Any, int]]) -> tuple[Any, Any, Any, list[Any]]:
    """Collate ``(id, image_or_None, label)`` items, dropping undecodable images.

    Ids are dataset indices (:class:`IndexedDataset`) or sample keys (streamed shards).

    Returns:
        ``(ids, images, labels, skipped)`` where ``ids``/``images``/``labels`` hold the decoded items
        (``ids`` a LongTensor of indices or a list of keys; ``images`` is ``None`` when every item failed) and
        ``skipped`` lists the ids dropped.
    """
    kept = [item for item in batch if item[1] is not None]
    skipped = [_plain_id(item[0]) for item in batch if item[1] is None]
    if not kept:
        empty: Any = [] if batch and isinstance(batch[0][0], str) else torch.empty(0, dtype=torch.long)
        return empty, None, None, skipped
    ids, images, labels = default_collate(kept)
    return ids, images, labels, skipped


class IndexedDataset(Dataset):
    """Wraps a dataset so items carry their index: ``(index, image, label)`` (for :func:`collate_skip_corrupt`)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, Any, Any]:
        index = self.indices[position]
        image, label = self.dataset[index]
        return index, image, label


def image_loader(dataset: Dataset, batch_size: int = 64, num_workers: int = 2, **loader_options: Any) -> DataLoader:
    """A DataLoader yielding ``(ids, images, labels, skipped)`` batches (see :func:`collate_skip_corrupt`) for a
    map-style dataset (ids: indices) or a streamed one with ``keyed()`` (ids: sample keys); in dataset order.

    Args:
        dataset: an :class:`ImageDataset` (with a ``transform`` producing same-shape tensors) or a streamed set.
        batch_size, num_workers: as for :class:`torch.utils.data.DataLoader`.
        **loader_options: passed on (``pin_memory``, ``persistent_workers``, ``prefetch_factor``...).
    """
    keyed = dataset.keyed() if isinstance(dataset, IterableDataset) else IndexedDataset(dataset)
    return DataLoader(keyed, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                      collate_fn=collate_skip_corrupt, **loader_options)
