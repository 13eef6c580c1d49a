"""No silent class-set changes: a set whose download lacks some of its class folders, or whose folders for some
classes hold no image, is refused, naming those classes, unless the caller explicitly allows it
(``allow_missing_classes=True``); an allowed set then carries ``missing_classes`` so that the results can say which
classes its accuracy was scored without. An empty folder is a missing class: only classes with images count.

This applies to the sets with a fixed class list: ImageNet val and ImageNet-Sketch (1,000 wnids), ImageNet-V2
(1,000 folders ``0``..``999``), ImageNet-R and ImageNet-A (200 wnid folders each) and ObjectNet (the 113 folders its
class map names). Without the check, a partial download would be scored on the classes present (R/A: the argmax
over fewer logits), and the accuracy, ACC(S) and ER would change without a word.

>>> check_missing_classes("imagenet-r", "/data/r", ["n1", "n2", "n3"], {"n1", "n3"}, allow=True)
['n2']
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from robustsig.errors import DataError


def check_missing_classes(kind: str, root: str | os.PathLike, expected: Sequence[str], present: Iterable[str], *,
                          allow: bool, what: str = "class folders", folders: Iterable[str] = ()) -> list[str]:
    """The entries of ``expected`` that are not in ``present``, in ``expected`` order.

    Args:
        kind: the dataset kind (for the message).
        root: the folder that should hold them.
        expected: every class folder the set has.
        present: the classes found with at least one image (an empty folder is not one).
        allow: return the missing ones instead of refusing.
        what: how the message names the folders.
        folders: the class folders found, empty ones included (the message says which missing classes are empty
            folders).

    Raises:
        DataError: some are missing and ``allow`` is False; the message names every missing folder and the option.
    """
    found = set(present)
    missing = [name for name in expected if name not in found]
    if missing and not allow:
        existing = set(folders)
        empty = [name for name in missing if name in existing]
        also = (f" {len(empty)} of them are folders without any image ({', '.join(empty[:5])}"
                f"{', ...' if len(empty) > 5 else ''}): an empty folder is a missing class." if empty else "")
        raise DataError(
            f"{kind}: {root}: {len(missing)} of its {len(expected)} {what} are missing: {', '.join(missing)}.{also} "
            f"Scored without them, its accuracy (and ACC(S), ER) would cover {len(expected) - len(missing)} classes "
            f"instead of {len(expected)}, silently. Complete the download, or pass allow_missing_classes=True (in a "
            "study config: `options: {allow_missing_classes: true}` on this dataset) to score it on the classes "
            "present; the results then list the missing ones.")
    return missing
