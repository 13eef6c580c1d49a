"""ObjectNet 1.0 on its 113 classes that map to ImageNet-1k, read exactly as mlfoundations/wise-ft
(``src/datasets/objectnet.py``) and LAION-AI/CLIP_benchmark (``clip_benchmark/datasets/objectnet.py``, adapted
from wise-ft) read it:

- the maps come from the download's ``mappings/`` folder: ``folder_to_objectnet_label.json`` (image folder ->
  ObjectNet label), ``objectnet_to_imagenet_1k.json`` (ObjectNet label -> ImageNet names joined by ``"; "``),
  ``imagenet_to_label_2012_v2`` (line ``i`` is the ImageNet name of ObjectNet's id ``i``) and
  ``pytorch_to_imagenet_2012_id.json`` (ImageNet class index -> that id);
- the classes are the 113 mapped folders in sorted order; a label is the position of the image's folder there
  (images of the other 200 ObjectNet folders are left out); class names are the ObjectNet labels lower-cased;
- each image loses a 2-pixel border (``crop((2, 2, w - 2, h - 2))``, wise-ft's ``crop``) before the transform
  (CLIP_benchmark skips this crop; the paper follows wise-ft);
- scoring (wise-ft's ``project_logits``): class ``k`` scores the max of the ImageNet logits of its ids, the
  prediction is the argmax over the 113 classes, right when it is the folder's class. That is the argmax over the
  125 mapped ImageNet logits falling in the folder's id set (no id belongs to two classes).

One deliberate difference: an ImageNet name listed twice in ``imagenet_to_label_2012_v2`` ("crane" is) is an
error when the ObjectNet map uses it, where wise-ft silently takes the last; the real map never uses it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from robustsig.data._layout import examples, layout_error, list_images, locate, require_dir, subfolders
from robustsig.data.base import ImageDataset
from robustsig.data.missing import check_missing_classes
from robustsig.errors import DataError

MAPPING_FILES = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                 "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2")
BORDER = 2
_EXPECTED = ("the ObjectNet 1.0 download: objectnet-1.0/images/<folder>/*.png and objectnet-1.0/mappings/ "
             "with " + ", ".join(MAPPING_FILES))


@dataclass(frozen=True)
class ObjectNetClasses:
    """The 113 ObjectNet classes that map to ImageNet-1k, in label order."""

    folders: list[str]
    """image folder names, sorted (label ``k`` is ``folders[k]``)."""
    names: list[str]
    """ObjectNet labels, lower-cased."""
    imagenet_ids: list[list[int]]
    """ImageNet-1k class indices of each class, in the order the map lists them."""


def _load_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"objectnet: cannot read mapping file {path}: {error}") from error
    if not isinstance(value, dict):
        raise DataError(f"objectnet: {path}: expected a JSON object")
    return value


def read_objectnet_mappings(folder: str | os.PathLike) -> ObjectNetClasses:
    """Read the four mapping files of an ObjectNet download's ``mappings/`` folder (see the module notes)."""
    folder = Path(folder)
    missing = [name for name in MAPPING_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"objectnet: {folder}: missing mapping files {examples(missing)}; expected the "
                        f"download's mappings/ folder with {', '.join(MAPPING_FILES)}")
    folder_to_label = _load_json(folder / MAPPING_FILES[0])
    label_to_imagenet = _load_json(folder / MAPPING_FILES[1])
    index_to_id = _load_json(folder / MAPPING_FILES[2])
    lines = (folder / MAPPING_FILES[3]).read_text(encoding="utf-8").splitlines()
    try:
        id_to_index = {int(objectnet_id): int(index) for index, objectnet_id in index_to_id.items()}
    except (TypeError, ValueError) as error:
        raise DataError(f"objectnet: {folder / MAPPING_FILES[2]}: expected class index -> integer id") from error

    name_to_indices: dict[str, list[int]] = {}
    for line_number, name in enumerate(lines):
        if line_number not in id_to_index:
            raise DataError(f"objectnet: {folder / MAPPING_FILES[3]} line {line_number + 1} ({name.strip()!r}) "
                            f"has no ImageNet class in {MAPPING_FILES[2]}")
        name_to_indices.setdefault(name.strip(), []).append(id_to_index[line_number])
    label_to_folder: dict[str, str] = {}
    for folder_name, label in folder_to_label.items():
        if label in label_to_folder:
            raise DataError(f"objectnet: {MAPPING_FILES[0]}: folders {label_to_folder[label]!r} and "
                            f"{folder_name!r} share the ObjectNet label {label!r}")
        label_to_folder[label] = folder_name

    folder_ids: dict[str, list[int]] = {}
    for label, joined in label_to_imagenet.items():
        if label not in label_to_folder:
            raise DataError(f"objectnet: {MAPPING_FILES[1]}: ObjectNet label {label!r} has no folder in "
                            f"{MAPPING_FILES[0]}")
        ids = []
        for name in joined.split("; "):
            matches = name_to_indices.get(name, [])
            if len(matches) != 1:
                problem = "is not" if not matches else "is listed more than once"
                raise DataError(f"objectnet: ImageNet name {name!r} (for {label!r}) {problem} in "
                                f"{MAPPING_FILES[3]}")
            ids.append(matches[0])
        folder_ids[label_to_folder[label]] = ids
    folders = sorted(folder_ids)
    return ObjectNetClasses(folders=folders, names=[folder_to_label[f].lower() for f in folders],
                            imagenet_ids=[folder_ids[f] for f in folders])


