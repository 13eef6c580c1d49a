"""ImageNet-1k val and its natural shifts ImageNet-V2, -R, -A and -Sketch, read from their official layouts.

Label convention (all five kinds): a label is the **ImageNet-1k class index** of the image (the index of its
wnid in sorted order, as the logits of any ImageNet head), and ``classnames`` are the 1,000 ImageNet names.
``class_indices`` lists the logits the set is scored on: all 1,000, or, for ImageNet-R and -A, the indices of
their 200 classes, so :func:`robustsig.accuracy` takes the argmax over those 200 logits only, like the
ImageNet-testbed and wise-ft. Every kind refuses a download in which some of its classes have no image (a folder
missing, or empty) unless ``allow_missing_classes=True``: R and A are then scored on the classes present, and every
kind lists the others in ``missing_classes`` (:mod:`robustsig.data.missing`). ObjectNet
(:mod:`robustsig.data.objectnet`) is the one set whose labels are its own classes, as one ObjectNet class stands for
several ImageNet classes.

>>> ds = open_imagenet_r("/data/imagenet-r")        # doctest: +SKIP
>>> len(ds.class_indices), ds.classnames[ds.samples[0][1]]  # doctest: +SKIP
(200, 'goldfish')
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from robustsig.data._layout import examples, images_in, layout_error, list_images, locate, require_dir, subfolders
from robustsig.data.base import ImageDataset
from robustsig.data.missing import check_missing_classes
from robustsig.data.classes import (devkit_id_to_index, imagenet_classnames, imagenet_index, imagenet_wnids,
                                    is_imagenet_wnid, subset_wnids)
from robustsig.errors import DataError, InputError

ALL_CLASSES = range(1000)
GROUND_TRUTH_FILES = (
    "LOC_val_solution.csv",                       # Kaggle ImageNet Object Localization Challenge
    "ILSVRC2012_validation_ground_truth.txt",     # ILSVRC2012 devkit, 1-based ILSVRC2012_IDs
    "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
    "val.txt",                                    # Caffe's ilsvrc12 aux: "<file> <class index>"
    "imagenet_2012_validation_synset_labels.txt",  # TensorFlow models: one wnid per val image, in order
)
GROUND_TRUTH_SEARCH_DEPTH = 4  # Kaggle: <top>/LOC_val_solution.csv with images in <top>/ILSVRC/Data/CLS-LOC/val

_EXPECTED = {
    "imagenet": "the ImageNet-1k val set: wnid class folders (n01440764/, ...) or the flat val images "
                "(ILSVRC2012_val_00000001.JPEG, ...) with a ground-truth file (" + ", ".join(GROUND_TRUTH_FILES[:2])
                + ", val.txt or imagenet_2012_validation_synset_labels.txt) in the folder or a parent, or passed "
                  "as ground_truth=",
    "imagenet-v2": "ImageNet-V2: class folders named by class index 0..999 "
                   "(e.g. imagenetv2-matched-frequency-format-val/)",
    "imagenet-r": "ImageNet-R: wnid folders of its 200 classes (imagenet-r/n01443537/, ...)",
    "imagenet-a": "ImageNet-A: wnid folders of its 200 classes (imagenet-a/n01498041/, ...)",
    "imagenet-sketch": "ImageNet-Sketch: wnid folders of the 1,000 ImageNet classes (sketch/n01440764/, ...)",
}


def _imagenet_dataset(samples: list[tuple[Path, int]], root: Path, kind: str, class_indices: Any,
                      transform: Callable[[Image.Image], Any] | None, strict: bool) -> ImageDataset:
    return ImageDataset(samples, classnames=imagenet_classnames(), class_indices=class_indices,
                        transform=transform, strict=strict, kind=kind, root=root)


def _has_wnid_folders(path: Path) -> bool:
    folders = subfolders(path)
    return bool(folders) and all(is_imagenet_wnid(f.name) for f in folders)


def _has_numbered_folders(path: Path) -> bool:
    folders = subfolders(path)
    return bool(folders) and all(f.name.isdigit() for f in folders)


def _wrong_folders_hint(folders: list[Path]) -> str:
    names = [f.name for f in folders]
    if names and all(n.isdigit() for n in names):
        return " (numbered folders: that is ImageNet-V2's layout, open it with kind 'imagenet-v2')"
    return ""


def _wnid_samples(root: Path, kind: str, allowed: set[str] | None = None) -> list[tuple[Path, int]]:
    """``(path, ImageNet index)`` for every image in the wnid folders of ``root``; checks the folder names. (The
    wnid of a folder with images is ``imagenet_wnids()[label]``: the classes present are those of the samples.)"""
    folders = subfolders(root)
    if not folders:
        raise layout_error(kind, root, "no class folders", _EXPECTED[kind])
    unknown = [f.name for f in folders if not is_imagenet_wnid(f.name)]
    if unknown:
        raise layout_error(kind, root, f"folders {examples(unknown)} are not ImageNet wnids"
                           + _wrong_folders_hint(folders), _EXPECTED[kind])
    if allowed is not None:
        foreign = [f.name for f in folders if f.name not in allowed]
        if foreign:
            other = next((k for k in ("imagenet-r", "imagenet-a") if k != kind
                          and all(f.name in subset_wnids(k) for f in folders)), None)
            hint = f" (every folder is a {other} class: is this {other}?)" if other else ""
            raise layout_error(kind, root, f"folders {examples(foreign)} are not among the 200 {kind} classes"
                               + hint, _EXPECTED[kind])
    samples = [(path, imagenet_index(folder.name)) for folder in folders for path in list_images(folder)]
    if not samples:
        raise layout_error(kind, root, "the class folders hold no images", _EXPECTED[kind])
    return samples


# ---- ImageNet val: wnid folders or flat images + ground truth ------------------------------------------------

def _find_ground_truth(folder: Path) -> Path | None:
    for directory in [folder, *folder.parents][: GROUND_TRUTH_SEARCH_DEPTH + 1]:
        for name in GROUND_TRUTH_FILES:
            if (directory / name).is_file():
                return directory / name
    return None


def _label_of_wnid(wnid: str, source: Path, line: int) -> int:
    if not is_imagenet_wnid(wnid):
        raise DataError(f"imagenet: {source}, line {line}: {wnid!r} is not an ImageNet-1k wnid")
    return imagenet_index(wnid)


def _read_kaggle_solution(path: Path) -> dict[str, int]:
    """``LOC_val_solution.csv``: ``ImageId,PredictionString`` with boxes ``"<wnid> x y x y <wnid> ..."``."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise DataError(f"imagenet: {path}: expected the Kaggle header 'ImageId,PredictionString'")
        return {row["ImageId"]: _label_of_wnid((row["PredictionString"] or "?").split()[0], path, n)
                for n, row in enumerate(reader, start=2)}


