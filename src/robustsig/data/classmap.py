"""``class_map``: score your own classes on an ImageNet-1k head, as ObjectNet is scored.

A class map is a JSON object from each class name (a ``folder`` sub-folder, a ``csv`` label) to the ImageNet-1k
class indices (0..999, in the sorted-wnid order of torchvision/timm/open_clip heads) that count as that class::

    {"cat": [281, 282, 283, 284, 285], "espresso": [967, 968, 504]}

A prediction is right when the argmax over all the mapped ImageNet logits falls in the image's class's set
(class ``k`` scores the max of its logits; wise-ft's ObjectNet ``project_logits``). The dataset then carries
``.class_map`` and :func:`robustsig.accuracy` and :func:`robustsig.data.scoring.pruning_scoring` use it.

Every class must be mapped, every key must be a class, each list must hold distinct indices in 0..999, and no
index may stand for two classes (the argmax would not tell them apart).

>>> read_class_map({"dog": [207, 208], "cat": [281]}, ["cat", "dog"])
[[281], [207, 208]]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robustsig._atomic import open_regular
from robustsig.data._layout import examples
from robustsig.data.classes import imagenet_wnids
from robustsig.errors import DataError

ClassMapSource = str | os.PathLike | Mapping[str, Sequence[int]]
_EXPECTED = 'a JSON object {"class name": [ImageNet-1k indices 0..999], ...} with one entry per class'


def _load(path: Path) -> Any:
    try:
        # only a regular file is read: a FIFO would block the run for ever
        fd = open_regular(path, os.O_RDONLY, follow_links=True, expected=f"expected a class map file: {_EXPECTED}",
                          error=DataError)
        with open(fd, encoding="utf-8") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        raise DataError(f"class map {path}: no such file; expected {_EXPECTED}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"class map {path}: cannot read it as JSON ({error}); expected {_EXPECTED}") from None


def _indices(name: str, value: Any, where: str, num_classes: int) -> list[int]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: class {name!r} maps to {json.dumps(value)}; expected a non-empty list of "
                        f"ImageNet-1k indices 0..{num_classes - 1}")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < num_classes]
    if bad:
        shown = ", ".join(json.dumps(v) for v in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(f"{where}: class {name!r} lists {shown}; expected ImageNet-1k indices, integers "
                        f"0..{num_classes - 1}")
    if len(set(value)) != len(value):
        raise DataError(f"{where}: class {name!r} lists an index twice ({value}); list each index once")
    return list(value)


def read_class_map(class_map: ClassMapSource, classnames: Sequence[str]) -> list[list[int]]:
    """The ImageNet-1k indices of each class, in ``classnames`` order (see the module notes).

    Args:
        class_map: the JSON file's path, or the mapping itself.
        classnames: the dataset's classes (label ``k`` is ``classnames[k]``).

    Returns:
        ``K`` lists of indices, entry ``k`` for ``classnames[k]``, each in the order the map lists them.

    Raises:
        DataError: the file is unreadable or not a JSON object; a key that is not a class; a class without an
            entry; an empty list; an index that is not an integer in 0..999, or is listed twice. The message
            names the file.
    """
    if isinstance(class_map, Mapping):
        where, data = "class_map", dict(class_map)
    else:
        path = Path(class_map).expanduser()
        where, data = f"class map {path}", _load(path)
    if not isinstance(data, dict):
        raise DataError(f"{where}: found a JSON {type(data).__name__}; expected {_EXPECTED}")
    unknown = [name for name in data if name not in classnames]
    if unknown:
        raise DataError(f"{where}: {examples(unknown)} not among the dataset's classes "
                        f"({examples(classnames, 10)}); expected one entry per class")
    missing = [name for name in classnames if name not in data]
    if missing:
        raise DataError(f"{where}: no entry for the classes {examples(missing)}; expected one entry per class")
    num_classes = len(imagenet_wnids())
    mapped = [_indices(name, data[name], where, num_classes) for name in classnames]
    owner: dict[int, str] = {}
    for name, ids in zip(classnames, mapped):
        for index in ids:
            if index in owner:
                raise DataError(f"{where}: index {index} is listed for both {owner[index]!r} and {name!r}; "
                                "an index may stand for one class only")
            owner[index] = name
    return mapped