class ObjectNetDataset(ImageDataset):
    """ObjectNet images, each cropped by a 2-pixel border before the transform (wise-ft's ``crop``)."""

    def prepare(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        return image.crop((BORDER, BORDER, width - BORDER, height - BORDER))


def _find_mappings(top: Path, images_root: Path) -> Path:
    candidates = [images_root / "mappings", top / "mappings", top, images_root]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in MAPPING_FILES):
            return candidate
    raise layout_error("objectnet", top, "no mapping files found in "
                       + ", ".join(str(c) for c in dict.fromkeys(candidates)) + " (pass mappings=DIR)", _EXPECTED)


def open_objectnet(root: str | os.PathLike, *, mappings: str | os.PathLike | None = None,
                   transform: Callable[[Image.Image], Any] | None = None, strict: bool = False,
                   allow_missing_classes: bool = False) -> ObjectNetDataset:
    """ObjectNet on its 113 ImageNet-mapped classes, labels and scoring as wise-ft (see the module notes).

    Args:
        root: ``objectnet-1.0/`` (holding ``images/`` and ``mappings/``) or the folder above it.
        mappings: the folder of the four mapping files, when not in ``mappings/`` (CLIP_benchmark keeps them in
            the folder above ``objectnet-1.0/``, which is also searched).
        transform, strict: see :class:`~robustsig.data.base.ImageSource`.
        allow_missing_classes: score a download that lacks some of the mapped folders, or has empty ones (refused
            otherwise, naming them); ``missing_classes`` then lists them (:mod:`robustsig.data.missing`).

    The dataset's ``class_map`` lists each class's ImageNet ids and ``class_indices`` their union (125 ids).
    """
    kind = "objectnet"
    top = require_dir(root, kind, _EXPECTED)
    images_root = locate(top, lambda p: (p / "images").is_dir(), ("objectnet-1.0",))
    if images_root is None:
        raise layout_error(kind, top, "no images/ folder", _EXPECTED)
    if mappings is not None:
        mapping_dir = require_dir(mappings, kind, "a folder with " + ", ".join(MAPPING_FILES))
    else:
        mapping_dir = _find_mappings(top, images_root)
    classes = read_objectnet_mappings(mapping_dir)
    label_of = {folder: label for label, folder in enumerate(classes.folders)}
    folders = subfolders(images_root / "images")
    samples = [(path, label_of[f.name]) for f in folders if f.name in label_of for path in list_images(f)]
    missing = check_missing_classes(kind, images_root / "images", classes.folders,
                                    {classes.folders[label] for _, label in samples}, allow=allow_missing_classes,
                                    what="mapped class folders", folders=[f.name for f in folders])
    if not samples:
        raise layout_error(kind, images_root / "images", "no images in any of the 113 mapped class folders "
                           f"({examples(classes.folders)})", _EXPECTED)
    dataset = ObjectNetDataset(samples, classnames=classes.names, class_map=classes.imagenet_ids,
                               transform=transform, strict=strict, kind=kind, root=images_root)
    dataset.missing_classes = missing
    return dataset