def _val_stem(number: int) -> str:
    return f"ILSVRC2012_val_{number:08d}"


def _read_text_ground_truth(path: Path) -> dict[str, int]:
    """The devkit's ILSVRC2012_IDs (one per line, 1-based, devkit order), a wnid per line (TensorFlow's list),
    or ``<file> <class index or wnid>`` lines (Caffe's val.txt)."""
    rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if rows and all(len(r) == 1 and r[0].isdigit() for r in rows):
        table = devkit_id_to_index()
        labels = {}
        for n, (value,) in enumerate(rows, start=1):
            if not 1 <= int(value) <= 1000:
                raise DataError(f"imagenet: {path}, line {n}: ILSVRC2012_ID {value} is not in 1..1000")
            labels[_val_stem(n)] = table[int(value) - 1]
        return labels
    if rows and all(len(r) == 1 for r in rows):
        return {_val_stem(n): _label_of_wnid(r[0], path, n) for n, r in enumerate(rows, start=1)}
    if rows and all(len(r) == 2 for r in rows):
        labels = {}
        for n, (name, value) in enumerate(rows, start=1):
            if value.isdigit() and int(value) < 1000:
                labels[Path(name).stem] = int(value)
            else:
                labels[Path(name).stem] = _label_of_wnid(value, path, n)
        return labels
    raise DataError(f"imagenet: {path}: not a ground-truth file robustsig reads; expected one ILSVRC2012_ID or "
                    f"wnid per line, or '<file> <class index>' lines, or Kaggle's LOC_val_solution.csv")


