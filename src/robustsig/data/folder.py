"""``folder``: a folder of class sub-folders (torchvision's ImageFolder layout), or a flat folder of images.

Classes are the sub-folder names in sorted order (label = position, empty class folders included, as
ImageFolder's ``class_to_idx``); images are found recursively inside each class folder. A folder holding images
and no sub-folders is an unlabelled set (label ``-1``), e.g. a few photos to run a model on.

Links are followed, each real file counted once (a link loop is left out with a warning); only regular files are
listed. What is found but not listed (an unreadable folder or file, a FIFO, a loop) is in ``.unlisted`` with the
reason, and in the skipped list of a store extracted from it. File names need not be UTF-8 (they are kept
losslessly, as Python's surrogate escapes).

``class_map=`` (a JSON file: folder name -> ImageNet-1k indices; see :mod:`robustsig.data.classmap`) scores the
folder's classes on an ImageNet-1k head, as ObjectNet is scored.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from PIL import Image

from robustsig.data._layout import ImageWalk, Unlisted, examples, images_in, layout_error, require_dir, subfolders
from robustsig.data.base import ImageDataset
from robustsig.data.classmap import ClassMapSource, read_class_map

_EXPECTED = "class sub-folders of images (cat/1.jpg, dog/2.jpg, ...) or a flat folder of images"


def open_folder(root: str | os.PathLike, *, class_map: ClassMapSource | None = None,
                transform: Callable[[Image.Image], Any] | None = None, strict: bool = False) -> ImageDataset:
    """Images in class sub-folders (labels by sorted folder name) or directly in ``root`` (unlabelled).

    Args:
        root: the folder.
        class_map: a JSON file (or mapping) from each class folder's name to its ImageNet-1k indices; the
            dataset then has ``.class_map`` and is scored as ObjectNet is (see :mod:`robustsig.data.classmap`).
        transform, strict: see :class:`~robustsig.data.base.ImageSource`.

    >>> ds = open_folder("photos/")          # doctest: +SKIP
    >>> ds.classnames, ds.samples[0]         # doctest: +SKIP
    (['cat', 'dog'], ('/abs/photos/cat/1.jpg', 0))
    """
    kind = "folder"
    folder = require_dir(root, kind, _EXPECTED)
    unlisted: Unlisted = []
    loose = images_in(folder, unlisted)
    classes = subfolders(folder)
    if loose and classes:
        raise layout_error(kind, folder, f"both loose images ({examples(p.name for p in loose)}) and "
                           f"sub-folders ({examples(c.name for c in classes)})", _EXPECTED)
    if loose:
        if class_map is not None:
            raise layout_error(kind, folder, "a class_map was given for a flat folder of unlabelled images",
                               "class sub-folders named as the class map's keys")
        return ImageDataset([(path, -1) for path in loose], transform=transform, strict=strict, kind=kind,
                            root=folder, unlisted=unlisted)
    walk = ImageWalk(unlisted, reserved=classes)
    samples = [(path, label) for label, sub in enumerate(classes) for path in walk.images(sub)]
    if not samples:
        raise layout_error(kind, folder, "no images", _EXPECTED)
    classnames = [c.name for c in classes]
    mapped = read_class_map(class_map, classnames) if class_map is not None else None
    return ImageDataset(samples, classnames=classnames, class_map=mapped, transform=transform, strict=strict,
                        kind=kind, root=folder, unlisted=unlisted)
