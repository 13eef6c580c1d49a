"""``rs.open_dataset(kind, root, **options)``: one factory from a dataset kind to a ready dataset.

Each kind is one function in the module of its family (the table below is data: ``kind -> module:function``);
its keyword options are that function's keyword arguments. Every kind takes ``transform`` (applied to each
decoded PIL image, e.g. a classifier's ``preprocess``), ``strict`` (raise on a corrupt image instead of
skipping it) and ``max_pixels`` (the largest image decoded, :data:`robustsig.data.base.MAX_PIXELS` by default;
larger ones are skipped and listed like undecodable images).

>>> sorted(KINDS)[:3]
['broden', 'csv', 'folder']
>>> parse_dataset_spec("folder:photos/")
('folder', 'photos/')
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from robustsig._yaml import SafeLoader
from robustsig.errors import InputError

KINDS: dict[str, str] = {
    "imagenet": "robustsig.data.imagenet:open_imagenet",
    "imagenet-v2": "robustsig.data.imagenet:open_imagenet_v2",
    "imagenet-r": "robustsig.data.imagenet:open_imagenet_r",
    "imagenet-a": "robustsig.data.imagenet:open_imagenet_a",
    "imagenet-sketch": "robustsig.data.imagenet:open_imagenet_sketch",
    "objectnet": "robustsig.data.objectnet:open_objectnet",
    "broden": "robustsig.data.broden:open_broden",
    "folder": "robustsig.data.folder:open_folder",
    "csv": "robustsig.data.csvdata:open_csv",
    "webdataset": "robustsig.data.webdataset:open_webdataset",
}


def dataset_factory(kind: str) -> Callable[..., Any]:
    """The function that opens ``kind``; an :class:`InputError` listing the kinds when it is unknown."""
    try:
        target = KINDS[kind]
    except (KeyError, TypeError):
        raise InputError(f"unknown dataset kind {kind!r}; choose one of: {', '.join(KINDS)}") from None
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def open_dataset(kind: str, root: str | os.PathLike, **options: Any) -> Any:
    """Open the dataset of ``kind`` stored at ``root``.

    Args:
        kind: one of :data:`KINDS` (``imagenet``, ``imagenet-v2``, ``imagenet-r``, ``imagenet-a``,
            ``imagenet-sketch``, ``objectnet``, ``broden``, ``folder``, ``csv``, ``webdataset``).
        root: the dataset's folder (or file, for ``csv``) in the layout of the official download.
        **options: the kind's options (``transform``, ``strict``, ``max_pixels`` for all; e.g. ``ground_truth=`` for
            ``imagenet``, ``mappings=`` for ``objectnet``, ``cache_dir=`` for ``broden``, ``class_map=`` for
            ``folder`` and ``csv``).

    Returns:
        A torch ``Dataset`` of ``(image, label)`` with ``.samples``, ``.classnames``, ``.class_indices`` (and
        ``.class_map``, ``.concept_matrix``/``.concepts`` where they apply), or a streamed ``IterableDataset``
        for ``webdataset``.

    Raises:
        InputError: unknown kind or option.
        DataError: the folder is missing or not in the kind's layout (the message says what was expected).

    >>> ds = open_dataset("folder", "photos/")   # doctest: +SKIP
    """
    factory = dataset_factory(kind)
    accepted = [name for name, p in inspect.signature(factory).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted) - {"max_pixels"})
    if unknown:
        raise InputError(f"dataset kind {kind!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options are: {', '.join(accepted + ['max_pixels'])}")
    max_pixels = options.pop("max_pixels", None)
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise InputError(f"dataset option max_pixels must be a positive whole number of pixels (width x height), "
                         f"got {max_pixels!r}")
    dataset = factory(root, **options)
    if max_pixels is not None:
        dataset.max_pixels = max_pixels
    return dataset


def parse_dataset_spec(spec: str) -> tuple[str, str]:
    """Split the command-line form ``KIND:ROOT`` (``folder:photos/``, ``imagenet-r:/data/imagenet-r``).

    Raises:
        InputError: no ``:``, an empty root, or an unknown kind.
    """
    kind, sep, root = spec.partition(":")
    if not sep or not root:
        raise InputError(f"dataset {spec!r} is not KIND:ROOT (e.g. folder:photos/); kinds: {', '.join(KINDS)}")
    dataset_factory(kind)
    return kind, root


def parse_dataset_options(pairs: Sequence[str]) -> dict[str, Any]:
    """The command-line form of dataset options, ``KEY=VALUE`` strings, as keyword arguments of
    :func:`open_dataset`; values are read as YAML scalars (``workers=4`` is an int, ``strict=true`` a bool,
    paths stay strings).

    >>> parse_dataset_options(["ground_truth=/data/LOC_val_solution.csv", "strict=true"])
    {'ground_truth': '/data/LOC_val_solution.csv', 'strict': True}
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise InputError(f"dataset option {pair!r} is not KEY=VALUE (e.g. ground_truth=/data/val.txt)")
        try:
            parsed = yaml.load(value, Loader=SafeLoader) if value.strip() else ""  # noqa: S506 (alias bombs refused)
        except yaml.YAMLError:
            parsed = value
        options[key] = parsed if isinstance(parsed, (bool, int, float)) else value
    return options
