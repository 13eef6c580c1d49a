"""What every family loader receives besides the spec, and the small rules they share."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from robustsig.errors import InputError
from robustsig.models.prompts import ClassnamesLike, TemplatesLike, imagenet_classnames, resolve_classnames
from robustsig.models.spec import ModelSpec


@dataclass(frozen=True)
class LoadOptions:
    """Options of :func:`robustsig.load_classifier` passed on to the family loaders.

    Attributes:
        device: where the zero-shot head is built (the factory moves the classifier there at the end).
        classnames: class names (list or file); for fixed heads they only rename the logits.
        templates: zero-shot prompt templates (list or file); OpenCLIP only.
        cache_dir: zero-shot head cache folder (default ``~/.cache/robustsig``).
        use_cache: read and write the zero-shot head cache.
        batch_size: prompts per text forward pass when building a zero-shot head.
        allow_download: whether named weights missing from the local caches may be downloaded.
    """

    device: torch.device
    classnames: ClassnamesLike = None
    templates: TemplatesLike = None
    cache_dir: str | os.PathLike | None = None
    use_cache: bool = True
    batch_size: int = 256
    allow_download: bool = True


def random_init_warning(spec: ModelSpec) -> None:
    warnings.warn(f"{spec} names no weights: the model is randomly initialised (meta['random_init'] is True). "
                  "Add '@WEIGHTS' to the spec to load trained weights", UserWarning, stacklevel=4)


def fixed_head_classnames(options: LoadOptions, count: int, default: Sequence[str] | None = None) -> list[str]:
    """Class names of a trained (non zero-shot) head with ``count`` outputs: the user's (same count), else
    ``default``, else ImageNet's for 1,000 outputs, else ``class0..``."""
    if options.templates is not None:
        raise InputError("templates only apply to zero-shot heads (OpenCLIP models); this model has a trained head")
    if options.classnames is not None:
        names = resolve_classnames(options.classnames)
        if len(names) != count:
            raise InputError(f"{len(names)} class names given for a head with {count} outputs; pass one per logit")
        return names
    if default is not None and len(default) == count:
        return list(default)
    if count == 1000:
        return imagenet_classnames()
    return [f"class{i}" for i in range(count)]