def read_ground_truth(path: str | os.PathLike) -> dict[str, int]:
    """Val image stem (``ILSVRC2012_val_00000001``) -> ImageNet class index, from any supported ground-truth file.

    >>> read_ground_truth("ILSVRC2012_validation_ground_truth.txt")["ILSVRC2012_val_00000001"]  # doctest: +SKIP
    65
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"imagenet: ground-truth file {path} does not exist")
    return _read_kaggle_solution(path) if path.suffix.lower() == ".csv" else _read_text_ground_truth(path)


def _flat_val_samples(folder: Path, ground_truth: str | os.PathLike | None) -> list[tuple[Path, int]]:
    source = Path(ground_truth) if ground_truth is not None else _find_ground_truth(folder)
    if source is None:
        raise layout_error("imagenet", folder, "flat val images but no ground-truth file found in the folder or "
                           f"its {GROUND_TRUTH_SEARCH_DEPTH} parents", _EXPECTED["imagenet"])
    labels = read_ground_truth(source)
    images = images_in(folder)
    missing = [p.name for p in images if p.stem not in labels]
    if missing:
        raise DataError(f"imagenet: {len(missing)} images in {folder} have no label in {source}: "
                        f"{examples(missing)}; is it the ground truth of these images?")
    return [(p, labels[p.stem]) for p in images]


def open_imagenet(root: str | os.PathLike, *, ground_truth: str | os.PathLike | None = None,
                  transform: Callable[[Image.Image], Any] | None = None, strict: bool = False,
                  allow_missing_classes: bool = False) -> ImageDataset:
    """ImageNet-1k val: wnid class folders, or the flat val folder plus a ground-truth file.

    Args:
        root: the val folder (or a folder holding ``val/`` or Kaggle's ``ILSVRC/Data/CLS-LOC/val``).
        ground_truth: the labels of a flat val folder; found automatically next to it or up to four parents up.
        transform, strict: see :class:`~robustsig.data.base.ImageSource`.
        allow_missing_classes: open a set in which some of the 1,000 classes have no image (a wnid folder missing
            or empty, or no flat image of the class): refused otherwise, naming them; ``missing_classes`` then
            lists them (:mod:`robustsig.data.missing`).
    """
    kind = "imagenet"
    top = require_dir(root, kind, _EXPECTED[kind])
    folder = locate(top, lambda p: _has_wnid_folders(p) or bool(images_in(p)),
                    ("val", "ILSVRC2012_img_val", "ILSVRC/Data/CLS-LOC/val"))
    if folder is None:
        raise layout_error(kind, top, "neither wnid class folders nor val images"
                           + _wrong_folders_hint(subfolders(top)), _EXPECTED[kind])
    flat = bool(images_in(folder))
    if ground_truth is not None and not flat:
        raise InputError(f"imagenet: ground_truth= is for the flat val layout, but {folder} has wnid class folders "
                         "(their names are the labels); drop ground_truth=")
    samples = _flat_val_samples(folder, ground_truth) if flat else _wnid_samples(folder, kind)
    return _with_missing_classes(_imagenet_dataset(samples, folder, kind, ALL_CLASSES, transform, strict), kind,
                                 folder, allow_missing_classes, flat)


def _present_wnids(samples: list[tuple[Path, int]]) -> set[str]:
    """The wnids of the classes that have at least one image among ``samples`` (an empty folder is no class)."""
    wnids = imagenet_wnids()
    return {wnids[label] for label in {label for _, label in samples}}


def _with_missing_classes(dataset: ImageDataset, kind: str, folder: Path, allow: bool,
                          flat: bool = False) -> ImageDataset:
    """``dataset`` of a 1,000-class set (val, Sketch) with ``missing_classes``: the wnids without any image, refused
    unless ``allow`` (see :mod:`robustsig.data.missing`)."""
    what, folders = ("classes (wnids) of the flat val images", []) if flat else \
        ("class folders (wnids)", [f.name for f in subfolders(folder)])
    dataset.missing_classes = check_missing_classes(kind, folder, imagenet_wnids(), _present_wnids(dataset.samples),
                                                    allow=allow, what=what, folders=folders)
    return dataset


# ---- the shifts --------------------------------------------------------------------------------------------

def open_imagenet_v2(root: str | os.PathLike, *, transform: Callable[[Image.Image], Any] | None = None,
                     strict: bool = False, allow_missing_classes: bool = False) -> ImageDataset:
    """ImageNet-V2 (any of its three variants): folders ``0``..``999`` named by ImageNet class index.

    The label is the folder's number, never its position: sorting ``"0".."999"`` as strings puts ``"10"``
    before ``"2"``, and ImageFolder-style loaders that number the sorted folders scramble 990 of the classes.
    A download without all 1,000 folders, or with empty ones, is refused (naming them) unless
    ``allow_missing_classes``; the dataset's ``missing_classes`` lists them (see :mod:`robustsig.data.missing`).
    """
    kind = "imagenet-v2"
    top = require_dir(root, kind, _EXPECTED[kind])
    variants = [f.name for f in subfolders(top) if f.name.startswith("imagenetv2") and _has_numbered_folders(f)]
    if len(variants) > 1 and not _has_numbered_folders(top):
        raise layout_error(kind, top, f"several ImageNet-V2 variants ({examples(variants)}): pass the folder of the "
                           "one you mean (the paper uses matched-frequency)", _EXPECTED[kind])
    folder = locate(top, _has_numbered_folders, variants)
    if folder is None:
        folders = subfolders(top)
        hint = (" (wnid folders: open ImageNet val or -Sketch with kind 'imagenet'/'imagenet-sketch')"
                if folders and all(is_imagenet_wnid(f.name) for f in folders) else "")
        raise layout_error(kind, top, "no folders named by class index" + hint, _EXPECTED[kind])
    numbered = sorted(subfolders(folder), key=lambda f: int(f.name))
    out_of_range = [f.name for f in numbered if int(f.name) >= 1000]
    if out_of_range:
        raise layout_error(kind, folder, f"folders {examples(out_of_range)} are not class indices 0..999",
                           _EXPECTED[kind])
    samples = [(path, int(f.name)) for f in numbered for path in list_images(f)]
    if not samples:
        raise layout_error(kind, folder, "the class folders hold no images", _EXPECTED[kind])
    missing = check_missing_classes(kind, folder, [str(i) for i in ALL_CLASSES],
                                    {str(label) for _, label in samples}, allow=allow_missing_classes,
                                    what="class folders (0..999)", folders=[str(int(f.name)) for f in numbered])
    dataset = _imagenet_dataset(samples, folder, kind, ALL_CLASSES, transform, strict)
    dataset.missing_classes = missing
    return dataset


def _open_200_class_set(kind: str, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None,
                        strict: bool, allow_missing_classes: bool) -> ImageDataset:
    top = require_dir(root, kind, _EXPECTED[kind])
    folder = locate(top, _has_wnid_folders, sorted(("imagenet-r", "imagenet-a"), key=lambda k: k != kind)) or top
    samples = _wnid_samples(folder, kind, allowed=set(subset_wnids(kind)))
    present = sorted({label for _, label in samples})
    missing = check_missing_classes(kind, folder, list(subset_wnids(kind)), _present_wnids(samples),
                                    allow=allow_missing_classes, what="class folders (wnids)",
                                    folders=[f.name for f in subfolders(folder)])
    dataset = _imagenet_dataset(samples, folder, kind, present, transform, strict)
    dataset.missing_classes = missing
    return dataset


def open_imagenet_r(root: str | os.PathLike, *, transform: Callable[[Image.Image], Any] | None = None,
                    strict: bool = False, allow_missing_classes: bool = False) -> ImageDataset:
    """ImageNet-R: the wnid folders of its 200 classes, scored on those 200 logits. A download lacking some is
    refused (naming the missing wnids) unless ``allow_missing_classes``: it is then scored on the classes present,
    and ``missing_classes`` lists the others."""
    return _open_200_class_set("imagenet-r", root, transform, strict, allow_missing_classes)


def open_imagenet_a(root: str | os.PathLike, *, transform: Callable[[Image.Image], Any] | None = None,
                    strict: bool = False, allow_missing_classes: bool = False) -> ImageDataset:
    """ImageNet-A: the wnid folders of its 200 classes, scored on those 200 logits. A download lacking some is
    refused (naming the missing wnids) unless ``allow_missing_classes``: it is then scored on the classes present,
    and ``missing_classes`` lists the others."""
    return _open_200_class_set("imagenet-a", root, transform, strict, allow_missing_classes)


def open_imagenet_sketch(root: str | os.PathLike, *, transform: Callable[[Image.Image], Any] | None = None,
                         strict: bool = False, allow_missing_classes: bool = False) -> ImageDataset:
    """ImageNet-Sketch: wnid folders of the 1,000 classes (the download's ``sketch/`` folder or its parent). A
    download lacking some, or with empty ones, is refused (naming them) unless ``allow_missing_classes``; the
    dataset's ``missing_classes`` then lists them."""
    kind = "imagenet-sketch"
    top = require_dir(root, kind, _EXPECTED[kind])
    folder = locate(top, _has_wnid_folders, ("sketch", "imagenet-sketch")) or top
    return _with_missing_classes(_imagenet_dataset(_wnid_samples(folder, kind), folder, kind, ALL_CLASSES, transform,
                                                   strict), kind, folder, allow_missing_classes)
