"""``csv``: a CSV file listing images, either ``path,label`` or ``path,concepts``.

- ``path``: the image file, relative to the CSV's folder (or absolute).
- ``label``: integer class numbers (class names are then ``"0".."K-1"``), or class names (sorted, numbered by
  position); an empty cell is an unlabelled image (``-1``).
- ``concepts``: concept names separated by ``;`` (``sky;tree``); the dataset is then a
  :class:`~robustsig.data.concepts.ConceptImageDataset` with ``.concept_matrix`` and ``.concepts`` (sorted names).

Columns other than these are ignored. ``class_map=`` (a JSON file: label -> ImageNet-1k indices; see
:mod:`robustsig.data.classmap`) scores a ``path,label`` file's classes on an ImageNet-1k head, as ObjectNet is
scored. Example file::

    path,label
    images/0001.jpg,cat
    images/0002.jpg,dog
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from robustsig.data._layout import examples
from robustsig.data.base import ImageDataset
from robustsig.data.classmap import ClassMapSource, read_class_map
from robustsig.data.concepts import ConceptImageDataset
from robustsig.errors import DataError

_EXPECTED = "a CSV file with a header 'path,label' or 'path,concepts' (concepts separated by ';')"
_INTEGER = re.compile(r"^-?\d+$")


def _read_rows(path: Path) -> tuple[str, list[tuple[Path, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip() for f in reader.fieldnames or []]
            reader.fieldnames = fields
            column = next((c for c in ("label", "concepts") if c in fields), None)
            if "path" not in fields or column is None:
                raise DataError(f"csv: {path}: header {','.join(fields) or '(none)'}; expected {_EXPECTED}")
            rows = [(path.parent / (row["path"] or "").strip(), (row[column] or "").strip()) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"csv: cannot read {path}: {error}") from error
    if not rows:
        raise DataError(f"csv: {path}: no rows; expected {_EXPECTED}")
    missing = [str(p) for p, _ in rows if not p.exists()]
    if missing:
        raise DataError(f"csv: {path}: {len(missing)} listed images do not exist: {examples(missing)} "
                        "(paths are relative to the CSV's folder)")
    special = [str(p) for p, _ in rows if not p.is_file()]  # a FIFO would block the reader that opens it
    if special:
        raise DataError(f"csv: {path}: {len(special)} listed images are not regular files: {examples(special)} "
                        "(a folder, FIFO or device); list image files only")
    return column, [(p.resolve(), value) for p, value in rows]


def _labelled(rows: list[tuple[Path, str]], class_map: ClassMapSource | None, **source: Any) -> ImageDataset:
    values = [value for _, value in rows if value]
    if all(_INTEGER.match(v) for v in values):
        labels = [int(value) if value else -1 for _, value in rows]
        classnames = [str(i) for i in range(max(labels) + 1)]
    else:
        classnames = sorted(set(values))
        position = {name: k for k, name in enumerate(classnames)}
        labels = [position[value] if value else -1 for _, value in rows]
    mapped = read_class_map(class_map, classnames) if class_map is not None else None
    return ImageDataset([(p, label) for (p, _), label in zip(rows, labels)], classnames=classnames,
                        class_map=mapped, **source)


def _with_concepts(rows: list[tuple[Path, str]], **source: Any) -> ConceptImageDataset:
    per_image = [[c.strip() for c in value.split(";") if c.strip()] for _, value in rows]
    concepts = sorted({c for names in per_image for c in names})
    column = {name: k for k, name in enumerate(concepts)}
    matrix = torch.zeros(len(rows), len(concepts), dtype=torch.bool)
    for n, names in enumerate(per_image):
        matrix[n, [column[c] for c in names]] = True
    return ConceptImageDataset([(p, -1) for p, _ in rows], concept_matrix=matrix, concepts=concepts, **source)


def open_csv(root: str | os.PathLike, *, class_map: ClassMapSource | None = None,
             transform: Callable[[Image.Image], Any] | None = None, strict: bool = False) -> ImageDataset:
    """Images listed in a CSV file (``path,label`` or ``path,concepts``; see the module notes).

    Args:
        root: the CSV file.
        class_map: for a ``path,label`` file, a JSON file (or mapping) from each label to its ImageNet-1k
            indices (see :mod:`robustsig.data.classmap`); the dataset then has ``.class_map``.
        transform, strict: see :class:`~robustsig.data.base.ImageSource`.
    """
    path = Path(root).expanduser()
    if not path.is_file():
        raise DataError(f"csv: {path}: no such file; expected {_EXPECTED}")
    column, rows = _read_rows(path)
    source = {"transform": transform, "strict": strict, "kind": "csv", "root": path.resolve().parent}
    if column == "label":
        return _labelled(rows, class_map, **source)
    if class_map is not None:
        raise DataError(f"csv: {path}: a class_map applies to a 'path,label' file; this one lists concepts")
    return _with_concepts(rows, **source)
