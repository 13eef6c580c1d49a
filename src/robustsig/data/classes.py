"""The ImageNet class tables shipped in ``robustsig/resources`` (provenance in its README).

Class index ``i`` of an ImageNet-1k head is the ``i``-th wnid in sorted order (torchvision, timm, open_clip).

>>> imagenet_wnids()[0], imagenet_classnames()[0]
('n01440764', 'tench')
>>> imagenet_index("n01443537")
1
"""

from __future__ import annotations

from functools import cache
from importlib import resources


def _table(name: str) -> tuple[str, ...]:
    text = resources.files("robustsig").joinpath("resources", name).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k wnids in class-index order."""
    return _table("imagenet_wnids.txt")


@cache
def imagenet_classnames() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names (CLIP's cleaned names) in class-index order."""
    return _table("imagenet_classnames.txt")


@cache
def _wnid_to_index() -> dict[str, int]:
    return {wnid: index for index, wnid in enumerate(imagenet_wnids())}


def imagenet_index(wnid: str) -> int:
    """The class index of an ImageNet-1k wnid; ``KeyError`` when it is not one of the 1,000."""
    return _wnid_to_index()[wnid]


def is_imagenet_wnid(name: str) -> bool:
    return name in _wnid_to_index()


@cache
def devkit_id_to_index() -> tuple[int, ...]:
    """``table[ilsvrc_id - 1]`` is the class index of the devkit's 1-based ``ILSVRC2012_ID`` (the numbers in
    ``ILSVRC2012_validation_ground_truth.txt``), which are not in sorted-wnid order."""
    return tuple(imagenet_index(wnid) for wnid in _table("ilsvrc2012_devkit_wnids.txt"))


@cache
def subset_wnids(kind: str) -> tuple[str, ...]:
    """The 200 wnids of ``"imagenet-r"`` or ``"imagenet-a"``, sorted."""
    return _table({"imagenet-r": "imagenet_r_wnids.txt", "imagenet-a": "imagenet_a_wnids.txt"}[kind])


def subset_indices(kind: str) -> list[int]:
    """The 200 ImageNet class indices of ``"imagenet-r"`` or ``"imagenet-a"``, ascending."""
    return [imagenet_index(wnid) for wnid in subset_wnids(kind)]
