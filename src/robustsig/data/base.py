"""What every robustsig image dataset is: a list of ``(path, label)`` samples that decode to ``(image, label)``.

Corrupt or truncated files never crash a long extraction: in the default (non-strict) mode ``dataset[i]``
returns ``(None, label)`` for an image that cannot be decoded, and :func:`collate_skip_corrupt` drops such
items from a batch while reporting which indices were skipped, so callers count and list them. With
``strict=True`` the :class:`~robustsig.errors.CorruptImageError` is raised instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from robustsig.errors import CorruptImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_image_file(name: str) -> bool:
    """Whether a file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def read_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file completely (a truncated file fails here, not later) and convert it to RGB.

    Raises:
        CorruptImageError: the file is missing, unreadable, truncated or not an image.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise CorruptImageError(str(path), f"{type(error).__name__}: {error}") from error


class ImageDataset(Dataset):
    """A map-style dataset of image files with one integer label each.

    Args:
        samples: ``(path, label)`` pairs; ``label`` indexes ``classnames`` (or is ``-1`` when unknown).
        classnames: names of the labels.
        class_indices: the ImageNet-1k logit indices this set is scored on (``None``: all logits), see
            :func:`robustsig.accuracy`.
        transform: applied to the decoded PIL image (a classifier's ``preprocess``); settable later.
        strict: raise on a corrupt image instead of returning ``(None, label)``.
        kind: the dataset kind name (``"folder"``, ``"imagenet-r"``...), recorded in stores and reports.
        root: the folder it was read from.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], *, classnames: Sequence[str] = (),
                 class_indices: Sequence[int] | None = None, transform: Callable[[Image.Image], Any] | None = None,
                 strict: bool = False, kind: str = "images", root: str | os.PathLike | None = None) -> None:
        self.samples: list[tuple[str, int]] = [(str(path), int(label)) for path, label in samples]
        self.classnames = list(classnames)
        self.class_indices = None if class_indices is None else [int(i) for i in class_indices]
        self.transform = transform
        self.strict = strict
        self.kind = kind
        self.root = None if root is None else str(root)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def prepare(self, image: Image.Image) -> Image.Image:
        """Dataset-specific fix-up of the decoded image before ``transform`` (ObjectNet crops its border)."""
        return image

    def load(self, index: int) -> tuple[Any, int]:
        """Decode sample ``index`` and apply ``prepare`` and ``transform``; raises on a corrupt file."""
        path, label = self.samples[index]
        image = self.prepare(read_image(path))
        return (self.transform(image) if self.transform is not None else image), label

    def __getitem__(self, index: int) -> tuple[Any, int]:
        try:
            return self.load(index)
        except CorruptImageError:
            if self.strict:
                raise
            return None, self.samples[index][1]

    def describe(self) -> dict[str, Any]:
        """What the dataset is, for manifests and reports: kind, root, size, classes and a digest of the
        file list (so a changed folder never reuses a stale activation store)."""
        import hashlib

        digest = hashlib.blake2b(digest_size=16)
        for path, label in self.samples:
            rel = os.path.relpath(path, self.root) if self.root else path
            digest.update(f"{rel}\t{label}\n".encode())
        return {"kind": self.kind, "root": self.root, "num_samples": len(self.samples),
                "num_classes": len(self.classnames), "files_digest": digest.hexdigest()}


def collate_skip_corrupt(batch: list[tuple[int, Any, int]]) -> tuple[torch.Tensor, Any, Any, list[int]]:
    """Collate ``(index, image_or_None, label)`` items, dropping undecodable images.

    Returns:
        ``(indices, images, labels, skipped)`` where ``indices``/``images``/``labels`` hold the decoded items
        (``images`` is ``None`` when every item failed) and ``skipped`` lists the dataset indices dropped.
    """
    kept = [item for item in batch if item[1] is not None]
    skipped = [int(item[0]) for item in batch if item[1] is None]
    if not kept:
        return torch.empty(0, dtype=torch.long), None, None, skipped
    indices, images, labels = default_collate(kept)
    return indices, images, labels, skipped


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
